package policyagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/dnsaccel/dnsaccel/datapath/policy"
)

// Config configures the NetworkPolicy agent.
type Config struct {
	Client   kubernetes.Interface
	NodeName string
	// BPFFS: maps and links are pinned under <BPFFS>/dnsaccel/policy.
	BPFFS string
	// Audit: log and count what would be dropped, drop nothing.
	Audit bool
	// NodeDNS are node-cache's local addresses (steered DNS goes there):
	// they count as kube-dns pods for every policy peer selecting one.
	NodeDNS []netip.Addr
	// DNSNamespace and DNSSelector select the kube-dns pods (default
	// kube-system, k8s-app=kube-dns).
	DNSNamespace string
	DNSSelector  labels.Selector
	Registry     prometheus.Registerer
	Logger       *slog.Logger
}

// Agent keeps the policy datapath in step with the API.
type Agent struct {
	cfg      Config
	dp       *policy.Datapath
	tr       *Translator
	ap       *Applier
	log      *slog.Logger
	kick     chan struct{}
	ready    atomic.Bool
	mu       sync.Mutex
	names    map[uint32]string
	podOf    map[uint32]string
	attached map[int]string // ifindex -> interface name (a recycled index is attached again)

	syncs, syncErrors, mapFull prometheus.Counter
	syncSeconds                prometheus.Histogram
}

// PinDir is where the policy datapath pins under a bpf file system.
func PinDir(bpffs string) string { return filepath.Join(bpffs, "dnsaccel", "policy") }

// Start opens the policy datapath and runs the agent until ctx ends (in
// the background; errors after the start are logged). It is the one call
// cmd/datapath-agent makes for --policies.
func Start(ctx context.Context, cfg Config) (*Agent, error) {
	a, err := New(cfg)
	if err != nil {
		return nil, err
	}
	go func() {
		defer a.dp.Close()
		if err := a.Run(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("NetworkPolicy agent stopped", "err", err)
		}
	}()
	return a, nil
}

// New opens the datapath.
func New(cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DNSNamespace == "" {
		cfg.DNSNamespace = "kube-system"
	}
	if cfg.DNSSelector == nil {
		cfg.DNSSelector = labels.SelectorFromSet(labels.Set{"k8s-app": "kube-dns"})
	}
	opts := policy.Options{}
	if cfg.BPFFS != "" {
		opts.PinDir = PinDir(cfg.BPFFS)
	}
	dp, err := policy.Open(opts)
	if err != nil {
		return nil, err
	}
	if err := dp.SetAudit(cfg.Audit); err != nil {
		dp.Close()
		return nil, err
	}
	a := &Agent{cfg: cfg, dp: dp, tr: NewTranslator(), ap: &Applier{DP: dp}, log: cfg.Logger.With("component", "networkpolicy"),
		kick: make(chan struct{}, 1), names: map[uint32]string{}, podOf: map[uint32]string{}, attached: map[int]string{},
		syncs:       prometheus.NewCounter(prometheus.CounterOpts{Name: "dnsaccel_policy_syncs_total", Help: "NetworkPolicy programming passes."}),
		syncErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: "dnsaccel_policy_sync_errors_total", Help: "NetworkPolicy programming passes that failed (retried)."}),
		mapFull:     prometheus.NewCounter(prometheus.CounterOpts{Name: "dnsaccel_policy_map_full_total", Help: "Programming passes that hit a full eBPF policy map (the change is incomplete and retried; what was not written is not allowed, so pods fail closed)."}),
		syncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "dnsaccel_policy_sync_seconds", Help: "Time of one programming pass.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9)}),
	}
	for _, ip := range cfg.NodeDNS {
		a.ap.SetExtraIdentity(ip, IdentityNodeDNS)
	}
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(a.syncs, a.syncErrors, a.mapFull, a.syncSeconds, dropCollector{a})
	}
	return a, nil
}

// Datapath is the agent's policy datapath.
func (a *Agent) Datapath() *policy.Datapath { return a.dp }

// Ready reports whether the first full sync is programmed.
func (a *Agent) Ready() bool { return a.ready.Load() }

func (a *Agent) trigger() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Run watches Namespaces, Pods and NetworkPolicies and programs them.
func (a *Agent) Run(ctx context.Context) error {
	f := informers.NewSharedInformerFactory(a.cfg.Client, 0)
	nsInf, podInf, npInf := f.Core().V1().Namespaces(), f.Core().V1().Pods(), f.Networking().V1().NetworkPolicies()
	h := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { a.trigger() }, UpdateFunc: func(_, _ any) { a.trigger() }, DeleteFunc: func(any) { a.trigger() },
	}
	for _, inf := range []cache.SharedIndexInformer{nsInf.Informer(), podInf.Informer(), npInf.Informer()} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return err
		}
	}
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), nsInf.Informer().HasSynced, podInf.Informer().HasSynced, npInf.Informer().HasSynced) {
		return fmt.Errorf("waiting for the informers: %w", ctx.Err())
	}
	go a.logDrops(ctx)
	a.trigger()
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.kick:
		case <-time.After(backoff + 30*time.Second):
			// periodic pass: interfaces that appeared late
		}
		err := a.sync(nsInf.Lister().List, podInf.Lister().List, npInf.Lister().List)
		if err != nil {
			a.syncErrors.Inc()
			if errors.Is(err, policy.ErrMapFull) {
				a.mapFull.Inc()
			}
			a.log.Error("programming NetworkPolicies", "err", err)
			backoff = min(max(2*backoff, 100*time.Millisecond), 10*time.Second)
			time.AfterFunc(backoff, a.trigger)
			continue
		}
		backoff = 0
		if !a.ready.Load() {
			// What an earlier agent left and this one did not set.
			if err := a.dp.Prune(); err != nil {
				a.log.Warn("pruning what an earlier agent left", "err", err)
			}
			a.ready.Store(true)
			a.log.Info("NetworkPolicies programmed", "audit", a.cfg.Audit)
		}
	}
}

