package nodecache

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath/kcache"
	nodecacheplugin "github.com/dnsaccel/dnsaccel/plugin/nodecache"
)

// KernelCache are the in-kernel cache's flags.
type KernelCache struct {
	On bool // --kernel-cache
	// Explicit is set when --kernel-cache was given: then a kernel that
	// cannot run it is an error, not a note in the log.
	Explicit bool
	MaxBytes int // --kernel-cache-max-bytes
	// Interfaces is --kernel-cache-interfaces: a regular expression the
	// names of the host interfaces to attach to must match (empty: every
	// veth).
	Interfaces string
	// NetnsDir is --kernel-cache-netns-dir: where the container runtime
	// bind-mounts pods' network namespaces; in each, IPVLAN and MACVLAN
	// interfaces get the egress program (empty: none).
	NetnsDir string
}

// DefaultKernelCacheMaxBytes is the largest response kept in the kernel:
// what fits a DNS message without EDNS0.
const DefaultKernelCacheMaxBytes = 512

func (k *KernelCache) validate() error {
	if k.MaxBytes < 64 || k.MaxBytes > kcache.MaxResponseBytes {
		return fmt.Errorf("--kernel-cache-max-bytes %d: want 64 to %d", k.MaxBytes, kcache.MaxResponseBytes)
	}
	if _, err := k.interfaces(); err != nil {
		return err
	}
	return nil
}

// interfaces compiles --kernel-cache-interfaces (nil: every veth).
func (k *KernelCache) interfaces() (*regexp.Regexp, error) {
	if k.Interfaces == "" {
		return nil, nil
	}
	re, err := regexp.Compile(k.Interfaces)
	if err != nil {
		return nil, fmt.Errorf("--kernel-cache-interfaces %q: %w", k.Interfaces, err)
	}
	return re, nil
}

// KernelCacheConfig configures the in-kernel cache: hot answers served by a
// tc program on pods' interfaces, before their queries reach node-cache.
type KernelCacheConfig struct {
	// Addrs are the addresses the kernel answers for (the cache's local
	// IPs, port 53).
	Addrs []netip.Addr
	// MaxBytes is the largest response answered from the kernel.
	MaxBytes int
	// Interfaces selects the host interfaces the program goes on (the
	// host ends of pods' veths); default: every veth.
	Interfaces *regexp.Regexp
	// MinHits is how many cache hits make an entry hot (default 2).
	MinHits uint32
	// NetnsDir is where pods' network namespaces are bind-mounted: pod
	// interfaces without a host end (IPVLAN, MACVLAN) get the egress
	// program there (empty: not watched).
	NetnsDir string
}

// kernelCache is node-cache's side of the in-kernel cache: it implements the
// nodecache plugin's Offload by writing offers and withdrawals to the BPF
// map at once (one syscall each, in the order the cache makes them, so the
// kernel never holds an entry the cache has dropped), and keeps the program
// on every pod interface.
type kernelCache struct {
	kc  *kcache.Cache
	log *slog.Logger
	cfg KernelCacheConfig
	wg  sync.WaitGroup
}

// startKernelCache loads the program, attaches it to the pod interfaces that
// exist and those that appear, and installs it as the plugin's offload. It
// runs until ctx ends; the returned stop detaches everything and waits.
func startKernelCache(ctx context.Context, cfg KernelCacheConfig, log *slog.Logger) (stop func(), err error) {
	if cfg.MinHits == 0 {
		cfg.MinHits = 2
	}
	kc, err := kcache.Open(kcache.Options{Addrs: cfg.Addrs, MaxResponse: cfg.MaxBytes})
	if err != nil {
		return nil, err
	}
	k := &kernelCache{kc: kc, log: log, cfg: cfg}
	ctx, cancel := context.WithCancel(ctx)

	// Subscribe before listing so no interface slips between the two.
	updates := make(chan netlink.LinkUpdate, 256)
	if err := netlink.LinkSubscribeWithOptions(updates, ctx.Done(), netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) { log.Warn("kernel cache: interface watch", "err", err) },
	}); err != nil {
		cancel()
		kc.Close()
		return nil, fmt.Errorf("kernel cache: watch interfaces: %w", err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		cancel()
		kc.Close()
		return nil, fmt.Errorf("kernel cache: list interfaces: %w", err)
	}
	for _, l := range links {
		k.linkChanged(l, false)
	}
	if cfg.NetnsDir != "" {
		// Without it the host ends still get the program: a warning, not
		// a failure.
		if w, err := newPodNetnsWatch(kc, cfg.NetnsDir, log); err != nil {
			log.Warn("kernel cache: pods' interfaces without a host end (IPVLAN, MACVLAN) not watched", "err", err)
		} else {
			k.wg.Add(1)
			go func() {
				defer k.wg.Done()
				w.run(ctx)
			}()
		}
	}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case u, ok := <-updates:
				if !ok {
					return
				}
				k.linkChanged(u.Link, u.Header.Type == unix.RTM_DELLINK)
			}
		}
	}()
	// The nodecache plugin's one hook (plugin/nodecache/offload.go): every
	// nodecache block of the Corefile offers its hot entries to k.
	nodecacheplugin.SetOffload(k, cfg.MinHits)
	currentKernelCache.Store(k)
	log.Info("kernel cache on", "addresses", cfg.Addrs, "max_bytes", cfg.MaxBytes, "interfaces", len(kc.Attached()), "netns_dir", cfg.NetnsDir)
	return func() {
		nodecacheplugin.SetOffload(nil, 0)
		currentKernelCache.CompareAndSwap(k, nil)
		cancel()
		k.wg.Wait()
		if err := kc.Close(); err != nil {
			log.Warn("kernel cache: close", "err", err)
		}
	}, nil
}

