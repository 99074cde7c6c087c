package k8sautopath

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/dnsaccel/dnsaccel/test/cluster"
)

func TestMain(m *testing.M) { cluster.Main(m) }

type podSpec struct {
	ns, name string
	ips      []string
	phase    corev1.PodPhase
	age      time.Duration // created this long ago
	mutate   func(*corev1.Pod)
}

func (p podSpec) pod() *corev1.Pod {
	o := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: p.name,
			CreationTimestamp: metav1.NewTime(time.Now().Add(-p.age))},
		Spec:   corev1.PodSpec{DNSPolicy: corev1.DNSClusterFirst},
		Status: corev1.PodStatus{Phase: p.phase},
	}
	if o.Status.Phase == "" {
		o.Status.Phase = corev1.PodRunning
	}
	for _, ip := range p.ips {
		o.Status.PodIPs = append(o.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if p.mutate != nil {
		p.mutate(o)
	}
	return o
}

// TestIndexLookup feeds the index as the reflector does and checks what
// one IP resolves to.
func TestIndexLookup(t *testing.T) {
	deleting := func(p *corev1.Pod) { now := metav1.Now(); p.DeletionTimestamp = &now }
	custom := func(p *corev1.Pod) {
		p.Spec.DNSConfig = &corev1.PodDNSConfig{Searches: []string{"corp.example"}}
	}
	ndots := func(p *corev1.Pod) {
		two := "2"
		p.Spec.DNSConfig = &corev1.PodDNSConfig{Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &two}}}
	}
	tests := []struct {
		name     string
		pods     []podSpec
		ip       string
		wantNS   string // "" = not found
		wantDflt bool
	}{
		{"single", []podSpec{{ns: "a", name: "p", ips: []string{"10.0.0.1"}}}, "10.0.0.1", "a", true},
		{"unknown ip", []podSpec{{ns: "a", name: "p", ips: []string{"10.0.0.1"}}}, "10.0.0.2", "", false},
		{"dual-stack second family", []podSpec{{ns: "a", name: "p", ips: []string{"10.0.0.1", "fd00::1"}}}, "fd00::1", "a", true},
		{"v4-mapped client", []podSpec{{ns: "a", name: "p", ips: []string{"10.0.0.1"}}}, "::ffff:10.0.0.1", "a", true},
		{"succeeded dropped", []podSpec{{ns: "a", name: "p", ips: []string{"10.0.0.1"}, phase: corev1.PodSucceeded}}, "10.0.0.1", "", false},
		{"failed dropped", []podSpec{{ns: "a", name: "p", ips: []string{"10.0.0.1"}, phase: corev1.PodFailed}}, "10.0.0.1", "", false},
		{"deleting dropped", []podSpec{{ns: "a", name: "p", ips: []string{"10.0.0.1"}, mutate: deleting}}, "10.0.0.1", "", false},
		{"host network dropped", []podSpec{{ns: "a", name: "p", ips: []string{"10.0.0.1"}, mutate: func(p *corev1.Pod) { p.Spec.HostNetwork = true }}}, "10.0.0.1", "", false},
		{"custom searches", []podSpec{{ns: "a", name: "p", ips: []string{"10.0.0.1"}, mutate: custom}}, "10.0.0.1", "a", false},
		{"custom ndots", []podSpec{{ns: "a", name: "p", ips: []string{"10.0.0.1"}, mutate: ndots}}, "10.0.0.1", "a", false},
		{"policy None", []podSpec{{ns: "a", name: "p", ips: []string{"10.0.0.1"}, mutate: func(p *corev1.Pod) { p.Spec.DNSPolicy = corev1.DNSNone }}}, "10.0.0.1", "a", false},
		{"reuse: running beats newer pending", []podSpec{
			{ns: "old", name: "p", ips: []string{"10.0.0.1"}, age: time.Hour},
			{ns: "new", name: "q", ips: []string{"10.0.0.1"}, phase: corev1.PodPending},
		}, "10.0.0.1", "old", true},
		{"reuse: newest running wins", []podSpec{
			{ns: "old", name: "p", ips: []string{"10.0.0.1"}, age: time.Hour},
			{ns: "new", name: "q", ips: []string{"10.0.0.1"}},
		}, "10.0.0.1", "new", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x := NewIndex()
			for _, p := range tc.pods {
				if err := x.Add(p.pod()); err != nil {
					t.Fatal(err)
				}
			}
			got, ok := x.Lookup(netip.MustParseAddr(tc.ip))
			if ok != (tc.wantNS != "") || got.Namespace != tc.wantNS || (ok && got.DefaultSearch != tc.wantDflt) {
				t.Fatalf("Lookup(%s) = %+v, %v; want namespace %q default search %v", tc.ip, got, ok, tc.wantNS, tc.wantDflt)
			}
		})
	}
}

