package nodecache_test

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

const (
	mFastMisses = "coredns_nodecache_fastpath_misses_total"
	mFastPassed = "coredns_nodecache_fastpath_passed_total"
	mFastHits   = "coredns_nodecache_fastpath_hits_total"
)

// delta runs f and returns how much each metric grew meanwhile.
func delta(t *testing.T, f func(), names ...string) []float64 {
	t.Helper()
	before := make([]float64, len(names))
	for i, n := range names {
		before[i] = metric(t, n)
	}
	f()
	out := make([]float64, len(names))
	for i, n := range names {
		out[i] = metric(t, n) - before[i]
	}
	return out
}

// TestFastPathMisses: plain UDP misses are resolved by the fast path itself
// (not handed to the chain), answered with the client's ID, letter case and
// EDNS0, truncated for small buffers, and the entry they leave is a fast
// path hit next time.
func TestFastPathMisses(t *testing.T) {
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr)
	ask(t, addr, "host0.warm.test.", dns.TypeA) // the pipelined connection is open from here on

	tests := []struct {
		name    string
		qname   string
		qtype   uint16
		edns    uint16 // 0: no OPT
		rcode   int
		answers int
		tc      bool
	}{
		{name: "answer", qname: "Host1.Miss.Test.", qtype: dns.TypeA, rcode: dns.RcodeSuccess, answers: 1},
		{name: "answer with EDNS0", qname: "HOST2.miss.test.", qtype: dns.TypeA, edns: 1232, rcode: dns.RcodeSuccess, answers: 1},
		{name: "nxdomain", qname: "nope.Miss.test.", qtype: dns.TypeA, rcode: dns.RcodeNameError},
		{name: "nodata", qname: "host3.miss.test.", qtype: dns.TypeAAAA, rcode: dns.RcodeSuccess},
		{name: "truncated for 512 bytes", qname: "big.miss.test.", qtype: dns.TypeA, rcode: dns.RcodeSuccess, tc: true},
		{name: "large with EDNS0 4096", qname: "big.edns.test.", qtype: dns.TypeA, edns: 4096, rcode: dns.RcodeSuccess, answers: 60},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := uint16(7000 + i)
			q := func(m *dns.Msg) {
				m.Id = id
				if tt.edns != 0 {
					m.SetEdns0(tt.edns, false)
				}
			}
			var r *dns.Msg
			d := delta(t, func() { r = ask(t, addr, tt.qname, tt.qtype, q) }, mFastMisses, mFastPassed)
			if d[0] != 1 || d[1] != 0 {
				t.Errorf("fast path misses +%v, passed to the chain +%v; want +1 and +0", d[0], d[1])
			}
			if r.Id != id || r.Question[0].Name != tt.qname || r.Rcode != tt.rcode || len(r.Answer) != tt.answers || r.Truncated != tt.tc {
				t.Fatalf("reply id %d %q %s, %d answers, TC %v; want id %d %q %s, %d answers, TC %v",
					r.Id, r.Question[0].Name, dns.RcodeToString[r.Rcode], len(r.Answer), r.Truncated,
					id, tt.qname, dns.RcodeToString[tt.rcode], tt.answers, tt.tc)
			}
			if (r.IsEdns0() != nil) != (tt.edns != 0) {
				t.Errorf("OPT in reply %v, in query %v", r.IsEdns0() != nil, tt.edns != 0)
			}
			if tt.rcode == dns.RcodeNameError && len(r.Ns) != 1 {
				t.Errorf("NXDOMAIN without its SOA: %v", r.Ns)
			}
			// Again: a fast-path hit, no second upstream query.
			d = delta(t, func() { r = ask(t, addr, tt.qname, tt.qtype, q) }, mFastHits)
			if d[0] != 1 || len(r.Answer) != tt.answers {
				t.Errorf("second ask: fast path hits +%v with %d answers; want +1 with %d", d[0], len(r.Answer), tt.answers)
			}
			if n := up.count(tt.qname); n != 1 {
				t.Errorf("upstream asked %d times, want 1", n)
			}
		})
	}
}

// TestFastPathMissesCoalesce: 1,000 concurrent identical UDP misses, on
// every fast-path socket, cause one upstream query and all get the answer.
func TestFastPathMissesCoalesce(t *testing.T) {
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr)
	ask(t, addr, "host0.warm.test.", dns.TypeA)
	const clients = 1000
	var failed atomic.Int64
	d := delta(t, func() {
		var wg sync.WaitGroup
		for i := 0; i < clients; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := new(dns.Msg)
				m.SetQuestion("slow.coalesce-udp.test.", dns.TypeA)
				r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, addr)
				if err != nil || len(r.Answer) != 1 || r.Id != m.Id {
					failed.Add(1)
				}
			}()
		}
		wg.Wait()
	}, mFastMisses, "coredns_nodecache_coalesced_total")
	if failed.Load() != 0 {
		t.Fatalf("%d of %d clients got no answer", failed.Load(), clients)
	}
	if n := up.count("slow.coalesce-udp.test."); n != 1 {
		t.Fatalf("%d concurrent identical misses caused %d upstream queries, want 1", clients, n)
	}
	// Those that arrive while the query is out wait on the fast path, all
	// but the first on its flight; later ones are hits.
	if d[0] < clients/10 || d[1] != d[0]-1 {
		t.Errorf("fast path misses +%v, coalesced +%v: want many, all but one coalesced", d[0], d[1])
	}
}

