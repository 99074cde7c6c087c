package policy

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// BenchmarkDecide: the per-packet cost (BPF_PROG_TEST_RUN, 1 repeat = one
// packet of a new flow decided by the rules, then of a tracked flow) with
// N policies' rules in the map: it must not grow with N.
func BenchmarkDecide(b *testing.B) {
	for _, n := range []int{0, 10, 1000, 10000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			d := openTest(b)
			setup(b, d)
			// n other endpoints with a rule each, and n rules of the
			// benchmarked endpoint for other peers.
			rules := []Rule{{Policy: 1, Dir: Egress, Peers: []Peer{{Identity: peerIdentity}}, Ports: []PortRange{{Proto: TCP, Port: 80}}}}
			for i := range n {
				rules = append(rules, Rule{Policy: uint32(i + 10), Dir: Egress, Peers: []Peer{{Identity: Identity(1000 + i)}}, Ports: []PortRange{{Proto: TCP, Port: uint16(1000 + i%5000)}}})
			}
			t0 := time.Now()
			if err := d.SetRules(1, rules); err != nil {
				b.Fatal(err)
			}
			b.Logf("SetRules with %d rules: %v", len(rules), time.Since(t0))
			f := frame(epAddr, peerAddr, TCP, 40000, 80)
			out := make([]byte, len(f)+256)
			b.ResetTimer()
			ret, dur, err := runRepeat(d.objs.DnsaPolFromPod, f, out, b.N)
			if err != nil {
				b.Fatal(err)
			}
			if ret != actUnspec {
				b.Fatalf("verdict %#x", ret)
			}
			b.ReportMetric(float64(dur.Nanoseconds()), "ns/tracked-packet")
			// A packet no rule allows: every lookup, then the drop.
			ret, dur, err = runRepeat(d.objs.DnsaPolFromPod, frame(epAddr, peerAddr, TCP, 40000, 81), out, b.N)
			if err != nil || ret != actShot {
				b.Fatalf("denied packet: %#x %v", ret, err)
			}
			b.ReportMetric(float64(dur.Nanoseconds()), "ns/denied-packet")
		})
	}
}

func runRepeat(p *ebpf.Program, f, _ []byte, n int) (uint32, time.Duration, error) {
	return p.Benchmark(f, n, nil)
}

// TestSetRulesIncremental: changing one rule of an endpoint with 1,000
// writes one entry and deletes one, not 1,000.
func TestSetRulesIncremental(t *testing.T) {
	d := openTest(t)
	must(t, d.SetEndpoint(Endpoint{ID: 5, Addrs: []netip.Addr{epAddr}, Ingress: true}))
	var rules []Rule
	for i := range 1000 {
		rules = append(rules, Rule{Policy: 1, Dir: Ingress, Peers: []Peer{{Identity: Identity(1000 + i)}}, Ports: []PortRange{{Proto: TCP, Port: 80}}})
	}
	must(t, d.SetRules(5, rules))
	if n := d.RuleEntries(5); n != 1000 {
		t.Fatalf("%d entries, want 1000", n)
	}
	rules[500].Peers[0].Identity = 99999
	writes0 := countWrites(t, d, func() { must(t, d.SetRules(5, rules)) })
	if writes0 != 2 {
		t.Errorf("one changed rule: %d map changes, want 2 (one put, one delete)", writes0)
	}
}

// countWrites counts rule entries that differ before and after fn.
func countWrites(t *testing.T, d *Datapath, fn func()) int {
	snap := func() map[policyDnsaPolRuleKey]uint32 {
		out := map[policyDnsaPolRuleKey]uint32{}
		var k policyDnsaPolRuleKey
		var v policyDnsaPolRuleVal
		it := d.objs.DnsaPolRules.Iterate()
		for it.Next(&k, &v) {
			out[k] = v.Policy
		}
		return out
	}
	a := snap()
	fn()
	b := snap()
	n := 0
	for k := range a {
		if _, ok := b[k]; !ok {
			n++
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			n++
		}
	}
	return n
}
