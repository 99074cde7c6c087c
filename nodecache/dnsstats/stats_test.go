package dnsstats

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

type podMap map[netip.Addr]Pod

func (m podMap) LookupPod(ip netip.Addr) (Pod, bool) {
	p, ok := m[ip]
	return p, ok
}

func wire(t testing.TB, name string) []byte {
	t.Helper()
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(dns.Fqdn(name), buf, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

var (
	ipA = netip.MustParseAddr("169.254.31.2")
	ipB = netip.MustParseAddr("169.254.31.3")
	ipC = netip.MustParseAddr("169.254.31.4") // not a pod
)

func testStats(cfg Config) *Stats {
	if cfg.Pods == nil {
		cfg.Pods = podMap{ipA: {"team-a", "web-1"}, ipB: {"team-b", "api-1"}}
	}
	return New(cfg)
}

func find(t *testing.T, rows []PodCounters, ns, name string) Counters {
	t.Helper()
	for _, r := range rows {
		if r.Namespace == ns && r.Name == name {
			return r.Counters
		}
	}
	t.Fatalf("no row %s/%s in %+v", ns, name, rows)
	return Counters{}
}

// TestRecordExact: a known mix of events gives exact per-pod and
// per-namespace counters, search-path waste included.
func TestRecordExact(t *testing.T) {
	s := testStats(Config{NodeSearch: []string{"corp.example"}})
	ev := func(ip netip.Addr, name string, rcode int, by By, lat time.Duration) {
		s.Record(Event{Client: ip, Name: wire(t, name), Qtype: dns.TypeA, Rcode: rcode, By: by, Latency: lat})
	}
	for range 5 {
		ev(ipA, "Web.Team-A.svc.cluster.local", 0, ByCache, 30*time.Microsecond)
	}
	ev(ipA, "example.com", 0, ByUpstream, 3*time.Millisecond)
	// glibc's walk for example.org from team-a: 4 wasted candidates.
	ev(ipA, "example.org.team-a.svc.cluster.local", 3, ByUpstream, time.Millisecond)
	ev(ipA, "example.org.svc.cluster.local", 3, ByCache, time.Millisecond)
	ev(ipA, "example.org.cluster.local", 3, ByCache, time.Millisecond)
	ev(ipA, "example.org.corp.example", 3, ByUpstream, time.Millisecond)
	// Not waste: the name itself does not exist. Waste (an upper bound):
	// a missing Service of another namespace, under svc.cluster.local.
	ev(ipA, "nowhere.example", 3, ByUpstream, time.Millisecond)
	ev(ipA, "x.team-b.svc.cluster.local", 3, ByCache, time.Millisecond)
	s.Record(Event{Client: ipA, Name: wire(t, "slow.example"), Qtype: dns.TypeA, By: ByNone, Timeout: true})
	s.Record(Event{Client: ipB, Name: wire(t, "slow.example"), Qtype: dns.TypeA, Rcode: 2, By: ByUpstream, Timeout: true, Latency: 5 * time.Second})
	s.AddKernel(ipA, 7, 2, 0)
	s.AddKernel(netip.MustParseAddr("::ffff:169.254.31.3"), 1, 0, 0) // v4-mapped: the same client
	ev(ipC, "node.example", 0, ByCache, time.Microsecond)

	snap := s.Snapshot()
	a := find(t, snap.Pods, "team-a", "web-1")
	if a.Queries != 5+1+4+2+1+9 {
		t.Errorf("team-a/web-1 queries %d, want 22", a.Queries)
	}
	if want := [nBy]uint64{9, 8, 4, 1}; a.By != want {
		t.Errorf("team-a/web-1 by %v, want %v", a.By, want)
	}
	if a.Rcodes[0] != 5+1+7 || a.Rcodes[3] != 6+2 {
		t.Errorf("team-a/web-1 rcodes %v", a.Rcodes)
	}
	if a.SearchWaste != 5 {
		t.Errorf("team-a/web-1 search waste %d, want 5", a.SearchWaste)
	}
	if a.Timeouts != 1 {
		t.Errorf("team-a/web-1 timeouts %d, want 1", a.Timeouts)
	}
	if a.Answered() != 12 || a.Latency[0] != 5 {
		t.Errorf("team-a/web-1 latency histogram %v", a.Latency)
	}
	b := find(t, snap.Pods, "team-b", "api-1")
	if b.Queries != 2 || b.By[ByKernel] != 1 || b.Timeouts != 1 || b.Rcodes[2] != 1 || b.Latency[nBuckets] != 1 {
		t.Errorf("team-b/api-1: %+v", b)
	}
	c := find(t, snap.Pods, "", ipC.String())
	if c.Queries != 1 {
		t.Errorf("client outside any pod: %+v", c)
	}
	if ns := find(t, snap.Namespaces, "team-a", ""); ns.Queries != a.Queries {
		t.Errorf("namespace team-a %d queries, want %d", ns.Queries, a.Queries)
	}
	if snap.Pods[0].Name != "web-1" {
		t.Errorf("top pod %+v, want web-1", snap.Pods[0].Pod)
	}
	if snap.Names[0].Name != "web.team-a.svc.cluster.local." || snap.Names[0].Queries != 5 {
		t.Errorf("top name %+v (letter case folded)", snap.Names[0])
	}
	if snap.NameTotal != 15 {
		t.Errorf("names total %d, want 15 (kernel answers have no name)", snap.NameTotal)
	}
}

// TestBounded: 10,000 pods and 10,000 names, with a few heavy hitters:
// memory stays within the configured slots, the heavy hitters are found,
// and a scrape never has more than MaxSeries series.
func TestBounded(t *testing.T) {
	pods := podMap{}
	ips := make([]netip.Addr, 10000)
	for i := range ips {
		ips[i] = netip.AddrFrom4([4]byte{10, 77, byte(i >> 8), byte(i)})
		pods[ips[i]] = Pod{Namespace: fmt.Sprintf("ns-%d", i%500), Name: fmt.Sprintf("pod-%d", i)}
	}
	for _, tc := range []struct {
		topK, maxSeries, maxClients int
	}{
		{50, 5000, 16384},
		{10000, 5000, 16384}, // K larger than the cap allows
		{50, 1000, 2000},     // fewer client slots than clients
	} {
		t.Run(fmt.Sprintf("k%d-series%d-clients%d", tc.topK, tc.maxSeries, tc.maxClients), func(t *testing.T) {
			s := New(Config{TopK: tc.topK, MaxSeries: tc.maxSeries, MaxClients: tc.maxClients, Pods: pods})
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			name := make([][]byte, 10000)
			for i := range name {
				name[i] = wire(t, fmt.Sprintf("n%d.example.com", i))
			}
			heavy := wire(t, "heavy.example.com")
			total := 0
			for round := 0; round < 3; round++ {
				for i, ip := range ips {
					s.Record(Event{Client: ip, Name: name[i], Qtype: 1, By: ByCache})
					total++
					if i%100 == 0 {
						for range 20 {
							s.Record(Event{Client: ips[7], Name: heavy, Qtype: 1, By: ByCache})
							total++
						}
					}
				}
			}
			var after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&after)
			t.Logf("accounting of 10,000 clients and 10,000 names: %d KiB heap", (int64(after.HeapAlloc)-int64(before.HeapAlloc))/1024)

			snap := s.Snapshot()
			if snap.Clients > tc.maxClients+clientShards {
				t.Errorf("%d clients counted apart, bound %d", snap.Clients, tc.maxClients)
			}
			if len(snap.Names) > s.cfg.NameSlots+nameShards {
				t.Errorf("%d name counters, bound %d", len(snap.Names), s.cfg.NameSlots)
			}
			if snap.Names[0].Name != "heavy.example.com." || snap.Names[0].Queries < 3*100*20 {
				t.Errorf("heaviest name %+v, want heavy.example.com. with at least 6000", snap.Names[0])
			}
			var sum uint64
			for _, p := range snap.Pods {
				sum += p.Queries
			}
			sum += snap.Overflow.Queries
			if sum != uint64(total) {
				t.Errorf("pods and overflow sum to %d queries, want %d", sum, total)
			}

			series, queries := scrapeSeries(t, s)
			if series > tc.maxSeries {
				t.Errorf("%d series in one scrape, cap %d", series, tc.maxSeries)
			}
			if queries != float64(total) {
				t.Errorf("pod_queries_total sums to %v, want %d (the rest summed as other)", queries, total)
			}
		})
	}
}

// scrapeSeries counts the series of one collection and sums
// dnsaccel_nodecache_pod_queries_total.
func scrapeSeries(t *testing.T, s *Stats) (int, float64) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(s.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var q float64
	seen := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			key := mf.GetName() + labelString(m)
			if seen[key] {
				t.Errorf("duplicate series %s", key)
			}
			seen[key] = true
			if h := m.GetHistogram(); h != nil {
				n += len(h.Bucket) + 3
			} else {
				n++
			}
			if mf.GetName() == "dnsaccel_nodecache_pod_queries_total" {
				q += m.GetCounter().GetValue()
			}
		}
	}
	return n, q
}

