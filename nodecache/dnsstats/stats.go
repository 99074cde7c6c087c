// Package dnsstats is node-cache's per-pod DNS accounting: who asks what,
// what fails, what the search path wastes, at bounded cost. It knows nothing
// of CoreDNS: node-cache feeds it the queries the nodecache plugin's UDP
// fast path answered (Record) and the per-client answer counters of the
// in-kernel cache (AddKernel), and resolves client addresses to pods
// through its pod index (Config.Pods).
//
// Memory is bounded whatever the clients do:
//   - clients (by address) are counted exactly, up to Config.MaxClients;
//     clients beyond it are summed into one "other" bucket;
//   - names are counted with the space-saving algorithm (Metwally et al.,
//     2005): Config.NameSlots counters in 16 shards, each shard a min-heap
//     by count; a new name takes the smallest counter's slot and inherits
//     its count as the error bound, so every name asked more often than
//     total/NameSlots is guaranteed a slot and the top names' counts are
//     over-estimated by at most that error (reported as error).
//
// Cardinality is bounded where it reaches Prometheus: only the top
// Config.TopK pods, namespaces and names become series, the rest are
// summed as "other", and Config.MaxSeries caps the series of one scrape.
package dnsstats

import (
	"container/heap"
	"hash/maphash"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// By is what answered a query.
type By uint8

const (
	ByKernel   By = iota // the in-kernel cache (a tc program at the pod's interface)
	ByCache              // node-cache's user-space cache (fast path or chain)
	ByUpstream           // an upstream, through node-cache
	ByNone               // nobody: dropped, or the upstream did not answer in time
	nBy
)

// ByNames are the answered_by label values, indexed by By.
var ByNames = [nBy]string{"kernel", "cache", "upstream", "none"}

func (b By) String() string {
	if b < nBy {
		return ByNames[b]
	}
	return "unknown"
}

// RcodeNames are the rcode label values: the RFC 1035 codes by number, the
// rest as "other".
var RcodeNames = [nRcode]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other"}

const nRcode = 7

func rcodeIndex(r int) int {
	if r >= 0 && r < nRcode-1 {
		return r
	}
	return nRcode - 1
}

// Buckets are the upper bounds of the latency histogram (seconds), as
// Prometheus buckets; a last implicit +Inf.
var Buckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

var bucketNs = func() []int64 {
	out := make([]int64, len(Buckets))
	for i, b := range Buckets {
		out[i] = int64(b * 1e9)
	}
	return out
}()

const nBuckets = 14 // len(Buckets)

// Event is one query as node-cache saw it.
type Event struct {
	Client netip.Addr
	// Name is the question name in wire format, in any letter case
	// (nil when the query could not be parsed). Record does not keep it.
	Name  []byte
	Qtype uint16
	Rcode int // of the answer sent; not counted when By is ByNone
	By    By
	// Latency is from the query's arrival to the answer leaving.
	Latency time.Duration
	// Timeout: the client got no answer in time (dropped, or the
	// upstream gave none before the deadline, answered SERVFAIL).
	Timeout bool
}

// Counters are one client's (pod's, namespace's) totals.
type Counters struct {
	Queries     uint64
	By          [nBy]uint64
	Rcodes      [nRcode]uint64
	Timeouts    uint64
	SearchWaste uint64
	// Latency is the histogram of user-space answers, not cumulative:
	// Latency[i] counts answers up to Buckets[i], the last over all.
	Latency    [nBuckets + 1]uint64
	LatencySum time.Duration
}

// Add adds o to c.
func (c *Counters) Add(o *Counters) {
	c.Queries += o.Queries
	for i := range c.By {
		c.By[i] += o.By[i]
	}
	for i := range c.Rcodes {
		c.Rcodes[i] += o.Rcodes[i]
	}
	c.Timeouts += o.Timeouts
	c.SearchWaste += o.SearchWaste
	for i := range c.Latency {
		c.Latency[i] += o.Latency[i]
	}
	c.LatencySum += o.LatencySum
}

// Answered is the number of latency observations.
func (c *Counters) Answered() uint64 {
	var n uint64
	for _, v := range c.Latency {
		n += v
	}
	return n
}

// Quantile estimates a latency quantile (0..1) from the histogram, as
// Prometheus's histogram_quantile does (linear within a bucket); 0 without
// observations.
func (c *Counters) Quantile(q float64) time.Duration {
	n := c.Answered()
	if n == 0 {
		return 0
	}
	rank := q * float64(n)
	var seen float64
	for i, v := range c.Latency {
		if float64(v) == 0 {
			continue
		}
		if seen+float64(v) >= rank {
			lo := 0.0
			if i > 0 {
				lo = Buckets[i-1]
			}
			if i == nBuckets {
				return time.Duration(Buckets[nBuckets-1] * 1e9)
			}
			hi := Buckets[i]
			f := (rank - seen) / float64(v)
			return time.Duration((lo + (hi-lo)*f) * 1e9)
		}
		seen += float64(v)
	}
	return time.Duration(Buckets[nBuckets-1] * 1e9)
}

// Pod is where a client address belongs.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"pod"`
}

