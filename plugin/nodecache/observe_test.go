package nodecache_test

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/plugin/nodecache"
)

type seen struct {
	name   string
	qtype  uint16
	rcode  int
	source nodecache.Source
	client netip.Addr
}

type recorder struct {
	mu  sync.Mutex
	obs []seen
}

func (r *recorder) Observe(o nodecache.Observation) {
	name, _, err := dns.UnpackDomainName(o.Name, 0)
	if err != nil {
		name = "?"
	}
	r.mu.Lock()
	r.obs = append(r.obs, seen{strings.ToLower(name), o.Qtype, o.Rcode, o.Source, o.Client})
	r.mu.Unlock()
}

func (r *recorder) take() []seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.obs
	r.obs = nil
	return out
}

// TestObserver: every query the fast path receives is observed once, when
// its answer leaves, with the client, the name, the rcode and what
// answered: fast-path hits (cache), fast-path misses (upstream), queries
// the chain serves (a cookie makes one not plain) and their hits; the
// liveness probe is not.
func TestObserver(t *testing.T) {
	rec := &recorder{}
	nodecache.SetObserver(rec)
	defer nodecache.SetObserver(nil)
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr)
	ask(t, addr, "host0.warm.test.", dns.TypeA)
	rec.wait(t, 1)

	cookie := func(m *dns.Msg) {
		m.SetEdns0(1232, false)
		o := m.IsEdns0()
		o.Option = append(o.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	}
	loop := netip.MustParseAddr("127.0.0.1")
	for _, tc := range []struct {
		name   string
		qname  string
		qtype  uint16
		mut    []func(*dns.Msg)
		rcode  int
		source nodecache.Source
	}{
		{"fast-path miss", "Host1.Obs.Test.", dns.TypeA, nil, dns.RcodeSuccess, nodecache.SourceUpstream},
		{"fast-path hit", "host1.obs.test.", dns.TypeA, nil, dns.RcodeSuccess, nodecache.SourceCache},
		{"nxdomain miss", "nope.obs.test.", dns.TypeA, nil, dns.RcodeNameError, nodecache.SourceUpstream},
		{"nxdomain hit", "nope.obs.test.", dns.TypeA, nil, dns.RcodeNameError, nodecache.SourceCache},
		{"chain miss", "host2.obs.test.", dns.TypeA, []func(*dns.Msg){cookie}, dns.RcodeSuccess, nodecache.SourceUpstream},
		{"chain hit", "host2.obs.test.", dns.TypeA, []func(*dns.Msg){cookie}, dns.RcodeSuccess, nodecache.SourceCache},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ask(t, addr, tc.qname, tc.qtype, tc.mut...)
			if r.Rcode != tc.rcode {
				t.Fatalf("rcode %s", dns.RcodeToString[r.Rcode])
			}
			// The observation is made right after the reply left.
			got := rec.wait(t, 1)
			want := seen{strings.ToLower(tc.qname), tc.qtype, tc.rcode, tc.source, loop}
			if len(got) != 1 || got[0] != want {
				t.Fatalf("observed %+v, want exactly %+v", got, want)
			}
		})
	}
	// The probe is node-cache's own, not a client's.
	m := new(dns.Msg)
	m.SetQuestion("node-cache-probe.dnsaccel.invalid.", dns.TypeTXT)
	if _, _, err := (&dns.Client{}).Exchange(m, addr); err != nil {
		t.Fatal(err)
	}
	ask(t, addr, "host1.obs.test.", dns.TypeA)
	if got := rec.wait(t, 1); len(got) != 1 || got[0].name != "host1.obs.test." {
		t.Errorf("after the probe and one query, observed %+v", got)
	}
}

// wait returns what was observed once there are at least n observations
// (or after 2 s).
func (r *recorder) wait(t *testing.T, n int) []seen {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		r.mu.Lock()
		k := len(r.obs)
		r.mu.Unlock()
		if k >= n || time.Now().After(deadline) {
			return r.take()
		}
		time.Sleep(time.Millisecond)
	}
}
