package nodecache

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"github.com/dnsaccel/dnsaccel/test/dnstest"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

// scrape returns the sum of every sample of the metric name.
func scrape(t *testing.T, addr, name string) float64 {
	t.Helper()
	total := 0.0
	sc := bufio.NewScanner(strings.NewReader(httpBody(t, addr, "/metrics")))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || (len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ') {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			total += v
		}
	}
	return total
}

// userSpace counts the queries node-cache's sockets saw: through the chain
// and on the UDP fast path.
func userSpace(t *testing.T, metrics string) float64 {
	return scrape(t, metrics, "coredns_nodecache_requests_total") + scrape(t, metrics, "coredns_nodecache_fastpath_hits_total") +
		scrape(t, metrics, "coredns_nodecache_fastpath_passed_total") + scrape(t, metrics, "coredns_nodecache_fastpath_misses_total")
}

// maskTTLs returns a copy of a DNS message with every record's TTL zeroed,
// for comparing answers given at different times.
func maskTTLs(t *testing.T, b []byte) []byte {
	t.Helper()
	out := append([]byte(nil), b...)
	var m dns.Msg
	if err := m.Unpack(b); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	off := 12
	skipName := func() {
		for off < len(out) {
			l := int(out[off])
			if l == 0 {
				off++
				return
			}
			if l&0xC0 == 0xC0 {
				off += 2
				return
			}
			off += l + 1
		}
	}
	skipName()
	off += 4 // question type and class
	records := len(m.Answer) + len(m.Ns) + len(m.Extra)
	for i := 0; i < records && off < len(out); i++ {
		skipName()
		typ := binary.BigEndian.Uint16(out[off:])
		if typ != dns.TypeOPT {
			binary.BigEndian.PutUint32(out[off+4:], 0)
		}
		off += 10 + int(binary.BigEndian.Uint16(out[off+8:]))
	}
	return out
}

