package nodecache

import (
	"github.com/coredns/coredns/plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics follow CoreDNS conventions: coredns_nodecache_*, registered on the
// default registry that the prometheus plugin serves.
var (
	requests = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "requests_total",
		Help: "Queries that reached the cache through the plugin chain.",
	}, []string{"server"})
	hits = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "hits_total",
		Help: "Cache hits through the plugin chain, by cache type.",
	}, []string{"server", "type"})
	misses = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "misses_total",
		Help: "Cache misses.",
	}, []string{"server"})
	fastHits = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "fastpath_hits_total",
		Help: "Cache hits answered by the UDP fast path without entering the plugin chain.",
	}, []string{"listener"})
	fastPassed = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "fastpath_passed_total",
		Help: "Queries the UDP fast path handed to the plugin chain.",
	}, []string{"listener"})
	fastMisses = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "fastpath_misses_total",
		Help: "Cache misses the UDP fast path sent upstream itself, without the plugin chain.",
	}, []string{"listener"})
	coalesced = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "coalesced_total",
		Help: "Misses that waited for an upstream query already in flight instead of sending their own.",
	}, []string{"server"})
	servedStale = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "served_stale_total",
		Help: "Expired answers served because no upstream answered.",
	}, []string{"server"})
	prefetches = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "prefetch_total",
		Help: "Popular entries refreshed before they expired.",
	})
	evictions = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "evictions_total",
		Help: "Entries evicted to make room, by cache type and reason: entries (the cache type's capacity) or bytes (the block's max_bytes).",
	}, []string{"type", "reason"})
	_ = promauto.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "bytes",
		Help: "Bytes the cached entries of every nodecache block are accounted for (messages and bookkeeping), each block bounded by its max_bytes.",
	}, func() float64 { return float64(cachedBytes()) })
	entries = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace, Subsystem: pluginName, Name: "entries",
		Help: "Entries in the cache, by cache type.",
	}, []string{"server", "type"})
)
