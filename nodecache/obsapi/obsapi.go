// Package obsapi is the JSON of node-cache's observability endpoint
// (--observe), shared by node-cache and dnsaccelctl. Version 1; fields are
// only ever added.
package obsapi

import "time"

// Paths served on --observe.
const (
	PathTop          = "/v1/top"            // ?by=pods|namespaces|names&k=N
	PathCache        = "/v1/cache"          // the cache: size, hit ratio, kernel share, hottest names
	PathSteering     = "/v1/steering"       // VIPs, heartbeat, fallback, links
	PathQueryLog     = "/v1/querylog"       // GET status, POST turn on (LogRequest), DELETE turn off
	PathQueryLogFeed = "/v1/querylog/lines" // JSON lines: the log so far, then (?follow=true) new ones
)

// Top is the answer of PathTop.
type Top struct {
	Node  string    `json:"node"`
	By    string    `json:"by"`    // pods, namespaces or names
	Since time.Time `json:"since"` // when the accounting started: counts are since then
	Rows  []Row     `json:"rows"`  // the top K, by queries
	Other *Row      `json:"other,omitempty"`
	Total Row       `json:"total"`
}

// Row is one pod's, namespace's or name's counts.
type Row struct {
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`  // a client outside any pod: its address
	Name      string `json:"name,omitempty"` // by=names
	Queries   uint64 `json:"queries"`
	// By what answered (pods, namespaces; names count user space only).
	Kernel   uint64 `json:"kernel"`
	Cache    uint64 `json:"cache"`
	Upstream uint64 `json:"upstream"`
	NoAnswer uint64 `json:"no_answer"`
	NXDomain uint64 `json:"nxdomain"`
	ServFail uint64 `json:"servfail"`
	Timeouts uint64 `json:"timeouts"`
	// SearchWaste: NXDOMAIN answers for search-path candidates.
	SearchWaste uint64 `json:"search_waste"`
	// P50Ms, P99Ms: latency of user-space answers (histogram estimate).
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	// Error bounds a name's over-count (space-saving).
	Error uint64 `json:"error,omitempty"`
}

// Cache is the answer of PathCache.
type Cache struct {
	Node     string `json:"node"`
	Entries  int64  `json:"entries"`   // in the user-space cache, every block
	Bytes    int64  `json:"bytes"`     // accounted to them
	MaxBytes int64  `json:"max_bytes"` // the byte budget of each generated block (0: --conf)
	// Answers from the cache: user space (chain and fast path) and the
	// kernel; misses went upstream.
	Hits       uint64 `json:"hits"`
	KernelHits uint64 `json:"kernel_hits"`
	Misses     uint64 `json:"misses"`
	// HitRatio = (Hits+KernelHits)/(Hits+KernelHits+Misses);
	// KernelShare = KernelHits/(Hits+KernelHits+Misses).
	HitRatio    float64 `json:"hit_ratio"`
	KernelShare float64 `json:"kernel_share"`
	// The in-kernel cache: entries in its map, interfaces it is on, the
	// largest answer it gives.
	Kernel           bool  `json:"kernel"`
	KernelEntries    int64 `json:"kernel_entries"`
	KernelInterfaces int64 `json:"kernel_interfaces"`
	KernelMaxBytes   int   `json:"kernel_max_bytes"`
	Hottest          []Row `json:"hottest"` // names, by queries
}

// Steering is the answer of PathSteering.
type Steering struct {
	Node     string   `json:"node"`
	Enabled  bool     `json:"enabled"`
	VIPs     []string `json:"vips,omitempty"`
	LocalIPs []string `json:"local_ips,omitempty"`
	// HeartbeatAgeSeconds is -1 when there was never a heartbeat.
	HeartbeatAgeSeconds     float64 `json:"heartbeat_age_seconds"`
	HeartbeatTimeoutSeconds float64 `json:"heartbeat_timeout_seconds"`
	// Fallback: the heartbeat is stale, pods' queries go to the VIPs
	// untouched (the cluster DNS).
	Fallback bool   `json:"fallback"`
	Notrack  bool   `json:"notrack"`
	Cgroup   string `json:"cgroup,omitempty"`
	Pins     string `json:"pins,omitempty"`
	// Links: the cgroup hooks attached (bpf_links); KernelCacheLinks: pod
	// interfaces carrying the in-kernel cache.
	Links            int               `json:"links"`
	KernelCacheLinks int               `json:"kernel_cache_links"`
	Operations       map[string]uint64 `json:"operations,omitempty"`
}

// LogRequest turns the query log on (POST PathQueryLog).
type LogRequest struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod,omitempty"` // empty: the whole namespace
	Sample    int    `json:"sample,omitempty"`
	Duration  string `json:"duration,omitempty"` // Go duration, default 5m, at most 1h
}
