package kcache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// Rendered is a response as a user-space cache keeps it to render answers
// from (the nodecache plugin's OffloadEntry carries exactly these): the
// bytes with ID 0 and the question name lower-cased, no OPT record.
type Rendered struct {
	Msg         []byte
	QuestionEnd int      // offset of the first record in Msg
	TTLOffsets  []uint16 // offsets of the TTL fields in Msg
	TTLs        []uint32 // their values at age 0
	// Age is how long ago the TTLs were current; Remaining how much longer
	// the answer may be served.
	Age, Remaining time.Duration
}

// NewEntry converts a rendered response to the kernel's layout: header
// fields apart (RD cleared: it comes from each query), the records after
// the question, TTL offsets relative to them. It only checks that the
// offsets are inside the message; Put checks the kernel's limits.
func NewEntry(r Rendered) (*Entry, error) {
	m := r.Msg
	if len(m) < 12 || r.QuestionEnd < 12+1+4 || r.QuestionEnd > len(m) {
		return nil, fmt.Errorf("kernel cache: question end %d outside a %d-byte message", r.QuestionEnd, len(m))
	}
	if len(r.TTLOffsets) != len(r.TTLs) {
		return nil, fmt.Errorf("kernel cache: %d TTL offsets but %d TTLs", len(r.TTLOffsets), len(r.TTLs))
	}
	e := &Entry{
		Flags:      binary.BigEndian.Uint16(m[2:]) &^ 0x0100,
		Ancount:    binary.BigEndian.Uint16(m[6:]),
		Nscount:    binary.BigEndian.Uint16(m[8:]),
		Arcount:    binary.BigEndian.Uint16(m[10:]),
		Data:       m[r.QuestionEnd:],
		TTLOffsets: make([]uint16, len(r.TTLOffsets)),
		TTLs:       r.TTLs,
		Age:        r.Age,
		Remaining:  r.Remaining,
	}
	for i, o := range r.TTLOffsets {
		if int(o) < r.QuestionEnd || int(o)+4 > len(m) {
			return nil, fmt.Errorf("kernel cache: TTL offset %d outside the records (%d to %d)", o, r.QuestionEnd, len(m))
		}
		e.TTLOffsets[i] = o - uint16(r.QuestionEnd)
	}
	return e, nil
}

// Lookup returns what the map holds for key (nil: nothing), with Age and
// Remaining as of now; Remaining is negative once the entry has expired.
// For checks and tools: the program never needs it.
func (c *Cache) Lookup(key Key) (*Entry, error) {
	if len(key.Name) > MaxName {
		return nil, nil
	}
	var v kcacheDnsaKcEntry
	if err := c.objs.DnsaKcCache.Lookup(kernelKey(key), &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("kernel cache: lookup: %w", err)
	}
	now := monotonic()
	n := min(int(v.TtlCount), MaxTTLs)
	return &Entry{
		Flags:      v.Flags,
		Ancount:    v.Ancount,
		Nscount:    v.Nscount,
		Arcount:    v.Arcount,
		Data:       append([]byte(nil), v.Data[:min(int(v.DataLen), MaxData)]...),
		TTLOffsets: append([]uint16(nil), v.TtlOff[:n]...),
		TTLs:       append([]uint32(nil), v.Ttl[:n]...),
		Age:        time.Duration(now - int64(v.StoredNs)),
		Remaining:  time.Duration(int64(v.ExpiresNs) - now),
	}, nil
}

// Keys lists the keys the map holds (expired entries included).
func (c *Cache) Keys() ([]Key, error) {
	var k kcacheDnsaKcKey
	var v kcacheDnsaKcEntry
	var out []Key
	it := c.objs.DnsaKcCache.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Key{
			Name:  append([]byte(nil), k.Name[:min(int(k.NameLen), MaxName)]...),
			Qtype: k.Qtype, DO: k.Flags&1 != 0, CD: k.Flags&2 != 0,
		})
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("kernel cache: list keys: %w", err)
	}
	return out, nil
}
