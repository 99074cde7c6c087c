package source_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/source"
)

const zone = "k8s.internal"

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// recorder collects OnChange and OnInvalid calls.
type recorder struct {
	mu      sync.Mutex
	changes [][]string
	invalid []string
}

func (r *recorder) onChange(names []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, names)
}

func (r *recorder) onInvalid(ref *corev1.ObjectReference, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.invalid = append(r.invalid, ref.Kind+"/"+ref.Namespace+"/"+ref.Name+": "+reason)
}

func (r *recorder) invalids() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.invalid...)
}

// changedNames returns every name OnChange reported so far.
func (r *recorder) changedNames() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[string]bool{}
	for _, ns := range r.changes {
		for _, n := range ns {
			m[n] = true
		}
	}
	return m
}

type env struct {
	src   *source.Source
	cs    *fake.Clientset
	rec   *recorder
	watch chan string // resources whose watch started
}

// newEnv builds a source over a fake clientset holding objs and starts it.
func newEnv(t *testing.T, mod func(*source.Config), objs ...runtime.Object) *env {
	t.Helper()
	e := newUnstarted(t, mod, objs...)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); e.src.Shutdown() })
	if !e.src.Start(ctx) {
		t.Fatal("source did not sync")
	}
	return e
}

func newUnstarted(t *testing.T, mod func(*source.Config), objs ...runtime.Object) *env {
	t.Helper()
	cs := fake.NewSimpleClientset(objs...)
	e := &env{cs: cs, rec: &recorder{}, watch: make(chan string, 16)}
	// Signal each watch once it is registered with the tracker, so the test
	// changes objects only when the informers can see the change.
	cs.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		var opts metav1.ListOptions
		if wa, ok := a.(k8stesting.WatchActionImpl); ok {
			opts = wa.ListOptions
		}
		w, err := cs.Tracker().Watch(a.GetResource(), a.GetNamespace(), opts)
		if err != nil {
			return true, nil, err
		}
		select {
		case e.watch <- a.GetResource().Resource:
		default: // a re-watch nobody waits for
		}
		return true, w, nil
	})
	cfg := source.Config{Client: cs, Services: true, Pods: true, Zone: zone, Logger: quietLog(),
		OnChange: e.rec.onChange, OnInvalid: e.rec.onInvalid}
	if mod != nil {
		mod(&cfg)
	}
	src, err := source.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.src = src
	return e
}

// waitWatches waits until n watches are established.
func (e *env) waitWatches(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for range n {
		select {
		case <-e.watch:
		case <-timeout:
			t.Fatalf("watches not established")
		}
	}
}

// render shows endpoints as sorted "name type targets ttl resource[ adopt]".
func render(eps []endpoint.Endpoint) []string {
	out := make([]string, 0, len(eps))
	for _, ep := range eps {
		s := fmt.Sprintf("%s %s %s %d %s", ep.Name, ep.Type, strings.Join(ep.Targets, ","), ep.TTL, ep.Resource)
		if ep.Adopt {
			s += " adopt"
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func svc(name string, mod func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-svc-" + name)},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}}}
	if mod != nil {
		mod(s)
	}
	return s
}

func annotated(kv ...string) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Annotations = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			s.Annotations[kv[i]] = kv[i+1]
		}
	}
}

func slice(svcName, name string, typ discoveryv1.AddressType, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name,
		Labels: map[string]string{discoveryv1.LabelServiceName: svcName}}, AddressType: typ, Endpoints: eps}
}

func endpointOf(ip string, ready *bool, hostname string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
	if hostname != "" {
		e.Hostname = &hostname
	}
	return e
}

func pod(name string, phase corev1.PodPhase, ann map[string]string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, Annotations: ann},
		Status: corev1.PodStatus{Phase: phase}}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

func ptr[T any](v T) *T { return &v }

