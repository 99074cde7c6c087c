package svcagent_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	"github.com/dnsaccel/dnsaccel/datapath/lb"
	"github.com/dnsaccel/dnsaccel/svcagent"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/steertest"
	"github.com/dnsaccel/dnsaccel/test/svctest"
)

// The EndpointSlices come from a real kube-controller-manager's
// EndpointSlice controller watching the pods, as in a cluster.
func TestMain(m *testing.M) {
	cluster.Main(m, cluster.WithControllerManager("endpointslice-controller"))
}

const timeout = 2 * time.Second

// node is the agent on a node of the test's own.
type node struct {
	name   string
	cs     kubernetes.Interface
	cg     string
	bpffs  string
	tbl    *lb.Table
	agent  *svcagent.Agent
	events *record.FakeRecorder
	cidrs  []netip.Prefix
	stop   func()
}

func (n *node) start(t *testing.T) {
	t.Helper()
	tbl, err := lb.Open(lb.Options{Cgroup: n.cg, BPFFS: n.bpffs})
	if err != nil {
		t.Fatal(err)
	}
	a, err := svcagent.New(svcagent.Config{Client: n.cs, Table: tbl, NodeName: n.name, NodePortCIDRs: n.cidrs, Recorder: n.events, TerminateDelay: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	n.tbl, n.agent = tbl, a
	n.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
		tbl.Close()
	}
	steertest.WaitFor(t, "the agent's first sync", 30*time.Second, a.Ready)
}

// backendPod is a netns pod with real servers and its Pod object (with
// named container ports, so named targetPorts resolve).
func backendPod(t *testing.T, cs kubernetes.Interface, ns, name, nodeName string, labels map[string]string) *svctest.Backend {
	t.Helper()
	b := svctest.NewBackend(t, name)
	b.ServeHTTP(t, 8080)
	b.ServeDNS(t, 5353)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := cluster.CreatePod(ctx, cs, cluster.PodOptions{
		Namespace: ns, Name: name, Labels: labels, NodeName: nodeName,
		PodIPs: []string{b.Pod.IP.String(), b.Pod.IPv6.String()}, HostIP: b.Pod.HostIP.String(),
		Containers: []corev1.Container{{Name: "app", Image: cluster.DefaultPodImage, Ports: []corev1.ContainerPort{
			{Name: "web", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
			{Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.DeletePod(context.Background(), cs, ns, name) })
	return b
}

func createService(t *testing.T, cs kubernetes.Interface, svc *corev1.Service) *corev1.Service {
	t.Helper()
	out, err := cs.CoreV1().Services(svc.Namespace).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating Service %s: %v", svc.Name, err)
	}
	return out
}

func webPorts() []corev1.ServicePort {
	return []corev1.ServicePort{
		{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("web")},
		{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("dns")},
	}
}

// reached runs n HTTP requests and returns the backends that answered;
// each must show the frontend as its peer.
func reached(t *testing.T, client *netns.Pod, to netip.AddrPort, n int) []string {
	t.Helper()
	seen := map[string]bool{}
	for range n {
		r := svctest.HTTPGet(client, to, timeout)
		if r.Err != nil {
			t.Fatalf("GET %s: %v", to, r.Err)
		}
		if r.Peer != to {
			t.Fatalf("GET %s: peer %s", to, r.Peer)
		}
		seen[r.Backend] = true
	}
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func waitReach(t *testing.T, client *netns.Pod, to netip.AddrPort, want ...string) {
	t.Helper()
	slices.Sort(want)
	var last []string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		seen := map[string]bool{}
		ok := true
		for range 20 {
			r := svctest.HTTPGet(client, to, 500*time.Millisecond)
			if r.Err != nil || r.Peer != to {
				ok = false
				break
			}
			seen[r.Backend] = true
		}
		last = nil
		for k := range seen {
			last = append(last, k)
		}
		slices.Sort(last)
		if ok && slices.Equal(last, want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: reached %v, want %v", to, last, want)
}

// TestAgent: a real API server and kube-controller-manager, the agent with
// the real load balancer, backend pods in network namespaces with Pod
// objects the EndpointSlice controller turns into EndpointSlices.
func TestAgent(t *testing.T) {
	// The API server first: processes started after Cgroup would be in
	// the test's cgroup.
	c := cluster.Shared(t)
	cg := svctest.Cgroup(t)
	cs := c.Client
	ns := c.CreateNamespace(t, "svc-")
	rng := svctest.NewRangeIn(t, 96)
	client := netns.NewPod(t, netns.Options{PodName: "client", IPv6: true})
	nodeName := "svc-node-" + strings.TrimPrefix(ns, "svc-")
	ctx := context.Background()
	otherNode := "svc-other-" + strings.TrimPrefix(ns, "svc-")
	// The EndpointSlice controller skips pods on Nodes that do not exist.
	for _, nn := range []string{nodeName, otherNode} {
		if _, err := cluster.CreateNode(ctx, cs, nn, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cs.CoreV1().Nodes().Delete(context.Background(), nn, metav1.DeleteOptions{}) })
	}

	web := map[string]string{"app": "web"}
	b0 := backendPod(t, cs, ns, "web-0", nodeName, web)
	b1 := backendPod(t, cs, ns, "web-1", otherNode, web)
	svctest.Forward(t, client, b0.Pod, b1.Pod)

	n := &node{name: nodeName, cs: cs, cg: cg, bpffs: steertest.BPFFS(t), events: record.NewFakeRecorder(100),
		cidrs: []netip.Prefix{netip.PrefixFrom(client.HostIP, 32)}}
	n.start(t)
	t.Cleanup(func() {
		n.stop()
		if err := lb.Cleanup(n.bpffs); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	vip := rng.VIP(false)
	createService(t, cs, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec:       corev1.ServiceSpec{ClusterIP: vip.String(), Ports: webPorts(), Selector: web},
	})
	http80 := netip.AddrPortFrom(vip, 80)

	t.Run("ClusterIP with named target ports from the EndpointSlice controller", func(t *testing.T) {
		waitReach(t, client, http80, "web-0", "web-1")
		r := svctest.DNSQuery(client, netip.AddrPortFrom(vip, 53), svctest.UDPOptions{}, timeout)
		if r.Err != nil || r.Peer != netip.AddrPortFrom(vip, 53) || (r.Backend != "web-0" && r.Backend != "web-1") {
			t.Errorf("DNS over UDP through the VIP: %+v", r)
		}
	})

	t.Run("no endpoints: refused at once", func(t *testing.T) {
		v := rng.VIP(false)
		createService(t, cs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "empty"},
			Spec:       corev1.ServiceSpec{ClusterIP: v.String(), Ports: webPorts(), Selector: map[string]string{"app": "none"}},
		})
		to := netip.AddrPortFrom(v, 80)
		steertest.WaitFor(t, "the empty Service to be refused", 20*time.Second, func() bool {
			r := svctest.HTTPGet(client, to, 200*time.Millisecond)
			return errors.Is(r.Err, syscall.ECONNREFUSED) && r.Took < 100*time.Millisecond
		})
	})

	t.Run("internalTrafficPolicy Local", func(t *testing.T) {
		v := rng.VIP(false)
		local := corev1.ServiceInternalTrafficPolicyLocal
		createService(t, cs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "local"},
			Spec:       corev1.ServiceSpec{ClusterIP: v.String(), Ports: webPorts(), Selector: web, InternalTrafficPolicy: &local},
		})
		waitReach(t, client, netip.AddrPortFrom(v, 80), "web-0")
	})

	t.Run("NodePort from the node", func(t *testing.T) {
		v := rng.VIP(false)
		s := createService(t, cs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nodeport"},
			Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ClusterIP: v.String(), Ports: webPorts()[:1], Selector: web},
		})
		waitReach(t, client, netip.AddrPortFrom(client.HostIP, uint16(s.Spec.Ports[0].NodePort)), "web-0", "web-1")
	})

	t.Run("sessionAffinity ClientIP", func(t *testing.T) {
		v := rng.VIP(false)
		createService(t, cs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sticky"},
			Spec: corev1.ServiceSpec{ClusterIP: v.String(), Ports: webPorts()[:1], Selector: web,
				SessionAffinity: corev1.ServiceAffinityClientIP},
		})
		to := netip.AddrPortFrom(v, 80)
		steertest.WaitFor(t, "the sticky Service", 20*time.Second, func() bool { return svctest.HTTPGet(client, to, 300*time.Millisecond).Err == nil })
		if got := reached(t, client, to, 20); len(got) != 1 {
			t.Errorf("affinity: reached %v", got)
		}
	})

	t.Run("an SCTP port is skipped with an Event", func(t *testing.T) {
		v := rng.VIP(false)
		createService(t, cs, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sctp"},
			Spec: corev1.ServiceSpec{ClusterIP: v.String(), Selector: web, Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("web")},
				{Name: "sctp", Port: 9, Protocol: corev1.ProtocolSCTP},
			}},
		})
		deadline := time.After(20 * time.Second)
		for {
			select {
			case e := <-n.events.Events:
				if strings.Contains(e, "UnsupportedProtocol") {
					waitReach(t, client, netip.AddrPortFrom(v, 80), "web-0", "web-1")
					return
				}
			case <-deadline:
				t.Fatal("no UnsupportedProtocol Event")
			}
		}
	})

	t.Run("churn: a deleted pod's endpoint is never picked once the update lands", func(t *testing.T) {
		b2 := backendPod(t, cs, ns, "web-2", nodeName, web)
		svctest.Forward(t, b2.Pod)
		waitReach(t, client, http80, "web-0", "web-1", "web-2")
		var (
			stop    = make(chan struct{})
			wg      sync.WaitGroup
			failed  atomic.Int64
			firstEr atomic.Value
		)
		wg.Add(1)
		go func() { // a client looping meanwhile: no failure allowed
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if r := svctest.HTTPGet(client, http80, timeout); r.Err != nil {
					failed.Add(1)
					firstEr.CompareAndSwap(nil, r.Err.Error())
				}
			}
		}()
		if err := cluster.DeletePod(ctx, cs, ns, "web-2"); err != nil {
			t.Fatal(err)
		}
		steertest.WaitFor(t, "the agent to drop web-2", 20*time.Second, func() bool {
			for s, bs := range n.tbl.Services() {
				if s.Addr == vip && s.Port == 80 {
					return len(bs) == 2
				}
			}
			return false
		})
		before := b2.Hits("tcp/8080")
		if got := reached(t, client, http80, 40); slices.Contains(got, "web-2") || b2.Hits("tcp/8080") != before {
			t.Errorf("after the update: reached %v, web-2 served %d more", got, b2.Hits("tcp/8080")-before)
		}
		close(stop)
		wg.Wait()
		if failed.Load() > 0 {
			t.Errorf("%d requests failed during the churn; first: %v", failed.Load(), firstEr.Load())
		}
	})

	t.Run("agent restart under load: no failed connection", func(t *testing.T) {
		var (
			stop     = make(chan struct{})
			wg       sync.WaitGroup
			ok, fail atomic.Int64
			firstEr  atomic.Value
		)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if r := svctest.HTTPGet(client, http80, timeout); r.Err != nil {
					fail.Add(1)
					firstEr.CompareAndSwap(nil, r.Err.Error())
				} else {
					ok.Add(1)
				}
			}
		}()
		steertest.WaitFor(t, "load", 10*time.Second, func() bool { return ok.Load() > 20 })
		n.stop()
		k := ok.Load()
		steertest.WaitFor(t, "load while no agent runs", 10*time.Second, func() bool { return ok.Load() > k+20 })
		n.start(t)
		if n.tbl.Adopted() != 8 {
			t.Errorf("the restarted agent adopted %d links, want 8", n.tbl.Adopted())
		}
		k = ok.Load()
		steertest.WaitFor(t, "load after the restart", 10*time.Second, func() bool { return ok.Load() > k+20 })
		close(stop)
		wg.Wait()
		if fail.Load() > 0 {
			t.Errorf("%d of %d requests failed across the restart; first: %v", fail.Load(), fail.Load()+ok.Load(), firstEr.Load())
		}
		waitReach(t, client, http80, "web-0", "web-1")
	})

	t.Run("a deleted Service's frontends are removed", func(t *testing.T) {
		if err := cs.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
		steertest.WaitFor(t, "the frontends of web to go", 20*time.Second, func() bool {
			for s := range n.tbl.Services() {
				if s.Addr == vip {
					return false
				}
			}
			return true
		})
		if r := svctest.HTTPGet(client, http80, 300*time.Millisecond); r.Err == nil {
			t.Errorf("the deleted Service still answers: %+v", r)
		}
	})
}
