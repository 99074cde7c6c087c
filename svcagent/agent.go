package svcagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/dnsaccel/dnsaccel/datapath/lb"
)

// Table is what the agent needs of datapath/lb's Table.
type Table interface {
	UpsertService(lb.Service) error
	SetBackends(lb.Frontend, []lb.Backend) error
	DeleteService(lb.Frontend) error
	Services() map[lb.Service][]lb.Backend
	PendingTermination() int
	TerminateUDP() (int, error)
}

// Config configures an Agent.
type Config struct {
	Client kubernetes.Interface
	Table  Table
	// NodeName is this node (endpoints on it are local for the traffic
	// policies; its addresses carry NodePorts).
	NodeName string
	// NodePortCIDRs (--nodeport-addresses): NodePorts open on the node's
	// interface addresses within these prefixes. Empty: on the Node
	// object's InternalIP and ExternalIP addresses.
	NodePortCIDRs []netip.Prefix
	Recorder      record.EventRecorder // Events on skipped objects (nil: none)
	Metrics       *Metrics             // nil: NewMetrics()
	Logger        *slog.Logger
	// TerminateDelay coalesces backend removals before connected UDP
	// sockets pinned to them are destroyed (default 200ms).
	TerminateDelay time.Duration
}

// Agent programs the Service tables from the API.
type Agent struct {
	cfg Config
	log *slog.Logger
	m   *Metrics

	svcs   corelisters.ServiceLister
	eps    discoverylisters.EndpointSliceLister
	nodes  corelisters.NodeLister
	synced []cache.InformerSynced
	queue  workqueue.TypedRateLimitingInterface[string]

	mu       sync.Mutex
	owned    map[string]Desired     // Service key -> what is programmed for it
	owner    map[lb.Frontend]string // frontend -> Service key
	problems map[string]string      // Service key -> last problems reported
	nodeAddr []netip.Addr           // NodePort addresses in use
	termc    chan struct{}
	ready    atomic.Bool
	lastSync atomic.Int64
}

// New sets up the informers (nothing runs until Run).
func New(cfg Config) (*Agent, error) {
	if cfg.Client == nil || cfg.Table == nil {
		return nil, errors.New("svcagent: Client and Table are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.TerminateDelay <= 0 {
		cfg.TerminateDelay = 200 * time.Millisecond
	}
	a := &Agent{
		cfg: cfg, log: cfg.Logger, m: cfg.Metrics,
		queue:    workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		owned:    map[string]Desired{},
		owner:    map[lb.Frontend]string{},
		problems: map[string]string{},
		termc:    make(chan struct{}, 1),
	}
	return a, nil
}

// strip keeps only what the translation reads.
func strip(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
		m.SetAnnotations(nil)
	}
	return obj, nil
}

const allNodePorts = "\x00nodeports" // queue key: every Service with NodePorts

