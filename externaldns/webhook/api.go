package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
)

// MediaType is the content type of every body of the protocol (ExternalDNS
// provider/webhook/api.MediaTypeFormatAndVersion).
const MediaType = "application/external.dns.webhook+json;version=1"

// Provider-specific properties of an endpoint. ExternalDNS turns the
// annotation external-dns.kubernetes.io/webhook-pvtz-status (and
// ...-pvtz-remark) into them.
const (
	// PropStatus: ENABLE (default) or DISABLE, the record's status.
	PropStatus = "webhook/pvtz-status"
	// PropRemark: the record's Remark (≤ 50 bytes); absent = the webhook's
	// default remark (--remark).
	PropRemark = "webhook/pvtz-remark"
)

// Limits of a request body.
const (
	MaxBody      = 64 << 20 // bytes of a POST body
	MaxEndpoints = 200_000  // endpoints in one request
	MaxTargets   = 1_000    // targets of one endpoint
)

// Endpoint is ExternalDNS's endpoint.Endpoint on the wire.
type Endpoint struct {
	DNSName          string            `json:"dnsName,omitempty"`
	Targets          []string          `json:"targets,omitempty"`
	RecordType       string            `json:"recordType,omitempty"`
	SetIdentifier    string            `json:"setIdentifier,omitempty"`
	RecordTTL        int64             `json:"recordTTL,omitempty"`
	Labels           map[string]string `json:"labels,omitempty"`
	ProviderSpecific []Property        `json:"providerSpecific,omitempty"`
}

// Property is a provider-specific property.
type Property struct {
	Name  string `json:"name,omitempty"`
	Value string `json:"value,omitempty"`
}

// Prop returns the value of the property name.
func (e *Endpoint) Prop(name string) (string, bool) {
	for _, p := range e.ProviderSpecific {
		if p.Name == name {
			return p.Value, true
		}
	}
	return "", false
}

// Changes is ExternalDNS's plan.Changes on the wire.
type Changes struct {
	Create    []*Endpoint `json:"create,omitempty"`
	UpdateOld []*Endpoint `json:"updateOld,omitempty"`
	UpdateNew []*Endpoint `json:"updateNew,omitempty"`
	Delete    []*Endpoint `json:"delete,omitempty"`
}

// Len is the number of endpoints in c.
func (c *Changes) Len() int {
	return len(c.Create) + len(c.UpdateOld) + len(c.UpdateNew) + len(c.Delete)
}

// DomainFilter is ExternalDNS's endpoint.DomainFilter on the wire (the
// answer to GET /).
type DomainFilter struct {
	Include      []string `json:"include,omitempty"`
	Exclude      []string `json:"exclude,omitempty"`
	RegexInclude string   `json:"regexInclude,omitempty"`
	RegexExclude string   `json:"regexExclude,omitempty"`
}

// ErrBadRequest wraps every decoding error (the handler answers 400).
var ErrBadRequest = errors.New("bad request")

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, args...))
}

// checkContentType accepts no content type, application/json and the
// protocol's media type of version 1.
func checkContentType(ct string) error {
	if ct == "" {
		return nil
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return badRequest("content type %q: %v", ct, err)
	}
	switch mt {
	case "application/json":
		return nil
	case "application/external.dns.webhook+json":
		if v, ok := params["version"]; ok && v != "1" {
			return badRequest("content type %q: this webhook speaks version 1", ct)
		}
		return nil
	}
	return badRequest("content type %q: want %s", ct, MediaType)
}

// decode reads one JSON value of at most MaxBody bytes from r into v and
// requires nothing but white space after it.
func decode(r io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(r, MaxBody+1))
	if err != nil {
		return badRequest("read body: %v", err)
	}
	if len(b) > MaxBody {
		return badRequest("body larger than %d bytes", MaxBody)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return badRequest("decode: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("data after the JSON value")
	}
	return nil
}

// DecodeChanges reads the body of POST /records.
func DecodeChanges(r io.Reader) (*Changes, error) {
	var c Changes
	if err := decode(r, &c); err != nil {
		return nil, err
	}
	if c.Len() > MaxEndpoints {
		return nil, badRequest("%d endpoints, more than %d", c.Len(), MaxEndpoints)
	}
	for _, l := range []*[]*Endpoint{&c.Create, &c.UpdateOld, &c.UpdateNew, &c.Delete} {
		var err error
		if *l, err = checkEndpoints(*l); err != nil {
			return nil, err
		}
	}
	return &c, nil
}

// DecodeEndpoints reads the body of POST /adjustendpoints.
func DecodeEndpoints(r io.Reader) ([]*Endpoint, error) {
	var eps []*Endpoint
	if err := decode(r, &eps); err != nil {
		return nil, err
	}
	if len(eps) > MaxEndpoints {
		return nil, badRequest("%d endpoints, more than %d", len(eps), MaxEndpoints)
	}
	return checkEndpoints(eps)
}

// checkEndpoints drops null entries and rejects endpoints without a name or
// type, or with too many targets.
func checkEndpoints(eps []*Endpoint) ([]*Endpoint, error) {
	out := eps[:0]
	for i, e := range eps {
		if e == nil {
			continue
		}
		if strings.TrimSpace(e.DNSName) == "" {
			return nil, badRequest("endpoint %d: no dnsName", i)
		}
		if strings.TrimSpace(e.RecordType) == "" {
			return nil, badRequest("endpoint %d (%s): no recordType", i, e.DNSName)
		}
		if len(e.Targets) > MaxTargets {
			return nil, badRequest("endpoint %d (%s): %d targets, more than %d", i, e.DNSName, len(e.Targets), MaxTargets)
		}
		out = append(out, e)
	}
	return out, nil
}
