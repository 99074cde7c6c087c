package k8sautopath

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzExpand: any query name either is not expandable, or splits into a
// base and namespace that rebuild it, with the literal name first and the
// bare name last among the candidates.
func FuzzExpand(f *testing.F) {
	for _, s := range []string{
		"www.example.com.default.svc.cluster.local.", "web.default.svc.cluster.local.",
		"default.svc.cluster.local.", "svc.cluster.local.", ".svc.cluster.local.", "a..svc.cluster.local.",
		"A.B.SVC.Cluster.Local.", "example.com.", "", ".",
	} {
		f.Add(s)
	}
	a := &Autopath{zone: "cluster.local.", svc: "svc.cluster.local.", search: []string{"corp.example."}}
	f.Fuzz(func(t *testing.T, qname string) {
		low := strings.ToLower(qname)
		base, ns, ok := a.split(low)
		if a.FastPathOK(qname, dns.TypeA, dns.RcodeNameError) == ok {
			t.Fatalf("FastPathOK disagrees with split for %q", qname)
		}
		if !ok {
			return
		}
		if base == "" || ns == "" || strings.Contains(ns, ".") || base+"."+ns+"."+a.svc != low {
			t.Fatalf("split(%q) = %q, %q", low, base, ns)
		}
		c := a.candidates(qname, base, ns)
		if len(c) != 5 || c[0] != qname || c[len(c)-1] != base+"." || c[3] != base+".corp.example." {
			t.Fatalf("candidates(%q) = %q", qname, c)
		}
	})
}

// FuzzCNAME: synthesizing the answer from any parsable reply never panics
// and packs again.
func FuzzCNAME(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("www.example.com.", dns.TypeA)
	rr, _ := dns.NewRR("www.example.com. 60 IN A 192.0.2.1")
	m.Answer = append(m.Answer, rr)
	b, _ := m.Pack()
	f.Add(b)
	m.Answer = nil
	soa, _ := dns.NewRR("example.com. 60 IN SOA ns. admin. 1 2 3 4 5")
	m.Ns = append(m.Ns, soa)
	b, _ = m.Pack()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		m := new(dns.Msg)
		if m.Unpack(data) != nil {
			return
		}
		out := cnameTo(m, "www.example.com.default.svc.cluster.local.", "www.example.com.")
		if c, ok := out.Answer[0].(*dns.CNAME); !ok || c.Target != "www.example.com." || len(out.Answer) != len(m.Answer)+1 {
			t.Fatalf("no leading CNAME: %v", out.Answer)
		}
		if _, err := out.Pack(); err != nil && len(m.Answer) > 0 {
			if _, err2 := m.Pack(); err2 == nil {
				t.Fatalf("the input packs but the synthesized answer does not: %v", err)
			}
		}
	})
}
