package kcache

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"
)

// TestAnswers runs the program on query frames (BPF_PROG_TEST_RUN) against a
// map holding one entry per case: answered frames must be exactly the
// response the user-space cache renders, with valid checksums, swapped
// addresses and ports; passed frames must come out unchanged.
func TestAnswers(t *testing.T) {
	type tc struct {
		name   string
		src    netip.Addr
		dst    netip.Addr
		dport  uint16
		query  func() *dns.Msg // the client's query
		stored func(q *dns.Msg) (Key, *Entry)
		raw    func(b []byte) []byte // mangles the packed query
		answer bool                  // answered in the kernel
		age    uint32                // seconds the TTLs are aged by
		opt    bool                  // the response carries an OPT record
		stat   func(Stats) uint64    // the counter that must move
	}
	// The entry most cases look for: www.example.com A, no DO, no CD.
	aRecord := func(*dns.Msg) (Key, *Entry) {
		q := query("www.example.com.", dns.TypeA, 0)
		return entryFor(t, answerFor(q, "www.example.com. 300 IN A 192.0.2.7"), false, false, 0, time.Minute)
	}
	hits := func(s Stats) uint64 { return s.Hits }
	cases := []tc{
		{
			name:   "A over IPv4, mixed case kept",
			query:  func() *dns.Msg { return query("WwW.ExAmple.COM.", dns.TypeA, 0xbeef) },
			stored: aRecord, answer: true, stat: hits,
		},
		{
			name: "AAAA over IPv6",
			src:  podIP6, dst: cacheIP6,
			query: func() *dns.Msg { return query("v6.example.", dns.TypeAAAA, 7) },
			stored: func(q *dns.Msg) (Key, *Entry) {
				return entryFor(t, answerFor(q, "v6.example. 60 IN AAAA 2001:db8::1"), false, false, 0, time.Minute)
			},
			answer: true, stat: hits,
		},
		{
			name:  "CNAME chain, TTLs aged",
			query: func() *dns.Msg { return query("alias.example.", dns.TypeA, 1) },
			stored: func(q *dns.Msg) (Key, *Entry) {
				return entryFor(t, answerFor(q, "alias.example. 100 IN CNAME target.example.", "target.example. 30 IN A 192.0.2.9"), false, false, 12*time.Second, time.Minute)
			},
			answer: true, age: 12, stat: hits,
		},
		{
			name:  "TTL never below zero",
			query: func() *dns.Msg { return query("old.example.", dns.TypeA, 1) },
			stored: func(q *dns.Msg) (Key, *Entry) {
				return entryFor(t, answerFor(q, "old.example. 5 IN A 192.0.2.9"), false, false, 9*time.Second, time.Second)
			},
			answer: true, age: 9, stat: hits,
		},
		{
			name: "plain EDNS0 with DO",
			query: func() *dns.Msg {
				m := query("secure.example.", dns.TypeA, 2)
				m.SetEdns0(1232, true)
				return m
			},
			stored: func(q *dns.Msg) (Key, *Entry) {
				return entryFor(t, answerFor(q, "secure.example. 300 IN A 192.0.2.1"), true, false, 0, time.Minute)
			},
			answer: true, opt: true, stat: hits,
		},
		{
			name: "DO query, entry without DO: miss",
			query: func() *dns.Msg {
				m := query("www.example.com.", dns.TypeA, 2)
				m.SetEdns0(4096, true)
				return m
			},
			stored: aRecord, stat: func(s Stats) uint64 { return s.Misses },
		},
		{
			name: "CD bit is part of the key",
			query: func() *dns.Msg {
				m := query("www.example.com.", dns.TypeA, 2)
				m.CheckingDisabled = true
				return m
			},
			stored: aRecord, stat: func(s Stats) uint64 { return s.Misses },
		},
		{
			name: "EDNS cookie goes to user space",
			query: func() *dns.Msg {
				m := query("www.example.com.", dns.TypeA, 3)
				m.SetEdns0(1232, false)
				m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
				return m
			},
			stored: aRecord, stat: func(s Stats) uint64 { return s.Passed },
		},
		{
			name:   "other name: miss",
			query:  func() *dns.Msg { return query("other.example.", dns.TypeA, 3) },
			stored: aRecord, stat: func(s Stats) uint64 { return s.Misses },
		},
		{
			name:   "other type: miss",
			query:  func() *dns.Msg { return query("www.example.com.", dns.TypeAAAA, 3) },
			stored: aRecord, stat: func(s Stats) uint64 { return s.Misses },
		},
		{
			name:  "expired",
			query: func() *dns.Msg { return query("www.example.com.", dns.TypeA, 3) },
			stored: func(q *dns.Msg) (Key, *Entry) {
				return entryFor(t, answerFor(q, "www.example.com. 300 IN A 192.0.2.7"), false, false, 300*time.Second, -time.Nanosecond)
			},
			stat: func(s Stats) uint64 { return s.Expired },
		},
		{
			name:   "not to the cache's port",
			dport:  5353,
			query:  func() *dns.Msg { return query("www.example.com.", dns.TypeA, 3) },
			stored: aRecord,
		},
		{
			name:   "not to the cache's address",
			dst:    netip.MustParseAddr("10.96.0.10"),
			query:  func() *dns.Msg { return query("www.example.com.", dns.TypeA, 3) },
			stored: aRecord,
		},
		{
			name:  "two questions",
			query: func() *dns.Msg { return query("www.example.com.", dns.TypeA, 3) },
			raw: func(b []byte) []byte {
				q := b[12:]
				b = append(b, q...)
				b[5] = 2
				return b
			},
			stored: aRecord, stat: func(s Stats) uint64 { return s.Passed },
		},
		{
			name:   "a response is not a query",
			query:  func() *dns.Msg { return query("www.example.com.", dns.TypeA, 3) },
			raw:    func(b []byte) []byte { b[2] |= 0x80; return b },
			stored: aRecord, stat: func(s Stats) uint64 { return s.Passed },
		},
		{
			name:   "trailing garbage",
			query:  func() *dns.Msg { return query("www.example.com.", dns.TypeA, 3) },
			raw:    func(b []byte) []byte { return append(b, 0) },
			stored: aRecord, stat: func(s Stats) uint64 { return s.Passed },
		},
		{
			name:   "truncated question",
			query:  func() *dns.Msg { return query("www.example.com.", dns.TypeA, 3) },
			raw:    func(b []byte) []byte { return b[:len(b)-3] },
			stored: aRecord, stat: func(s Stats) uint64 { return s.Passed },
		},
		{
			name:  "compression pointer in the question",
			query: func() *dns.Msg { return query("www.example.com.", dns.TypeA, 3) },
			raw: func(b []byte) []byte {
				return append(append(b[:12:12], 3, 'w', 'w', 'w', 0xc0, 12), 0, 1, 0, 1)
			},
			stored: aRecord, stat: func(s Stats) uint64 { return s.Passed },
		},
		{
			name:  "TXT answer within the size limits",
			query: func() *dns.Msg { return query("big.example.", dns.TypeTXT, 3) },
			stored: func(q *dns.Msg) (Key, *Entry) {
				k, e := entryFor(t, answerFor(q, "big.example. 300 IN TXT \"0123456789012345678901234567890123456789\""), false, false, 0, time.Minute)
				return k, e
			},
			answer: true, stat: hits, // the limits: TestSizeLimit, TestClientUDPSize
		},
	}
	c := openCache(t, Options{})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := tc.src, tc.dst
			if !src.IsValid() {
				src = podIP4
			}
			if !dst.IsValid() {
				dst = cacheIP4
				if src.Is6() {
					dst = cacheIP6
				}
			}
			dport := tc.dport
			if dport == 0 {
				dport = 53
			}
			q := tc.query()
			k, e := tc.stored(q)
			if err := c.Put(k, e); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Delete(k) })
			payload := pack(t, q)
			if tc.raw != nil {
				payload = tc.raw(payload)
			}
			in := frame(payload, src, dst, 40123, dport)
			before, _ := c.Stats()
			ret, out := run(t, c, in)
			after, _ := c.Stats()
			if tc.stat != nil && tc.stat(after) != tc.stat(before)+1 {
				t.Errorf("counter did not move: before %+v after %+v", before, after)
			}
			// The program for a pod's veth seen from the host (answers
			// redirected into the pod end) decides and rewrites alike.
			// So does the one for a pod's own interface (egress, answers
			// redirected back in on its ingress).
			for name, prog := range map[string]*ebpf.Program{"kc_ingress_peer": c.objs.KcIngressPeer, "kc_egress": c.objs.KcEgress} {
				if pret, pout := runProg(t, prog, in); pret != ret || !bytes.Equal(pout, out) {
					t.Errorf("%s: verdict %d and frame\n% x\nwhere kc_ingress gives %d and\n% x", name, int32(pret), pout, int32(ret), out)
				}
			}
			if !tc.answer {
				if ret != actUnspec {
					t.Fatalf("verdict %d, want pass (-1)", int32(ret))
				}
				if !bytes.Equal(out, in) {
					t.Fatalf("passed frame changed:\n in % x\nout % x", in, out)
				}
				return
			}
			if ret != actRedirect {
				t.Fatalf("verdict %d, want redirect; stats %+v", int32(ret), after)
			}
			p := parseFrame(t, out)
			if p.src != dst || p.dst != src || p.sport != dport || p.dport != 40123 {
				t.Errorf("addresses not swapped: %s:%d -> %s:%d", p.src, p.sport, p.dst, p.dport)
			}
			if !bytes.Equal(p.srcMAC, hostMAC) {
				t.Errorf("source MAC %x, want the host's %x", p.srcMAC, hostMAC)
			}
			want := expected(t, payload, k, e, tc.age, tc.opt)
			if !bytes.Equal(p.payload, want) {
				t.Fatalf("response differs from the user-space rendering:\n got % x\nwant % x", p.payload, want)
			}
			var m dns.Msg
			if err := m.Unpack(p.payload); err != nil {
				t.Fatalf("response does not unpack: %v", err)
			}
			if m.Id != q.Id || m.Question[0].Name != q.Question[0].Name || !m.Response || len(m.Answer) == 0 {
				t.Fatalf("bad response: %v", &m)
			}
		})
	}
}