func labelString(m *dto.Metric) string {
	var b strings.Builder
	for _, l := range m.Label {
		fmt.Fprintf(&b, ",%s=%q", l.GetName(), l.GetValue())
	}
	return b.String()
}

func TestCollectorOther(t *testing.T) {
	s := testStats(Config{TopK: 1})
	s.Record(Event{Client: ipA, Name: wire(t, "a.example"), By: ByCache})
	s.Record(Event{Client: ipA, Name: wire(t, "a.example"), By: ByCache})
	s.Record(Event{Client: ipB, Name: wire(t, "b.example"), By: ByKernel})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			if m.Counter != nil && m.GetCounter().GetValue() != 0 {
				got[mf.GetName()+labelString(m)] = m.GetCounter().GetValue()
			}
		}
	}
	want := map[string]float64{
		`dnsaccel_nodecache_pod_queries_total,answered_by="cache",namespace="team-a",pod="web-1"`: 2,
		`dnsaccel_nodecache_pod_queries_total,answered_by="kernel",namespace="",pod="other"`:      1,
		`dnsaccel_nodecache_pod_responses_total,namespace="team-a",pod="web-1",rcode="NOERROR"`:   2,
		`dnsaccel_nodecache_pod_responses_total,namespace="",pod="other",rcode="NOERROR"`:         1,
		`dnsaccel_nodecache_namespace_queries_total,answered_by="cache",namespace="team-a"`:       2,
		`dnsaccel_nodecache_namespace_queries_total,answered_by="kernel",namespace="other"`:       1,
		`dnsaccel_nodecache_namespace_responses_total,namespace="team-a",rcode="NOERROR"`:         2,
		`dnsaccel_nodecache_namespace_responses_total,namespace="other",rcode="NOERROR"`:          1,
		`dnsaccel_nodecache_name_queries_total,name="a.example."`:                                 2,
		`dnsaccel_nodecache_name_queries_total,name="other"`:                                      1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected %s = %v", k, got[k])
		}
	}
}