func wireQuery(t *testing.T, name string, qtype uint16, id uint16, mut ...func(*dns.Msg)) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	for _, f := range mut {
		f(m)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKernelCacheFromPods: a pod's queries for the cluster DNS VIP, steered
// to node-cache, are answered in the kernel once the name is hot, with the
// bytes node-cache itself sends (less TTLs), from the VIP, without node-cache
// seeing them; what the kernel must not answer reaches node-cache.
func TestKernelCacheFromPods(t *testing.T) {
	s := newSteerSetup(t)
	zone := dnstest.NewZone(t)
	zone.Add(t,
		"hot.kc.test. 300 IN A 10.13.0.1",
		"hot.kc.test. 300 IN AAAA fd00:13::1",
		"brief.kc.test. 2 IN A 10.13.0.2",
		"one.evict.kc.test. 300 IN A 10.13.0.3",
		"two.evict.kc.test. 300 IN A 10.13.0.4",
	)
	for i := 0; i < 40; i++ { // over 512 bytes
		zone.Add(t, fmt.Sprintf("big.kc.test. 300 IN TXT \"record %02d padding padding padding\"", i))
	}
	metrics := freeAddr(t)
	conf := filepath.Join(t.TempDir(), "Corefile")
	// MINTTL 1: brief.kc.test lives its own 2 s, not the default floor of
	// 5. evict.kc.test has a cache of one entry.
	os.WriteFile(conf, []byte(fmt.Sprintf(`.:53 {
    bind %[1]s
    prometheus %[2]s
    nodecache %[3]s {
        success 1000 3600 1
    }
}
evict.kc.test:53 {
    bind %[1]s
    nodecache %[3]s {
        success 1
    }
}
`, s.LocalIP, metrics, zone.Addr)), 0o644)
	nc := startNodeCache(t, "node-cache", append(s.steerArgs(time.Second), "--conf", conf, "--metrics", metrics, "--kernel-cache")...)
	if !strings.Contains(nc.logs.String(), "kernel cache on") {
		t.Fatalf("kernel cache not on:\n%s", nc.logs.String())
	}

	vip := netip.AddrPortFrom(s.VIP, 53)
	exchange := func(wire []byte) []byte {
		t.Helper()
		var out []byte
		if err := s.Pod.Do(func() error {
			c := &steertest.RawClient{To: vip, Timeout: 2 * time.Second}
			n, from, err := c.Exchange(wire)
			if err != nil {
				return err
			}
			if from != vip {
				return fmt.Errorf("reply from %s, want the VIP %s", from, vip)
			}
			out = append(out, c.Buf()[:n]...)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	kernelHits := func() float64 { return scrape(t, metrics, "coredns_nodecache_offload_hits_total") }

	// Hot: asked until the kernel answers (the second hit offers it).
	q := wireQuery(t, "HoT.kc.TEST.", dns.TypeA, 0x5a5a)
	var fromUser []byte
	steertest.WaitFor(t, "the kernel answering hot.kc.test", 10*time.Second, func() bool {
		before := kernelHits()
		r := exchange(q)
		if kernelHits() > before {
			return true
		}
		fromUser = r
		return false
	})
	if fromUser == nil {
		t.Fatal("never answered by node-cache itself")
	}
	userBefore, upstreamBefore := userSpace(t, metrics), zone.Total()
	hitsBefore := kernelHits()
	var fromKernel []byte
	for i := 0; i < 20; i++ {
		fromKernel = exchange(q)
	}
	if got := kernelHits() - hitsBefore; got != 20 {
		t.Errorf("kernel hits moved by %v for 20 queries", got)
	}
	if got := userSpace(t, metrics) - userBefore; got != 0 {
		t.Errorf("node-cache saw %v of the 20 queries the kernel answered", got)
	}
	if zone.Total() != upstreamBefore {
		t.Errorf("the upstream was asked while the kernel answered")
	}
	if !bytes.Equal(maskTTLs(t, fromKernel), maskTTLs(t, fromUser)) {
		t.Fatalf("kernel answer differs from node-cache's (TTLs masked):\nkernel % x\n  user % x", fromKernel, fromUser)
	}
	var m dns.Msg
	m.Unpack(fromKernel)
	if m.Question[0].Name != "HoT.kc.TEST." || m.Id != 0x5a5a {
		t.Fatalf("case or ID not kept: %v", &m)
	}

	// TTLs run down in the kernel as they do in node-cache.
	ttl0 := m.Answer[0].Header().Ttl
	steertest.WaitFor(t, "the kernel's TTL to decrease", 4*time.Second, func() bool {
		var r dns.Msg
		r.Unpack(exchange(q))
		return r.Answer[0].Header().Ttl < ttl0
	})

	// An entry past its TTL is never answered from the kernel.
	brief := wireQuery(t, "brief.kc.test.", dns.TypeA, 7)
	steertest.WaitFor(t, "the kernel answering brief.kc.test", 5*time.Second, func() bool {
		before := kernelHits()
		exchange(brief)
		return kernelHits() > before
	})
	asked := zone.Count("brief.kc.test.", dns.TypeA)
	time.Sleep(2100 * time.Millisecond) // the record's TTL: what is being tested
	before := kernelHits()
	exchange(brief)
	if kernelHits() != before {
		t.Error("the kernel answered an expired entry")
	}
	if zone.Count("brief.kc.test.", dns.TypeA) != asked+1 {
		t.Error("node-cache did not refetch the expired entry")
	}

	// An entry node-cache evicts leaves the kernel with it.
	one := wireQuery(t, "one.evict.kc.test.", dns.TypeA, 8)
	steertest.WaitFor(t, "the kernel answering one.evict.kc.test", 5*time.Second, func() bool {
		before := kernelHits()
		exchange(one)
		return kernelHits() > before
	})
	exchange(wireQuery(t, "two.evict.kc.test.", dns.TypeA, 9)) // evicts one
	asked = zone.Count("one.evict.kc.test.", dns.TypeA)
	before = kernelHits()
	exchange(one)
	if kernelHits() != before || zone.Count("one.evict.kc.test.", dns.TypeA) != asked+1 {
		t.Error("an evicted entry was answered by the kernel")
	}

	// Whatever the kernel must not answer reaches node-cache, and is
	// answered correctly: EDNS options (a cookie), CD, TCP, large answers.
	for name, tc := range map[string]struct {
		wire []byte
		tcp  bool
	}{
		"cookie": {wire: wireQuery(t, "hot.kc.test.", dns.TypeA, 11, func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
		})},
		"CD":        {wire: wireQuery(t, "hot.kc.test.", dns.TypeA, 12, func(m *dns.Msg) { m.CheckingDisabled = true })},
		"large":     {wire: wireQuery(t, "big.kc.test.", dns.TypeTXT, 13, func(m *dns.Msg) { m.SetEdns0(4096, false) })},
		"TCP":       {wire: wireQuery(t, "hot.kc.test.", dns.TypeA, 14), tcp: true},
		"plain DO":  {wire: wireQuery(t, "hot.kc.test.", dns.TypeAAAA, 15, func(m *dns.Msg) { m.SetEdns0(1232, true) })},
		"plain OPT": {wire: wireQuery(t, "hot.kc.test.", dns.TypeAAAA, 16, func(m *dns.Msg) { m.SetEdns0(1232, false) })},
	} {
		before, userBefore := kernelHits(), userSpace(t, metrics)
		var r dns.Msg
		if tc.tcp {
			a := s.query(t, "hot.kc.test.", true, 2*time.Second)
			if a.err != nil {
				t.Fatalf("%s: %v", name, a.err)
			}
			r = *a.r
		} else if err := r.Unpack(exchange(tc.wire)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			t.Errorf("%s: bad answer %v", name, &r)
		}
		if name == "plain DO" || name == "plain OPT" {
			continue // new keys: the kernel may take them once hot
		}
		if kernelHits() != before {
			t.Errorf("%s: answered by the kernel", name)
		}
		if userSpace(t, metrics) <= userBefore {
			t.Errorf("%s: node-cache did not see it", name)
		}
	}
}

// TestKernelCacheInterfaces: --kernel-cache-interfaces picks the host
// interfaces by name (any type); without it every veth, and only veths.
func TestKernelCacheInterfaces(t *testing.T) {
	bad := KernelCache{MaxBytes: DefaultKernelCacheMaxBytes, Interfaces: "enip("}
	if err := bad.validate(); err == nil || !strings.Contains(err.Error(), "--kernel-cache-interfaces") {
		t.Fatalf("invalid regex: %v", err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "enip0123456789a"}}
	other := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vethdnsa0a0b0c"}}
	dummy := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "enipdummy"}}
	for _, tc := range []struct {
		flag string
		want []bool // veth, other, dummy
	}{
		{"", []bool{true, true, false}},
		{"^enip", []bool{true, false, true}},
		{"^(enip0123456789a)$", []bool{true, false, false}},
	} {
		k := KernelCache{MaxBytes: DefaultKernelCacheMaxBytes, Interfaces: tc.flag}
		if err := k.validate(); err != nil {
			t.Fatal(err)
		}
		re, _ := k.interfaces()
		kc := &kernelCache{cfg: KernelCacheConfig{Interfaces: re}}
		for i, l := range []netlink.Link{veth, other, dummy} {
			if got := kc.podInterface(l); got != tc.want[i] {
				t.Errorf("--kernel-cache-interfaces %q: %s -> %v, want %v", tc.flag, l.Attrs().Name, got, tc.want[i])
			}
		}
	}
}
