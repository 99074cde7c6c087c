package k8sautopath

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// The pod index answers one question per query: which namespace does the
// pod with this IP live in, and does it use the default search path? It is
// fed by a client-go reflector (the list+watch half of an informer) and
// keeps nothing else: every Pod is transformed into a podRecord on arrival
// and the API object dropped. CoreDNS's `pods verified` keeps name,
// namespace, IP and labels of every pod plus an informer store of them;
// this keeps IPs, an interned namespace, a timestamp and two flags.

// podRecord is all autopath keeps of a Pod.
// The first IP is inline: most pods have one, and a slice per pod would
// cost a header and an allocation each.
type podRecord struct {
	ns            string // interned: one copy per namespace
	ip            netip.Addr
	moreIPs       []netip.Addr // dual-stack
	created       int64        // unix seconds; the newer pod wins a shared IP
	running       bool
	defaultSearch bool // ClusterFirst, no custom searches or ndots
}

// forEachIP calls f for every IP of the pod.
func (r *podRecord) forEachIP(f func(netip.Addr)) {
	f(r.ip)
	for _, ip := range r.moreIPs {
		f(ip)
	}
}

// PodInfo is what a lookup returns.
type PodInfo struct {
	Namespace     string
	DefaultSearch bool
}

// Index maps pod IPs to pods. It implements cache.ReflectorStore.
type Index struct {
	mu     sync.RWMutex
	byKey  map[string]*podRecord // namespace/name
	byIP   map[netip.Addr][]*podRecord
	names  map[string]string // interned namespaces
	synced atomic.Bool
	ready  chan struct{} // closed at the first full list
	once   sync.Once
	size   atomic.Int64

	onChange func(pods int) // metrics hook, called with mu held
}

// NewIndex returns an empty, unsynced index.
func NewIndex() *Index {
	return &Index{
		byKey: map[string]*podRecord{},
		byIP:  map[netip.Addr][]*podRecord{},
		names: map[string]string{},
		ready: make(chan struct{}),
	}
}

// WaitSynced blocks until the index is synced (true) or ctx ends (false).
func (x *Index) WaitSynced(ctx context.Context) bool {
	select {
	case <-x.ready:
		return true
	case <-ctx.Done():
		return false
	}
}

// Lookup returns the pod that owns ip. When pods share an IP (a deleted
// pod's address already reused) the running one wins, then the newest.
func (x *Index) Lookup(ip netip.Addr) (PodInfo, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	recs := x.byIP[ip.Unmap()]
	if len(recs) == 0 {
		return PodInfo{}, false
	}
	best := recs[0]
	for _, r := range recs[1:] {
		if r.running != best.running {
			if r.running {
				best = r
			}
			continue
		}
		if r.created > best.created {
			best = r
		}
	}
	return PodInfo{Namespace: best.ns, DefaultSearch: best.defaultSearch}, true
}

// Synced reports whether the first full list has been stored. Until then
// the index is incomplete and autopath must not rely on it.
func (x *Index) Synced() bool { return x.synced.Load() }

// Len is the number of pods indexed.
func (x *Index) Len() int { return int(x.size.Load()) }

// Run lists and watches pods (only those on node, if node != "") until ctx
// ends, keeping the index current.
func (x *Index) Run(ctx context.Context, client kubernetes.Interface, node string) {
	sel := fields.AndSelectors(
		fields.OneTermNotEqualSelector("status.phase", string(corev1.PodSucceeded)),
		fields.OneTermNotEqualSelector("status.phase", string(corev1.PodFailed)),
	)
	if node != "" {
		sel = fields.AndSelectors(sel, fields.OneTermEqualSelector("spec.nodeName", node))
	}
	pods := client.CoreV1().Pods(metav1.NamespaceAll)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel.String()
			return pods.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel.String()
			return pods.Watch(ctx, o)
		},
	}
	r := cache.NewReflectorWithOptions(lw, &corev1.Pod{}, x, cache.ReflectorOptions{Name: "k8s_autopath pods"})
	r.RunWithContext(ctx)
}

