package webhook

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

// Supported record types (PrivateZone's, as ExternalDNS names them).
var supportedTypes = map[string]bool{"A": true, "AAAA": true, "CNAME": true, "TXT": true, "MX": true, "SRV": true, "PTR": true}

// PrivateZone's limits.
const (
	MinTTL    = 5
	MaxTTL    = 86400
	MaxRemark = registry.MaxRemark
)

// Status values.
const (
	StatusEnable  = "ENABLE"
	StatusDisable = "DISABLE"
)

// value is one record value as PrivateZone keeps it (one record per value).
type value struct {
	Value    string
	Priority int // MX
}

// toValue turns an ExternalDNS target of type typ into a PrivateZone value.
// The result is canonical: AdjustEndpoints writes canonical targets into the
// plan, and Records reads values back into the same strings (lossless).
func toValue(typ, target string) (value, error) {
	t := strings.TrimSpace(target)
	switch typ {
	case "A", "AAAA":
		a, err := netip.ParseAddr(t)
		if err != nil || a.Zone() != "" {
			return value{}, fmt.Errorf("%s target %q is not an IP address", typ, target)
		}
		if typ == "A" && !a.Is4() {
			return value{}, fmt.Errorf("A target %q is not an IPv4 address", target)
		}
		if typ == "AAAA" && !a.Is6() {
			return value{}, fmt.Errorf("AAAA target %q is not an IPv6 address", target)
		}
		return value{Value: a.String()}, nil
	case "CNAME", "PTR":
		n := hostName(t)
		if !validHost(n) {
			return value{}, fmt.Errorf("%s target %q is not a domain name", typ, target)
		}
		return value{Value: n}, nil
	case "MX":
		f := strings.Fields(t)
		if len(f) != 2 {
			return value{}, fmt.Errorf(`MX target %q: want "<priority> <host>"`, target)
		}
		p, err := strconv.Atoi(f[0])
		if err != nil || p < 1 || p > 99 {
			return value{}, fmt.Errorf("MX target %q: PrivateZone takes priorities 1 to 99", target)
		}
		n := hostName(f[1])
		if !validHost(n) {
			return value{}, fmt.Errorf("MX target %q: %q is not a domain name", target, f[1])
		}
		return value{Value: n, Priority: p}, nil
	case "SRV":
		f := strings.Fields(t)
		if len(f) != 4 {
			return value{}, fmt.Errorf(`SRV target %q: want "<priority> <weight> <port> <target>"`, target)
		}
		for _, n := range f[:3] {
			if v, err := strconv.Atoi(n); err != nil || v < 0 || v > 65535 {
				return value{}, fmt.Errorf("SRV target %q: %q is not 0-65535", target, n)
			}
		}
		if !validHost(hostName(f[3])) {
			return value{}, fmt.Errorf("SRV target %q: %q is not a domain name", target, f[3])
		}
		// Kept as written (with or without the trailing dot): ExternalDNS
		// leaves SRV targets alone, and so does the round trip.
		return value{Value: strings.Join(f, " ")}, nil
	case "TXT":
		target = strings.ToValidUTF8(target, "\uFFFD")
		v := target
		for quoted(v) {
			v = unquote(v)
		}
		if v == "" {
			return value{}, errors.New("empty TXT target")
		}
		if len(v) > 512 {
			return value{}, fmt.Errorf("TXT target longer than 512 bytes (%d)", len(v))
		}
		if isRegistryTXT(v) {
			v = target // ExternalDNS's TXT registry writes its own quotes; keep them
		}
		return value{Value: v}, nil
	}
	return value{}, fmt.Errorf("record type %q is not supported by PrivateZone through this webhook", typ)
}

// toTarget turns a PrivateZone record back into an ExternalDNS target.
func toTarget(r endpoint.Record) string {
	switch r.Type {
	case "MX":
		return strconv.Itoa(r.Priority) + " " + r.Value
	case "TXT":
		// PrivateZone strips a TXT value's outer quotes; ExternalDNS's TXT
		// registry wrote them (the in-tree provider re-adds them the same way).
		if isRegistryTXT(r.Value) && !quoted(r.Value) {
			return `"` + r.Value + `"`
		}
	}
	return r.Value
}