// The desired records of each kind of object, table-driven.
func TestEndpoints(t *testing.T) {
	publish := map[string]string{source.Publish: "true"}
	cases := []struct {
		name    string
		mod     func(*source.Config)
		objs    []runtime.Object
		want    []string
		invalid []string // substrings of OnInvalid reasons
	}{
		{name: "ClusterIP Service, default template",
			objs: []runtime.Object{svc("web", nil)},
			want: []string{"web.ns A 10.96.0.10 60 svc/ns/web"}},
		{name: "dual-stack Service",
			objs: []runtime.Object{svc("web", func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00::a"} })},
			want: []string{"web.ns A 10.96.0.10 60 svc/ns/web", "web.ns AAAA fd00::a 60 svc/ns/web"}},
		{name: "template with kind, and one that ends with the zone",
			mod:  func(c *source.Config) { c.FQDNTemplate = "{{.Name}}-{{.Kind}},{{.Name}}.{{.Namespace}}.k8s.internal" },
			objs: []runtime.Object{svc("web", nil)},
			want: []string{"web-service A 10.96.0.10 60 svc/ns/web", "web.ns A 10.96.0.10 60 svc/ns/web"}},
		{name: "--ttl",
			mod:  func(c *source.Config) { c.TTL = 300 },
			objs: []runtime.Object{svc("web", nil)},
			want: []string{"web.ns A 10.96.0.10 300 svc/ns/web"}},
		{name: "hostname annotations: both keys, FQDNs in the zone, the apex; outside the zone is invalid",
			objs:    []runtime.Object{svc("web", annotated(source.Hostname, "WWW.k8s.internal., k8s.internal", source.HostnameAlpha, "alt.k8s.internal,web.other.zone"))},
			want:    []string{"@ A 10.96.0.10 60 svc/ns/web", "alt A 10.96.0.10 60 svc/ns/web", "www A 10.96.0.10 60 svc/ns/web"},
			invalid: []string{`Service/ns/web: hostname "web.other.zone" is not in zone k8s.internal`}},
		{name: "ttl annotation: seconds, duration, clamped, invalid",
			objs: []runtime.Object{
				svc("a", annotated(source.TTL, "30")),
				svc("b", annotated(source.TTLAlpha, "2m")),
				svc("c", annotated(source.TTL, "1")),
				svc("d", annotated(source.TTL, "100000")),
				svc("e", annotated(source.TTL, "soon")),
			},
			want: []string{"a.ns A 10.96.0.10 30 svc/ns/a", "b.ns A 10.96.0.10 120 svc/ns/b", "c.ns A 10.96.0.10 5 svc/ns/c",
				"d.ns A 10.96.0.10 86400 svc/ns/d", "e.ns A 10.96.0.10 60 svc/ns/e"},
			invalid: []string{`Service/ns/e: external-dns.kubernetes.io/ttl "soon": not seconds or a duration`}},
		{name: "ignored and ExternalName Services publish nothing; adopt is carried",
			objs: []runtime.Object{
				svc("hidden", annotated(source.Ignore, "true")),
				svc("ext", func(s *corev1.Service) {
					s.Spec = corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "x.example.com"}
				}),
				svc("db", annotated(source.Adopt, "true")),
			},
			want: []string{"db.ns A 10.96.0.10 60 svc/ns/db adopt"}},
		{name: "LoadBalancer: ingress IPs, a hostname as CNAME",
			objs: []runtime.Object{
				svc("lb", func(s *corev1.Service) {
					s.Spec.Type = corev1.ServiceTypeLoadBalancer
					s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.7"}, {IP: "198.51.100.8"}}
				}),
				svc("elb", func(s *corev1.Service) {
					s.Spec.Type = corev1.ServiceTypeLoadBalancer
					s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{Hostname: "LB.Example.com."}}
				}),
				svc("pending", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer }),
			},
			want: []string{"elb.ns CNAME lb.example.com 60 svc/ns/elb", "lb.ns A 198.51.100.7,198.51.100.8 60 svc/ns/lb"}},
		{name: "headless: ready addresses of its slices, per-hostname records",
			objs: []runtime.Object{
				svc("db", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, nil }),
				slice("db", "db-1", discoveryv1.AddressTypeIPv4, endpointOf("10.244.0.10", ptr(true), "db-0"),
					endpointOf("10.244.0.11", nil, "db-1"), endpointOf("10.244.0.12", ptr(false), "db-2")),
				slice("db", "db-2", discoveryv1.AddressTypeIPv6, endpointOf("fd00::10", ptr(true), "")),
				slice("db", "db-3", discoveryv1.AddressTypeFQDN, endpointOf("x.example.com", ptr(true), "")),
				slice("other", "other-1", discoveryv1.AddressTypeIPv4, endpointOf("10.244.9.9", ptr(true), "")),
			},
			want: []string{"db-0.db.ns A 10.244.0.10 60 svc/ns/db", "db-1.db.ns A 10.244.0.11 60 svc/ns/db",
				"db.ns A 10.244.0.10,10.244.0.11 60 svc/ns/db", "db.ns AAAA fd00::10 60 svc/ns/db"}},
		{name: "headless with publishNotReadyAddresses",
			objs: []runtime.Object{
				svc("db", func(s *corev1.Service) {
					s.Spec.ClusterIP, s.Spec.ClusterIPs, s.Spec.PublishNotReadyAddresses = corev1.ClusterIPNone, nil, true
				}),
				slice("db", "db-1", discoveryv1.AddressTypeIPv4, endpointOf("10.244.0.10", ptr(true), ""), endpointOf("10.244.0.12", ptr(false), "")),
			},
			want: []string{"db.ns A 10.244.0.10,10.244.0.12 60 svc/ns/db"}},
		{name: "pods: only running ones that opt in",
			objs: []runtime.Object{
				pod("worker", corev1.PodRunning, publish, "10.244.1.5", "fd00::15"),
				pod("quiet", corev1.PodRunning, nil, "10.244.1.6"),
				pod("pending", corev1.PodPending, publish, "10.244.1.7"),
				pod("opted-out", corev1.PodRunning, map[string]string{source.Publish: "true", source.Ignore: "true"}, "10.244.1.8"),
				pod("named", corev1.PodRunning, map[string]string{source.Publish: "true", source.Hostname: "job.k8s.internal"}, "10.244.1.9"),
			},
			want: []string{"job A 10.244.1.9 60 pod/ns/named", "worker.ns A 10.244.1.5 60 pod/ns/worker", "worker.ns AAAA fd00::15 60 pod/ns/worker"}},
		{name: "only the sources asked for",
			mod:  func(c *source.Config) { c.Pods = false },
			objs: []runtime.Object{svc("web", nil), pod("worker", corev1.PodRunning, publish, "10.244.1.5")},
			want: []string{"web.ns A 10.96.0.10 60 svc/ns/web"}},
		{name: "one namespace",
			mod:  func(c *source.Config) { c.Namespace = "other" },
			objs: []runtime.Object{svc("web", nil), svc("api", func(s *corev1.Service) { s.Namespace = "other" })},
			want: []string{"api.other A 10.96.0.10 60 svc/other/api"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.mod, tc.objs...)
			if got := render(e.src.Endpoints()); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("endpoints:\n got %q\nwant %q", got, tc.want)
			}
			inv := e.rec.invalids()
			if len(inv) != len(tc.invalid) {
				t.Errorf("invalid %q, want %q", inv, tc.invalid)
			}
			for _, want := range tc.invalid {
				found := false
				for _, got := range inv {
					found = found || strings.Contains(got, want)
				}
				if !found {
					t.Errorf("no invalid %q in %q", want, inv)
				}
			}
			// Per name and per resource views agree with the whole.
			var byName []endpoint.Endpoint
			names := map[string]bool{}
			resources := map[string]bool{}
			for _, ep := range e.src.Endpoints() {
				names[ep.Name] = true
				resources[ep.Resource] = true
			}
			for n := range names {
				byName = append(byName, e.src.EndpointsFor(n)...)
			}
			if got := render(byName); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("EndpointsFor:\n got %q\nwant %q", got, tc.want)
			}
			if e.src.Resources() != len(resources) {
				t.Errorf("Resources() = %d, want %d", e.src.Resources(), len(resources))
			}
			for r := range resources {
				ref := e.src.Ref(r)
				if ref == nil || !strings.HasSuffix(r, "/"+ref.Namespace+"/"+ref.Name) {
					t.Errorf("Ref(%s) = %+v", r, ref)
				}
			}
		})
	}
}

