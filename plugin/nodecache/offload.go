package nodecache

import (
	"bytes"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Offload is a cache below CoreDNS that answers hot entries before their
// queries reach any socket: dnsaccel's in-kernel cache (datapath/kcache).
// It is the plugin's one hook for the program embedding it: node-cache
// installs it with SetOffload (nodecache/kernelcache.go), converting each
// OffloadEntry with kcache.NewEntry. The plugin decides what it holds:
// entries asked for often enough that the fast path may serve (so no
// plugin before nodecache changes their answer), positive or NXDOMAIN,
// class IN. It replaces an offloaded entry when the cache refreshes it and
// withdraws it when the cache drops it; the offload itself never serves an
// entry past its TTL.
//
// Offer and Withdraw are called on the query path, one at a time per key
// and in the order the cache changed (so the offload never holds what the
// cache dropped, see noteHot): they must not block. Offer returns false
// when it could not take the entry (it will be offered again on a later
// hit).
type Offload interface {
	Offer(e *OffloadEntry) bool
	Withdraw(k OffloadKey)
	// Hits is how many queries the offload answered, for metrics.
	Hits() uint64
}

// OffloadKey is a cache key: lower-cased wire name, type, DO and CD bits.
type OffloadKey struct {
	Name  []byte
	Qtype uint16
	DO    bool
	CD    bool
}

// OffloadEntry is an answer as the cache renders it (kcache.Rendered has
// the same fields).
type OffloadEntry struct {
	Key OffloadKey
	// Msg is the response with ID 0, the question name lower-cased and no
	// OPT record; its records start at QuestionEnd. Answers carry each
	// query's ID, RD bit and letter case, and an OPT record when the
	// query has one.
	Msg         []byte
	QuestionEnd int
	TTLOffsets  []uint16 // offsets of the TTL fields in Msg
	TTLs        []uint32 // their values at age 0
	// Age is how long ago the TTLs were current; Remaining how much
	// longer the entry may be served.
	Age, Remaining time.Duration
}

type offloadConfig struct {
	o       Offload
	minHits uint32
	// held is what o holds, by key: every offer and withdrawal for a key
	// is decided and made under its shard's lock, so they reach o in the
	// order the cache changed (see offerLocked).
	held [64]heldShard
}

type heldShard struct {
	mu sync.Mutex
	m  map[uint64]*holder // by key hash
}

// holder is the entry o holds for a key, and the cache it came from.
type holder struct {
	c   *NodeCache
	e   *entry
	key OffloadKey
}

var offload atomic.Pointer[offloadConfig]

// SetOffload installs o for every nodecache instance of the process (the
// Corefile cannot name a Go object); an entry is offered once it has been
// answered from the cache minHits times. nil removes it.
func SetOffload(o Offload, minHits uint32) {
	if o == nil {
		offload.Store(nil)
		return
	}
	cfg := &offloadConfig{o: o, minHits: max(minHits, 1)}
	for i := range cfg.held {
		cfg.held[i].m = map[uint64]*holder{}
	}
	offload.Store(cfg)
}

var _ = promauto.NewCounterFunc(prometheus.CounterOpts{
	Namespace: plugin.Namespace, Subsystem: pluginName, Name: "offload_hits_total",
	Help: "Cache hits answered below CoreDNS by the offload (node-cache's in-kernel cache); with hits_total and fastpath_hits_total, every answer from the cache.",
}, func() float64 {
	if cfg := offload.Load(); cfg != nil {
		return float64(cfg.o.Hits())
	}
	return 0
})

// The offload must never answer what the cache would not. An entry leaves
// the cache (eviction, removal, replacement) concurrently with hits that
// offer it, so the entry's live flag says whether it is still the cache's,
// and per key the decision and the write to the offload happen under one
// lock: an entry is cleared from live before its key's lock is taken to
// withdraw it, so an offer under the lock either lands before the
// withdrawal or sees that the entry is gone. Nothing under these locks
// touches the cache's own locks, so eviction callbacks may run anywhere.

func (cfg *offloadConfig) shard(h uint64) *heldShard { return &cfg.held[h%uint64(len(cfg.held))] }

// offerLocked offers e (c's entry for k) in place of whatever o holds for
// k. It reports whether o now holds e; on failure o holds nothing for k.
func (cfg *offloadConfig) offerLocked(sh *heldShard, c *NodeCache, k key, e *entry) bool {
	if c.ctx.Err() != nil {
		return false // stopped (withdrawAll)
	}
	h := sh.m[k.hash]
	if h != nil && !h.holds(k) {
		// Another key with this hash: it makes room (its entry may be
		// offered again on a later hit).
		cfg.withdrawLocked(sh, k.hash)
		h = nil
	}
	ent := offloadEntry(k.name, k.qtype, k.bits, e, c.clock())
	if !cfg.o.Offer(ent) {
		if h != nil {
			cfg.withdrawLocked(sh, k.hash)
		}
		return false
	}
	// A predecessor of another cache (another port's block with the same
	// key) stays marked: it is not offered again, so two caches do not
	// take turns in the offload on every hit.
	e.offloaded.Store(true)
	sh.m[k.hash] = &holder{c: c, e: e, key: ent.Key}
	return true
}

func (h *holder) holds(k key) bool {
	return h.key.Qtype == k.qtype && h.key.DO == (k.bits&1 != 0) && h.key.CD == (k.bits&2 != 0) && bytes.Equal(h.key.Name, k.name)
}

func (cfg *offloadConfig) withdrawLocked(sh *heldShard, hash uint64) {
	h := sh.m[hash]
	if h == nil {
		return
	}
	delete(sh.m, hash)
	h.e.offloaded.Store(false)
	cfg.o.Withdraw(h.key)
}

// offloadable reports whether the offload may answer e at all.
func offloadable(k key, e *entry) bool {
	return e.fastOn.Load() != 0 && k.qclass == dns.ClassINET &&
		(e.rcode == dns.RcodeSuccess || e.rcode == dns.RcodeNameError)
}

// noteHot counts a hit on e and offers e to the offload once it is hot.
func (c *NodeCache) noteHot(k key, e *entry, now int64) {
	cfg := offload.Load()
	if cfg == nil || e.offloaded.Load() || !offloadable(k, e) || e.served.Add(1) < cfg.minHits {
		return
	}
	sh := cfg.shard(k.hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !e.live.Load() || e.offloaded.Load() {
		return // dropped or replaced since the lookup, or offered meanwhile
	}
	cfg.offerLocked(sh, c, k, e)
}

// replaced keeps the offload in step when e takes the place of old in the
// cache: an offloaded entry's successor is offloaded at once. The caller
// serialises replacements of one key (they happen in its flight).
func (c *NodeCache) replaced(k key, old, e *entry) {
	if old == nil {
		return
	}
	old.live.Store(false)
	cfg := offload.Load()
	if cfg == nil {
		return
	}
	sh := cfg.shard(k.hash)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if h := sh.m[k.hash]; h == nil || h.e != old {
		return
	}
	if e.live.Load() && offloadable(k, e) && cfg.offerLocked(sh, c, k, e) {
		return
	}
	cfg.withdrawLocked(sh, k.hash)
}

// dropped withdraws an evicted or removed entry. It is called after the
// entry has left the store.
func dropped(s *stored) {
	s.e.live.Store(false)
	cfg := offload.Load()
	if cfg == nil {
		return
	}
	h := makeKey(s.name, s.qtype, s.qclass, s.bits&1 != 0, s.bits&2 != 0).hash
	sh := cfg.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if held := sh.m[h]; held != nil && held.e == s.e {
		cfg.withdrawLocked(sh, h)
	}
}

// withdrawAll withdraws every entry of c the offload holds (c stops).
func (c *NodeCache) withdrawAll() {
	cfg := offload.Load()
	if cfg == nil {
		return
	}
	for i := range cfg.held {
		sh := &cfg.held[i]
		sh.mu.Lock()
		for h, held := range sh.m {
			if held.c == c {
				cfg.withdrawLocked(sh, h)
			}
		}
		sh.mu.Unlock()
	}
}

func offloadKey(name []byte, qtype uint16, bits uint8) OffloadKey {
	return OffloadKey{Name: name, Qtype: qtype, DO: bits&1 != 0, CD: bits&2 != 0}
}

func offloadEntry(name []byte, qtype uint16, bits uint8, e *entry, now int64) *OffloadEntry {
	return &OffloadEntry{
		Key:         offloadKey(append([]byte(nil), name...), qtype, bits),
		Msg:         e.msg,
		QuestionEnd: headerLen + e.nameLen + 4,
		TTLOffsets:  e.ttlOffs,
		TTLs:        e.ttls,
		Age:         time.Duration(max(0, now-e.stored)),
		Remaining:   time.Duration(e.expires - now),
	}
}
