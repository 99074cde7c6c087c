package kcache

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// FuzzAnswer runs the program (BPF_PROG_TEST_RUN) on mutated DNS payloads
// sent to the cache, with one entry in the map. The program must never
// answer anything but a plain query for exactly that entry's question, and
// must leave every packet it passes on byte for byte as it was.
func FuzzAnswer(f *testing.F) {
	seed := func(m *dns.Msg) {
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
		f.Add(b, true)
	}
	seed(query("www.example.com.", dns.TypeA, 1))
	seed(query("WWW.Example.Com.", dns.TypeA, 0xffff))
	seed(query("www.example.com.", dns.TypeAAAA, 2))
	m := query("www.example.com.", dns.TypeA, 3)
	m.SetEdns0(1232, false)
	seed(m)
	m = query("www.example.com.", dns.TypeA, 4)
	m.SetEdns0(4096, true)
	seed(m)
	m = query("www.example.com.", dns.TypeA, 5)
	m.SetEdns0(1232, false)
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	seed(m)
	f.Add([]byte{}, false)
	f.Add(make([]byte, 12), true)

	c := openCache(f, Options{})
	key, e := entryFor(f, answerFor(query("www.example.com.", dns.TypeA, 0), "www.example.com. 300 IN A 192.0.2.7"), false, false, 0, time.Hour)
	if err := c.Put(key, e); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload []byte, v6 bool) {
		if len(payload) > 1400 {
			return
		}
		src, dst := podIP4, cacheIP4
		if v6 {
			src, dst = podIP6, cacheIP6
		}
		in := frame(payload, src, dst, 5353, 53)
		ret, out := run(t, c, in)
		switch ret {
		case actUnspec:
			if !bytes.Equal(out, in) {
				t.Fatalf("passed packet changed:\n in % x\nout % x", in, out)
			}
		case actRedirect:
			if !plainQueryFor(payload, key) {
				t.Fatalf("answered a query that is not a plain query for %q: % x", key.Name, payload)
			}
			p := parseFrame(t, out)
			var r dns.Msg
			if err := r.Unpack(p.payload); err != nil || !r.Response || len(r.Answer) != 1 {
				t.Fatalf("answer does not unpack as the stored response: %v\n% x", err, p.payload)
			}
		default:
			t.Fatalf("verdict %d", int32(ret))
		}
	})
}

// plainQueryFor is the oracle: a query the user-space fast path would
// answer from the entry for k (see parseQuery in plugin/nodecache).
func plainQueryFor(b []byte, k Key) bool {
	var m dns.Msg
	if err := m.Unpack(b); err != nil {
		return false
	}
	if m.Response || m.Opcode != dns.OpcodeQuery || m.Truncated || len(m.Question) != 1 ||
		len(m.Answer) != 0 || len(m.Ns) != 0 || len(m.Extra) > 1 || m.CheckingDisabled {
		return false
	}
	q := m.Question[0]
	name := make([]byte, 256)
	n, err := dns.PackDomainName(strings.ToLower(q.Name), name, 0, nil, false)
	if err != nil || !bytes.Equal(name[:n], k.Name) || q.Qtype != k.Qtype || q.Qclass != dns.ClassINET {
		return false
	}
	do := false
	if len(m.Extra) == 1 {
		opt, ok := m.Extra[0].(*dns.OPT)
		if !ok || len(opt.Option) != 0 || opt.Version() != 0 || opt.ExtendedRcode() != 0 {
			return false
		}
		do = opt.Do()
	}
	return do == k.DO
}