// PodResolver maps client addresses to pods (node-cache's pod index).
type PodResolver interface {
	LookupPod(ip netip.Addr) (Pod, bool)
}

// Config bounds the accounting.
type Config struct {
	// TopK pods, namespaces and names become Prometheus series (default 50).
	TopK int
	// MaxClients client addresses are counted apart (default 16384); the
	// rest are summed as "other".
	MaxClients int
	// NameSlots is the number of name counters (default max(20*TopK, 1024)).
	NameSlots int
	// MaxSeries caps the series of one scrape (default 5000): pods,
	// namespaces and names past it are summed into "other".
	MaxSeries int
	// Pods resolves client addresses (nil: every client is its address).
	Pods PodResolver
	// ClusterDomain ("cluster.local") and NodeSearch (the node's search
	// domains, which the kubelet appends to ClusterFirst pods') make up
	// pods' search paths, for the search-path waste.
	ClusterDomain string
	NodeSearch    []string
}

// DefaultTopK is the default of Config.TopK.
const DefaultTopK = 50

const (
	clientShards = 32
	nameShards   = 16
)

// Stats is the accounting of one node-cache.
type Stats struct {
	cfg     Config
	seed    maphash.Seed
	clients [clientShards]clientShard
	names   [nameShards]nameShard
	waste   *searchDomains
	log     atomic.Pointer[QueryLog]
	// sync, if set, is called before every snapshot (the kernel's
	// counters are read then, so what is shown is current).
	sync atomic.Pointer[func()]
	// dropped counts series the cap kept out of scrapes.
	dropped atomic.Uint64
}

type client struct {
	Counters
	pod   Pod
	known bool // pod resolved to a pod of the index
}

type clientShard struct {
	mu    sync.Mutex
	m     map[netip.Addr]*client
	max   int
	other Counters // clients over the bound
	// overflow counts events summed into other.
	overflow uint64
}

// New returns empty accounting.
func New(cfg Config) *Stats {
	if cfg.TopK <= 0 {
		cfg.TopK = DefaultTopK
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = 16384
	}
	if cfg.NameSlots <= 0 {
		cfg.NameSlots = max(20*cfg.TopK, 1024)
	}
	if cfg.MaxSeries <= 0 {
		cfg.MaxSeries = 5000
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = "cluster.local"
	}
	s := &Stats{cfg: cfg, seed: maphash.MakeSeed(), waste: newSearchDomains(cfg.ClusterDomain, cfg.NodeSearch)}
	perShard := max(1, (cfg.MaxClients+clientShards-1)/clientShards)
	for i := range s.clients {
		s.clients[i].m = map[netip.Addr]*client{}
		s.clients[i].max = perShard
	}
	slots := max(1, (cfg.NameSlots+nameShards-1)/nameShards)
	for i := range s.names {
		s.names[i].m = map[string]*nameEntry{}
		s.names[i].max = slots
	}
	return s
}

// Config returns the configuration in effect (defaults applied).
func (s *Stats) Config() Config { return s.cfg }

// SetSync installs f, called before every snapshot and scrape.
func (s *Stats) SetSync(f func()) {
	if f == nil {
		s.sync.Store(nil)
		return
	}
	s.sync.Store(&f)
}

func (s *Stats) doSync() {
	if f := s.sync.Load(); f != nil {
		(*f)()
	}
}

func (s *Stats) clientShard(ip netip.Addr) *clientShard {
	b := ip.As16()
	return &s.clients[maphash.Bytes(s.seed, b[:])%clientShards]
}

// lookupClient returns the counters of ip, creating them (and resolving
// the pod) at first sight; sh.mu must be held.
func (s *Stats) lookupClient(sh *clientShard, ip netip.Addr) *client {
	c := sh.m[ip]
	if c != nil {
		return c
	}
	if len(sh.m) >= sh.max {
		return nil
	}
	c = &client{}
	s.resolve(c, ip)
	sh.m[ip] = c
	return c
}

