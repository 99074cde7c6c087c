package alicloud

import (
	"net/url"
	"strings"
)

// Redacted replaces a secret in error text.
const Redacted = "[redacted]"

// secretKeys are the request parameters that must never be shown: the SDK
// signs RPC calls in the query string, so a request URL (and the
// SignatureDoesNotMatch "string to sign") holds all of them.
var secretKeys = []string{"AccessKeyId", "AccessKeySecret", "SecurityToken", "Signature", "BearerToken"}

// Redact returns err with every signed URL and credential parameter taken
// out of its text and of every error in its chain: a *url.Error anywhere
// (wrapped, joined, nested in another *url.Error) is replaced by its
// cause, so errors.As cannot dig the URL out again. Errors of the chain
// that carry nothing secret (*net.OpError, syscall errors, context errors,
// *Error) stay reachable for errors.Is and errors.As. An error without
// secrets is returned unchanged.
func Redact(err error) error {
	if err == nil || !needsRedaction(err) {
		return err
	}
	var kids []error
	switch u := err.(type) {
	case *url.Error:
		msg := scrub(u.Op + " " + strings.Trim(redactURL(u.URL), `"`) + ": " + errText(u.Err))
		return &redacted{msg: msg, kids: nonNil(Redact(u.Err))}
	case interface{ Unwrap() error }:
		kids = nonNil(Redact(u.Unwrap()))
	case interface{ Unwrap() []error }:
		for _, k := range u.Unwrap() {
			kids = append(kids, nonNil(Redact(k))...)
		}
	}
	return &redacted{msg: scrub(err.Error()), kids: kids}
}

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func nonNil(err error) []error {
	if err == nil {
		return nil
	}
	return []error{err}
}

// needsRedaction: a *url.Error or secret text anywhere in the chain.
func needsRedaction(err error) bool {
	if err == nil {
		return false
	}
	if _, ok := err.(*url.Error); ok {
		return true
	}
	if _, ok := err.(*redacted); ok {
		return false
	}
	if s := err.Error(); scrub(s) != s {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return needsRedaction(u.Unwrap())
	case interface{ Unwrap() []error }:
		for _, k := range u.Unwrap() {
			if needsRedaction(k) {
				return true
			}
		}
	}
	return false
}

// redacted is an error whose text was scrubbed; its chain holds the
// redacted causes.
type redacted struct {
	msg  string
	kids []error
}

func (r *redacted) Error() string   { return r.msg }
func (r *redacted) Unwrap() []error { return r.kids }

// Scrub removes signed-URL queries and credential parameters from s (for
// text that did not come as an error, e.g. an HTTP body).
func Scrub(s string) string { return scrub(s) }

func scrub(s string) string {
	s = scrubURLs(s)
	for _, k := range secretKeys {
		s = scrubParam(s, k)
	}
	const marker = "string to sign is:"
	if i := strings.Index(s, marker); i >= 0 {
		// SignatureDoesNotMatch: the server's string to sign is the whole
		// signed query, percent-encoded; it ends at the next blank or quote.
		rest := s[i+len(marker):]
		end := len(rest)
		if j := strings.IndexAny(rest, " \t\n\"'"); j >= 0 {
			end = j
		}
		s = s[:i] + marker + Redacted + rest[end:]
	}
	return s
}

// redactURL keeps scheme, host and path of a URL, never its query.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		if i := strings.IndexByte(raw, '?'); i >= 0 {
			return raw[:i] + "?" + Redacted
		}
		return raw
	}
	out := u.Scheme + "://" + u.Host + u.EscapedPath()
	if u.RawQuery != "" || u.ForceQuery {
		out += "?" + Redacted
	}
	return out
}

func scrubURLs(s string) string {
	var b strings.Builder
	for {
		i := indexFold(s, "http://")
		if j := indexFold(s, "https://"); j >= 0 && (i < 0 || j < i) {
			i = j
		}
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		end := strings.IndexAny(s[i:], " \t\n\"'<>`")
		if end < 0 {
			end = len(s)
		} else {
			end += i
		}
		b.WriteString(s[:i])
		b.WriteString(redactURL(s[i:end]))
		s = s[end:]
	}
}

// scrubParam replaces the value of key=VALUE (also %3D and %253D, the
// once and twice percent-encoded "=", and "key":"VALUE") with Redacted.
func scrubParam(s, key string) string {
	seps := []string{"=", "%3D", "%253D", `":"`, `": "`}
	var b strings.Builder
	lower := strings.ToLower(s)
	lkey := strings.ToLower(key)
	pos := 0
	for {
		i := strings.Index(lower[pos:], lkey)
		if i < 0 {
			b.WriteString(s[pos:])
			return b.String()
		}
		i += pos
		after := i + len(key)
		sep := ""
		for _, sp := range seps {
			if strings.HasPrefix(lower[after:], strings.ToLower(sp)) {
				sep = sp
				break
			}
		}
		if sep == "" || i > 0 && isLetter(s[i-1]) {
			b.WriteString(s[pos:after])
			pos = after
			continue
		}
		vstart := after + len(sep)
		vend := vstart
		for vend < len(s) {
			c := s[vend]
			if strings.IndexByte("&\"' \t\n,;)]}<>", c) >= 0 {
				break
			}
			if c == '%' && (strings.HasPrefix(lower[vend:], "%26") || strings.HasPrefix(lower[vend:], "%2526")) {
				break
			}
			vend++
		}
		b.WriteString(s[pos:vstart])
		if vend > vstart {
			b.WriteString(Redacted)
		}
		pos = vend
	}
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func indexFold(s, sub string) int { return strings.Index(strings.ToLower(s), sub) }

// MaskKeyID shows enough of an AccessKeyId to tell keys apart in logs and
// errors without showing the key id: "LTAI5tAbCdEfGhIj" → "LTAI…hIj".
func MaskKeyID(id string) string {
	switch {
	case id == "":
		return ""
	case len(id) <= 8:
		return "…"
	}
	return id[:4] + "…" + id[len(id)-3:]
}
