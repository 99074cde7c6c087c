package kcache

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// rendered packs resp as the nodecache plugin keeps it (ID 0, question
// name lower-cased, RD as the upstream set it) with its TTL offsets.
func rendered(t *testing.T, resp *dns.Msg, age, remaining time.Duration) Rendered {
	t.Helper()
	m := resp.Copy()
	m.Id = 0
	m.Question[0].Name = strings.ToLower(m.Question[0].Name)
	m.Compress = true
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	qend, err := skipName(b, 12)
	if err != nil {
		t.Fatal(err)
	}
	r := Rendered{Msg: b, QuestionEnd: qend + 4, Age: age, Remaining: remaining}
	for off := r.QuestionEnd; off < len(b); {
		end, err := skipName(b, off)
		if err != nil {
			t.Fatal(err)
		}
		r.TTLOffsets = append(r.TTLOffsets, uint16(end+4))
		r.TTLs = append(r.TTLs, binary.BigEndian.Uint32(b[end+4:]))
		off = end + 10 + int(binary.BigEndian.Uint16(b[end+8:]))
	}
	return r
}

// TestNewEntry: the kernel's entry for a rendered response is the one the
// program's tests answer from (entryFor), RD cleared; offsets outside the
// records are refused.
func TestNewEntry(t *testing.T) {
	q := query("www.example.com.", dns.TypeA, 0)
	resp := answerFor(q, "www.example.com. 300 IN CNAME a.example.com.", "a.example.com. 60 IN A 192.0.2.7")
	resp.RecursionDesired = true
	ns := answerFor(query("nx.example.", dns.TypeA, 0))
	ns.Rcode = dns.RcodeNameError
	soa, _ := dns.NewRR("example. 30 IN SOA ns.example. admin.example. 1 3600 600 86400 10")
	ns.Ns = []dns.RR{soa}

	for _, c := range []struct {
		name string
		resp *dns.Msg
	}{{"CNAME chain", resp}, {"NXDOMAIN with SOA", ns}} {
		t.Run(c.name, func(t *testing.T) {
			r := rendered(t, c.resp, 3*time.Second, time.Minute)
			got, err := NewEntry(r)
			if err != nil {
				t.Fatal(err)
			}
			_, want := entryFor(t, c.resp, false, false, 3*time.Second, time.Minute)
			if got.Flags&0x0100 != 0 {
				t.Errorf("RD kept in flags %#x", got.Flags)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("entry\n got %+v\nwant %+v", got, want)
			}
		})
	}

	good := rendered(t, resp, 0, time.Minute)
	for _, c := range []struct {
		name   string
		mutate func(r *Rendered)
	}{
		{"short message", func(r *Rendered) { r.Msg = r.Msg[:10] }},
		{"question end past the message", func(r *Rendered) { r.QuestionEnd = len(r.Msg) + 1 }},
		{"question end inside the header", func(r *Rendered) { r.QuestionEnd = 12 }},
		{"TTL offset in the question", func(r *Rendered) { r.TTLOffsets = []uint16{14, r.TTLOffsets[1]} }},
		{"TTL offset past the end", func(r *Rendered) { r.TTLOffsets = []uint16{r.TTLOffsets[0], uint16(len(r.Msg) - 2)} }},
		{"TTLs and offsets differ", func(r *Rendered) { r.TTLs = r.TTLs[:1] }},
	} {
		r := good
		r.TTLOffsets = append([]uint16(nil), good.TTLOffsets...)
		c.mutate(&r)
		if e, err := NewEntry(r); err == nil {
			t.Errorf("%s: no error, entry %+v", c.name, e)
		}
	}
}

// TestLookupAndKeys: what Put stored comes back from Lookup and Keys, aged;
// Delete removes it.
func TestLookupAndKeys(t *testing.T) {
	c := openCache(t, Options{})
	q := query("www.example.com.", dns.TypeA, 0)
	key, want := entryFor(t, answerFor(q, "www.example.com. 300 IN A 192.0.2.7"), true, false, 2*time.Second, time.Minute)
	if e, err := c.Lookup(key); err != nil || e != nil {
		t.Fatalf("lookup before put: %+v, %v", e, err)
	}
	if err := c.Put(key, want); err != nil {
		t.Fatal(err)
	}
	got, err := c.Lookup(key)
	if err != nil || got == nil {
		t.Fatalf("lookup: %+v, %v", got, err)
	}
	if got.Age < 2*time.Second || got.Age > 12*time.Second || got.Remaining > time.Minute || got.Remaining < 50*time.Second {
		t.Errorf("age %v remaining %v, want about 2s and 1m", got.Age, got.Remaining)
	}
	got.Age, got.Remaining = want.Age, want.Remaining
	if !reflect.DeepEqual(got, want) {
		t.Errorf("looked up\n got %+v\nwant %+v", got, want)
	}
	keys, err := c.Keys()
	if err != nil || len(keys) != 1 || !bytes.Equal(keys[0].Name, key.Name) || keys[0].Qtype != key.Qtype || keys[0].DO != key.DO || keys[0].CD != key.CD {
		t.Fatalf("keys %+v (err %v), want [%+v]", keys, err, key)
	}
	if e, err := c.Lookup(Key{Name: key.Name, Qtype: key.Qtype}); err != nil || e != nil {
		t.Errorf("the DO=0 key found %+v (err %v)", e, err)
	}
	if err := c.Delete(key); err != nil {
		t.Fatal(err)
	}
	if e, err := c.Lookup(key); err != nil || e != nil {
		t.Fatalf("lookup after delete: %+v, %v", e, err)
	}
}
