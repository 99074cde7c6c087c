package nodecache_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

// gauge sums the series of a gauge whose labels contain match.
func gauge(t *testing.T, name, match string) (float64, bool) {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total, found := 0.0, false
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.Gauge == nil {
				continue
			}
			labels := ""
			for _, l := range m.GetLabel() {
				labels += l.GetName() + "=" + l.GetValue() + ","
			}
			if strings.Contains(labels, match) {
				total += m.Gauge.GetValue()
				found = true
			}
		}
	}
	return total, found
}

// TestServeStaleOutageBoundsGoroutines: while every upstream is down (a
// black hole: queries are read and never answered, so each refresh waits
// out the timeout), stale entries asked for thousands of times are
// refreshed one at a time each, not once per query: the goroutine count
// stays bounded however many queries come.
func TestServeStaleOutageBoundsGoroutines(t *testing.T) {
	const (
		names   = 20
		workers = 32
		outage  = 10 * time.Second
	)
	var down atomic.Bool
	up := dnstest.NewServer(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if down.Load() {
			return // a black hole
		}
		m := new(dns.Msg)
		m.SetReply(r)
		rr, _ := dns.NewRR(r.Question[0].Name + " 1 IN A 192.0.2.1")
		m.Answer = append(m.Answer, rr)
		w.WriteMsg(m)
	}))
	addr := startCache(t, "nodecache "+up.Addr+" {\n success 1000 1 1\n serve_stale 1h\n }")
	name := func(i int) string { return fmt.Sprintf("stale%d.outage.test.", i) }
	for i := range names {
		if r := ask(t, addr, name(i), dns.TypeA); len(r.Answer) != 1 {
			t.Fatalf("warm-up %s: %v", name(i), r)
		}
	}
	down.Store(true)

	// Ask until the upstream is marked down (each query waits out its
	// timeout, then gets the stale answer).
	deadline := time.Now().Add(30 * time.Second)
	for {
		var wg sync.WaitGroup
		for i := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := new(dns.Msg)
				m.SetQuestion(name(i), dns.TypeA)
				(&dns.Client{Timeout: 8 * time.Second}).Exchange(m, addr)
			}()
		}
		wg.Wait()
		if v, ok := gauge(t, "coredns_nodecache_upstream_healthy", "to="+up.Addr+","); ok && v == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("upstream never marked down")
		}
	}

	base := runtime.NumGoroutine()
	var answered, stale atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &dns.Client{Timeout: 2 * time.Second}
			for i := w; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				m := new(dns.Msg)
				m.SetQuestion(name(i%names), dns.TypeA)
				r, _, err := c.Exchange(m, addr)
				if err != nil {
					continue
				}
				answered.Add(1)
				if len(r.Answer) == 1 && r.Answer[0].Header().Ttl == 30 {
					stale.Add(1)
				}
			}
		}()
	}
	peak := 0
	end := time.Now().Add(outage)
	for time.Now().Before(end) {
		peak = max(peak, runtime.NumGoroutine())
		time.Sleep(20 * time.Millisecond) // sampling interval, not synchronisation
	}
	close(stop)
	wg.Wait()

	t.Logf("%d queries answered in %v (%d stale), goroutines: %d before the load, peak %d",
		answered.Load(), outage, stale.Load(), base, peak)
	if stale.Load() < 1000 {
		t.Fatalf("only %d stale answers in %v: not the load this test is about", stale.Load(), outage)
	}
	// The load's own workers and CoreDNS's goroutines serving them, one
	// refresh per entry, and some slack for the pool's dials and probes.
	if bound := base + 2*workers + 2*names + 100; peak > bound {
		t.Fatalf("%d goroutines at the peak of the outage, want at most %d (%d before the load): refreshes pile up",
			peak, bound, base)
	}
}
