package k8sautopath

import (
	"errors"

	"github.com/miekg/dns"
)

var errNoAnswer = errors.New("no answer from the rest of the chain")

// cnameTo turns the answer for search candidate target into the answer for
// the name the client asked, qname: a CNAME qname -> target in front of
// target's records. For NODATA the CNAME stands alone with target's SOA,
// so the client learns the name exists (the same candidate wins for A and
// AAAA) and stops searching.
func cnameTo(m *dns.Msg, qname, target string) *dns.Msg {
	out := m.Copy()
	cname := &dns.CNAME{
		Hdr:    dns.RR_Header{Name: qname, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: answerTTL(m)},
		Target: target,
	}
	out.Answer = append([]dns.RR{cname}, out.Answer...)
	out.Authoritative = false // the CNAME is ours, not the zone's
	return out
}

// answerTTL is how long the synthesized CNAME may be cached: no longer than
// what it points to.
func answerTTL(m *dns.Msg) uint32 {
	const fallback = 5
	ttl, found := uint32(0), false
	for _, rr := range m.Answer {
		if t := rr.Header().Ttl; !found || t < ttl {
			ttl, found = t, true
		}
	}
	if found {
		return ttl
	}
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl)
		}
	}
	return fallback
}