// podInterface reports whether l is the host end of a pod's interface.
func (k *kernelCache) podInterface(l netlink.Link) bool {
	if k.cfg.Interfaces != nil {
		return k.cfg.Interfaces.MatchString(l.Attrs().Name)
	}
	return l.Type() == "veth"
}

func (k *kernelCache) linkChanged(l netlink.Link, deleted bool) {
	if !k.podInterface(l) {
		return
	}
	idx := l.Attrs().Index
	if deleted {
		k.kc.Detach(idx, false)
		return
	}
	if err := k.kc.Attach(idx, false); err != nil {
		// The interface may be going away as we look at it.
		k.log.Debug("kernel cache: attach", "interface", l.Attrs().Name, "err", err)
	}
}

// Offer implements nodecache.Offload. An answer too large for the kernel
// counts as taken: offering it again would not make it fit.
func (k *kernelCache) Offer(e *nodecacheplugin.OffloadEntry) bool {
	entry, err := kcache.NewEntry(kcache.Rendered{
		Msg: e.Msg, QuestionEnd: e.QuestionEnd, TTLOffsets: e.TTLOffsets, TTLs: e.TTLs,
		Age: e.Age, Remaining: e.Remaining,
	})
	key := kernelKey(e.Key)
	if err != nil || !k.kc.Fits(key, entry) {
		return true
	}
	if err := k.kc.Put(key, entry); err != nil {
		k.log.Debug("kernel cache: put", "err", err)
		return false
	}
	return true
}

// Withdraw implements nodecache.Offload.
func (k *kernelCache) Withdraw(key nodecacheplugin.OffloadKey) {
	if err := k.kc.Delete(kernelKey(key)); err != nil {
		k.log.Warn("kernel cache: delete", "err", err)
	}
}

// Hits implements nodecache.Offload.
func (k *kernelCache) Hits() uint64 {
	s, err := k.kc.Stats()
	if err != nil {
		return 0
	}
	return s.Hits
}

func kernelKey(k nodecacheplugin.OffloadKey) kcache.Key {
	return kcache.Key{Name: k.Name, Qtype: k.Qtype, DO: k.DO, CD: k.CD}
}

// currentKernelCache is the running kernel cache, for metrics.
var currentKernelCache atomic.Pointer[kernelCache]

var (
	descKCInterfaces = prometheus.NewDesc("dnsaccel_nodecache_kernel_cache_interfaces",
		"Pod interfaces the in-kernel cache program is attached to (0: kernel cache off).", nil, nil)
	descKCEntries = prometheus.NewDesc("dnsaccel_nodecache_kernel_cache_entries",
		"Answers held in the kernel map (expired ones included until replaced or evicted).", nil, nil)
	descKCQueries = prometheus.NewDesc("dnsaccel_nodecache_kernel_cache_queries_total",
		"Queries to the cache's address seen by the in-kernel cache, by result: hit (answered in the kernel; also in coredns_nodecache_offload_hits_total), miss, expired, passed (not answerable in the kernel: TCP, EDNS options, too large), error.", []string{"result"}, nil)
)

type kernelCacheCollector struct{}

func (kernelCacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descKCInterfaces
	ch <- descKCEntries
	ch <- descKCQueries
}

func (kernelCacheCollector) Collect(ch chan<- prometheus.Metric) {
	k := currentKernelCache.Load()
	if k == nil {
		ch <- prometheus.MustNewConstMetric(descKCInterfaces, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descKCInterfaces, prometheus.GaugeValue, float64(len(k.kc.Attached())))
	ch <- prometheus.MustNewConstMetric(descKCEntries, prometheus.GaugeValue, float64(k.kc.Len()))
	if st, err := k.kc.Stats(); err == nil {
		for name, v := range map[string]uint64{"hit": st.Hits, "miss": st.Misses, "expired": st.Expired, "passed": st.Passed, "error": st.Errors} {
			ch <- prometheus.MustNewConstMetric(descKCQueries, prometheus.CounterValue, float64(v), name)
		}
	}
}

func init() { prometheus.MustRegister(kernelCacheCollector{}) }