// LabelServiceProxyName on a Service hands it to another proxy.
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// Run runs the informers and the workers until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	defer a.queue.ShutDown()
	// Services that name another proxy (service.kubernetes.io/service-proxy-name)
	// are not ours, as kube-proxy leaves them alone.
	f := informers.NewSharedInformerFactoryWithOptions(a.cfg.Client, 0, informers.WithTransform(strip),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = "!" + LabelServiceProxyName }))
	svcInf := f.Core().V1().Services()
	epF := informers.NewSharedInformerFactoryWithOptions(a.cfg.Client, 0, informers.WithTransform(strip),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = discoveryv1.LabelServiceName }))
	epInf := epF.Discovery().V1().EndpointSlices()
	nodeF := informers.NewSharedInformerFactoryWithOptions(a.cfg.Client, 0, informers.WithTransform(strip),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", a.cfg.NodeName).String()
		}))
	nodeInf := nodeF.Core().V1().Nodes()
	a.svcs, a.eps, a.nodes = svcInf.Lister(), epInf.Lister(), nodeInf.Lister()

	enqueue := func(obj any) {
		if k, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			a.queue.Add(k)
		}
	}
	svcInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	})
	epEnqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		es, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok {
			return
		}
		if name := es.Labels[discoveryv1.LabelServiceName]; name != "" {
			a.queue.Add(es.Namespace + "/" + name)
		}
	}
	epInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: epEnqueue, UpdateFunc: func(_, o any) { epEnqueue(o) }, DeleteFunc: epEnqueue,
	})
	if a.cfg.NodeName != "" {
		nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { a.queue.Add(allNodePorts) }, UpdateFunc: func(_, _ any) { a.queue.Add(allNodePorts) },
		})
		a.synced = append(a.synced, nodeInf.Informer().HasSynced)
	}
	a.synced = append(a.synced, svcInf.Informer().HasSynced, epInf.Informer().HasSynced)
	f.Start(ctx.Done())
	epF.Start(ctx.Done())
	nodeF.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), a.synced...) {
		return fmt.Errorf("waiting for the informers: %w", ctx.Err())
	}
	a.log.Info("informers synced; programming every Service")
	if err := a.initialSync(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(2)
	go func() { defer wg.Done(); a.terminator(ctx) }()
	go func() {
		defer wg.Done()
		for a.processNext(ctx) {
		}
	}()
	<-ctx.Done()
	a.queue.ShutDown()
	return nil
}

// initialSync programs every Service, then removes what an earlier agent
// left in the tables for Services that are gone, then reports ready.
func (a *Agent) initialSync() error {
	t0 := time.Now()
	a.refreshNodeAddrs()
	svcs, err := a.svcs.List(labels.Everything())
	if err != nil {
		return err
	}
	for _, svc := range svcs {
		k := svc.Namespace + "/" + svc.Name
		if err := a.sync(k); err != nil {
			a.log.Error("programming Service", "service", k, "err", err)
			a.queue.AddRateLimited(k)
		}
	}
	a.mu.Lock()
	var stale []lb.Frontend
	for s := range a.cfg.Table.Services() {
		if _, ok := a.owner[s.Frontend]; !ok {
			stale = append(stale, s.Frontend)
		}
	}
	a.mu.Unlock()
	for _, f := range stale {
		if err := a.cfg.Table.DeleteService(f); err != nil {
			a.log.Error("removing a stale frontend", "frontend", f.String(), "err", err)
		}
	}
	a.kickTerminator()
	a.ready.Store(true)
	a.updateGauges()
	a.log.Info("Service tables in sync", "services", len(svcs), "stale_frontends_removed", len(stale), "took", time.Since(t0).String())
	return nil
}

func (a *Agent) processNext(ctx context.Context) bool {
	k, shutdown := a.queue.Get()
	if shutdown {
		return false
	}
	defer a.queue.Done(k)
	var err error
	if k == allNodePorts {
		if a.refreshNodeAddrs() {
			a.mu.Lock()
			for key, d := range a.owned {
				for s := range d {
					if s.Type == lb.NodePort {
						a.queue.Add(key)
						break
					}
				}
			}
			a.mu.Unlock()
			// Services whose NodePorts had no address yet.
			if svcs, lerr := a.svcs.List(labels.Everything()); lerr == nil {
				for _, s := range svcs {
					if s.Spec.Type == corev1.ServiceTypeNodePort || s.Spec.Type == corev1.ServiceTypeLoadBalancer {
						a.queue.Add(s.Namespace + "/" + s.Name)
					}
				}
			}
		}
	} else {
		err = a.sync(k)
	}
	if err != nil {
		a.m.syncErrors.Inc()
		a.log.Error("programming Service", "service", k, "err", err)
		a.queue.AddRateLimited(k)
	} else {
		a.queue.Forget(k)
	}
	a.updateGauges()
	return ctx.Err() == nil
}

