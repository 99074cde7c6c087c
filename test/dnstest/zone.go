package dnstest

import (
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// Zone is an authoritative DNS server on loopback that stands in for the
// cluster zone (as central CoreDNS answers it) and for the outside world:
// names added exist (NODATA for types they lack), others are NXDOMAIN with
// an SOA, names marked failing get SERVFAIL. It counts every question.
type Zone struct {
	Addr string

	mu      sync.Mutex
	records map[string][]dns.RR // lower-case name -> records (none: exists without data)
	fail    map[string]bool
	asked   map[string]int // "name TYPE"
}

// NewZone serves an empty zone until the test ends.
func NewZone(t testing.TB) *Zone {
	t.Helper()
	z := &Zone{records: map[string][]dns.RR{}, fail: map[string]bool{}, asked: map[string]int{}}
	z.Addr = NewServer(t, z).Addr
	return z
}

// Add adds records in presentation format ("www.example.com. 60 IN A
// 192.0.2.1"); a bare name makes the name exist without data.
func (z *Zone) Add(t testing.TB, rrs ...string) {
	t.Helper()
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, s := range rrs {
		f := strings.Fields(s)
		name := strings.ToLower(dns.Fqdn(f[0]))
		if len(f) == 1 {
			if z.records[name] == nil {
				z.records[name] = []dns.RR{}
			}
			continue
		}
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("Zone.Add(%q): %v", s, err)
		}
		z.records[name] = append(z.records[name], rr)
	}
}

// Fail makes the zone answer SERVFAIL for name.
func (z *Zone) Fail(name string) {
	z.mu.Lock()
	z.fail[strings.ToLower(dns.Fqdn(name))] = true
	z.mu.Unlock()
}

// Count is how often name was asked with qtype.
func (z *Zone) Count(name string, qtype uint16) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.asked[strings.ToLower(dns.Fqdn(name))+" "+dns.TypeToString[qtype]]
}

// Total is how many questions the zone was asked.
func (z *Zone) Total() int {
	z.mu.Lock()
	defer z.mu.Unlock()
	n := 0
	for _, c := range z.asked {
		n += c
	}
	return n
}

// ServeDNS implements dns.Handler.
func (z *Zone) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	z.mu.Lock()
	z.asked[name+" "+dns.TypeToString[q.Qtype]]++
	rrs, exists := z.records[name]
	fail := z.fail[name]
	z.mu.Unlock()
	m.Authoritative = true
	soa := &dns.SOA{Hdr: dns.RR_Header{Name: "example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
		Ns: "ns.example.", Mbox: "admin.example.", Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 30}
	switch {
	case fail:
		m.Rcode = dns.RcodeServerFailure
	case !exists:
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, soa)
	default:
		for _, rr := range rrs {
			if rr.Header().Rrtype == q.Qtype {
				c := dns.Copy(rr)
				c.Header().Name = q.Name
				m.Answer = append(m.Answer, c)
			}
		}
		if len(m.Answer) == 0 {
			m.Ns = append(m.Ns, soa)
		}
	}
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), false)
	}
	w.WriteMsg(m)
}
