package nodecache

import (
	"sync/atomic"
	"time"

	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Offload is a cache below CoreDNS that answers hot entries before their
// queries reach any socket: dnsaccel's in-kernel cache (datapath/kcache),
// set up by node-cache. The plugin decides what it holds: entries asked for
// often enough that the fast path may serve (so no plugin before nodecache
// changes their answer), positive or NXDOMAIN, class IN. It replaces an
// offloaded entry when the cache refreshes it and withdraws it when the
// cache drops it; the offload itself never serves an entry past its TTL.
//
// Offer and Withdraw are called on the query path and under cache locks:
// they must not block. Offer returns false when it could not take the entry
// (it will be offered again on a later hit).
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

// OffloadEntry is an answer as the cache renders it.
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
}

var offload atomic.Pointer[offloadConfig]

// SetOffload installs o for every nodecache instance of the process; an
// entry is offered once it has been answered from the cache minHits times.
// nil removes it.
func SetOffload(o Offload, minHits uint32) {
	if o == nil {
		offload.Store(nil)
		return
	}
	offload.Store(&offloadConfig{o: o, minHits: max(minHits, 1)})
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

// noteHot counts a hit on e and offers e to the offload once it is hot.
func (c *NodeCache) noteHot(k key, e *entry, now int64) {
	cfg := offload.Load()
	if cfg == nil || e.offloaded.Load() || e.fastOn.Load() == 0 || k.qclass != dns.ClassINET {
		return
	}
	if e.rcode != dns.RcodeSuccess && e.rcode != dns.RcodeNameError {
		return
	}
	if e.served.Add(1) < cfg.minHits || !e.offloaded.CompareAndSwap(false, true) {
		return
	}
	if !cfg.o.Offer(offloadEntry(k.name, k.qtype, k.bits, e, now)) {
		e.offloaded.Store(false)
	}
}

// replaced keeps the offload in step when e takes the place of old: an
// offloaded entry's successor is offloaded at once.
func (c *NodeCache) replaced(k key, old, e *entry) {
	cfg := offload.Load()
	if cfg == nil || old == nil || !old.offloaded.Load() {
		return
	}
	if e.fastOn.Load() != 0 && (e.rcode == dns.RcodeSuccess || e.rcode == dns.RcodeNameError) &&
		e.offloaded.CompareAndSwap(false, true) && cfg.o.Offer(offloadEntry(k.name, k.qtype, k.bits, e, c.clock())) {
		return
	}
	e.offloaded.Store(false)
	cfg.o.Withdraw(offloadKey(k.name, k.qtype, k.bits))
}

// dropped withdraws an evicted or removed entry.
func dropped(s *stored) {
	if cfg := offload.Load(); cfg != nil && s.e.offloaded.Load() {
		cfg.o.Withdraw(offloadKey(s.name, s.qtype, s.bits))
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
