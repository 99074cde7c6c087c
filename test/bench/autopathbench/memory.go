package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Settling after sync: RSS counts as settled when it has not dropped by
// more than 1 MiB for settleQuiet; settleMax bounds the wait after Settle.
const (
	settleQuiet = 8 * time.Second
	settleMax   = 2 * time.Minute
)

// A memory configuration: one server block of bin/coredns.
type memSystem struct {
	name  string
	label string
	// plugin is the block's extra plugin (kubeconfig substituted for %s).
	plugin string
}

const (
	sysBaseline     = "baseline"
	sysAutopath     = "k8s_autopath"
	sysPodsVerified = "kubernetes-pods-verified"
	sysKubernetes   = "kubernetes"
)

var memSystems = []memSystem{
	{sysBaseline, "baseline (no Kubernetes plugin)", ""},
	{sysAutopath, "`k8s_autopath` (cluster-wide)", "k8s_autopath cluster.local {\n        kubeconfig %s\n        search\n    }"},
	{sysPodsVerified, "`kubernetes`, `pods verified`", "kubernetes cluster.local {\n        kubeconfig %s\n        pods verified\n    }"},
	{sysKubernetes, "`kubernetes`, pods disabled", "kubernetes cluster.local {\n        kubeconfig %s\n    }"},
}

// SizeResult is the memory part at one pod count.
type SizeResult struct {
	Pods       int           `json:"pods"`
	Services   int           `json:"services"`
	Namespaces int           `json:"namespaces"`
	Created    int           `json:"pods_created"` // pods added for this size
	CreateTime time.Duration `json:"create_time"`
	Runs       []MemRun      `json:"runs"`
}

// MemRun is one bin/coredns process.
type MemRun struct {
	Name string        `json:"name"`
	Sync time.Duration `json:"sync"` // process start until synced
	// Settle is the time from sync until RSS had stopped dropping.
	Settle time.Duration `json:"settle"`
	// Minimum over the samples, each taken right after a forced GC.
	HeapInuse int64 `json:"heap_inuse_bytes"`
	HeapAlloc int64 `json:"heap_alloc_bytes"`
	RSS       int64 `json:"rss_bytes"`
	PeakRSS   int64 `json:"peak_rss_bytes"` // VmHWM at the end: includes the initial list
	// Go runtime figures of the last sample (go_memstats_*_bytes).
	Runtime map[string]int64 `json:"runtime_last_sample"`
	HeapS   []int64          `json:"heap_inuse_samples"`
	RSSS    []int64          `json:"rss_samples"`
	Err     string           `json:"error,omitempty"`
}

// OK reports whether the run produced figures.
func (r MemRun) OK() bool { return r.Err == "" && r.HeapInuse > 0 }

func (s SizeResult) run(name string) (MemRun, bool) {
	for _, r := range s.Runs {
		if r.Name == name && r.OK() {
			return r, true
		}
	}
	return MemRun{}, false
}

// measureMemory grows the API server to each size and measures every
// configuration in turn; add is called with each size's result.
func measureMemory(ctx context.Context, e *env, add func(SizeResult)) error {
	pop, err := newPopulation(e.cluster, e.cfg)
	if err != nil {
		return err
	}
	for _, size := range e.cfg.Sizes {
		from := pop.pods
		logf("memory: creating pods %d..%d (%d workers) and their Services", from, size, e.cfg.Workers)
		t0 := time.Now()
		if err := pop.grow(ctx, size); err != nil {
			return fmt.Errorf("creating pods: %w", err)
		}
		res := SizeResult{Pods: pop.pods, Services: pop.services, Namespaces: e.cfg.Namespaces,
			Created: pop.pods - from, CreateTime: time.Since(t0).Round(100 * time.Millisecond)}
		logf("memory: %d pods, %d Services in %d namespaces (%d pods in %s)", res.Pods, res.Services, res.Namespaces, res.Created, res.CreateTime)
		for _, sys := range memSystems {
			if err := ctx.Err(); err != nil {
				return err
			}
			r, err := memRun(ctx, e, sys, pop)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				r.Err = err.Error()
				logf("memory: %s at %d pods: FAILED: %v", sys.name, size, err)
			} else {
				logf("memory: %-24s %6d pods: synced in %5.1fs, heap in use %7.1f MiB, RSS %7.1f MiB, peak RSS %7.1f MiB",
					sys.name, size, r.Sync.Seconds(), mib(r.HeapInuse), mib(r.RSS), mib(r.PeakRSS))
			}
			res.Runs = append(res.Runs, r)
		}
		add(res)
	}
	return nil
}

