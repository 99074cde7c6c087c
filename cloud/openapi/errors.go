package openapi

import (
	"fmt"
	"net/http"
)

// Error is an API error as the real service answers it.
type Error struct {
	HTTPStatus int
	Code       string
	Message    string
	Recommend  string
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// Errorf builds an API error.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{HTTPStatus: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// MissingParameter is 400 MissingParameter naming the parameter (as the
// gateway words it).
func MissingParameter(name string) *Error {
	return Errorf(http.StatusBadRequest, "MissingParameter", "The input parameter %q that is mandatory for processing this request is not supplied.", name)
}

// InvalidParameter is 400 InvalidParameter naming the parameter and value.
func InvalidParameter(name, value string) *Error {
	return Errorf(http.StatusBadRequest, "InvalidParameter", "The specified parameter %q is not valid: %q.", name, value)
}

// Gateway errors (the codes and messages the real OpenAPI gateway uses).
var (
	errThrottling = func() *Error {
		return Errorf(http.StatusBadRequest, "Throttling.User", "Request was denied due to user flow control.")
	}
	errUnavailable = func() *Error {
		return Errorf(http.StatusServiceUnavailable, "ServiceUnavailable", "The request has failed due to a temporary failure of the server.")
	}
	errInternal = func() *Error {
		return Errorf(http.StatusInternalServerError, "InternalError", "The request processing has failed due to some unknown error, exception or failure.")
	}
)