// TestFastPathMissRoutes: a miss skips the chain only where the server's
// mux would pick a nodecache block with nothing in front of it; names of
// other blocks on the same listener, blocks with plugins in front, and DS
// queries go through the chain.
func TestFastPathMissRoutes(t *testing.T) {
	up := startUpstream(t)
	addr := dnstest.StartCorefile(t, `.:%[1]s {
  bind 127.0.0.1
  nodecache `+up.addr+`
}
other.test:%[1]s {
  bind 127.0.0.1
  template IN A other.test {
    answer "{{ .Name }} 60 IN A 198.51.100.7"
  }
}
logged.test:%[1]s {
  bind 127.0.0.1
  rewrite name suffix .logged.test. .logged.test.
  nodecache `+up.addr+`
}
`)
	ask(t, addr, "host0.warm.test.", dns.TypeA)
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		async  bool
		answer string // the A record expected, "" for none
	}{
		{name: "root block", qname: "host1.anywhere.test.", qtype: dns.TypeA, async: true, answer: "192.0.2.1"},
		{name: "other block's zone", qname: "host2.other.test.", qtype: dns.TypeA, answer: "198.51.100.7"},
		{name: "other block's apex", qname: "other.test.", qtype: dns.TypeA, answer: "198.51.100.7"},
		{name: "block with a plugin in front", qname: "host3.logged.test.", qtype: dns.TypeA, answer: "192.0.2.1"},
		{name: "DS", qname: "host4.anywhere.test.", qtype: dns.TypeDS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r *dns.Msg
			d := delta(t, func() { r = ask(t, addr, tt.qname, tt.qtype) }, mFastMisses, mFastPassed)
			if tt.async && (d[0] != 1 || d[1] != 0) || !tt.async && (d[0] != 0 || d[1] != 1) {
				t.Errorf("fast path misses +%v, passed to the chain +%v; async %v", d[0], d[1], tt.async)
			}
			got := ""
			for _, rr := range r.Answer {
				if a, ok := rr.(*dns.A); ok {
					got = a.A.String()
				}
			}
			if got != tt.answer {
				t.Errorf("answer %q, want %q:\n%v", got, tt.answer, r)
			}
		})
	}
	if n := up.count("host2.other.test."); n != 0 {
		t.Errorf("the upstream was asked %d times for a name of the template block", n)
	}
}

// TestFastPathMissUpstreamDown: async misses get SERVFAIL within the
// timeout when the upstream stops answering, and nothing is left waiting.
func TestFastPathMissUpstreamDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var hang atomic.Bool
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					var hdr [2]byte
					if _, err := c.Read(hdr[:]); err != nil {
						return
					}
					b := make([]byte, int(hdr[0])<<8|int(hdr[1]))
					if _, err := readFull(c, b); err != nil {
						return
					}
					if hang.Load() {
						continue
					}
					m := new(dns.Msg)
					if m.Unpack(b) != nil {
						return
					}
					r := new(dns.Msg)
					r.SetReply(m)
					rr, _ := dns.NewRR(m.Question[0].Name + " 60 IN A 192.0.2.9")
					r.Answer = append(r.Answer, rr)
					out, _ := r.Pack()
					c.Write(append([]byte{byte(len(out) >> 8), byte(len(out))}, out...))
				}
			}()
		}
	}()
	addr := startCache(t, "nodecache "+ln.Addr().String())
	if r := ask(t, addr, "up.test.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("warm-up: %v", r)
	}
	hang.Store(true)
	for i := range 3 {
		name := fmt.Sprintf("down%d.test.", i)
		start := time.Now()
		m := new(dns.Msg)
		m.SetQuestion(strings.ToUpper(name), dns.TypeA)
		m.SetEdns0(1232, true)
		r, _, err := (&dns.Client{Timeout: 8 * time.Second}).Exchange(m, addr)
		if err != nil {
			t.Fatalf("%s: no answer at all: %v", name, err)
		}
		if r.Rcode != dns.RcodeServerFailure || r.Id != m.Id || r.Question[0].Name != m.Question[0].Name || r.IsEdns0() == nil || !r.IsEdns0().Do() {
			t.Fatalf("%s: got\n%v\nwant SERVFAIL echoing the query", name, r)
		}
		if d := time.Since(start); d > 6*time.Second {
			t.Fatalf("%s: SERVFAIL after %v", name, d)
		}
	}
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
