package nodecache_test

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/plugin/nodecache"
)

// TestProbe: the liveness probe name is answered by nodecache itself over
// UDP (through the fast path's socket and the chain) and TCP, in any letter
// case, every time through the chain (never cached, never a fast-path
// hit, not counted as a passed query), and never asked upstream; the
// fast-path threads are not stalled.
func TestProbe(t *testing.T) {
	up := startUpstream(t)
	addr := startCache(t, "nodecache "+up.addr)
	hits := metric(t, "coredns_nodecache_fastpath_hits_total")
	passed := metric(t, "coredns_nodecache_fastpath_passed_total")
	const n = 10
	for i := 0; i < n; i++ {
		for _, proto := range []string{"udp", "tcp"} {
			name := nodecache.ProbeName
			if i%2 == 1 {
				name = strings.ToUpper(name)
			}
			m := new(dns.Msg)
			m.SetQuestion(name, dns.TypeTXT)
			r, _, err := (&dns.Client{Net: proto, Timeout: 3 * time.Second}).Exchange(m, addr)
			if err != nil {
				t.Fatalf("probe %d over %s: %v", i, proto, err)
			}
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].Header().Name != name {
				t.Fatalf("probe %d over %s: %v", i, proto, r)
			}
			if txt, ok := r.Answer[0].(*dns.TXT); !ok || len(txt.Txt) != 1 || txt.Txt[0] != nodecache.ProbeAnswer {
				t.Fatalf("probe %d over %s: answer %v", i, proto, r.Answer[0])
			}
		}
	}
	if got := up.count(nodecache.ProbeName); got != 0 {
		t.Errorf("upstream asked for the probe %d times, want 0", got)
	}
	if got := metric(t, "coredns_nodecache_fastpath_hits_total") - hits; got != 0 {
		t.Errorf("the fast path answered %v probes from the cache, want 0 (never cached)", got)
	}
	// The chain answered every UDP probe (no hit, the probe's own TXT), and
	// the fast path did not count them as pods' queries it passed on.
	if got := metric(t, "coredns_nodecache_fastpath_passed_total") - passed; got != 0 {
		t.Errorf("the fast path counted %v probes as passed queries, want 0 (node-cache's own probes are not pods' queries)", got)
	}
	if stalled := nodecache.FastPathStalled(time.Second); len(stalled) != 0 {
		t.Errorf("fast-path threads stalled on %v", stalled)
	}
}