func TestSearchWaste(t *testing.T) {
	sd := newSearchDomains("cluster.local.", []string{"corp.example", "."})
	for _, tc := range []struct {
		name, ns string
		want     bool
	}{
		{"google.com.default.svc.cluster.local", "default", true},
		{"google.com.svc.cluster.local", "default", true},
		{"google.com.cluster.local", "default", true},
		{"google.com.corp.example", "default", true},
		{"web.default.svc.cluster.local", "default", true},
		{"web.other.svc.cluster.local", "default", true}, // under svc.cluster.local
		{"svc.cluster.local", "default", true},           // "svc" + the cluster domain
		{"cluster.local", "default", false},
		{"corp.example", "default", false},
		{"google.com", "default", false},
		{"google.com.default.svc.cluster.local", "", false},
		{"a.cluster.local.evil", "default", false},
	} {
		if got := sd.wasted(wire(t, tc.name), tc.ns); got != tc.want {
			t.Errorf("wasted(%s, ns %q) = %v, want %v", tc.name, tc.ns, got, tc.want)
		}
	}
}

func TestQuantile(t *testing.T) {
	var c Counters
	c.Latency[0] = 50 // <= 100µs
	c.Latency[3] = 50 // 500µs..1ms
	if q := c.Quantile(0.5); q > 100*time.Microsecond {
		t.Errorf("p50 %s", q)
	}
	if q := c.Quantile(0.99); q < 500*time.Microsecond || q > time.Millisecond {
		t.Errorf("p99 %s", q)
	}
}

