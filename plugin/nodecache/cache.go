package nodecache

import (
	"bytes"
	"hash/maphash"

	lru "github.com/hashicorp/golang-lru/v2"
)

// key identifies a cache entry: the lower-cased wire name, type, class and
// the DO and CD bits (RFC 4035 answers differ with them). It is hashed to a
// uint64; the entry keeps the full key so a hash collision is a miss, not a
// wrong answer.
type key struct {
	hash   uint64
	name   []byte // lower-cased wire name
	qtype  uint16
	qclass uint16
	bits   uint8 // 1 = DO, 2 = CD
}

var keySeed = maphash.MakeSeed()

func makeKey(lname []byte, qtype, qclass uint16, do, cd bool) key {
	k := key{name: lname, qtype: qtype, qclass: qclass}
	if do {
		k.bits |= 1
	}
	if cd {
		k.bits |= 2
	}
	var h maphash.Hash
	h.SetSeed(keySeed)
	h.Write(lname)
	h.Write([]byte{byte(qtype >> 8), byte(qtype), byte(qclass >> 8), byte(qclass), k.bits})
	k.hash = h.Sum64()
	return k
}

// stored is what the LRU holds: the entry and its full key.
type stored struct {
	name   []byte
	qtype  uint16
	qclass uint16
	bits   uint8
	e      *entry
}

func (s *stored) matches(k key) bool {
	return s.qtype == k.qtype && s.qclass == k.qclass && s.bits == k.bits && bytes.Equal(s.name, k.name)
}

// store is a capacity-bounded LRU, sharded so the fast-path threads and the
// CoreDNS goroutines rarely meet on one lock.
type store struct {
	shards []*lru.Cache[uint64, *stored]
	mask   uint64
}

// newStore returns a store of that capacity; dropped (if not nil) learns of
// every entry evicted or removed.
func newStore(capacity int, dropped func(*stored)) *store {
	n := 1
	for n < 16 && capacity/(n*2) >= 256 {
		n *= 2
	}
	s := &store{shards: make([]*lru.Cache[uint64, *stored], n), mask: uint64(n - 1)}
	per := (capacity + n - 1) / n
	for i := range s.shards {
		if dropped != nil {
			s.shards[i], _ = lru.NewWithEvict(max(per, 1), func(_ uint64, v *stored) { dropped(v) })
		} else {
			s.shards[i], _ = lru.New[uint64, *stored](max(per, 1))
		}
	}
	return s
}

func (s *store) shard(h uint64) *lru.Cache[uint64, *stored] { return s.shards[h&s.mask] }

func (s *store) get(k key) *entry {
	v, ok := s.shard(k.hash).Get(k.hash)
	if !ok || !v.matches(k) {
		return nil
	}
	return v.e
}

// peek is get without marking the entry used.
func (s *store) peek(k key) *entry {
	v, ok := s.shard(k.hash).Peek(k.hash)
	if !ok || !v.matches(k) {
		return nil
	}
	return v.e
}

// add stores e under k and reports whether an older entry was evicted to
// make room.
func (s *store) add(k key, e *entry) (evicted bool) {
	name := append([]byte(nil), k.name...)
	return s.shard(k.hash).Add(k.hash, &stored{name: name, qtype: k.qtype, qclass: k.qclass, bits: k.bits, e: e})
}

// remove deletes the entry for k if it is still e (a newer one stays).
func (s *store) remove(k key, e *entry) {
	sh := s.shard(k.hash)
	if v, ok := sh.Peek(k.hash); ok && v.e == e {
		sh.Remove(k.hash)
	}
}

func (s *store) len() int {
	n := 0
	for _, sh := range s.shards {
		n += sh.Len()
	}
	return n
}

func (s *store) purge() {
	for _, sh := range s.shards {
		sh.Purge()
	}
}