// TestSizeLimit: Put refuses an entry whose response with an OPT record
// would exceed MaxResponse, and the program itself never answers with more
// than MaxResponse bytes: entries stored past Put's check (store) answer a
// query only where the response, OPT included, fits.
func TestSizeLimit(t *testing.T) {
	const limit = 100
	c := openCache(t, Options{MaxResponse: limit})
	q := query("big.example.", dns.TypeTXT, 9)
	k, e := sizedEntry(t, q, limit+1)
	if err := c.Put(k, e); err != ErrTooLarge {
		t.Fatalf("Put of a %d-byte response with a %d-byte limit: %v, want ErrTooLarge", limit+1, limit, err)
	}
	// Fits counts the OPT record an EDNS0 query adds.
	k, e = sizedEntry(t, q, limit-10)
	if err := c.Put(k, e); err != ErrTooLarge {
		t.Fatalf("Put of a response of %d bytes, %d with OPT, with a %d-byte limit: %v, want ErrTooLarge", limit-10, limit+1, limit, err)
	}

	for _, tc := range []struct {
		name   string
		size   int  // response bytes without OPT
		edns   bool // the query has an OPT record (11 bytes more)
		answer bool
	}{
		{"at the limit without OPT: answered", limit, false, true},
		{"over the limit: passed", limit + 1, false, false},
		{"at the limit with OPT: answered", limit - 11, true, true},
		{"over the limit by its OPT record: passed", limit, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := query("big.example.", dns.TypeTXT, 9)
			k, e := sizedEntry(t, q, tc.size)
			if tc.edns {
				q.SetEdns0(1232, false)
			}
			if err := c.store(k, e); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Delete(k) })
			checkAnswered(t, c, q, k, e, tc.answer)
		})
	}
}