// TestIndexUpdates: updates move IPs, deletes forget them, a relist
// replaces everything, and the index is synced only after the first list.
func TestIndexUpdates(t *testing.T) {
	x := NewIndex()
	a := podSpec{ns: "a", name: "p", ips: []string{"10.0.0.1"}}
	if err := x.Add(a.pod()); err != nil {
		t.Fatal(err)
	}
	if x.Synced() {
		t.Fatal("synced before any list")
	}
	a.ips = []string{"10.0.0.2"}
	x.Update(a.pod())
	if _, ok := x.Lookup(netip.MustParseAddr("10.0.0.1")); ok {
		t.Error("old IP still indexed after update")
	}
	if p, ok := x.Lookup(netip.MustParseAddr("10.0.0.2")); !ok || p.Namespace != "a" {
		t.Errorf("new IP: %+v %v", p, ok)
	}
	x.Delete(cache.DeletedFinalStateUnknown{Key: "a/p", Obj: a.pod()})
	if _, ok := x.Lookup(netip.MustParseAddr("10.0.0.2")); ok || x.Len() != 0 {
		t.Errorf("pod still indexed after delete (len %d)", x.Len())
	}
	b := podSpec{ns: "b", name: "q", ips: []string{"10.0.0.3"}}
	x.Add(a.pod())
	if err := x.Replace([]any{b.pod()}, "7"); err != nil {
		t.Fatal(err)
	}
	if _, ok := x.Lookup(netip.MustParseAddr("10.0.0.2")); ok {
		t.Error("a pod missing from the relist is still indexed")
	}
	if p, ok := x.Lookup(netip.MustParseAddr("10.0.0.3")); !ok || p.Namespace != "b" || !x.Synced() || x.Len() != 1 {
		t.Errorf("after relist: %+v %v synced=%v len=%d", p, ok, x.Synced(), x.Len())
	}
	if err := x.Add("not a pod"); err == nil {
		t.Error("a non-Pod object was accepted")
	}
}

// TestIndexWatch runs the index against the real API server: the node
// field selector, dual-stack IPs, custom DNS, and an IP reused by a pod of
// another namespace as soon as the watch delivers it.
func TestIndexWatch(t *testing.T) {
	c := cluster.Shared(t)
	nsA, nsB := c.CreateNamespace(t, "ap-a-"), c.CreateNamespace(t, "ap-b-")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	mine := c.MustCreatePod(t, cluster.PodOptions{Namespace: nsA, Name: "mine", NodeName: "node-a", PodIPs: []string{"10.77.0.1", "fd77::1"}})
	c.MustCreatePod(t, cluster.PodOptions{Namespace: nsA, Name: "other-node", NodeName: "node-b", PodIPs: []string{"10.77.0.2"}})
	c.MustCreatePod(t, cluster.PodOptions{Namespace: nsA, Name: "custom", NodeName: "node-a", PodIPs: []string{"10.77.0.3"},
		DNSConfig: &corev1.PodDNSConfig{Searches: []string{"corp.example"}}})

	x := NewIndex()
	go x.Run(ctx, c.Client, "node-a")
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if !x.WaitSynced(wctx) {
		t.Fatal("index did not sync within 30s")
	}
	expect := func(ip, ns string, dflt bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			p, ok := x.Lookup(netip.MustParseAddr(ip))
			if ok == (ns != "") && p.Namespace == ns && (!ok || p.DefaultSearch == dflt) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("Lookup(%s) = %+v, %v; want namespace %q (default search %v)", ip, p, ok, ns, dflt)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	expect("10.77.0.1", nsA, true)
	expect("fd77::1", nsA, true)
	expect("10.77.0.2", "", false) // another node's pod is not watched
	expect("10.77.0.3", nsA, false)

	// The pod goes; its IP comes back in another namespace.
	if err := cluster.DeletePod(ctx, c.Client, nsA, mine.Name); err != nil {
		t.Fatal(err)
	}
	expect("10.77.0.1", "", false)
	c.MustCreatePod(t, cluster.PodOptions{Namespace: nsB, Name: "reuser", NodeName: "node-a", PodIPs: []string{"10.77.0.1"}})
	expect("10.77.0.1", nsB, true)

	// A pod that finishes leaves the index (it leaves the field selector).
	if _, err := cluster.UpdatePodStatus(ctx, c.Client, nsB, "reuser", func(s *corev1.PodStatus) { s.Phase = corev1.PodSucceeded }); err != nil {
		t.Fatal(err)
	}
	expect("10.77.0.1", "", false)
}
