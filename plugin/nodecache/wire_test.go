package nodecache

import (
	"testing"
	"time"

	"github.com/miekg/dns"
)

func packQ(t testing.TB, name string, qtype uint16, edns bool, do bool, mutate func(*dns.Msg)) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0xBEEF
	if edns {
		m.SetEdns0(1400, do)
	}
	if mutate != nil {
		mutate(m)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseQuery(t *testing.T) {
	tests := []struct {
		name    string
		pkt     []byte
		ok      bool
		do      bool
		udpSize uint16
	}{
		{"plain", packQ(t, "Example.ORG.", dns.TypeA, false, false, nil), true, false, 512},
		{"edns", packQ(t, "example.org.", dns.TypeAAAA, true, false, nil), true, false, 1400},
		{"edns do", packQ(t, "example.org.", dns.TypeA, true, true, nil), true, true, 1400},
		{"cookie option", packQ(t, "example.org.", dns.TypeA, true, false, func(m *dns.Msg) {
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
		}), false, false, 0},
		{"response", packQ(t, "example.org.", dns.TypeA, false, false, func(m *dns.Msg) { m.Response = true }), false, false, 0},
		{"notify", packQ(t, "example.org.", dns.TypeSOA, false, false, func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), false, false, 0},
		{"two questions", packQ(t, "example.org.", dns.TypeA, false, false, func(m *dns.Msg) {
			m.Question = append(m.Question, m.Question[0])
		}), false, false, 0},
		{"answer section", packQ(t, "example.org.", dns.TypeA, false, false, func(m *dns.Msg) {
			rr, _ := dns.NewRR("example.org. 5 IN A 192.0.2.1")
			m.Answer = append(m.Answer, rr)
		}), false, false, 0},
		{"short", []byte{1, 2, 3}, false, false, 0},
		{"trailing garbage", append(packQ(t, "example.org.", dns.TypeA, false, false, nil), 0), false, false, 0},
		{"compressed qname", func() []byte {
			b := packQ(t, "example.org.", dns.TypeA, false, false, nil)
			b[12] = 0xC0
			return b
		}(), false, false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var q query
			err := parseQuery(tc.pkt, &q)
			if (err == nil) != tc.ok {
				t.Fatalf("parseQuery ok=%v, want %v (err %v)", err == nil, tc.ok, err)
			}
			if !tc.ok {
				return
			}
			if q.id != 0xBEEF || q.do != tc.do || q.udpSize != tc.udpSize {
				t.Fatalf("got id %x do %v size %d", q.id, q.do, q.udpSize)
			}
		})
	}
}

func response(t testing.TB, rrs ...string) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion("www.example.org.", dns.TypeA)
	m.Response, m.RecursionAvailable = true, true
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		m.Answer = append(m.Answer, rr)
	}
	m.SetEdns0(4096, false)
	return m
}

func TestEntryRender(t *testing.T) {
	resp := response(t, "www.example.org. 300 IN CNAME web.example.org.", "web.example.org. 60 IN A 192.0.2.7")
	ttl, denial, ok := classify(resp, ttlPolicy{max: 3600, min: 5}, ttlPolicy{max: 1800}, 5)
	if !ok || denial || ttl != 60 {
		t.Fatalf("classify = %d %v %v, want 60 success", ttl, denial, ok)
	}
	now := int64(time.Hour)
	e, err := newEntry(resp, ttl, denial, now)
	if err != nil {
		t.Fatal(err)
	}
	var nameBuf [256]byte
	n, _ := dns.PackDomainName("WwW.ExAmple.org.", nameBuf[:], 0, nil, false)
	a := answer{id: 4242, rd: true, name: nameBuf[:n], hasOPT: true, do: false}
	b := e.render(nil, &a, now+int64(20*time.Second)+1)
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatal(err)
	}
	if m.Id != 4242 || !m.RecursionDesired || m.Question[0].Name != "WwW.ExAmple.org." {
		t.Fatalf("header/question not restored: %v", m)
	}
	// Every TTL is capped at the entry TTL (60) and aged by 20 s.
	for _, rr := range m.Answer {
		if rr.Header().Ttl != 40 {
			t.Errorf("%s: ttl %d, want 40", rr.Header().Name, rr.Header().Ttl)
		}
	}
	if opt := m.IsEdns0(); opt == nil || opt.UDPSize() != ednsAdvertise {
		t.Errorf("want our OPT in the answer, got %v", opt)
	}
	// Without EDNS and a 40-byte limit: TC, no records, question kept.
	a = answer{id: 1, name: nameBuf[:n], limit: 40}
	b = e.render(nil, &a, now)
	if err := m.Unpack(b); err != nil {
		t.Fatal(err)
	}
	if !m.Truncated || len(m.Answer) != 0 || m.IsEdns0() != nil || len(m.Question) != 1 {
		t.Fatalf("want truncated empty answer, got %v", m)
	}
	// Stale serving overrides TTLs.
	a = answer{id: 1, name: nameBuf[:n], staleTTL: 30}
	m.Unpack(e.render(nil, &a, now+int64(time.Hour)))
	for _, rr := range m.Answer {
		if rr.Header().Ttl != 30 {
			t.Errorf("stale ttl %d, want 30", rr.Header().Ttl)
		}
	}
}