// refreshNodeAddrs recomputes the NodePort addresses; it reports whether
// they changed.
func (a *Agent) refreshNodeAddrs() bool {
	var addrs []netip.Addr
	if len(a.cfg.NodePortCIDRs) > 0 {
		list, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			a.log.Error("listing the node's addresses for NodePorts", "err", err)
		}
		for _, ad := range list {
			ip, ok := netip.AddrFromSlice(ad.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			for _, p := range a.cfg.NodePortCIDRs {
				if p.Contains(ip) && !ip.IsLinkLocalUnicast() {
					addrs = append(addrs, ip)
					break
				}
			}
		}
	} else if a.cfg.NodeName != "" {
		if n, err := a.nodes.Get(a.cfg.NodeName); err == nil {
			for _, ad := range n.Status.Addresses {
				if ad.Type != corev1.NodeInternalIP && ad.Type != corev1.NodeExternalIP {
					continue
				}
				if ip, err := netip.ParseAddr(ad.Address); err == nil && unicast(ip) {
					addrs = append(addrs, ip.Unmap())
				}
			}
		}
	}
	slices.SortFunc(addrs, func(x, y netip.Addr) int { return x.Compare(y) })
	addrs = slices.Compact(addrs)
	a.mu.Lock()
	defer a.mu.Unlock()
	if slices.Equal(addrs, a.nodeAddr) {
		return false
	}
	a.nodeAddr = addrs
	a.log.Info("NodePort addresses", "addrs", fmt.Sprint(addrs))
	return true
}

// sync programs one Service (key namespace/name) from the listers.
func (a *Agent) sync(key string) error {
	t0 := time.Now()
	defer func() { a.m.syncSeconds.Observe(time.Since(t0).Seconds()); a.lastSync.Store(time.Now().UnixNano()) }()
	ns, name, _ := strings.Cut(key, "/")
	var desired Desired
	svc, err := a.svcs.Services(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return err
	default:
		sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name})
		eps, err := a.eps.EndpointSlices(ns).List(sel)
		if err != nil {
			return err
		}
		a.mu.Lock()
		node := Node{Name: a.cfg.NodeName, NodePortAddrs: slices.Clone(a.nodeAddr)}
		a.mu.Unlock()
		var probs []Problem
		desired, probs = Translate(svc, eps, node)
		a.mu.Lock()
		// A frontend another Service holds (the same externalIP and
		// port in two Services): first come, first served.
		for s := range desired {
			if o, ok := a.owner[s.Frontend]; ok && o != key {
				probs = append(probs, Problem{Reason: "FrontendConflict", Message: fmt.Sprintf("Service %s: %s is already Service %s's", key, s.Frontend, o)})
				delete(desired, s)
			}
		}
		a.mu.Unlock()
		a.report(key, svc, probs)
	}
	return a.apply(key, desired)
}

// report emits an Event and counts each problem, once per change.
func (a *Agent) report(key string, svc *corev1.Service, probs []Problem) {
	var msgs []string
	for _, p := range probs {
		msgs = append(msgs, p.Error())
	}
	slices.Sort(msgs)
	joined := strings.Join(msgs, "\n")
	a.mu.Lock()
	same := a.problems[key] == joined
	if joined == "" {
		delete(a.problems, key)
	} else {
		a.problems[key] = joined
	}
	a.mu.Unlock()
	if same {
		return
	}
	for _, p := range probs {
		a.m.invalid.WithLabelValues(p.Reason).Inc()
		a.log.Warn("skipped part of a Service", "service", key, "reason", p.Reason, "message", p.Message)
		if a.cfg.Recorder != nil && svc != nil {
			a.cfg.Recorder.Event(svc, corev1.EventTypeWarning, p.Reason, p.Message)
		}
	}
}