func (a *Agent) sync(listNS func(labels.Selector) ([]*corev1.Namespace, error),
	listPods func(labels.Selector) ([]*corev1.Pod, error),
	listNP func(labels.Selector) ([]*networkingv1.NetworkPolicy, error)) error {
	t0 := time.Now()
	defer func() { a.syncs.Inc(); a.syncSeconds.Observe(time.Since(t0).Seconds()) }()
	nss, err := listNS(labels.Everything())
	if err != nil {
		return err
	}
	pods, err := listPods(labels.Everything())
	if err != nil {
		return err
	}
	nps, err := listNP(labels.Everything())
	if err != nil {
		return err
	}
	st := State{Namespaces: map[string]map[string]string{}, Policies: nps, DNSNamespace: a.cfg.DNSNamespace, DNSPods: a.cfg.DNSSelector}
	for _, ns := range nss {
		st.Namespaces[ns.Name] = ns.Labels
	}
	for _, p := range pods {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		st.Pods = append(st.Pods, PodFrom(p, a.cfg.NodeName))
	}
	res := a.tr.Translate(st)
	a.ap.SetHostAddrs(hostAddrs())
	a.mu.Lock()
	for id, n := range res.PolicyNames {
		a.names[id] = n
	}
	for _, ep := range res.Endpoints {
		a.podOf[ep.Endpoint.ID] = ep.Pod.Namespace + "/" + ep.Pod.Name
	}
	a.mu.Unlock()
	err = a.ap.Apply(res)
	return errors.Join(err, a.attach(res))
}

// attach puts the programs on the interface each local pod's address is
// routed through (the host end of its veth).
func (a *Agent) attach(res Result) error {
	var errs []error
	for _, ep := range res.Endpoints {
		for _, ip := range ep.Pod.IPs {
			rs, err := netlink.RouteGet(ip.AsSlice())
			if err != nil || len(rs) == 0 {
				continue
			}
			idx := rs[0].LinkIndex
			l, err := netlink.LinkByIndex(idx)
			if err != nil || l.Type() != "veth" {
				continue // no host end (the pod-side attach needs the pod's netns: not done by the agent yet)
			}
			if a.attached[idx] == l.Attrs().Name {
				continue
			}
			if err := a.dp.AttachTC(idx, policy.HostEnd); err != nil {
				errs = append(errs, err)
				continue
			}
			a.attached[idx] = l.Attrs().Name
			a.log.Debug("policy programs attached", "interface", l.Attrs().Name, "pod", ep.Pod.Namespace+"/"+ep.Pod.Name)
		}
	}
	return errors.Join(errs...)
}

// logDrops logs drop events, at most 10 a second.
func (a *Agent) logDrops(ctx context.Context) {
	lim := rate.NewLimiter(10, 20)
	err := a.dp.ReadEvents(ctx, func(e policy.Event) {
		if !lim.Allow() {
			return
		}
		a.mu.Lock()
		pol, pod := a.names[e.Policy], a.podOf[e.Endpoint]
		a.mu.Unlock()
		msg := "packet dropped by NetworkPolicy"
		if e.Audit {
			msg = "packet would be dropped by NetworkPolicy (audit)"
		}
		a.log.Info(msg, "pod", pod, "direction", e.Dir.String(), "src", e.Src.String(), "dst", e.Dst.String(),
			"proto", e.Proto, "peer_identity", uint32(e.PeerIdentity), "policy", pol)
	})
	if err != nil {
		a.log.Warn("reading drop events", "err", err)
	}
}

type dropCollector struct{ a *Agent }

var dropDesc = prometheus.NewDesc("dnsaccel_policy_drops_total",
	"Packets dropped (or, with --policy-audit, that would have been), by the policy that isolates the pod (namespace/name).", []string{"policy"}, nil)

func (c dropCollector) Describe(ch chan<- *prometheus.Desc) { ch <- dropDesc }

func (c dropCollector) Collect(ch chan<- prometheus.Metric) {
	d, err := c.a.dp.Drops()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(dropDesc, err)
		return
	}
	c.a.mu.Lock()
	defer c.a.mu.Unlock()
	sums := map[string]uint64{}
	for id, n := range d {
		sums[c.a.names[id]] += n
	}
	for name, n := range sums {
		ch <- prometheus.MustNewConstMetric(dropDesc, prometheus.CounterValue, float64(n), name)
	}
}

// hostAddrs is every address of the node's network namespace.
func hostAddrs() []netip.Addr {
	as, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range as {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.IsLoopback() {
			out = append(out, ip.Unmap())
		}
	}
	return out
}
