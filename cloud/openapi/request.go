package openapi

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// maxBody bounds a POST body; the SDK sends parameters in the query string.
const maxBody = 1 << 20

// Common parameters every RPC request carries; they are not passed to
// products in Request.Params' "action parameters" view (ActionParams).
var commonParams = map[string]bool{
	"Action": true, "Version": true, "Format": true, "Timestamp": true,
	"SignatureMethod": true, "SignatureVersion": true, "SignatureType": true,
	"SignatureNonce": true, "AccessKeyId": true, "Signature": true,
	"SecurityToken": true, "BearerToken": true, "RegionId": true,
}

// Request is one parsed RPC call.
type Request struct {
	Method      string
	Product     string
	Action      string
	Version     string
	Format      string // "JSON" or "XML"
	AccessKeyID string
	RegionID    string
	RequestID   string
	RemoteAddr  string
	// Params holds every parameter (query and form) including the common ones.
	Params map[string]string
}

// Get returns a parameter ("" when absent).
func (r *Request) Get(name string) string { return r.Params[name] }

// Has reports whether a parameter was sent.
func (r *Request) Has(name string) bool { _, ok := r.Params[name]; return ok }

// Required returns a parameter or a MissingParameter error naming it.
func (r *Request) Required(name string) (string, error) {
	v, ok := r.Params[name]
	if !ok || v == "" {
		return "", MissingParameter(name)
	}
	return v, nil
}

// Int returns an integer parameter, def when absent, and an InvalidParameter
// error naming it when it is not an integer.
func (r *Request) Int(name string, def int64) (int64, error) {
	v, ok := r.Params[name]
	if !ok || v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, InvalidParameter(name, v)
	}
	return n, nil
}

// List returns the values of a repeated parameter Name.N (N from 1) or the
// sub-field Name.N.Field when field is not empty, in order, stopping at the
// first gap.
func (r *Request) List(name, field string) []string {
	var out []string
	for i := 1; ; i++ {
		k := name + "." + strconv.Itoa(i)
		if field != "" {
			k += "." + field
		}
		v, ok := r.Params[k]
		if !ok {
			return out
		}
		out = append(out, v)
	}
}

// ActionParams returns the parameters without the common ones (what the
// request log shows).
func (r *Request) ActionParams() map[string]string {
	out := make(map[string]string)
	for k, v := range r.Params {
		if !commonParams[k] {
			out[k] = v
		}
	}
	return out
}

// ParseParams merges the query string and, when the content type is a form,
// the body into one map (first value of each key wins; query before body).
// It never panics on any input; malformed encodings are errors.
func ParseParams(rawQuery, contentType string, body []byte) (map[string]string, error) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	out := make(map[string]string, len(q))
	for k, v := range q {
		if len(v) > 0 {
			out[k] = v[0]
		}
	}
	if len(body) > 0 && strings.HasPrefix(strings.ToLower(strings.TrimSpace(contentType)), "application/x-www-form-urlencoded") {
		f, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, fmt.Errorf("form body: %w", err)
		}
		for k, v := range f {
			if _, dup := out[k]; !dup && len(v) > 0 {
				out[k] = v[0]
			}
		}
	}
	return out, nil
}

// PercentEncode is the RFC 3986 encoding the signature uses: Go's
// QueryEscape with "+"→"%20", "*"→"%2A", "%7E"→"~".
func PercentEncode(s string) string {
	s = url.QueryEscape(s)
	s = strings.ReplaceAll(s, "+", "%20")
	s = strings.ReplaceAll(s, "*", "%2A")
	s = strings.ReplaceAll(s, "%7E", "~")
	return s
}

// StringToSign is the signature v1 string to sign for the parameters (the
// Signature parameter, if present, is left out).
func StringToSign(method string, params map[string]string) string {
	keys := make([]string, 0, len(params))
	for k := range params {
		if k != "Signature" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(PercentEncode(k))
		b.WriteByte('=')
		b.WriteString(PercentEncode(params[k]))
	}
	return strings.ToUpper(method) + "&" + PercentEncode("/") + "&" + PercentEncode(b.String())
}

// Sign returns base64(HMAC-SHA1(secret + "&", stringToSign)).
func Sign(stringToSign, secret string) string {
	m := hmac.New(sha1.New, []byte(secret+"&"))
	m.Write([]byte(stringToSign))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// SignParams adds the Signature parameter to params for method using secret
// (for clients other than the SDK, e.g. tests sending hand-made requests).
func SignParams(method string, params map[string]string, secret string) {
	delete(params, "Signature")
	params["Signature"] = Sign(StringToSign(method, params), secret)
}

// EncodeParams encodes parameters as a query string.
func EncodeParams(params map[string]string) string {
	v := url.Values{}
	for k, p := range params {
		v.Set(k, p)
	}
	return v.Encode()
}