func (s *Stats) resolve(c *client, ip netip.Addr) {
	if s.cfg.Pods != nil {
		if p, ok := s.cfg.Pods.LookupPod(ip); ok {
			c.pod, c.known = p, true
			return
		}
	}
	if c.known || c.pod.Name == "" {
		c.pod, c.known = Pod{Name: ip.String()}, false
	}
}

// Record counts one query answered (or not) in user space. It never
// blocks on anything but short critical sections and allocates only for a
// client or name seen for the first time.
func (s *Stats) Record(ev Event) {
	ip := ev.Client.Unmap()
	var low [256]byte
	name := lowerWire(low[:0], ev.Name)

	sh := s.clientShard(ip)
	sh.mu.Lock()
	c := s.lookupClient(sh, ip)
	var cnt *Counters
	var pod Pod
	if c != nil {
		if !c.known && s.cfg.Pods != nil {
			// Not a pod when first seen: maybe the pod index had not
			// synced, or the pod is new. Asked again (clients outside
			// any pod are few: host network, node processes).
			s.resolve(c, ip)
		}
		cnt, pod = &c.Counters, c.pod
	} else {
		cnt = &sh.other
		sh.overflow++
	}
	cnt.Queries++
	cnt.By[min(ev.By, ByNone)]++
	if ev.By != ByNone {
		cnt.Rcodes[rcodeIndex(ev.Rcode)]++
		lat := int64(ev.Latency)
		i := 0
		for i < nBuckets && lat > bucketNs[i] {
			i++
		}
		cnt.Latency[i]++
		cnt.LatencySum += ev.Latency
	}
	if ev.Timeout {
		cnt.Timeouts++
	}
	nx := ev.By != ByNone && ev.Rcode == 3
	if nx && c != nil && c.known && s.waste.wasted(name, pod.Namespace) {
		cnt.SearchWaste++
	}
	sh.mu.Unlock()

	if len(name) > 0 {
		s.countName(name, nx)
	}
	if l := s.log.Load(); l != nil {
		l.offer(pod, ip, ev, name)
	}
}

// AddKernel counts answers the in-kernel cache gave client ip: noerror,
// nxdomain and other rcodes (deltas since the last call).
func (s *Stats) AddKernel(ip netip.Addr, noerror, nxdomain, other uint64) {
	n := noerror + nxdomain + other
	if n == 0 {
		return
	}
	ip = ip.Unmap()
	sh := s.clientShard(ip)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	c := s.lookupClient(sh, ip)
	cnt := &sh.other
	if c != nil {
		cnt = &c.Counters
	}
	cnt.Queries += n
	cnt.By[ByKernel] += n
	cnt.Rcodes[0] += noerror
	cnt.Rcodes[3] += nxdomain
	cnt.Rcodes[nRcode-1] += other
}

// lowerWire appends the lower-cased wire name to dst (at most 255 bytes).
func lowerWire(dst, name []byte) []byte {
	if len(name) > 255 {
		name = name[:255]
	}
	for _, b := range name {
		if b >= 'A' && b <= 'Z' {
			b += 'a' - 'A'
		}
		dst = append(dst, b)
	}
	return dst
}

// ---- names: space-saving ----

type nameEntry struct {
	name  string // wire format, lower case
	count uint64
	nx    uint64
	err   uint64 // over-estimation bound (the count inherited)
	idx   int    // in the heap
}

type nameShard struct {
	mu    sync.Mutex
	m     map[string]*nameEntry
	h     nameHeap
	max   int
	total uint64
	nx    uint64
}

type nameHeap []*nameEntry

