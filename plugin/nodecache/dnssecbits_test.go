package nodecache_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

// TestDOAndCDKeepSeparateEntries: answers differ with the DO and CD bits
// (RFC 4035: signatures with DO, unvalidated data with CD), so each
// combination has an entry of its own, on a miss, on a fast-path hit and on
// a hit through the chain. The upstream answers 192.0.2.(10+bits), bits =
// DO 1 | CD 2, and counts what it is asked per combination.
func TestDOAndCDKeepSeparateEntries(t *testing.T) {
	var mu sync.Mutex
	asked := map[int]int{}
	up := dnstest.NewServer(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		bits := 0
		if o := r.IsEdns0(); o != nil && o.Do() {
			bits |= 1
		}
		if r.CheckingDisabled {
			bits |= 2
		}
		if strings.EqualFold(r.Question[0].Name, "bits.test.") {
			mu.Lock()
			asked[bits]++
			mu.Unlock()
		}
		m := new(dns.Msg)
		m.SetReply(r)
		rr, _ := dns.NewRR(fmt.Sprintf("%s 300 IN A 192.0.2.%d", r.Question[0].Name, 10+bits))
		m.Answer = append(m.Answer, rr)
		if o := r.IsEdns0(); o != nil {
			m.SetEdns0(1232, o.Do())
		}
		w.WriteMsg(m)
	}))
	addr := startCache(t, "nodecache "+up.Addr)

	tests := []struct {
		name     string
		edns, do bool
		cd       bool
		bits     int
	}{
		{name: "neither", bits: 0},
		{name: "DO", edns: true, do: true, bits: 1},
		{name: "CD", cd: true, bits: 2},
		{name: "DO and CD", edns: true, do: true, cd: true, bits: 3},
		{name: "EDNS without DO", edns: true, bits: 0}, // the same entry as neither
	}
	// Every combination misses first, then hits: on the fast path (UDP,
	// once the chain has served the entry) and through the chain (TCP).
	for _, round := range []string{"udp", "udp", "udp", "tcp"} {
		for _, tc := range tests {
			m := new(dns.Msg)
			m.SetQuestion("bits.test.", dns.TypeA)
			m.CheckingDisabled = tc.cd
			if tc.edns {
				m.SetEdns0(1232, tc.do)
			}
			r, _, err := (&dns.Client{Net: round, Timeout: 3 * time.Second}).Exchange(m, addr)
			if err != nil {
				t.Fatalf("%s over %s: %v", tc.name, round, err)
			}
			if len(r.Answer) != 1 {
				t.Fatalf("%s over %s: %d answers", tc.name, round, len(r.Answer))
			}
			want := fmt.Sprintf("192.0.2.%d", 10+tc.bits)
			if got := r.Answer[0].(*dns.A).A.String(); got != want {
				t.Errorf("%s over %s: answer %s, want %s (another combination's entry)", tc.name, round, got, want)
			}
			if r.CheckingDisabled != tc.cd {
				t.Errorf("%s over %s: CD %v in the reply, want the query's %v", tc.name, round, r.CheckingDisabled, tc.cd)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for bits := 0; bits < 4; bits++ {
		if asked[bits] != 1 {
			t.Errorf("upstream asked %d times with DO|CD = %d, want 1 (one entry per combination)", asked[bits], bits)
		}
	}
}
