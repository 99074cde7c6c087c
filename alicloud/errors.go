package alicloud

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"

	sdkerrors "github.com/aliyun/alibaba-cloud-sdk-go/sdk/errors"
)

// Kind is what an error means to a caller: retry, give up, or resolve.
type Kind int

const (
	KindUnknown          Kind = iota // not classified (an Error built without a Kind: derived from Code)
	KindThrottled                    // Throttling*: retry after a backoff
	KindUnavailable                  // ServiceUnavailable, InternalError, HTTP 5xx: retry
	KindBusy                         // the resource is busy with another operation, System.Busy: retry
	KindTransport                    // no answer (refused, reset, timeout, EOF): retry; the call may have run
	KindNotFound                     // the named resource does not exist
	KindInvalidParameter             // the request is wrong: do not retry
	KindConflict                     // exists already / ClientToken reused with other parameters: resolve, do not retry
	KindCredential                   // the credential was rejected or none was found: do not retry
	KindForbidden                    // RAM denied the action: do not retry
	KindOther                        // any other API error: do not retry
)

var kindNames = [...]string{"unknown", "throttled", "unavailable", "busy", "transport", "not-found", "invalid-parameter", "conflict", "credential", "forbidden", "other"}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return fmt.Sprintf("kind(%d)", int(k))
	}
	return kindNames[k]
}

// Retryable reports whether a call that failed this way may be repeated as
// it is (with the same ClientToken when it creates something).
func (k Kind) Retryable() bool {
	return k == KindThrottled || k == KindUnavailable || k == KindBusy || k == KindTransport
}

// codeKinds are the codes of ECS (2014-05-26), PrivateZone (2018-01-01) and
// the OpenAPI gateway whose meaning the suffix/prefix rules below miss.
var codeKinds = map[string]Kind{
	"ServiceUnavailable": KindUnavailable, "InternalError": KindUnavailable, "UnknownError": KindUnavailable,
	"System.Busy": KindBusy, "Operation.Conflict": KindBusy, "LastTokenProcessing": KindBusy,
	"SignatureNonceUsed":      KindBusy, // a repeat is signed with a fresh nonce
	"IncorrectInstanceStatus": KindBusy, "InvalidOperation.Conflict": KindBusy, "TaskConflict": KindBusy,
	"IdempotentParameterMismatch": KindConflict, "IdempotenceParamNotMatch": KindConflict,
	"Record.Invalid.Conflict": KindConflict, "ZoneVpc.Zone.Repeated": KindConflict, "Zone.VpcExists": KindConflict,
	"Record.Invalid.Id": KindNotFound, "Record.NotExists": KindNotFound, "Zone.Invalid.Id": KindNotFound, "Zone.NotExists": KindNotFound,
	"InvalidAction.NotFound": KindOther, "InvalidVersion": KindOther,
	"InvalidAccessKeyId.NotFound": KindCredential, "InvalidAccessKeyId": KindCredential, "InvalidAccessKeyId.Inactive": KindCredential,
	"SignatureDoesNotMatch": KindCredential, "IncompleteSignature": KindCredential, "InvalidSecurityToken.Expired": KindCredential,
	"InvalidSecurityToken.MismatchWithAccessKey": KindCredential, "InvalidSecurityToken.Malformed": KindCredential,
	"MissingSecurityToken": KindCredential, "Forbidden.AccessKeyDisabled": KindCredential,
	"InvalidTimeStamp.Expired": KindCredential, // a clock problem, not fixed by repeating
	"Forbidden.RAM":            KindForbidden, "Forbidden": KindForbidden, "NoPermission": KindForbidden, "Forbidden.NoPermission": KindForbidden,
}

// Classify returns the Kind of an API error code answered with HTTP status.
func Classify(code string, status int) Kind {
	if k, ok := codeKinds[code]; ok {
		return k
	}
	switch {
	case strings.HasPrefix(code, "Throttling"):
		return KindThrottled
	case strings.HasSuffix(code, ".NotFound"), strings.HasSuffix(code, ".NotExist"), strings.HasSuffix(code, ".NotExists"):
		return KindNotFound
	case strings.HasPrefix(code, "InvalidParameter"), strings.HasPrefix(code, "MissingParameter"), strings.HasPrefix(code, "MissingParam"),
		strings.HasPrefix(code, "InvalidParam"):
		return KindInvalidParameter
	case strings.HasPrefix(code, "Forbidden"):
		return KindForbidden
	case status >= 500:
		return KindUnavailable
	case status == 403:
		return KindForbidden
	}
	return KindOther
}

// Error is every error a Client returns: an API answer (Code set) or a
// request that got no answer (Kind KindTransport, Host set). Its text never
// holds the signed request URL, the Signature, the AccessKeyId or an STS
// SecurityToken: these errors go to logs, Kubernetes Events and CNI results.
type Error struct {
	Product    string // "ecs", "pvtz"
	Action     string
	Code       string // API error code; "" for transport and client errors
	Message    string
	RequestID  string
	HTTPStatus int
	Kind       Kind
	Host       string // the endpoint of a transport error
	Err        error  // the cause (redacted): net.Error, io.EOF, context errors, ...
}