// TestQueryLog: only the selected pod's (namespace's) queries, sampled,
// rate limited, followed, off after its duration.
func TestQueryLog(t *testing.T) {
	s := testStats(Config{})
	rec := func(ip netip.Addr, name string) {
		s.Record(Event{Client: ip, Name: wire(t, name), Qtype: dns.TypeAAAA, By: ByCache, Latency: 42 * time.Microsecond})
	}
	rec(ipA, "before.example") // log off: nothing
	if s.Log() != nil {
		t.Fatal("log on by default")
	}
	if _, err := s.StartLog(LogSelection{}, 100); err == nil {
		t.Fatal("a selection without namespace was accepted")
	}
	l, err := s.StartLog(LogSelection{Namespace: "team-a", Pod: "web-1"}, 100)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var followed []string
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Follow(ctx, true, func(b []byte) error {
			mu.Lock()
			followed = append(followed, string(b))
			mu.Unlock()
			return nil
		})
	}()
	for i := range 3 {
		rec(ipA, fmt.Sprintf("q%d.example", i))
		rec(ipB, "not-me.example")
		rec(ipC, "not-me.example")
	}
	lines := l.Lines()
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3:\n%s", len(lines), lines)
	}
	var ll LogLine
	if err := json.Unmarshal(lines[0], &ll); err != nil {
		t.Fatal(err)
	}
	if ll.Namespace != "team-a" || ll.Pod != "web-1" || ll.Name != "q0.example." || ll.Type != "AAAA" ||
		ll.Rcode != "NOERROR" || ll.AnsweredBy != "cache" || ll.LatencyUS != 42 || ll.Client != ipA.String() {
		t.Errorf("line %s", lines[0])
	}
	waitUntil(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(followed) == 3 })
	cancel()
	<-done

	// Rate limit: 1000 queries at once, 100 a second allowed.
	for range 1000 {
		rec(ipA, "burst.example")
	}
	st := l.Status()
	if st.Logged > 3+100+5 || st.Dropped < 1000-105 {
		t.Errorf("rate limit 100/s: logged %d, dropped %d", st.Logged, st.Dropped)
	}

	// A namespace, one in 10.
	l2, _ := s.StartLog(LogSelection{Namespace: "team-b", Sample: 10}, 1000)
	if s.Log() != l2 || len(l.Lines()) == 0 {
		t.Fatal("the new log did not replace the old one")
	}
	for range 100 {
		rec(ipB, "b.example")
		rec(ipA, "a.example")
	}
	if n := len(l2.Lines()); n != 10 {
		t.Errorf("sample 1/10 of 100: %d lines", n)
	}
	s.StopLog()
	if s.Log() != nil {
		t.Error("log still on after StopLog")
	}

	// Duration.
	l3, _ := s.StartLog(LogSelection{Namespace: "team-b", Duration: time.Millisecond}, 10)
	time.Sleep(5 * time.Millisecond)
	rec(ipB, "late.example")
	if len(l3.Lines()) != 0 || s.Log() != nil {
		t.Error("log still on past its duration")
	}
}

func waitUntil(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWireToText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "."},
		{"\x00", "."},
		{"\x03www\x07example\x03com\x00", "www.example.com."},
		{"\x01a\x04b.c \x00", "a.b\\046c\\032."},
		{"\x05ab", ""}, // truncated: nothing readable
	} {
		got := wireToText(tc.in)
		if tc.want == "" {
			tc.want = "."
		}
		if got != tc.want {
			t.Errorf("wireToText(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// FuzzRecord feeds arbitrary wire names (the fast path hands over what the
// client sent) through the accounting, the search-path check, the name
// counters, the query log and the snapshot: no panic, names come back in
// presentation form.
func FuzzRecord(f *testing.F) {
	f.Add([]byte("\x03www\x07example\x03com\x00"), uint16(1), 3)
	f.Add([]byte("\x06google\x03com\x07default\x03svc\x07cluster\x05local\x00"), uint16(28), 3)
	f.Add([]byte("\xff\xff\xff"), uint16(0), -1)
	f.Add([]byte{}, uint16(65535), 99)
	f.Fuzz(func(t *testing.T, name []byte, qtype uint16, rcode int) {
		s := testStats(Config{NodeSearch: []string{"corp.example"}, NameSlots: 16})
		s.StartLog(LogSelection{Namespace: "team-a"}, 1000)
		for i := range 3 {
			s.Record(Event{Client: ipA, Name: name, Qtype: qtype, Rcode: rcode, By: By(i)})
		}
		snap := s.Snapshot()
		for _, n := range snap.Names {
			if !strings.HasSuffix(n.Name, ".") {
				t.Errorf("name %q not fully qualified", n.Name)
			}
		}
		for _, b := range s.Log().Lines() {
			var ll LogLine
			if err := json.Unmarshal(b, &ll); err != nil {
				t.Errorf("log line %q: %v", b, err)
			}
		}
	})
}

func BenchmarkRecord(b *testing.B) {
	s := testStats(Config{})
	name := wire(b, "web.team-a.svc.cluster.local")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.Record(Event{Client: ipA, Name: name, Qtype: 1, By: ByCache, Latency: 20 * time.Microsecond})
		}
	})
}
