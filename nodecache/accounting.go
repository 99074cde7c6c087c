package nodecache

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/dnsaccel/dnsaccel/datapath/kcache"
	"github.com/dnsaccel/dnsaccel/nodecache/dnsstats"
	nodecacheplugin "github.com/dnsaccel/dnsaccel/plugin/nodecache"
)

// Accounting are the per-pod DNS accounting's flags.
type Accounting struct {
	On         bool // --dns-accounting
	TopK       int  // --accounting-top-k
	MaxSeries  int  // --accounting-max-series
	MaxClients int  // --accounting-max-clients
	// Observe is --observe: ADDR of the observability endpoint
	// (dnsaccelctl's JSON, the query log); empty: off.
	Observe string
	// QueryLogMaxRate is --query-log-max-rate: lines a second at most.
	QueryLogMaxRate int
}

// Accounting defaults.
const (
	DefaultObserve         = ":9254"
	DefaultQueryLogMaxRate = 200
	DefaultMaxSeries       = 5000
	DefaultMaxClients      = 16384
	kernelPollInterval     = 10 * time.Second
	bypassInterval         = time.Second
)

func (a *Accounting) validate() error {
	if !a.On {
		return nil
	}
	switch {
	case a.TopK < 1 || a.TopK > 10000:
		return fmt.Errorf("--accounting-top-k %d: want 1 to 10000", a.TopK)
	case a.MaxSeries < 200:
		return fmt.Errorf("--accounting-max-series %d: want at least 200 (the \"other\" series alone take about 50)", a.MaxSeries)
	case a.MaxClients < 1:
		return fmt.Errorf("--accounting-max-clients %d: want at least 1", a.MaxClients)
	case a.QueryLogMaxRate < 1 || a.QueryLogMaxRate > 100000:
		return fmt.Errorf("--query-log-max-rate %d: want 1 to 100000", a.QueryLogMaxRate)
	}
	return nil
}

// accounting is the running per-pod DNS accounting of an agent.
type accounting struct {
	stats *dnsstats.Stats
	pods  *podIndex // nil outside Kubernetes mode
	log   *slog.Logger
	since time.Time
	cfg   Config

	mu         sync.Mutex
	kc         *kcache.Cache // the kernel cache the deltas below are of
	prev       map[netip.Addr]kcache.ClientCounts
	bypass     []netip.Addr
	collector  prometheus.Collector
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	registered bool
}

// observerFunc adapts the plugin's Observer to the accounting.
type observerFunc func(nodecacheplugin.Observation)

func (f observerFunc) Observe(o nodecacheplugin.Observation) { f(o) }

var bySource = [...]dnsstats.By{
	nodecacheplugin.SourceCache:    dnsstats.ByCache,
	nodecacheplugin.SourceUpstream: dnsstats.ByUpstream,
	nodecacheplugin.SourceNone:     dnsstats.ByNone,
}

// startAccounting starts the pod index (Kubernetes mode), installs the
// plugin's observer and registers the metrics. The kernel's counters are
// read through currentKernelCache, whenever the kernel cache runs.
func startAccounting(cfg Config, log *slog.Logger) (*accounting, error) {
	ac := &accounting{log: log, since: time.Now(), cfg: cfg}
	// client-go logs through the logger in ctx (ours), never klog's
	// global one, which CoreDNS's kubernetes plugin replaces on reloads.
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.FromSlogHandler(log.With("component", "accounting pods").Handler())))
	ac.cancel = cancel
	dcfg := dnsstats.Config{
		TopK: cfg.Accounting.TopK, MaxSeries: cfg.Accounting.MaxSeries, MaxClients: cfg.Accounting.MaxClients,
		ClusterDomain: cfg.ClusterDomain, NodeSearch: cfg.Search,
	}
	if dcfg.NodeSearch == nil {
		dcfg.NodeSearch, _ = ResolvConfSearch("/etc/resolv.conf")
	}
	if cfg.Kube.Enabled() {
		cs, err := cfg.Kube.Client()
		if err != nil {
			cancel()
			return nil, fmt.Errorf("accounting: pod index: %w", err)
		}
		ac.pods = newPodIndex()
		dcfg.Pods = ac.pods
		ac.wg.Add(1)
		go func() {
			defer ac.wg.Done()
			ac.pods.run(ctx, cs, cfg.NodeName)
		}()
	}
	ac.stats = dnsstats.New(dcfg)
	ac.stats.SetSync(ac.syncKernel)
	ac.collector = ac.stats.Collector()
	if err := prometheus.Register(ac.collector); err != nil {
		cancel()
		return nil, fmt.Errorf("accounting: metrics: %w", err)
	}
	ac.registered = true
	nodecacheplugin.SetObserver(observerFunc(func(o nodecacheplugin.Observation) {
		ac.stats.Record(dnsstats.Event{Client: o.Client, Name: o.Name, Qtype: o.Qtype, Rcode: o.Rcode,
			By: bySource[o.Source], Latency: o.Latency, Timeout: o.Timeout})
	}))
	ac.wg.Add(1)
	go func() {
		defer ac.wg.Done()
		ac.loop(ctx)
	}()
	log.Info("per-pod DNS accounting on", "top_k", ac.stats.Config().TopK, "max_series", ac.stats.Config().MaxSeries,
		"max_clients", ac.stats.Config().MaxClients, "pod_index", ac.pods != nil)
	return ac, nil
}

