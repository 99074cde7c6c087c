package nodecache_test

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	_ "github.com/dnsaccel/dnsaccel/plugin" // directives and plugin set of bin/coredns
	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

// fakeUpstream is a real DNS server on loopback (UDP and TCP) whose answers
// depend on the name asked, and which counts what it is asked.
type fakeUpstream struct {
	addr   string
	srv    *dnstest.Server
	mu     sync.Mutex
	counts map[string]int
	conns  atomic.Int64
}

func startUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{counts: map[string]int{}}
	u.srv = dnstest.NewServer(t, dns.HandlerFunc(u.serve))
	u.addr = u.srv.Addr
	return u
}

func (u *fakeUpstream) stop() { u.srv.Stop() }

func (u *fakeUpstream) count(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.counts[strings.ToLower(name)]
}

func (u *fakeUpstream) serve(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	u.mu.Lock()
	u.counts[name]++
	u.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	m.RecursionAvailable = true
	soa, _ := dns.NewRR("test. 300 IN SOA ns.test. admin.test. 1 3600 600 86400 10")
	switch {
	case strings.HasPrefix(name, "slow."):
		time.Sleep(300 * time.Millisecond)
		fallthrough
	case strings.HasPrefix(name, "host") || strings.HasPrefix(name, "slow."):
		if q.Qtype == dns.TypeA {
			rr, _ := dns.NewRR(fmt.Sprintf("%s 60 IN A 192.0.2.1", q.Name))
			m.Answer = append(m.Answer, rr)
		} else {
			m.Ns = append(m.Ns, soa)
		}
	case strings.HasPrefix(name, "short."):
		rr, _ := dns.NewRR(fmt.Sprintf("%s 1 IN A 192.0.2.2", q.Name))
		m.Answer = append(m.Answer, rr)
	case strings.HasPrefix(name, "big."):
		for i := 0; i < 60; i++ {
			rr, _ := dns.NewRR(fmt.Sprintf("%s 60 IN A 192.0.2.%d", q.Name, i+1))
			m.Answer = append(m.Answer, rr)
		}
	default:
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, soa)
	}
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(4096, o.Do())
	}
	w.WriteMsg(m)
}

// startCache runs CoreDNS in-process with the nodecache block given.
func startCache(t *testing.T, block string) string {
	t.Helper()
	return dnstest.StartCorefile(t, ".:%[1]s {\n  bind 127.0.0.1\n  "+strings.ReplaceAll(block, "%", "%%")+"\n}\n")
}

func ask(t *testing.T, addr, name string, qtype uint16, mutate ...func(*dns.Msg)) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	for _, f := range mutate {
		f(m)
	}
	c := &dns.Client{Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return r
}

func metric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.Counter != nil {
				total += m.Counter.GetValue()
			}
		}
	}
	return total
}

func TestMissThenHit(t *testing.T) {
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr)

	tests := []struct {
		name   string
		ask    string
		rcode  int
		answer int
	}{
		{"positive", "host1.test.", dns.RcodeSuccess, 1},
		{"nxdomain", "nothing.test.", dns.RcodeNameError, 0},
		{"nodata", "host2.test.", dns.RcodeSuccess, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			qtype := dns.TypeA
			if tc.name == "nodata" {
				qtype = dns.TypeAAAA
			}
			first := ask(t, addr, tc.ask, qtype)
			mixed := strings.ToUpper(tc.ask[:3]) + tc.ask[3:]
			second := ask(t, addr, mixed, qtype)
			for _, r := range []*dns.Msg{first, second} {
				if r.Rcode != tc.rcode || len(r.Answer) != tc.answer {
					t.Fatalf("rcode %s answers %d, want %s %d", dns.RcodeToString[r.Rcode], len(r.Answer), dns.RcodeToString[tc.rcode], tc.answer)
				}
			}
			if second.Question[0].Name != mixed {
				t.Errorf("question case not kept: %q, want %q", second.Question[0].Name, mixed)
			}
			if n := up.count(tc.ask); n != 1 {
				t.Errorf("upstream asked %d times, want 1 (second answer from cache)", n)
			}
		})
	}
}

func TestFastPathAnswersHits(t *testing.T) {
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr)
	before := metric(t, "coredns_nodecache_fastpath_hits_total")
	ask(t, addr, "host10.test.", dns.TypeA) // miss: through the chain
	for i := 0; i < 20; i++ {
		r := ask(t, addr, "host10.test.", dns.TypeA, func(m *dns.Msg) { m.Id = uint16(1000 + i) })
		if r.Id != uint16(1000+i) || len(r.Answer) != 1 {
			t.Fatalf("hit %d: id %d answers %d", i, r.Id, len(r.Answer))
		}
	}
	if got := metric(t, "coredns_nodecache_fastpath_hits_total") - before; got < 15 {
		t.Fatalf("fast path answered %v of 20 hits, want nearly all", got)
	}
	if n := up.count("host10.test."); n != 1 {
		t.Fatalf("upstream asked %d times, want 1", n)
	}
}

func TestCoalescing(t *testing.T) {
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr)
	const clients = 1000
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := new(dns.Msg)
			m.SetQuestion("slow.coalesce.test.", dns.TypeA)
			r, _, err := (&dns.Client{Timeout: 5 * time.Second, Net: "tcp"}).Exchange(m, addr)
			if err != nil || len(r.Answer) != 1 {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d clients got no answer", failed.Load(), clients)
	}
	if n := up.count("slow.coalesce.test."); n != 1 {
		t.Fatalf("%d concurrent identical misses caused %d upstream queries, want 1", clients, n)
	}
}

