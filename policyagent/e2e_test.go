package policyagent

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dnsaccel/dnsaccel/datapath/policy"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/steertest"
	"github.com/dnsaccel/dnsaccel/test/svctest"
)

func TestMain(m *testing.M) { cluster.Main(m) }

func apiPod(t *testing.T, cs kubernetes.Interface, ns, name, node string, l map[string]string, dns bool) *svctest.Backend {
	t.Helper()
	b := svctest.NewBackend(t, name)
	b.ServeHTTP(t, 80)
	if dns {
		b.ServeDNS(t, 53)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cluster.CreatePod(ctx, cs, cluster.PodOptions{Namespace: ns, Name: name, Labels: l, NodeName: node,
		PodIPs: []string{b.Pod.IP.String()}, HostIP: b.Pod.HostIP.String(),
		Containers: []corev1.Container{{Name: "app", Image: cluster.DefaultPodImage, Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.DeletePod(context.Background(), cs, ns, name) })
	return b
}

// TestAgentE2E: a real API server, the agent, netns pods with Pod objects;
// policies written through the API are enforced, and the DNS rule: with
// default-deny egress plus "allow 53 to the kube-dns pods", DNS to a kube-dns
// pod and to node-cache's local address (the steering target) passes, and
// nothing else.
func TestAgentE2E(t *testing.T) {
	c := cluster.Shared(t)
	cs := c.Client
	ns := c.CreateNamespace(t, "pol-")
	node := "pol-node-" + strings.TrimPrefix(ns, "pol-")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	server := apiPod(t, cs, ns, "server", node, map[string]string{"app": "server"}, false)
	client := apiPod(t, cs, ns, "client", node, map[string]string{"app": "client"}, false)
	dnsName := "pol-kube-dns-" + strings.TrimPrefix(ns, "pol-")
	kubeDNS := apiPod(t, cs, "kube-system", dnsName, node, map[string]string{"k8s-app": "kube-dns", "pol-test": ns}, true)
	nodeCache := svctest.NewBackend(t, "pol-node-cache") // no Pod object: node-cache's local address
	nodeCache.ServeDNS(t, 53)
	nodeCache.ServeHTTP(t, 80)
	svctest.Forward(t, server.Pod, client.Pod, kubeDNS.Pod, nodeCache.Pod)

	a, err := New(Config{Client: cs, NodeName: node, BPFFS: steertest.BPFFS(t), NodeDNS: []netip.Addr{nodeCache.Pod.IP}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		a.dp.Close()
		if err := policy.Cleanup(PinDir(a.cfg.BPFFS)); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	steertest.WaitFor(t, "the agent's first sync", 30*time.Second, a.Ready)

	web := netip.AddrPortFrom(server.Pod.IP, 80)
	get := func() bool { return svctest.HTTPGet(client.Pod, web, 500*time.Millisecond).Err == nil }
	waitFor := func(what string, want bool, f func() bool) time.Duration {
		t.Helper()
		t0 := time.Now()
		for time.Since(t0) < 20*time.Second {
			if f() == want {
				return time.Since(t0)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("%s: still %v after 20s", what, !want)
		return 0
	}
	waitFor("client -> server without policies", true, get)

	create := func(p *networkingv1.NetworkPolicy) {
		t.Helper()
		p.Namespace = ns
		if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Programming latency: API write -> the first probe (50ms timeout,
	// every 5ms) that no longer gets through.
	quick := func() bool { return svctest.HTTPGet(client.Pod, web, 50*time.Millisecond).Err == nil }
	create(np(ns, "deny-server", sel("app", "server"), tIn, nil, nil))
	took := waitFor("default deny ingress to the server", false, quick)
	t.Logf("deny enforced %v after the API write (incl. one 50ms probe timeout)", took)
	// The node reaches an isolated pod (kubelet probes).
	if c, err := net.DialTimeout("tcp", web.String(), 2*time.Second); err != nil {
		t.Errorf("from the node to the isolated server: %v", err)
	} else {
		c.Close()
	}
	create(np(ns, "allow-client", sel("app", "server"), tIn, fromPorts(ports(port(tcp, "http")), peer(nil, sel("app", "client"))), nil))
	waitFor("allowed by the named port http from the client", true, get)

	// DNS: default-deny egress for the client, plus 53 to kube-dns.
	dnsQ := func(to netip.Addr) func() bool {
		return func() bool {
			r := svctest.DNSQuery(client.Pod, netip.AddrPortFrom(to, 53), svctest.UDPOptions{}, 500*time.Millisecond)
			return r.Err == nil
		}
	}
	create(np(ns, "deny-egress", sel("app", "client"), tOut, nil, nil))
	waitFor("egress denied", false, get)
	waitFor("DNS to kube-dns denied", false, dnsQ(kubeDNS.Pod.IP))
	waitFor("DNS to node-cache denied", false, dnsQ(nodeCache.Pod.IP))
	create(np(ns, "allow-dns", sel("app", "client"), tOut, nil, toPorts(ports(port(udp, 53), port(tcp, 53)),
		peer(sel("kubernetes.io/metadata.name", "kube-system"), sel("k8s-app", "kube-dns", "pol-test", ns)))))
	waitFor("DNS to the kube-dns pod", true, dnsQ(kubeDNS.Pod.IP))
	waitFor("DNS to node-cache's local address (steered)", true, dnsQ(nodeCache.Pod.IP))
	if get() {
		t.Errorf("the DNS policy let HTTP to the server out")
	}
	if r := svctest.HTTPGet(client.Pod, netip.AddrPortFrom(nodeCache.Pod.IP, 80), 500*time.Millisecond); r.Err == nil {
		t.Errorf("node-cache's address reachable on port 80: only DNS should be")
	}
	drops, err := a.dp.Drops()
	if err != nil || len(drops) == 0 {
		t.Errorf("drops per policy: %v, %v", drops, err)
	}
}