func (ac *accounting) stop() {
	nodecacheplugin.SetObserver(nil)
	ac.stats.StopLog()
	ac.cancel()
	ac.wg.Wait()
	ac.applyBypass(nil)
	if ac.registered {
		prometheus.Unregister(ac.collector)
	}
}

// loop reads the kernel's counters now and then (so an LRU eviction loses
// little) and keeps the kernel's bypass set in step with the query log.
func (ac *accounting) loop(ctx context.Context) {
	poll := time.NewTicker(kernelPollInterval)
	defer poll.Stop()
	bt := time.NewTicker(bypassInterval)
	defer bt.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			ac.syncKernel()
		case <-bt.C:
			ac.refreshBypass()
		}
	}
}

// syncKernel adds what the kernel answered per client since the last read.
func (ac *accounting) syncKernel() {
	k := currentKernelCache.Load()
	ac.mu.Lock()
	defer ac.mu.Unlock()
	if k == nil {
		ac.kc, ac.prev = nil, nil
		return
	}
	if k.kc != ac.kc {
		ac.kc, ac.prev = k.kc, nil // a new kernel cache counts from zero
	}
	cur, err := k.kc.Clients()
	if err != nil {
		ac.log.Debug("accounting: reading the kernel's counters", "err", err)
		return
	}
	for ip, c := range cur {
		p := ac.prev[ip]
		if c.NoError < p.NoError || c.NXDomain < p.NXDomain || c.Other < p.Other {
			p = kcache.ClientCounts{} // evicted and counted again since
		}
		ac.stats.AddKernel(ip, c.NoError-p.NoError, c.NXDomain-p.NXDomain, c.Other-p.Other)
	}
	ac.prev = cur
}

// refreshBypass makes the kernel pass on the queries of the pods the query
// log covers (their addresses may change while it runs).
func (ac *accounting) refreshBypass() {
	var want []netip.Addr
	if l := ac.stats.Log(); l != nil && ac.pods != nil {
		want = ac.pods.IPs(l.Selection())
	}
	ac.applyBypass(want)
}

func (ac *accounting) applyBypass(want []netip.Addr) {
	ac.mu.Lock()
	defer ac.mu.Unlock()
	k := currentKernelCache.Load()
	if k == nil || slices.Equal(want, ac.bypass) {
		return
	}
	if err := k.kc.SetBypass(want); err != nil {
		ac.log.Warn("query log: the kernel cache could not pass the selected pods' queries on; their kernel answers are not logged", "err", err)
		return
	}
	ac.bypass = want
	ac.log.Info("query log: kernel cache passes queries on", "clients", len(want))
}

// startLog turns the query log on and, at once, the kernel's bypass for
// the selection: queries the kernel would answer reach node-cache.
func (ac *accounting) startLog(sel dnsstats.LogSelection) (*dnsstats.QueryLog, error) {
	l, err := ac.stats.StartLog(sel, ac.cfg.Accounting.QueryLogMaxRate)
	if err != nil {
		return nil, err
	}
	ac.refreshBypass()
	ac.log.Info("query log on", "namespace", sel.Namespace, "pod", sel.Pod, "sample", l.Selection().Sample, "duration", l.Selection().Duration.String())
	return l, nil
}

func (ac *accounting) stopLog() {
	ac.stats.StopLog()
	ac.refreshBypass()
	ac.log.Info("query log off")
}