// transform keeps what autopath needs of a Pod. It returns nil for a pod
// that can never be a client: no IP, host network, finished or deleting.
func (x *Index) transform(obj any) (*podRecord, string, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		key := o.Namespace + "/" + o.Name
		if o.Spec.HostNetwork || o.DeletionTimestamp != nil ||
			o.Status.Phase == corev1.PodSucceeded || o.Status.Phase == corev1.PodFailed {
			return nil, key, nil
		}
		var ips []netip.Addr
		for _, p := range o.Status.PodIPs {
			if a, err := netip.ParseAddr(p.IP); err == nil {
				ips = append(ips, a.Unmap())
			}
		}
		if len(ips) == 0 {
			if a, err := netip.ParseAddr(o.Status.PodIP); err == nil {
				ips = append(ips, a.Unmap())
			}
		}
		if len(ips) == 0 {
			return nil, key, nil
		}
		return &podRecord{
			ns:            o.Namespace, // interned by add
			ip:            ips[0],
			moreIPs:       extraIPs(ips),
			created:       o.CreationTimestamp.Unix(),
			running:       o.Status.Phase == corev1.PodRunning,
			defaultSearch: DefaultSearchPath(&o.Spec),
		}, key, nil
	case cache.DeletedFinalStateUnknown:
		return nil, o.Key, nil
	default:
		return nil, "", fmt.Errorf("k8s_autopath: unexpected object %T in pod watch", obj)
	}
}

func extraIPs(ips []netip.Addr) []netip.Addr {
	if len(ips) < 2 {
		return nil
	}
	return append([]netip.Addr(nil), ips[1:]...)
}

// DefaultSearchPath reports whether the kubelet gives a pod with this spec
// the cluster's default search path and ndots, which autopath expands.
func DefaultSearchPath(s *corev1.PodSpec) bool {
	if s.HostNetwork {
		return false // shares the node's IP: not identifiable by address
	}
	switch s.DNSPolicy {
	case "", corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet:
	default:
		return false
	}
	if c := s.DNSConfig; c != nil {
		if len(c.Searches) > 0 {
			return false
		}
		for _, o := range c.Options {
			if o.Name == "ndots" {
				return false
			}
		}
	}
	return true
}

// Add implements cache.ReflectorStore.
func (x *Index) Add(obj any) error { return x.Update(obj) }

// Update implements cache.ReflectorStore.
func (x *Index) Update(obj any) error {
	rec, key, err := x.transform(obj)
	if err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.remove(key)
	if rec != nil {
		x.add(key, rec)
	}
	x.changed()
	return nil
}

// Delete implements cache.ReflectorStore.
func (x *Index) Delete(obj any) error {
	_, key, err := x.transform(obj)
	if err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.remove(key)
	x.changed()
	return nil
}

// Replace implements cache.ReflectorStore: the full list after a (re)list.
func (x *Index) Replace(list []any, _ string) error {
	byKey := make(map[string]*podRecord, len(list))
	for _, obj := range list {
		rec, key, err := x.transform(obj)
		if err != nil {
			return err
		}
		if rec != nil {
			byKey[key] = rec
		}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.byKey = make(map[string]*podRecord, len(byKey))
	x.byIP = make(map[netip.Addr][]*podRecord, len(byKey))
	x.names = map[string]string{}
	for key, rec := range byKey {
		x.add(key, rec)
	}
	x.changed()
	x.synced.Store(true)
	x.once.Do(func() { close(x.ready) })
	return nil
}

// Resync implements cache.ReflectorStore; there is nothing to resync.
func (x *Index) Resync() error { return nil }

// add stores rec; mu must be held.
func (x *Index) add(key string, rec *podRecord) {
	if ns, ok := x.names[rec.ns]; ok {
		rec.ns = ns
	} else {
		x.names[rec.ns] = rec.ns
	}
	x.byKey[key] = rec
	rec.forEachIP(func(ip netip.Addr) { x.byIP[ip] = append(x.byIP[ip], rec) })
}

// remove forgets the pod stored under key; mu must be held.
func (x *Index) remove(key string) {
	old, ok := x.byKey[key]
	if !ok {
		return
	}
	delete(x.byKey, key)
	old.forEachIP(func(ip netip.Addr) {
		recs := x.byIP[ip]
		for i, r := range recs {
			if r == old {
				recs = append(recs[:i], recs[i+1:]...)
				break
			}
		}
		if len(recs) == 0 {
			delete(x.byIP, ip)
		} else {
			x.byIP[ip] = recs
		}
	})
}

func (x *Index) changed() {
	x.size.Store(int64(len(x.byKey)))
	if x.onChange != nil {
		x.onChange(len(x.byKey))
	}
}