// apply makes the tables hold desired for key, changing only what differs.
func (a *Agent) apply(key string, desired Desired) error {
	a.mu.Lock()
	prev := a.owned[key]
	a.mu.Unlock()
	prevBy := map[lb.Frontend]lb.Service{}
	for s := range prev {
		prevBy[s.Frontend] = s
	}
	var errs []error
	applied := Desired{}
	// Keep what is still programmed from before, so a failure leaves an
	// accurate record.
	for s, bs := range prev {
		applied[s] = bs
	}
	for s, bs := range desired {
		old, had := prevBy[s.Frontend]
		if !had || old != s {
			if err := a.cfg.Table.UpsertService(s); err != nil {
				errs = append(errs, a.mapErr(err))
				continue
			}
			if had {
				delete(applied, old)
			}
			applied[s] = nil
			a.own(s.Frontend, key)
		}
		if !had || !slices.Equal(prev[old], bs) || old != s {
			if err := a.cfg.Table.SetBackends(s.Frontend, bs); err != nil {
				errs = append(errs, a.mapErr(err))
				continue
			}
		}
		applied[s] = bs
	}
	desiredBy := map[lb.Frontend]bool{}
	for s := range desired {
		desiredBy[s.Frontend] = true
	}
	for s := range prev {
		if desiredBy[s.Frontend] {
			continue
		}
		if err := a.cfg.Table.DeleteService(s.Frontend); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(applied, s)
		a.disown(s.Frontend, key)
	}
	a.mu.Lock()
	if len(applied) == 0 {
		delete(a.owned, key)
	} else {
		a.owned[key] = applied
	}
	a.mu.Unlock()
	if a.cfg.Table.PendingTermination() > 0 {
		a.kickTerminator()
	}
	return errors.Join(errs...)
}

func (a *Agent) own(f lb.Frontend, key string) {
	a.mu.Lock()
	a.owner[f] = key
	a.mu.Unlock()
}

func (a *Agent) disown(f lb.Frontend, key string) {
	a.mu.Lock()
	if a.owner[f] == key {
		delete(a.owner, f)
	}
	a.mu.Unlock()
}

func (a *Agent) mapErr(err error) error {
	if errors.Is(err, lb.ErrMapFull) {
		a.m.mapFull.Inc()
		a.log.Error("eBPF map full: Service not (fully) programmed; raise the map sizes", "err", err)
	}
	return err
}

func (a *Agent) kickTerminator() {
	select {
	case a.termc <- struct{}{}:
	default:
	}
}

// terminator destroys connected UDP sockets pinned to removed backends,
// coalescing removals for TerminateDelay.
func (a *Agent) terminator(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.termc:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(a.cfg.TerminateDelay):
		}
		n, err := a.cfg.Table.TerminateUDP()
		if n > 0 {
			a.m.terminated.Add(float64(n))
			a.log.Info("destroyed connected UDP sockets pinned to removed backends", "sockets", n)
		}
		if err != nil {
			a.log.Warn("terminating connected UDP sockets to removed backends", "err", err)
		}
	}
}

func (a *Agent) updateGauges() {
	a.mu.Lock()
	defer a.mu.Unlock()
	fe, be := 0, 0
	for _, d := range a.owned {
		fe += len(d)
		for _, bs := range d {
			be += len(bs)
		}
	}
	a.m.services.Set(float64(len(a.owned)))
	a.m.frontends.Set(float64(fe))
	a.m.backends.Set(float64(be))
}

// NodePortAddrs are the addresses NodePorts are open on now.
func (a *Agent) NodePortAddrs() []netip.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.nodeAddr)
}

// Ready reports whether the first full sync is done.
func (a *Agent) Ready() bool { return a.ready.Load() }

// Healthz answers liveness: the process runs.
func (a *Agent) Healthz(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }

// Readyz answers readiness: the Service tables reflect the API.
func (a *Agent) Readyz(w http.ResponseWriter, _ *http.Request) {
	if !a.ready.Load() {
		http.Error(w, "initial sync not done", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}