func (e *Error) Error() string {
	switch {
	case e.Code != "":
		s := e.Action + ": " + e.Code
		if e.HTTPStatus != 0 {
			s += fmt.Sprintf(" (HTTP %d)", e.HTTPStatus)
		}
		if e.Message != "" {
			s += ": " + e.Message
		}
		if e.RequestID != "" {
			s += " [RequestId " + e.RequestID + "]"
		}
		return s
	case e.Host != "":
		return fmt.Sprintf("%s to %s: %v", e.Action, e.Host, e.Err)
	case e.Err != nil:
		return fmt.Sprintf("%s: %v", e.Action, e.Err)
	}
	return e.Action + ": " + e.Kind.String()
}

func (e *Error) Unwrap() error { return e.Err }

// kind is e.Kind, or what its Code means when it was built without one.
func (e *Error) kind() Kind {
	if e.Kind != KindUnknown {
		return e.Kind
	}
	if e.Code != "" {
		return Classify(e.Code, e.HTTPStatus)
	}
	return KindOther
}

// KindOf returns the Kind of err: an *Error's (anywhere in the chain), else
// KindTransport for connection errors, else KindOther (KindUnknown for nil).
func KindOf(err error) Kind {
	if err == nil {
		return KindUnknown
	}
	var e *Error
	if errors.As(err, &e) {
		return e.kind()
	}
	if isTransport(err) {
		return KindTransport
	}
	return KindOther
}

// Code returns the API error code of err ("" when it is not an API answer).
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// IsRetryable reports whether err may be repeated as it is.
func IsRetryable(err error) bool { return KindOf(err).Retryable() }

// IsThrottled reports a Throttling* answer.
func IsThrottled(err error) bool { return KindOf(err) == KindThrottled }

// IsNotFound reports an answer that the named resource does not exist.
func IsNotFound(err error) bool { return KindOf(err) == KindNotFound }

// IsInvalidParameter reports a malformed or invalid request.
func IsInvalidParameter(err error) bool { return KindOf(err) == KindInvalidParameter }

// IsConflict reports an idempotent conflict: the thing exists already, or a
// ClientToken was reused with other parameters.
func IsConflict(err error) bool { return KindOf(err) == KindConflict }

// IsCredential reports a rejected (or missing) credential.
func IsCredential(err error) bool { return KindOf(err) == KindCredential }

// IsTransport reports a request that got no answer.
func IsTransport(err error) bool { return KindOf(err) == KindTransport }

func isTransport(err error) bool {
	var ue *url.Error
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ue) || errors.As(err, &ne) || errors.As(err, &oe) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE)
}

// FromSDK turns what an SDK call returned into an *Error (nil stays nil):
// server errors keep code, message and request id; transport errors keep
// the host and the cause but lose the signed URL; everything is redacted.
func FromSDK(product, action, host string, err error) error {
	if err == nil {
		return nil
	}
	var own *Error
	if errors.As(err, &own) {
		return err
	}
	var se *sdkerrors.ServerError
	if errors.As(err, &se) {
		code, status := se.ErrorCode(), se.HttpStatus()
		return &Error{Product: product, Action: action, Code: code, Message: scrub(se.Message()), RequestID: se.RequestId(),
			HTTPStatus: status, Kind: Classify(code, status)}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &Error{Product: product, Action: action, Kind: KindTransport, Host: host, Err: Redact(err)}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil && u.Host != "" {
			host = u.Host
		}
		return &Error{Product: product, Action: action, Kind: KindTransport, Host: host, Err: Redact(ue.Err)}
	}
	var ce *sdkerrors.ClientError
	if errors.As(err, &ce) {
		cause := ce.OriginError()
		switch {
		case ce.ErrorCode() == sdkerrors.TimeoutErrorCode || cause != nil && isTransport(cause):
			return &Error{Product: product, Action: action, Kind: KindTransport, Host: host, Err: Redact(orErr(cause, err))}
		case strings.Contains(strings.ToLower(ce.Message()), "credential"):
			return &Error{Product: product, Action: action, Kind: KindCredential, Err: Redact(err)}
		}
		return &Error{Product: product, Action: action, Kind: KindOther, Err: Redact(err)}
	}
	if isTransport(err) {
		return &Error{Product: product, Action: action, Kind: KindTransport, Host: host, Err: Redact(err)}
	}
	// The credential chain found nothing usable (no call was made).
	if strings.Contains(strings.ToLower(err.Error()), "credential") {
		return &Error{Product: product, Action: action, Kind: KindCredential, Err: Redact(err)}
	}
	return &Error{Product: product, Action: action, Kind: KindOther, Err: Redact(err)}
}

func orErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
