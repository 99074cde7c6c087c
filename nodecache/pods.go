package nodecache

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/dnsaccel/dnsaccel/nodecache/dnsstats"
)

// podIndex maps the addresses of this node's pods to their namespace and
// name, for the per-pod DNS accounting. Like k8s_autopath's index (which
// keeps namespaces only) it is fed by a reflector with a field selector
// (this node's pods, not finished) and keeps a few fields of each Pod,
// never the object.
type podIndex struct {
	mu     sync.RWMutex
	byKey  map[string][]netip.Addr // namespace/name
	byIP   map[netip.Addr]dnsstats.Pod
	synced atomic.Bool
}

func newPodIndex() *podIndex {
	return &podIndex{byKey: map[string][]netip.Addr{}, byIP: map[netip.Addr]dnsstats.Pod{}}
}

// LookupPod implements dnsstats.PodResolver.
func (x *podIndex) LookupPod(ip netip.Addr) (dnsstats.Pod, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	p, ok := x.byIP[ip.Unmap()]
	return p, ok
}

// IPs returns the addresses of the selected pods (sorted).
func (x *podIndex) IPs(sel dnsstats.LogSelection) []netip.Addr {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []netip.Addr
	for ip, p := range x.byIP {
		if sel.Matches(p) {
			out = append(out, ip)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

// run lists and watches the pods of node (every pod when "") until ctx ends.
func (x *podIndex) run(ctx context.Context, client kubernetes.Interface, node string) {
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
	r := cache.NewReflectorWithOptions(lw, &corev1.Pod{}, x, cache.ReflectorOptions{Name: "node-cache accounting pods"})
	r.RunWithContext(ctx)
}

// record is what the index keeps of a Pod: its key and addresses (nil: not
// a client, e.g. host network, finished, or no IP yet).
func podRecord(obj any) (string, []netip.Addr, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		key := o.Namespace + "/" + o.Name
		if o.Spec.HostNetwork || o.Status.Phase == corev1.PodSucceeded || o.Status.Phase == corev1.PodFailed {
			return key, nil, nil
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
		return key, ips, nil
	case cache.DeletedFinalStateUnknown:
		return o.Key, nil, nil
	}
	return "", nil, fmt.Errorf("accounting pods: unexpected object %T", obj)
}

// Add implements cache.ReflectorStore.
func (x *podIndex) Add(obj any) error { return x.Update(obj) }

// Update implements cache.ReflectorStore.
func (x *podIndex) Update(obj any) error {
	key, ips, err := podRecord(obj)
	if err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.remove(key)
	x.add(key, ips)
	return nil
}

// Delete implements cache.ReflectorStore.
func (x *podIndex) Delete(obj any) error {
	key, _, err := podRecord(obj)
	if err != nil {
		return err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.remove(key)
	return nil
}

// Replace implements cache.ReflectorStore.
func (x *podIndex) Replace(list []any, _ string) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.byKey = map[string][]netip.Addr{}
	x.byIP = map[netip.Addr]dnsstats.Pod{}
	for _, obj := range list {
		key, ips, err := podRecord(obj)
		if err != nil {
			return err
		}
		x.add(key, ips)
	}
	x.synced.Store(true)
	return nil
}

// Resync implements cache.ReflectorStore.
func (x *podIndex) Resync() error { return nil }

func (x *podIndex) add(key string, ips []netip.Addr) {
	if len(ips) == 0 {
		return
	}
	ns, name, _ := cutKey(key)
	x.byKey[key] = ips
	for _, ip := range ips {
		// A newer pod takes over a reused address.
		x.byIP[ip] = dnsstats.Pod{Namespace: ns, Name: name}
	}
}

func (x *podIndex) remove(key string) {
	ips := x.byKey[key]
	delete(x.byKey, key)
	ns, name, _ := cutKey(key)
	for _, ip := range ips {
		if p, ok := x.byIP[ip]; ok && p.Namespace == ns && p.Name == name {
			delete(x.byIP, ip)
		}
	}
}

func cutKey(key string) (ns, name string, ok bool) {
	for i := 0; i < len(key); i++ {
		if key[i] == '/' {
			return key[:i], key[i+1:], true
		}
	}
	return "", key, false
}
