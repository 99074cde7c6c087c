package nodecache

import (
	"bytes"
	"hash/maphash"
	"sync"
	"sync/atomic"

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

// stored is what the LRU holds: the entry, its full key and the bytes it
// is accounted for.
type stored struct {
	name   []byte
	qtype  uint16
	qclass uint16
	bits   uint8
	size   int64
	e      *entry
}

func (s *stored) matches(k key) bool {
	return s.qtype == k.qtype && s.qclass == k.qclass && s.bits == k.bits && bytes.Equal(s.name, k.name)
}

// entryOverhead approximates what an entry costs besides its slices: the
// entry and stored structs, the LRU's list element and map slot.
const entryOverhead = 320

// entrySize is the bytes an entry is accounted for in the byte budget.
func entrySize(k key, e *entry) int64 {
	return int64(cap(e.msg) + 2*cap(e.ttlOffs) + 4*cap(e.ttls) + len(k.name) + entryOverhead)
}

// budget bounds the bytes held by one nodecache block's entries, success
// and denial alike: entry counts alone do not bound memory, since an answer
// over TCP may be 64 KiB.
type budget struct {
	max    int64
	used   atomic.Int64
	stores []*store      // every store charged to the budget
	next   atomic.Uint64 // round robin over their shards, for evictions
	nshard int           // shards of all stores
}

func newBudget(max int64) *budget { return &budget{max: max} }

// shardAt returns the i-th shard of all the budget's stores, modulo their
// number.
func (b *budget) shardAt(i uint64) (*store, *shard) {
	n := int(i % uint64(b.nshard))
	for _, s := range b.stores {
		if n < len(s.shards) {
			return s, s.shards[n]
		}
		n -= len(s.shards)
	}
	return nil, nil // unreachable: n < nshard
}

// fit evicts least recently used entries until the budget holds what it
// is charged, taking each shard's oldest in turn (the shards are one LRU
// each; hashing spreads entries evenly over them). keep, the entry just
// stored, is not evicted for itself.
func (b *budget) fit(keep *stored) {
	idle := 0
	for b.used.Load() > b.max && idle < b.nshard {
		s, sh := b.shardAt(b.next.Add(1))
		if sh.evictOldest(keep) {
			evictions.WithLabelValues(s.typ, "bytes").Inc()
			idle = 0
		} else {
			idle++
		}
	}
}

// budgets are the budgets of the running blocks, for the bytes gauge.
var (
	budgetsMu sync.Mutex
	budgets   = map[*budget]struct{}{}
)

func (b *budget) register() {
	budgetsMu.Lock()
	budgets[b] = struct{}{}
	budgetsMu.Unlock()
}

func (b *budget) unregister() {
	budgetsMu.Lock()
	delete(budgets, b)
	budgetsMu.Unlock()
}

// cachedBytes is what the running blocks' entries are accounted for.
func cachedBytes() int64 {
	budgetsMu.Lock()
	defer budgetsMu.Unlock()
	var n int64
	for b := range budgets {
		n += b.used.Load()
	}
	return n
}

// shard is one LRU of a store. Reads go to the LRU alone; mu orders the
// changes (add, remove, evictions) with the byte count.
type shard struct {
	mu  sync.Mutex
	lru *lru.Cache[uint64, *stored]
}

// evictOldest removes the shard's least recently used entry unless it is
// keep; it reports whether it removed one.
func (sh *shard) evictOldest(keep *stored) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, v, ok := sh.lru.GetOldest(); !ok || v == keep {
		return false
	}
	_, _, ok := sh.lru.RemoveOldest()
	return ok
}

// store is an LRU bounded by entry count and, with the other stores of its
// budget, by bytes; sharded so the fast-path threads and the CoreDNS
// goroutines rarely meet on one lock.
type store struct {
	shards  []*shard
	mask    uint64
	b       *budget
	typ     string // "success" or "denial", for metrics
	dropped func(*stored)
}

// newStore returns a store of that capacity charged to b; dropped (if not
// nil) learns of every entry evicted or removed, whatever the reason, so
// that nothing dropped here stays offloaded.
func newStore(typ string, capacity int, b *budget, dropped func(*stored)) *store {
	n := 1
	for n < 16 && capacity/(n*2) >= 256 {
		n *= 2
	}
	s := &store{shards: make([]*shard, n), mask: uint64(n - 1), b: b, typ: typ, dropped: dropped}
	per := (capacity + n - 1) / n
	for i := range s.shards {
		s.shards[i] = &shard{}
		s.shards[i].lru, _ = lru.NewWithEvict(max(per, 1), func(_ uint64, v *stored) {
			b.used.Add(-v.size)
			if dropped != nil {
				dropped(v)
			}
		})
	}
	b.stores = append(b.stores, s)
	b.nshard += n
	return s
}

func (s *store) shard(h uint64) *shard { return s.shards[h&s.mask] }

func (s *store) get(k key) *entry {
	v, ok := s.shard(k.hash).lru.Get(k.hash)
	if !ok || !v.matches(k) {
		return nil
	}
	return v.e
}

// peek is get without marking the entry used.
func (s *store) peek(k key) *entry {
	v, ok := s.shard(k.hash).lru.Peek(k.hash)
	if !ok || !v.matches(k) {
		return nil
	}
	return v.e
}

// add stores e under k, evicting for room: the least recently used entry of
// k's shard when the shard is full, then least recently used entries (see
// fit) while the budget is exceeded. An entry larger than the whole budget
// is not stored: add returns false.
func (s *store) add(k key, e *entry) bool {
	size := entrySize(k, e)
	if size > s.b.max {
		return false
	}
	v := &stored{name: append([]byte(nil), k.name...), qtype: k.qtype, qclass: k.qclass, bits: k.bits, size: size, e: e}
	sh := s.shard(k.hash)
	sh.mu.Lock()
	old, had := sh.lru.Peek(k.hash)
	s.b.used.Add(size)
	evicted := sh.lru.Add(k.hash, v)
	var collided *stored
	if had {
		// Replaced in place: the LRU calls no eviction callback.
		s.b.used.Add(-old.size)
		if !old.matches(k) {
			collided = old // another key with the same hash
		}
	}
	sh.mu.Unlock()
	if collided != nil && s.dropped != nil {
		s.dropped(collided)
	}
	if evicted {
		evictions.WithLabelValues(s.typ, "entries").Inc()
	}
	s.b.fit(v)
	return true
}

// remove deletes the entry for k if it is still e (a newer one stays).
func (s *store) remove(k key, e *entry) {
	sh := s.shard(k.hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if v, ok := sh.lru.Peek(k.hash); ok && v.e == e {
		sh.lru.Remove(k.hash)
	}
}

func (s *store) len() int {
	n := 0
	for _, sh := range s.shards {
		n += sh.lru.Len()
	}
	return n
}

func (s *store) purge() {
	for _, sh := range s.shards {
		sh.mu.Lock()
		sh.lru.Purge()
		sh.mu.Unlock()
	}
}