func memRun(ctx context.Context, e *env, sys memSystem, pop *population) (MemRun, error) {
	r := MemRun{Name: sys.name}
	var ports [5]int
	for i := range ports {
		p, err := e.ports.Get()
		if err != nil {
			return r, err
		}
		ports[i] = p
	}
	dnsAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	readyAddr := fmt.Sprintf("127.0.0.1:%d", ports[2])
	pprofAddr := fmt.Sprintf("127.0.0.1:%d", ports[3])
	plugin := ""
	if sys.plugin != "" {
		plugin = "    " + fmt.Sprintf(sys.plugin, e.kubeconfig) + "\n"
	}
	// forward only ends the chain; no query is sent, its port is unused.
	corefile := fmt.Sprintf(".:%d {\n    bind 127.0.0.1\n    prometheus %s\n    ready %s\n    pprof %s\n%s    forward . 127.0.0.1:%d\n}\n",
		ports[0], metricsAddr, readyAddr, pprofAddr, plugin, ports[4])

	t0 := time.Now()
	p, err := e.startCoreDNS(sys.name, corefile)
	if err != nil {
		return r, err
	}
	defer p.Stop()

	ready := func() (bool, error) {
		code, _, err := httpGet(ctx, "http://"+readyAddr+"/ready")
		return err == nil && code == http.StatusOK, err
	}
	answers := func(name string) func() (bool, error) {
		return func() (bool, error) {
			if ok, err := ready(); !ok {
				return false, err
			}
			m, err := ask(ctx, dnsAddr, name, dns.TypeA)
			if err != nil {
				return false, err
			}
			if m.Rcode != dns.RcodeSuccess || len(m.Answer) == 0 {
				return false, fmt.Errorf("%s: %s, %d answers", name, dns.RcodeToString[m.Rcode], len(m.Answer))
			}
			return true, nil
		}
	}
	var cond func() (bool, error)
	switch sys.name {
	case sysBaseline:
		cond = ready
	case sysAutopath:
		cond = func() (bool, error) {
			m, err := scrape(ctx, metricsAddr)
			if err != nil {
				return false, err
			}
			if m["coredns_k8s_autopath_index_synced"] < 1 || int(m["coredns_k8s_autopath_index_pods"]) != pop.pods {
				return false, fmt.Errorf("index synced %v, %v of %d pods", m["coredns_k8s_autopath_index_synced"], m["coredns_k8s_autopath_index_pods"], pop.pods)
			}
			return true, nil
		}
	case sysPodsVerified:
		// Ready once the informers have synced; the newest pod answers
		// only if it is in the pod cache.
		cond = answers(pop.lastPod())
	case sysKubernetes:
		cond = answers(pop.lastService())
	}
	if err := pollUntil(ctx, p, 10*time.Minute, 100*time.Millisecond, sys.name+" synced", cond); err != nil {
		return r, err
	}
	r.Sync = time.Since(t0).Round(100 * time.Millisecond)

	// A heap profile with gc=1 runs a full GC first. Without it an idle
	// process can carry the garbage of its initial list for minutes (the
	// runtime forces a GC every 2 minutes), and the background scavenger
	// returns freed pages to the OS only when a GC has found them free.
	gc := func() error {
		code, _, err := httpGet(ctx, "http://"+pprofAddr+"/debug/pprof/heap?gc=1")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("HTTP %d", code)
		}
		if err != nil {
			return fmt.Errorf("forcing a GC through pprof: %w", err)
		}
		return nil
	}
	// Settle: a GC every second (each one lets the scavenger see the pages
	// freed since), for at least Settle and until RSS has not dropped by
	// more than 1 MiB for settleQuiet, at most settleMax longer.
	t1 := time.Now()
	low, lastDrop := int64(0), t1
	for {
		if err := gc(); err != nil {
			return r, err
		}
		if rss := p.RSS(); low == 0 || rss < low-1<<20 {
			low, lastDrop = rss, time.Now()
		}
		if time.Since(t1) >= e.cfg.Settle && (time.Since(lastDrop) >= settleQuiet || time.Since(t1) >= e.cfg.Settle+settleMax) {
			break
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	r.Settle = time.Since(t1).Round(time.Second)
	for i := range e.cfg.Samples {
		if i > 0 {
			select {
			case <-ctx.Done():
				return r, ctx.Err()
			case <-time.After(time.Second):
			}
		}
		if err := gc(); err != nil {
			return r, err
		}
		m, err := scrape(ctx, metricsAddr)
		if err != nil {
			return r, err
		}
		heap, alloc := int64(m["go_memstats_heap_inuse_bytes"]), int64(m["go_memstats_heap_alloc_bytes"])
		if heap == 0 {
			return r, fmt.Errorf("no go_memstats_heap_inuse_bytes on %s", metricsAddr)
		}
		rss := p.RSS()
		r.Runtime = map[string]int64{}
		for _, k := range []string{"heap_sys", "heap_idle", "heap_released", "stack_inuse", "sys", "next_gc"} {
			r.Runtime[k] = int64(m["go_memstats_"+k+"_bytes"])
		}
		r.HeapS, r.RSSS = append(r.HeapS, heap), append(r.RSSS, rss)
		r.HeapInuse, r.HeapAlloc, r.RSS = minPos(r.HeapInuse, heap), minPos(r.HeapAlloc, alloc), minPos(r.RSS, rss)
	}
	r.PeakRSS = p.RSSPeak()
	if p.Exited() {
		return r, p.ExitError()
	}
	return r, nil
}

func minPos(cur, v int64) int64 {
	if cur == 0 || (v > 0 && v < cur) {
		return v
	}
	return cur
}

// memCorefileExample is the configuration shown in the docs.
func memCorefileExample() string {
	var b strings.Builder
	b.WriteString(".:PORT {\n    bind 127.0.0.1\n    prometheus 127.0.0.1:M\n    ready 127.0.0.1:R\n    pprof 127.0.0.1:P\n")
	b.WriteString("    # one of:\n")
	for _, s := range memSystems[1:] {
		b.WriteString("    " + fmt.Sprintf(s.plugin, "KUBECONFIG") + "\n")
	}
	b.WriteString("    forward . 127.0.0.1:UNUSED\n}\n")
	return b.String()
}