func (h nameHeap) Len() int           { return len(h) }
func (h nameHeap) Less(i, j int) bool { return h[i].count < h[j].count }
func (h nameHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx = i
	h[j].idx = j
}
func (h *nameHeap) Push(x any) {
	e := x.(*nameEntry)
	e.idx = len(*h)
	*h = append(*h, e)
}
func (h *nameHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func (s *Stats) countName(name []byte, nx bool) {
	sh := &s.names[maphash.Bytes(s.seed, name)%nameShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.total++
	if nx {
		sh.nx++
	}
	if e := sh.m[string(name)]; e != nil {
		e.count++
		if nx {
			e.nx++
		}
		heap.Fix(&sh.h, e.idx)
		return
	}
	e := &nameEntry{name: string(name), count: 1}
	if len(sh.h) >= sh.max {
		// Space-saving: the smallest counter's slot, with its count.
		min := sh.h[0]
		delete(sh.m, min.name)
		e.count, e.err, e.idx = min.count+1, min.count, 0
		sh.h[0] = e
		sh.m[e.name] = e
		if nx {
			e.nx = 1
		}
		heap.Fix(&sh.h, 0)
		return
	}
	if nx {
		e.nx = 1
	}
	sh.m[e.name] = e
	heap.Push(&sh.h, e)
}

// ---- snapshots ----

// PodCounters are one pod's totals (or one namespace's: Pod empty).
type PodCounters struct {
	Pod
	Known bool // a pod of the index (else Name is the client address)
	Counters
}

// NameCount is one name's count (queries that reached user space).
type NameCount struct {
	Name     string // presentation format, fully qualified
	Queries  uint64
	NXDomain uint64
	Error    uint64 // the count may be over by this much (space-saving)
}

// Snapshot is everything at one moment.
type Snapshot struct {
	Pods       []PodCounters // by queries, descending
	Namespaces []PodCounters // Namespace set, Name empty; "" for clients outside any pod
	Names      []NameCount   // by queries, descending (at most NameSlots)
	// Overflow are the clients beyond MaxClients, summed.
	Overflow Counters
	// NameTotal, NameNX are all name observations, counted exactly.
	NameTotal, NameNX uint64
	Clients           int
}

// Snapshot aggregates the clients by pod and namespace, re-resolving each
// client address (a pod's address may have changed hands).
func (s *Stats) Snapshot() Snapshot {
	s.doSync()
	pods := map[Pod]*PodCounters{}
	var snap Snapshot
	for i := range s.clients {
		sh := &s.clients[i]
		sh.mu.Lock()
		for ip, c := range sh.m {
			s.resolve(c, ip)
			p := pods[c.pod]
			if p == nil {
				p = &PodCounters{Pod: c.pod, Known: c.known}
				pods[c.pod] = p
			}
			p.Counters.Add(&c.Counters)
			snap.Clients++
		}
		snap.Overflow.Add(&sh.other)
		sh.mu.Unlock()
	}
	nss := map[string]*PodCounters{}
	for _, p := range pods {
		snap.Pods = append(snap.Pods, *p)
		ns := p.Namespace
		n := nss[ns]
		if n == nil {
			n = &PodCounters{Pod: Pod{Namespace: ns}, Known: p.Known}
			nss[ns] = n
		}
		n.Counters.Add(&p.Counters)
	}
	for _, n := range nss {
		snap.Namespaces = append(snap.Namespaces, *n)
	}
	sortPods(snap.Pods)
	sortPods(snap.Namespaces)
	for i := range s.names {
		sh := &s.names[i]
		sh.mu.Lock()
		snap.NameTotal += sh.total
		snap.NameNX += sh.nx
		for _, e := range sh.h {
			snap.Names = append(snap.Names, NameCount{Name: wireToText(e.name), Queries: e.count, NXDomain: e.nx, Error: e.err})
		}
		sh.mu.Unlock()
	}
	sort.Slice(snap.Names, func(i, j int) bool {
		a, b := snap.Names[i], snap.Names[j]
		if a.Queries != b.Queries {
			return a.Queries > b.Queries
		}
		return a.Name < b.Name
	})
	return snap
}

func sortPods(p []PodCounters) {
	sort.Slice(p, func(i, j int) bool {
		if p[i].Queries != p[j].Queries {
			return p[i].Queries > p[j].Queries
		}
		if p[i].Namespace != p[j].Namespace {
			return p[i].Namespace < p[j].Namespace
		}
		return p[i].Name < p[j].Name
	})
}

// wireToText is a wire-format name in presentation format ("." for the
// root); bytes outside letters, digits, '-' and '_' are escaped \DDD.
func wireToText(w string) string {
	if len(w) == 0 || w[0] == 0 {
		return "."
	}
	out := make([]byte, 0, len(w)+1)
	for i := 0; i < len(w); {
		l := int(w[i])
		if l == 0 {
			break
		}
		i++
		if l > 63 || i+l > len(w) {
			break // malformed: stop at what was readable
		}
		for _, b := range []byte(w[i : i+l]) {
			switch {
			case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '-', b == '_', b == '*':
				out = append(out, b)
			default:
				out = append(out, '\\', '0'+b/100, '0'+b/10%10, '0'+b%10)
			}
		}
		out = append(out, '.')
		i += l
	}
	if len(out) == 0 {
		return "."
	}
	return string(out)
}