// TestClientUDPSize: with the largest MaxResponse, the program answers only
// what fits the client's UDP size, as node-cache does: 512 bytes without
// EDNS0, else the OPT record's size (512 where it is smaller). Larger
// responses go to node-cache, which answers them with TC set.
func TestClientUDPSize(t *testing.T) {
	c := openCache(t, Options{MaxResponse: MaxResponseBytes})
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 62) + "." // 128 bytes on the wire
	for _, tc := range []struct {
		name    string
		qname   string
		size    int // response bytes, OPT included
		udpSize int // the query's OPT size; 0: no EDNS0
		answer  bool
	}{
		{"no EDNS0, 512 bytes: answered", "big.example.", 512, 0, true},
		{"no EDNS0, 513 bytes: passed", "big.example.", 513, 0, false},
		{"no EDNS0, 533 bytes: passed", "big.example.", 533, 0, false},
		{"EDNS0 512, 512 bytes: answered", "big.example.", 512, 512, true},
		{"EDNS0 512, 544 bytes: passed", "big.example.", 544, 512, false},
		{"EDNS0 1232, 544 bytes: answered", "big.example.", 544, 1232, true},
		{"EDNS0 1232, 667 bytes: answered", long, MaxResponseBytes, 1232, true},
		{"EDNS0 600, 600 bytes: answered", long, 600, 600, true},
		{"EDNS0 600, 601 bytes: passed", long, 601, 600, false},
		{"EDNS0 256 (taken as 512), 512 bytes: answered", "big.example.", 512, 256, true},
		{"EDNS0 256 (taken as 512), 513 bytes: passed", "big.example.", 513, 256, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := query(tc.qname, dns.TypeTXT, 0x1234)
			if tc.udpSize > 0 {
				q.SetEdns0(uint16(tc.udpSize), false)
			}
			k, e := sizedEntry(t, q, tc.size)
			if err := c.Put(k, e); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Delete(k) })
			checkAnswered(t, c, q, k, e, tc.answer)
		})
	}
}

