package nodecache

import (
	"encoding/binary"
	"errors"
	"strings"
	"sync/atomic"

	"github.com/miekg/dns"
)

// entry is one cached response, kept in wire format. It is immutable once
// built except for its atomic counters, so readers never lock it: a refresh
// replaces the whole entry.
type entry struct {
	msg     []byte   // packed response: ID 0, no OPT, question name lower-cased
	nameLen int      // length of the question name at offset 12
	ttlOffs []uint16 // offsets of every TTL field to rewrite on serve
	ttls    []uint32 // the TTL to serve at age 0, per offset
	stored  int64    // monotonic nanoseconds at insert
	expires int64    // stored + entry TTL
	ttl     uint32   // the entry TTL in seconds
	rcode   int
	denial  bool // NXDOMAIN, NODATA or SERVFAIL: kept in the denial cache

	hits       atomic.Uint32 // hits in the current popularity window (prefetch)
	lastHit    atomic.Int64
	refreshing atomic.Bool   // one background refresh (prefetch, stale) per entry at a time
	fastOn     atomic.Uint64 // bit per fast-path listener that may serve this entry
	served     atomic.Uint32 // hits counted towards offloading (see noteHot)
	offloaded  atomic.Bool   // held by the offload, which may be answering it
	live       atomic.Bool   // in the cache: cleared when evicted, removed or replaced
}

var errUncacheable = errors.New("response is not cacheable")

// ttlPolicy bounds entry TTLs.
type ttlPolicy struct {
	max, min uint32
}

// classify decides whether and how long a response may be cached, following
// RFC 2308 for negative answers. It returns the entry TTL and whether the
// entry belongs to the denial cache; ok is false for responses that must not
// be cached.
func classify(m *dns.Msg, success, denial ttlPolicy, servfailTTL uint32) (ttl uint32, isDenial, ok bool) {
	if m.Truncated || m.Opcode != dns.OpcodeQuery || len(m.Question) != 1 {
		return 0, false, false
	}
	switch m.Rcode {
	case dns.RcodeSuccess:
		if len(m.Answer) > 0 {
			ttl = minTTL(m)
			return clamp(ttl, success), false, true
		}
		// NODATA: negative caching needs the SOA.
		if soa := authoritySOA(m); soa != nil {
			return clamp(min(soa.Hdr.Ttl, soa.Minttl), denial), true, true
		}
		return 0, false, false
	case dns.RcodeNameError:
		if soa := authoritySOA(m); soa != nil {
			return clamp(min(soa.Hdr.Ttl, soa.Minttl), denial), true, true
		}
		return 0, false, false
	case dns.RcodeServerFailure:
		if servfailTTL == 0 {
			return 0, false, false
		}
		return servfailTTL, true, true
	}
	return 0, false, false
}

func clamp(ttl uint32, p ttlPolicy) uint32 {
	if ttl > p.max {
		ttl = p.max
	}
	if ttl < p.min {
		ttl = p.min
	}
	return ttl
}

func minTTL(m *dns.Msg) uint32 {
	ttl := uint32(1<<31 - 1)
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			if rr.Header().Rrtype == dns.TypeOPT {
				continue
			}
			ttl = min(ttl, rr.Header().Ttl)
		}
	}
	return ttl
}

func authoritySOA(m *dns.Msg) *dns.SOA {
	for _, rr := range m.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return soa
		}
	}
	return nil
}

// newEntry packs an upstream response into an entry that lives ttl seconds
// from now. The caller has checked that the question matches the query.
func newEntry(m *dns.Msg, ttl uint32, isDenial bool, now int64) (*entry, error) {
	c := m.Copy()
	c.Id = 0
	c.Question[0].Name = strings.ToLower(c.Question[0].Name)
	c.Extra = stripOPT(c.Extra)
	c.Compress = true
	b, err := c.Pack()
	if err != nil {
		return nil, err
	}
	offs, err := ttlOffsets(b)
	if err != nil {
		return nil, err
	}
	end, err := plainName(b, headerLen)
	if err != nil {
		return nil, err
	}
	e := &entry{
		msg:     b,
		nameLen: end - headerLen,
		ttlOffs: offs,
		ttls:    make([]uint32, len(offs)),
		stored:  now,
		expires: now + int64(ttl)*1e9,
		ttl:     ttl,
		rcode:   m.Rcode,
		denial:  isDenial,
	}
	for i, o := range offs {
		// Every record is served with at most the entry TTL, so a client
		// never keeps a record longer than this cache would.
		e.ttls[i] = min(binary.BigEndian.Uint32(b[o:]), ttl)
	}
	return e, nil
}

func stripOPT(rrs []dns.RR) []dns.RR {
	out := rrs[:0:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}

func (e *entry) fresh(now int64) bool { return now < e.expires }

// remaining is the entry's TTL left at now, in seconds.
func (e *entry) remaining(now int64) uint32 {
	if now >= e.expires {
		return 0
	}
	return uint32((e.expires - now) / 1e9)
}

// answer describes the client an entry is rendered for.
type answer struct {
	id       uint16
	rd       bool
	name     []byte // question name as the client spelled it (0x20 case kept)
	hasOPT   bool
	do       bool
	limit    int    // max response size; 0 = unlimited (TCP)
	staleTTL uint32 // when non-zero, serve every TTL as this (serve_stale)
}

// render appends the response for a to dst: the client's ID, RD bit and
// letter case, TTLs decremented by the time spent in cache, an OPT record
// when the client sent one, and TC with no records when the answer exceeds
// the client's limit (it retries over TCP).
func (e *entry) render(dst []byte, a *answer, now int64) []byte {
	start := len(dst)
	dst = append(dst, e.msg...)
	out := dst[start:]
	binary.BigEndian.PutUint16(out[0:], a.id)
	flags := binary.BigEndian.Uint16(out[2:]) &^ flagRD
	if a.rd {
		flags |= flagRD
	}
	binary.BigEndian.PutUint16(out[2:], flags)
	if len(a.name) == e.nameLen {
		copy(out[headerLen:], a.name)
	}
	age := uint32(0)
	if now > e.stored {
		age = uint32((now - e.stored) / 1e9)
	}
	for i, o := range e.ttlOffs {
		ttl := a.staleTTL
		if ttl == 0 {
			ttl = e.ttls[i] - min(age, e.ttls[i])
		}
		binary.BigEndian.PutUint32(out[o:], ttl)
	}
	optLen := 0
	if a.hasOPT {
		optLen = 11
	}
	if a.limit > 0 && len(out)+optLen > a.limit {
		// Keep header and question only, flag truncation.
		qend := headerLen + e.nameLen + 4
		dst = dst[:start+qend]
		out = dst[start:]
		binary.BigEndian.PutUint16(out[2:], binary.BigEndian.Uint16(out[2:])|flagTC)
		binary.BigEndian.PutUint16(out[6:], 0)
		binary.BigEndian.PutUint16(out[8:], 0)
		binary.BigEndian.PutUint16(out[10:], 0)
	}
	if a.hasOPT {
		dst = appendOPT(dst, a.do)
		out = dst[start:]
		binary.BigEndian.PutUint16(out[10:], binary.BigEndian.Uint16(out[10:])+1)
	}
	return dst
}