func TestServeStale(t *testing.T) {
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr+" {\n success 100 1 1\n serve_stale 1h\n }")
	if r := ask(t, addr, "host3.test.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("warm-up: %v", r)
	}
	up.stop()
	// Poll until the 1 s entry has expired and the answer is served stale.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := ask(t, addr, "host3.test.", dns.TypeA)
		if len(r.Answer) == 1 && r.Answer[0].Header().Ttl == 30 {
			break // the stale TTL
		}
		if time.Now().After(deadline) {
			t.Fatalf("no stale answer while upstream down: %v", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A name never cached gets SERVFAIL, promptly.
	start := time.Now()
	if r := ask(t, addr, "host4.test.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("uncached name with upstream down: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Fatalf("SERVFAIL took %v", d)
	}
}

func TestTruncationAndTCP(t *testing.T) {
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr)
	for _, round := range []string{"miss", "hit"} {
		r := ask(t, addr, "big.test.", dns.TypeA) // no EDNS: 512-byte limit
		if !r.Truncated {
			t.Fatalf("%s: %d answers in a 512-byte UDP reply, want TC", round, len(r.Answer))
		}
		m := new(dns.Msg)
		m.SetQuestion("big.test.", dns.TypeA)
		tr, _, err := (&dns.Client{Net: "tcp", Timeout: 3 * time.Second}).Exchange(m, addr)
		if err != nil || len(tr.Answer) != 60 {
			t.Fatalf("%s: TCP retry: err %v", round, err)
		}
		// With EDNS 4096 it fits over UDP.
		e := ask(t, addr, "big.test.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(4096, false) })
		if e.Truncated || len(e.Answer) != 60 {
			t.Fatalf("%s: EDNS 4096: truncated %v answers %d", round, e.Truncated, len(e.Answer))
		}
	}
}

func TestTTLDecrements(t *testing.T) {
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr)
	first := ask(t, addr, "host5.test.", dns.TypeA).Answer[0].Header().Ttl
	deadline := time.Now().Add(5 * time.Second)
	for {
		ttl := ask(t, addr, "host5.test.", dns.TypeA).Answer[0].Header().Ttl
		if ttl < first {
			if first-ttl > 2 {
				t.Fatalf("ttl fell from %d to %d", first, ttl)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ttl stuck at %d", ttl)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestMalformedQueriesDoNotHurt(t *testing.T) {
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr)
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, junk := range [][]byte{
		{}, {0}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13},
		{0xAB, 0xCD, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xC0, 0x0C, 0, 1, 0, 1}, // pointer loop
		{0xAB, 0xCD, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 63},                     // label past the end
	} {
		conn.Write(junk)
	}
	if r := ask(t, addr, "host6.test.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("server unwell after junk: %v", r)
	}
}

func TestDig(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig not installed (apt-get install dnsutils)")
	}
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr)
	host, port, _ := net.SplitHostPort(addr)
	for i := 0; i < 2; i++ {
		out, err := exec.Command("dig", "@"+host, "-p", port, "+short", "+tries=1", "host8.test.").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "192.0.2.1" {
			t.Fatalf("dig round %d: %v %q", i, err, out)
		}
	}
	if n := up.count("host8.test."); n != 1 {
		t.Fatalf("upstream asked %d times", n)
	}
}

func TestPrefetch(t *testing.T) {
	up := startUpstream(t)
	// short.* answers have TTL 1: a popular entry is refreshed in the last
	// 100 ms of its life, before it expires, so no client ever misses.
	addr := startCache(t, "nodecache "+up.addr+" {\n success 100 60 1\n prefetch 2 1m 10%\n }")
	ask(t, addr, "short.prefetch.test.", dns.TypeA) // miss
	before := metric(t, "coredns_nodecache_misses_total")
	deadline := time.Now().Add(5 * time.Second)
	for up.count("short.prefetch.test.") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("popular entry not refreshed before expiry: upstream asked %d times", up.count("short.prefetch.test."))
		}
		ask(t, addr, "short.prefetch.test.", dns.TypeA)
		time.Sleep(10 * time.Millisecond)
	}
	if m := metric(t, "coredns_nodecache_misses_total") - before; m != 0 {
		t.Fatalf("%v misses while prefetch should have kept the entry fresh", m)
	}
	// One refresh per entry at a time: a burst of hits does not multiply it.
	for i := 0; i < 50; i++ {
		ask(t, addr, "short.prefetch.test.", dns.TypeA)
	}
	if n := up.count("short.prefetch.test."); n > 4 {
		t.Fatalf("upstream asked %d times for one popular name", n)
	}
}

// TestUpstreamFaults: an upstream that accepts and never answers, or sends
// garbage, costs the client a SERVFAIL within the timeout, and the cache
// keeps working.
func TestUpstreamFaults(t *testing.T) {
	tests := []struct {
		name  string
		serve func(net.Conn)
	}{
		{"hang", func(c net.Conn) {
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}},
		{"garbage", func(c net.Conn) { c.Write([]byte{0, 4, 1, 2, 3, 4, 0xFF, 0xFF, 0xFF}); c.Close() }},
		{"close mid-stream", func(c net.Conn) { buf := make([]byte, 2); c.Read(buf); c.Close() }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go tc.serve(c)
				}
			}()
			addr := startCache(t, "nodecache "+ln.Addr().String())
			start := time.Now()
			m := new(dns.Msg)
			m.SetQuestion("host1.test.", dns.TypeA)
			r, _, err := (&dns.Client{Timeout: 8 * time.Second}).Exchange(m, addr)
			if err != nil {
				t.Fatalf("no answer at all: %v", err)
			}
			if r.Rcode != dns.RcodeServerFailure {
				t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
			}
			if d := time.Since(start); d > 6*time.Second {
				t.Fatalf("SERVFAIL after %v", d)
			}
		})
	}
}
