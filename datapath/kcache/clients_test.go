package kcache

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestClientCounters: every kernel answer is counted for its client
// address (IPv4 and IPv6), by the entry's rcode; passed queries are not;
// SetBypass makes the kernel pass a client's queries on, and only that
// client's, until it is cleared.
func TestClientCounters(t *testing.T) {
	c := openCache(t, Options{})
	q := query("www.example.com.", dns.TypeA, 0)
	k, e := entryFor(t, answerFor(q, "www.example.com. 300 IN A 192.0.2.7"), false, false, 0, time.Minute)
	if err := c.Put(k, e); err != nil {
		t.Fatal(err)
	}
	nxq := query("nx.example.com.", dns.TypeA, 0)
	nxResp := new(dns.Msg)
	nxResp.SetRcode(nxq, dns.RcodeNameError)
	soa, _ := dns.NewRR("example.com. 60 IN SOA ns. host. 1 2 3 4 60")
	nxResp.Ns = append(nxResp.Ns, soa)
	nk, ne := entryFor(t, nxResp, false, false, 0, time.Minute)
	if err := c.Put(nk, ne); err != nil {
		t.Fatal(err)
	}
	other4 := netip.MustParseAddr("10.244.9.9")
	send := func(m *dns.Msg, src, dst netip.Addr) uint32 {
		ret, _ := run(t, c, frame(pack(t, m), src, dst, 40000, 53))
		return ret
	}
	for range 3 {
		send(q, podIP4, cacheIP4)
	}
	send(nxq, podIP4, cacheIP4)
	send(q, podIP6, cacheIP6)
	send(query("miss.example.", dns.TypeA, 1), podIP4, cacheIP4) // a miss: not counted
	got, err := c.Clients()
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr]ClientCounts{podIP4: {NoError: 3, NXDomain: 1}, podIP6: {NoError: 1}}
	if len(got) != len(want) || got[podIP4] != want[podIP4] || got[podIP6] != want[podIP6] {
		t.Fatalf("clients %v, want %v", got, want)
	}

	// Bypass podIP4: its queries go on untouched, others' are answered.
	if err := c.SetBypass([]netip.Addr{podIP4}); err != nil {
		t.Fatal(err)
	}
	if ret := send(q, podIP4, cacheIP4); ret != actUnspec {
		t.Errorf("bypassed client answered in the kernel (verdict %d)", int32(ret))
	}
	if ret := send(q, other4, cacheIP4); ret != actRedirect {
		t.Errorf("another client not answered (verdict %d)", int32(ret))
	}
	if err := c.SetBypass([]netip.Addr{other4}); err != nil { // replaces the set
		t.Fatal(err)
	}
	if ret := send(q, podIP4, cacheIP4); ret != actRedirect {
		t.Errorf("client no longer bypassed not answered (verdict %d)", int32(ret))
	}
	if ret := send(q, other4, cacheIP4); ret != actUnspec {
		t.Errorf("newly bypassed client answered (verdict %d)", int32(ret))
	}
	if err := c.SetBypass(nil); err != nil {
		t.Fatal(err)
	}
	if ret := send(q, other4, cacheIP4); ret != actRedirect {
		t.Errorf("bypass cleared, but not answered (verdict %d)", int32(ret))
	}
	got, _ = c.Clients()
	if got[podIP4].NoError != 4 || got[other4].NoError != 2 {
		t.Errorf("after bypass: %v", got)
	}
}
