package nodecache_test

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

// bigUpstream answers TXT questions with about size bytes of TXT records
// (different for every name), and counts the questions.
type bigUpstream struct {
	addr string
	mu   sync.Mutex
	seen map[string]int
}

func startBigUpstream(t *testing.T, size int) *bigUpstream {
	u := &bigUpstream{seen: map[string]int{}}
	u.addr = dnstest.NewServer(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		name := strings.ToLower(r.Question[0].Name)
		u.mu.Lock()
		u.seen[name]++
		u.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(r)
		fill := strings.Repeat(name, 250/len(name)+1)[:250]
		for n := 0; n < size; {
			txt := &dns.TXT{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 3600}}
			for i := 0; i < 40 && n < size; i++ {
				txt.Txt = append(txt.Txt, fmt.Sprintf("%04d%s", len(m.Answer)*40+i, fill[4:]))
				n += 251
			}
			m.Answer = append(m.Answer, txt)
		}
		if err := w.WriteMsg(m); err != nil {
			t.Errorf("upstream: %v", err)
		}
	})).Addr
	return u
}

func (u *bigUpstream) count(name string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[name]
}

func askTCP(t *testing.T, addr, name string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeTXT)
	r, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		t.Fatalf("query %s: %s with %d records", name, dns.RcodeToString[r.Rcode], len(r.Answer))
	}
	return r
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// rss is the process's resident set after returning what it can to the
// OS, in bytes.
func rss(t *testing.T) int64 {
	debug.FreeOSMemory()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// TestMaxBytes: big answers (60 KB TXT over TCP, as any pod may ask for)
// fill the byte budget, not the memory: the accounted bytes never pass
// max_bytes, least recently used entries go first, the heap (and, without
// the race detector's shadow memory, the RSS) stays bounded, and an answer
// larger than the whole budget is served but not kept.
func TestMaxBytes(t *testing.T) {
	const answer = 60 << 10
	t.Run("bounded", func(t *testing.T) {
		const (
			budget = 2 << 20
			names  = 600 // 36 MB of answers: ample room in the entry capacity
		)
		up := startBigUpstream(t, answer)
		addr := startCache(t, fmt.Sprintf("nodecache %s {\n max_bytes %dK\n }", up.addr, budget>>10))
		name := func(i int) string { return fmt.Sprintf("big%d.bytes.test.", i) }
		evicted := metricWithLabel(t, "coredns_nodecache_evictions_total", "reason=bytes")
		heap0, rss0 := liveHeap(), rss(t)

		peak := 0.0
		for i := range names {
			askTCP(t, addr, name(i))
			if i%20 == 19 {
				b, ok := gauge(t, "coredns_nodecache_bytes", "")
				if !ok {
					t.Fatal("no coredns_nodecache_bytes gauge")
				}
				if b > budget {
					t.Fatalf("after %d answers of %d bytes: %v bytes cached, over max_bytes %d", i+1, answer, b, budget)
				}
				peak = max(peak, b)
			}
		}
		heap1, rss1 := liveHeap(), rss(t)
		t.Logf("cached bytes at most %v of %d; live heap %d -> %d, RSS %d -> %d", peak, budget, heap0, heap1, rss0, rss1)
		if peak < budget/2 {
			t.Errorf("at most %v bytes accounted for the cache: answers of %d bytes are not counted", peak, answer)
		}
		if got := metricWithLabel(t, "coredns_nodecache_evictions_total", "reason=bytes") - evicted; got == 0 {
			t.Error("no evictions counted with reason bytes")
		}
		// The live heap grows by the budget and bookkeeping, not by the
		// 36 MB of answers that went through.
		if grew := int64(heap1) - int64(heap0); grew > budget+8<<20 {
			t.Errorf("live heap grew by %d bytes, want at most the budget (%d) and 8 MiB", grew, budget)
		}
		if !raceEnabled {
			if grew := rss1 - rss0; grew > budget+24<<20 {
				t.Errorf("RSS grew by %d bytes, want at most the budget (%d) and 24 MiB", grew, budget)
			}
		}
		// Least recently used first: the last answers are still cached,
		// the first are not.
		askTCP(t, addr, name(names-1))
		if n := up.count(name(names - 1)); n != 1 {
			t.Errorf("the last name was asked upstream %d times, want 1 (still cached)", n)
		}
		askTCP(t, addr, name(0))
		if n := up.count(name(0)); n != 2 {
			t.Errorf("the first name was asked upstream %d times, want 2 (evicted)", n)
		}
	})
	t.Run("larger than the budget", func(t *testing.T) {
		up := startBigUpstream(t, answer)
		addr := startCache(t, "nodecache "+up.addr+" {\n max_bytes 32K\n }")
		for range 2 {
			if r := askTCP(t, addr, "huge.bytes.test."); r.Len() < answer {
				t.Fatalf("answer of %d bytes, want the whole %d", r.Len(), answer)
			}
		}
		if n := up.count("huge.bytes.test."); n != 2 {
			t.Errorf("an answer larger than max_bytes asked upstream %d times, want 2 (never cached)", n)
		}
		if b, _ := gauge(t, "coredns_nodecache_bytes", ""); b > 32<<10 {
			t.Errorf("%v bytes cached, over max_bytes 32K", b)
		}
	})
}

// metricWithLabel sums the counter series of name whose labels contain
// match ("name=value").
func metricWithLabel(t *testing.T, name, match string) float64 {
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
			for _, l := range m.GetLabel() {
				if l.GetName()+"="+l.GetValue() == match && m.Counter != nil {
					total += m.Counter.GetValue()
				}
			}
		}
	}
	return total
}