// A change to an object reports the names it had and has (OnChange), and
// the desired state follows it: update, EndpointSlice change, delete.
func TestChangesReportTouchedNames(t *testing.T) {
	e := newUnstarted(t, nil,
		svc("web", annotated(source.Hostname, "a.k8s.internal")),
		svc("db", func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, nil }))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); e.src.Shutdown() })
	if e.src.Synced() {
		t.Fatal("Synced before Start")
	}
	if !e.src.Start(ctx) || !e.src.Synced() {
		t.Fatal("not synced after Start")
	}
	e.waitWatches(t, 3) // services, endpointslices, pods
	svcs := e.cs.CoreV1().Services("ns")
	step := func(what string, change func() error, wantNames []string, want []string) {
		t.Helper()
		e.rec.mu.Lock()
		e.rec.changes = nil
		e.rec.mu.Unlock()
		if err := change(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			names := e.rec.changedNames()
			got := render(e.src.Endpoints())
			ok := reflect.DeepEqual(got, want)
			for _, n := range wantNames {
				ok = ok && names[n]
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: endpoints %q (want %q), names %v (want %v)", what, got, want, names, wantNames)
			}
			time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
		}
	}
	step("rename by annotation", func() error {
		_, err := svcs.Update(ctx, svc("web", annotated(source.Hostname, "b.k8s.internal")), metav1.UpdateOptions{})
		return err
	}, []string{"a", "b"}, []string{"b A 10.96.0.10 60 svc/ns/web"})
	step("a slice of the headless Service appears", func() error {
		_, err := e.cs.DiscoveryV1().EndpointSlices("ns").Create(ctx,
			slice("db", "db-1", discoveryv1.AddressTypeIPv4, endpointOf("10.244.0.10", ptr(true), "db-0")), metav1.CreateOptions{})
		return err
	}, []string{"db.ns", "db-0.db.ns"}, []string{"b A 10.96.0.10 60 svc/ns/web", "db-0.db.ns A 10.244.0.10 60 svc/ns/db", "db.ns A 10.244.0.10 60 svc/ns/db"})
	step("the slice loses its hostname", func() error {
		_, err := e.cs.DiscoveryV1().EndpointSlices("ns").Update(ctx,
			slice("db", "db-1", discoveryv1.AddressTypeIPv4, endpointOf("10.244.0.11", ptr(true), "")), metav1.UpdateOptions{})
		return err
	}, []string{"db.ns", "db-0.db.ns"}, []string{"b A 10.96.0.10 60 svc/ns/web", "db.ns A 10.244.0.11 60 svc/ns/db"})
	step("delete", func() error { return svcs.Delete(ctx, "web", metav1.DeleteOptions{}) },
		[]string{"b"}, []string{"db.ns A 10.244.0.11 60 svc/ns/db"})
	if e.src.Ref("svc/ns/web") != nil || len(e.src.EndpointsFor("b")) != 0 {
		t.Fatal("deleted Service still known")
	}
	step("a pod opts in", func() error {
		_, err := e.cs.CoreV1().Pods("ns").Create(ctx, pod("worker", corev1.PodRunning, map[string]string{source.Publish: "true"}, "10.244.1.5"), metav1.CreateOptions{})
		return err
	}, []string{"worker.ns"}, []string{"db.ns A 10.244.0.11 60 svc/ns/db", "worker.ns A 10.244.1.5 60 pod/ns/worker"})
	step("the pod opts out", func() error {
		_, err := e.cs.CoreV1().Pods("ns").Update(ctx, pod("worker", corev1.PodRunning, nil, "10.244.1.5"), metav1.UpdateOptions{})
		return err
	}, []string{"worker.ns"}, []string{"db.ns A 10.244.0.11 60 svc/ns/db"})
}