func TestClassify(t *testing.T) {
	soa := func(ttl, minttl uint32) *dns.SOA {
		return &dns.SOA{Hdr: dns.RR_Header{Name: "example.org.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: ttl},
			Ns: "ns.example.org.", Mbox: "h.example.org.", Minttl: minttl}
	}
	success, denial := ttlPolicy{max: 3600, min: 5}, ttlPolicy{max: 30}
	tests := []struct {
		name      string
		m         func() *dns.Msg
		ttl       uint32
		isDenial  bool
		cacheable bool
	}{
		{"positive clamped to max", func() *dns.Msg { return response(t, "www.example.org. 86400 IN A 192.0.2.1") }, 3600, false, true},
		{"positive raised to min", func() *dns.Msg { return response(t, "www.example.org. 1 IN A 192.0.2.1") }, 5, false, true},
		{"nxdomain uses SOA minimum", func() *dns.Msg {
			m := response(t)
			m.Rcode = dns.RcodeNameError
			m.Ns = []dns.RR{soa(900, 20)}
			return m
		}, 20, true, true},
		{"nodata capped by denial max", func() *dns.Msg {
			m := response(t)
			m.Ns = []dns.RR{soa(900, 600)}
			return m
		}, 30, true, true},
		{"nxdomain without SOA", func() *dns.Msg { m := response(t); m.Rcode = dns.RcodeNameError; return m }, 0, false, false},
		{"servfail 5s", func() *dns.Msg { m := response(t); m.Rcode = dns.RcodeServerFailure; return m }, 5, true, true},
		{"refused", func() *dns.Msg { m := response(t); m.Rcode = dns.RcodeRefused; return m }, 0, false, false},
		{"truncated", func() *dns.Msg { m := response(t, "www.example.org. 60 IN A 192.0.2.1"); m.Truncated = true; return m }, 0, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ttl, isDenial, ok := classify(tc.m(), success, denial, 5)
			if ttl != tc.ttl || isDenial != tc.isDenial || ok != tc.cacheable {
				t.Fatalf("classify = (%d, %v, %v), want (%d, %v, %v)", ttl, isDenial, ok, tc.ttl, tc.isDenial, tc.cacheable)
			}
		})
	}
}

func TestStoreCollision(t *testing.T) {
	s := newStore("success", 100, newBudget(DefaultMaxBytes), nil)
	k := makeKey([]byte("\x01a\x00"), dns.TypeA, dns.ClassINET, false, false)
	e := &entry{}
	s.add(k, e)
	if s.get(k) != e {
		t.Fatal("stored entry not found")
	}
	// Same hash, different name: a miss, never the wrong answer.
	other := k
	other.name = []byte("\x01b\x00")
	if s.get(other) != nil {
		t.Fatal("hash collision returned another name's entry")
	}
}

func FuzzParseQuery(f *testing.F) {
	f.Add(packQ(f, "example.org.", dns.TypeA, false, false, nil))
	f.Add(packQ(f, "a.b.c.example.org.", dns.TypeAAAA, true, true, nil))
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0xC0, 12, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var q query
		if parseQuery(b, &q) != nil {
			return
		}
		// Whatever the fast path accepts, miekg/dns must read the same way.
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			t.Fatalf("parseQuery accepted what dns.Unpack rejects: %v", err)
		}
		if m.Question[0].Qtype != q.qtype || m.Id != q.id {
			t.Fatalf("disagree with dns.Unpack")
		}
	})
}

func FuzzEntry(f *testing.F) {
	r := response(f, "www.example.org. 300 IN CNAME web.example.org.", "web.example.org. 60 IN A 192.0.2.7")
	b, _ := r.Pack()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		// ttlOffsets must never panic on any input.
		offs, err := ttlOffsets(b)
		if err == nil {
			for _, o := range offs {
				if int(o)+4 > len(b) {
					t.Fatalf("offset %d out of range %d", o, len(b))
				}
			}
		}
		m := new(dns.Msg)
		if m.Unpack(b) != nil || len(m.Question) != 1 {
			return
		}
		ttl, isDenial, ok := classify(m, ttlPolicy{max: 3600, min: 5}, ttlPolicy{max: 30}, 5)
		if !ok {
			return
		}
		e, err := newEntry(m, ttl, isDenial, 0)
		if err != nil {
			return
		}
		out := e.render(nil, &answer{id: 7, hasOPT: true, limit: 512}, int64(time.Second))
		back := new(dns.Msg)
		if err := back.Unpack(out); err != nil {
			t.Fatalf("rendered entry does not unpack: %v", err)
		}
		if back.Id != 7 || len(out) > 512 && !back.Truncated {
			t.Fatalf("bad render: id %d len %d", back.Id, len(out))
		}
	})
}