// sameValue reports whether the record holds v.
func sameValue(r endpoint.Record, v value) bool {
	switch r.Type {
	case "A", "AAAA":
		a, err1 := netip.ParseAddr(r.Value)
		b, err2 := netip.ParseAddr(v.Value)
		return err1 == nil && err2 == nil && a == b
	case "TXT":
		return unquote(r.Value) == unquote(v.Value)
	case "MX":
		return r.Priority == v.Priority && strings.EqualFold(hostName(r.Value), hostName(v.Value))
	case "SRV":
		return strings.EqualFold(strings.TrimSuffix(r.Value, "."), strings.TrimSuffix(v.Value, "."))
	}
	return strings.EqualFold(hostName(r.Value), hostName(v.Value))
}

func hostName(s string) string { return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".") }

func validHost(n string) bool {
	if n == "" || len(n) > 253 {
		return false
	}
	for _, l := range strings.Split(n, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '*') {
				return false
			}
		}
	}
	return true
}

func quoted(s string) bool { return len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' }

func unquote(s string) string {
	if quoted(s) {
		return s[1 : len(s)-1]
	}
	return s
}

// isRegistryTXT: a TXT value of ExternalDNS's TXT registry (plain; an
// encrypted one carries no recognisable text and is left as written).
func isRegistryTXT(v string) bool { return strings.HasPrefix(unquote(v), "heritage=") }

// canonicalRemark returns the remark a property asks for ("" = the
// default): at most MaxRemark bytes, never a pvtz-sync ownership marker
// (which would hand the record to pvtz-sync).
func (s *Server) canonicalRemark(v string) (string, error) {
	v = strings.TrimSpace(strings.ToValidUTF8(v, ""))
	for len(v) > MaxRemark {
		_, n := utf8.DecodeLastRuneInString(v)
		v = strings.TrimSpace(v[:len(v)-n])
	}
	if _, _, ok := registry.Parse(v); ok {
		return "", fmt.Errorf("remark %q is a pvtz-sync ownership marker; using %q", v, s.cfg.Remark)
	}
	if v == s.cfg.Remark {
		return "", nil
	}
	return v, nil
}

func canonicalStatus(v string) (string, error) {
	switch u := strings.ToUpper(strings.TrimSpace(v)); u {
	case StatusEnable, StatusDisable:
		return u, nil
	case "":
		return StatusEnable, nil
	}
	return StatusEnable, fmt.Errorf("status %q: want ENABLE or DISABLE; using ENABLE", v)
}

// AdjustEndpoints canonicalises the endpoints ExternalDNS wants, so that
// what it plans compares equal to what Records returns for the same zone
// content (no perpetual updates): names lower-case without the trailing
// dot; targets in PrivateZone's form, de-duplicated and sorted (invalid
// ones dropped); TTL clamped to 5-86400 when set; set identifiers dropped
// (PrivateZone has no routing policies); provider-specific properties
// reduced to PropStatus (always present, ENABLE by default) and PropRemark
// (present only when it is not the default remark). Unsupported record
// types are dropped. Each change is logged once per call.
func (s *Server) AdjustEndpoints(in []*Endpoint) []*Endpoint {
	out := make([]*Endpoint, 0, len(in))
	for _, ep := range in {
		if ep == nil {
			continue
		}
		e := &Endpoint{DNSName: normalizeName(ep.DNSName), RecordType: strings.ToUpper(strings.TrimSpace(ep.RecordType)),
			RecordTTL: ep.RecordTTL, Labels: ep.Labels}
		if e.DNSName == "" {
			continue
		}
		if !supportedTypes[e.RecordType] {
			s.log.Warn("dropping an endpoint of a record type PrivateZone does not hold", "name", e.DNSName, "type", e.RecordType)
			continue
		}
		if ep.SetIdentifier != "" {
			s.log.Warn("ignoring the set identifier: PrivateZone has no routing policies", "name", e.DNSName, "set_identifier", ep.SetIdentifier)
		}
		if e.RecordTTL != 0 {
			e.RecordTTL = min(max(e.RecordTTL, MinTTL), MaxTTL)
		}
		seen := map[string]bool{}
		for _, t := range ep.Targets {
			v, err := toValue(e.RecordType, t)
			if err != nil {
				s.log.Warn("dropping an invalid target", "name", e.DNSName, "type", e.RecordType, "err", err)
				continue
			}
			tt := toTarget(endpoint.Record{Type: e.RecordType, Value: v.Value, Priority: v.Priority})
			if !seen[tt] {
				seen[tt] = true
				e.Targets = append(e.Targets, tt)
			}
		}
		if len(e.Targets) == 0 {
			s.log.Warn("dropping an endpoint without a valid target", "name", e.DNSName, "type", e.RecordType)
			continue
		}
		sort.Strings(e.Targets)
		st, _ := ep.Prop(PropStatus)
		status, err := canonicalStatus(st)
		if err != nil {
			s.log.Warn("invalid "+PropStatus, "name", e.DNSName, "err", err)
		}
		e.ProviderSpecific = []Property{{Name: PropStatus, Value: status}}
		if rm, ok := ep.Prop(PropRemark); ok {
			remark, err := s.canonicalRemark(rm)
			if err != nil {
				s.log.Warn("invalid "+PropRemark, "name", e.DNSName, "err", err)
			}
			if remark != "" {
				e.ProviderSpecific = append(e.ProviderSpecific, Property{Name: PropRemark, Value: remark})
			}
		}
		for _, p := range ep.ProviderSpecific {
			if p.Name != PropStatus && p.Name != PropRemark {
				s.log.Debug("dropping a provider-specific property this webhook does not use", "name", e.DNSName, "property", p.Name)
			}
		}
		out = append(out, e)
	}
	return out
}

// normalizeName lower-cases a DNS name and drops trailing dots and space.
func normalizeName(n string) string {
	n = strings.ToLower(n)
	for {
		m := strings.TrimSpace(strings.TrimRight(strings.TrimSpace(n), "."))
		if m == n {
			return n
		}
		n = m
	}
}

// desired is what an endpoint asks of each of its values.
type desired struct {
	values []value
	ttl    int // 0: keep (not configured)
	status string
	remark string // the remark to write
}

// want reads an endpoint into its desired values and attributes.
func (s *Server) want(ep *Endpoint) (desired, []error) {
	var d desired
	var errs []error
	typ := strings.ToUpper(ep.RecordType)
	for _, t := range ep.Targets {
		v, err := toValue(typ, t)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		dup := false
		for _, o := range d.values {
			dup = dup || sameValue(endpoint.Record{Type: typ, Value: o.Value, Priority: o.Priority}, v)
		}
		if !dup {
			d.values = append(d.values, v)
		}
	}
	if ep.RecordTTL > 0 {
		d.ttl = int(min(max(ep.RecordTTL, MinTTL), MaxTTL))
	}
	st, _ := ep.Prop(PropStatus)
	d.status, _ = canonicalStatus(st)
	d.remark = s.cfg.Remark
	if rm, ok := ep.Prop(PropRemark); ok {
		if r, err := s.canonicalRemark(rm); err == nil && r != "" {
			d.remark = r
		}
	}
	return d, errs
}

// toEndpoints groups a zone's records by name and type into endpoints.
// A set whose records disagree on TTL reports TTL 0 and on status DISABLE
// (if any is disabled), so that ExternalDNS plans an update that makes
// them agree; a set with differing remarks reports none.
func (s *Server) toEndpoints(zone string, recs []endpoint.Record) []*Endpoint {
	type key struct{ rr, typ string }
	sets := map[key][]endpoint.Record{}
	var keys []key
	for _, r := range recs {
		if !supportedTypes[r.Type] {
			continue
		}
		k := key{strings.ToLower(r.Name), r.Type}
		if _, ok := sets[k]; !ok {
			keys = append(keys, k)
		}
		sets[k] = append(sets[k], r)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].rr != keys[j].rr {
			return keys[i].rr < keys[j].rr
		}
		return keys[i].typ < keys[j].typ
	})
	out := make([]*Endpoint, 0, len(keys))
	for _, k := range keys {
		set := sets[k]
		name := zone
		if k.rr != "@" {
			name = k.rr + "." + zone
		}
		e := &Endpoint{DNSName: name, RecordType: k.typ, RecordTTL: int64(set[0].TTL)}
		status, remark, mixedRemark := StatusEnable, set[0].Remark, false
		for _, r := range set {
			e.Targets = append(e.Targets, toTarget(r))
			if int64(r.TTL) != e.RecordTTL {
				e.RecordTTL = -1
			}
			if strings.EqualFold(r.Status, StatusDisable) {
				status = StatusDisable
			}
			if r.Remark != remark {
				mixedRemark = true
			}
		}
		if e.RecordTTL < 0 {
			e.RecordTTL = 0
		}
		sort.Strings(e.Targets)
		e.ProviderSpecific = []Property{{Name: PropStatus, Value: status}}
		if !mixedRemark && remark != "" && remark != s.cfg.Remark {
			e.ProviderSpecific = append(e.ProviderSpecific, Property{Name: PropRemark, Value: remark})
		}
		out = append(out, e)
	}
	return out
}