// Issue #21 (4), in the source: Start returns only once the event handlers
// have processed the initial lists, even when the handlers are slow, so
// the desired state is complete when the controller may delete.
func TestStartWaitsForHandlers(t *testing.T) {
	const n = 12
	var objs []runtime.Object
	for i := range n {
		objs = append(objs, svc(fmt.Sprintf("s%d", i), nil))
	}
	e := newUnstarted(t, func(c *source.Config) {
		c.Pods = false
		c.OnChange = func([]string) { time.Sleep(20 * time.Millisecond) } // a slow handler
	}, objs...)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); e.src.Shutdown() })
	if !e.src.Start(ctx) {
		t.Fatal("not synced")
	}
	if got := e.src.Resources(); got != n || !e.src.Synced() {
		t.Fatalf("Start returned with %d of %d resources processed (synced %v)", got, n, e.src.Synced())
	}
}

// Start gives up when ctx ends first (then nothing may be deleted).
func TestStartCancelled(t *testing.T) {
	e := newUnstarted(t, func(c *source.Config) {
		c.OnChange = func([]string) { time.Sleep(time.Second) }
	}, svc("a", nil), svc("b", nil))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	t.Cleanup(func() { cancel(); e.src.Shutdown() })
	if e.src.Start(ctx) {
		t.Fatal("Start reported synced although the handlers were still busy")
	}
}

func TestNewValidates(t *testing.T) {
	cs := fake.NewSimpleClientset()
	cases := []struct {
		cfg  source.Config
		want string
	}{
		{source.Config{Client: cs, Services: true, Zone: zone, TTL: 3}, "ttl 3: want 5 to 86400"},
		{source.Config{Client: cs, Services: true, Zone: zone, FQDNTemplate: "{{.Name"}, "fqdn template"},
		{source.Config{Client: cs, Services: true, Zone: zone, FQDNTemplate: "{{.Owner}}"}, "fqdn template"},
	}
	for _, tc := range cases {
		if _, err := source.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