// checkAnswered runs q (over IPv4 and IPv6) against the entry for k: answered
// with the expected response, or passed on unchanged and counted as passed.
func checkAnswered(t *testing.T, c *Cache, q *dns.Msg, k Key, e *Entry, answer bool) {
	t.Helper()
	payload := pack(t, q)
	for _, addrs := range [][2]netip.Addr{{podIP4, cacheIP4}, {podIP6, cacheIP6}} {
		in := frame(payload, addrs[0], addrs[1], 40123, 53)
		before, _ := c.Stats()
		ret, out := run(t, c, in)
		after, _ := c.Stats()
		if !answer {
			if ret != actUnspec || !bytes.Equal(out, in) {
				t.Fatalf("%s: answered in the kernel (verdict %d), want passed on unchanged", addrs[0], int32(ret))
			}
			if after.Passed != before.Passed+1 {
				t.Errorf("%s: passed counter did not move: before %+v after %+v", addrs[0], before, after)
			}
			continue
		}
		if ret != actRedirect {
			t.Fatalf("%s: verdict %d, want an answer; stats %+v", addrs[0], int32(ret), after)
		}
		want := expected(t, payload, k, e, 0, q.IsEdns0() != nil)
		if got := parseFrame(t, out).payload; !bytes.Equal(got, want) {
			t.Fatalf("%s: response differs from the user-space rendering:\n got % x\nwant % x", addrs[0], got, want)
		}
	}
}

// TestChecksumZero: a response whose UDP checksum computes to 0 carries
// 0xffff (RFC 768; over IPv6 a zero checksum is invalid, RFC 8200). The
// query ID is searched for so that the response's checksum is 0.
func TestChecksumZero(t *testing.T) {
	c := openCache(t, Options{})
	for _, addrs := range [][2]netip.Addr{{podIP4, cacheIP4}, {podIP6, cacheIP6}} {
		pod, cache := addrs[0], addrs[1]
		t.Run(pod.String(), func(t *testing.T) {
			// TTL 0: the response does not change as the seconds pass.
			q := query("zero.example.", dns.TypeA, 0)
			k, e := entryFor(t, answerFor(q, "zero.example. 0 IN A 192.0.2.53"), false, false, 0, time.Minute)
			if err := c.Put(k, e); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Delete(k) })
			found := false
			for id := 0; id <= 0xffff && !found; id++ {
				q.Id = uint16(id)
				resp := expected(t, pack(t, q), k, e, 0, false)
				found = udpChecksumRaw(cache, pod, udpDatagram(resp, 53, 40123)) == 0
			}
			if !found {
				t.Fatal("no query ID gives a response checksum of 0")
			}
			ret, out := run(t, c, frame(pack(t, q), pod, cache, 40123, 53))
			if ret != actRedirect {
				t.Fatalf("ID %#04x: verdict %d, want an answer", q.Id, int32(ret))
			}
			udp := out[len(out)-8-len(expected(t, pack(t, q), k, e, 0, false)):]
			if sum := binary.BigEndian.Uint16(udp[6:]); sum != 0xffff {
				t.Fatalf("ID %#04x: UDP checksum field %#04x, want 0xffff for a checksum that computes to 0", q.Id, sum)
			}
			parseFrame(t, out)
		})
	}
}

// TestDeleteAndReplace: a deleted entry is never answered; a replaced one
// answers with the new records.
func TestDeleteAndReplace(t *testing.T) {
	c := openCache(t, Options{})
	q := query("flip.example.", dns.TypeA, 5)
	in := frame(pack(t, q), podIP4, cacheIP4, 1111, 53)

	k, e := entryFor(t, answerFor(q, "flip.example. 300 IN A 192.0.2.1"), false, false, 0, time.Minute)
	if err := c.Put(k, e); err != nil {
		t.Fatal(err)
	}
	if ret, _ := run(t, c, in); ret != actRedirect {
		t.Fatalf("not answered after Put: %d", int32(ret))
	}
	_, e2 := entryFor(t, answerFor(q, "flip.example. 300 IN A 192.0.2.2"), false, false, 0, time.Minute)
	if err := c.Put(k, e2); err != nil {
		t.Fatal(err)
	}
	_, out := run(t, c, in)
	var m dns.Msg
	if err := m.Unpack(parseFrame(t, out).payload); err != nil || m.Answer[0].(*dns.A).A.String() != "192.0.2.2" {
		t.Fatalf("replaced entry not served: %v %v", err, &m)
	}
	if err := c.Delete(k); err != nil {
		t.Fatal(err)
	}
	if ret, out := run(t, c, in); ret != actUnspec || !bytes.Equal(out, in) {
		t.Fatalf("deleted entry still answered: %d", int32(ret))
	}
	if n := c.Len(); n != 0 {
		t.Fatalf("%d entries left after delete", n)
	}
}
