package nodecache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

func service(name, clusterIP string, mut ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: clusterIP, Ports: []corev1.ServicePort{
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53}, {Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53}}},
	}
	if clusterIP != "" {
		s.Spec.ClusterIPs = []string{clusterIP}
	}
	for _, m := range mut {
		m(s)
	}
	return s
}

func TestClusterDNSUpstreams(t *testing.T) {
	forbidden := func(cs *fake.Clientset) {
		cs.PrependReactor("get", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "kube-dns-upstream", errors.New("no RBAC"))
		})
	}
	tests := []struct {
		name    string
		objs    []runtime.Object
		react   func(*fake.Clientset)
		want    string // joined upstreams
		from    string
		wantErr string
	}{
		{"neither", nil, nil, "", "", "neither Service kube-system/kube-dns-upstream nor kube-system/kube-dns"},
		{"kube-dns only", []runtime.Object{service("kube-dns", "10.96.0.10")}, nil, "10.96.0.10:53", "kube-system/kube-dns", ""},
		{"kube-dns-upstream first", []runtime.Object{service("kube-dns", "10.96.0.10"), service("kube-dns-upstream", "10.96.0.20")}, nil,
			"10.96.0.20:53", "kube-system/kube-dns-upstream", ""},
		{"dual-stack", []runtime.Object{service("kube-dns", "10.96.0.10", func(s *corev1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::a"}
		})}, nil, "10.96.0.10:53,[fd00:96::a]:53", "kube-system/kube-dns", ""},
		{"the Service's TCP port", []runtime.Object{service("kube-dns", "10.96.0.10", func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{{Protocol: corev1.ProtocolUDP, Port: 5353}, {Protocol: corev1.ProtocolTCP, Port: 5354}}
		})}, nil, "10.96.0.10:5354", "kube-system/kube-dns", ""},
		{"headless kube-dns-upstream is not skipped", []runtime.Object{service("kube-dns", "10.96.0.10"), service("kube-dns-upstream", "None")}, nil,
			"", "", "kube-system/kube-dns-upstream has no ClusterIP"},
		{"API error", []runtime.Object{service("kube-dns", "10.96.0.10")}, forbidden, "", "", "reading Service kube-system/kube-dns-upstream"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset(tc.objs...)
			if tc.react != nil {
				tc.react(cs)
			}
			ups, from, err := ClusterDNSUpstreams(context.Background(), cs)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || strings.Join(ups, ",") != tc.want || from != tc.from {
				t.Fatalf("got %v from %q (err %v), want %s from %q", ups, from, err, tc.want, tc.from)
			}
		})
	}
}

func TestResolveClusterUpstreamsWithoutLookup(t *testing.T) {
	// A kubeconfig that does not exist: any API lookup would fail.
	c := Config{Kube: Kube{Kubeconfig: "/nonexistent/kubeconfig"}, ClusterUpstreams: []string{"10.96.0.10:53"}}
	if err := c.ResolveClusterUpstreams(context.Background()); err != nil || c.ClusterUpstreamsFrom != "--cluster-upstream" {
		t.Fatalf("with --cluster-upstream: err %v, from %q", err, c.ClusterUpstreamsFrom)
	}
	c = Config{}
	if err := c.ResolveClusterUpstreams(context.Background()); err != nil || c.ClusterUpstreams != nil {
		t.Fatalf("outside Kubernetes mode: err %v, upstreams %v", err, c.ClusterUpstreams)
	}
	c = Config{Kube: Kube{Kubeconfig: "/nonexistent/kubeconfig"}}
	if err := c.ResolveClusterUpstreams(context.Background()); err == nil || !strings.Contains(err.Error(), "--cluster-upstream") {
		t.Fatalf("no API: err %v, want one naming --cluster-upstream", err)
	}
}

// printConfig runs bin/node-cache --print-config and returns stdout, stderr
// and the exit code.
func printConfig(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := command(buildBinary(t), append([]string{"--print-config"}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatal(err)
	return "", "", -1
}

// clusterBlock is the cluster-domain block of a generated Corefile.
func clusterBlock(corefile string) string {
	blk, _, _ := strings.Cut(corefile, "\n.:")
	return blk
}

// TestBinaryPrintConfigKubernetes: the default cluster upstreams come from
// the Services of the real API server. The subtests share kube-system, so
// they run one after the other, each removing its Services.
func TestBinaryPrintConfigKubernetes(t *testing.T) {
	c := cluster.Shared(t)
	base := []string{"--kubeconfig", c.Kubeconfig, "--node-name", "node-a", "--listen", "169.254.20.10:53", "--upstream", "192.0.2.53:53"}
	svc := func(t *testing.T, name, clusterIP string) string {
		return c.MustCreateService(t, cluster.ServiceOptions{Namespace: "kube-system", Name: name, ClusterIP: clusterIP}).Spec.ClusterIP
	}
	wantAutopath := fmt.Sprintf("    k8s_autopath cluster.local {\n        kubeconfig %s\n        node node-a\n    }\n", corefileToken(c.Kubeconfig))

	t.Run("neither Service", func(t *testing.T) {
		_, stderr, code := printConfig(t, base...)
		if code != 2 || !strings.Contains(stderr, "--cluster-upstream") || !strings.Contains(stderr, "kube-dns-upstream") {
			t.Fatalf("exit %d, want 2 naming --cluster-upstream and the Services:\n%s", code, stderr)
		}
	})
	t.Run("kube-dns only", func(t *testing.T) {
		ip := svc(t, "kube-dns", "")
		out, stderr, code := printConfig(t, base...)
		blk := clusterBlock(out)
		if code != 0 || !strings.Contains(blk, "nodecache "+ip+":53 {") || !strings.Contains(blk, wantAutopath) {
			t.Fatalf("exit %d, want the cluster block to use kube-dns %s with k8s_autopath:\n%s\n%s", code, ip, out, stderr)
		}
		if !strings.Contains(stderr, `"mode":"kubernetes"`) || !strings.Contains(stderr, `"cluster-upstreams-from":"Service kube-system/kube-dns"`) {
			t.Errorf("start-up log does not say the mode and where the upstreams came from:\n%s", stderr)
		}
	})
	t.Run("kube-dns-upstream preferred", func(t *testing.T) {
		svc(t, "kube-dns", "")
		ip := svc(t, "kube-dns-upstream", "")
		out, stderr, code := printConfig(t, base...)
		if code != 0 || !strings.Contains(clusterBlock(out), "nodecache "+ip+":53 {") {
			t.Fatalf("exit %d, want kube-dns-upstream %s:\n%s\n%s", code, ip, out, stderr)
		}
	})
	t.Run("headless kube-dns-upstream", func(t *testing.T) {
		svc(t, "kube-dns", "")
		svc(t, "kube-dns-upstream", "None")
		_, stderr, code := printConfig(t, base...)
		if code != 2 || !strings.Contains(stderr, "--cluster-upstream") || !strings.Contains(stderr, "no ClusterIP") {
			t.Fatalf("exit %d, want 2 naming --cluster-upstream and the headless Service:\n%s", code, stderr)
		}
	})
	t.Run("kube-dns VIP is a listen address", func(t *testing.T) {
		ip := svc(t, "kube-dns", "")
		args := append(append([]string{}, base...), "--listen", ip+":53")
		_, stderr, code := printConfig(t, args...)
		if code != 2 || !strings.Contains(stderr, "(from Service kube-system/kube-dns) is also a --listen address") {
			t.Fatalf("exit %d, want 2 refusing the loop:\n%s", code, stderr)
		}
	})
	t.Run("--conf in node-local-dns's shape", func(t *testing.T) {
		// The DaemonSet's ConfigMap: its pillars come from the Services and
		// resolv.conf, as node-local-dns fills them (found on a real node,
		// where node-cache exited on __PILLAR__CLUSTER__DNS__).
		ip := svc(t, "kube-dns-upstream", "")
		dir := t.TempDir()
		conf, resolv := filepath.Join(dir, "Corefile"), filepath.Join(dir, "resolv.conf")
		os.WriteFile(conf, []byte("cluster.local:53 {\n    bind 169.254.20.10\n    forward . __PILLAR__CLUSTER__DNS__ {\n        force_tcp\n    }\n}\n"+
			".:53 {\n    bind 169.254.20.10\n    forward . __PILLAR__UPSTREAM__SERVERS__\n}\n"), 0o644)
		os.WriteFile(resolv, []byte("nameserver 192.0.2.77\n"), 0o644)
		out, stderr, code := printConfig(t, "--kubeconfig", c.Kubeconfig, "--node-name", "node-a", "--conf", conf, "--resolv-conf", resolv)
		if code != 0 || !strings.Contains(out, "forward . "+ip+":53 {") || !strings.Contains(out, "forward . 192.0.2.77") {
			t.Fatalf("exit %d, want the pillars filled with kube-dns-upstream %s and resolv.conf's 192.0.2.77:\n%s\n%s", code, ip, out, stderr)
		}
	})
	t.Run("--cluster-upstream: no lookup", func(t *testing.T) {
		svc(t, "kube-dns", "")
		// An API server that is not there: looking would fail.
		kc := filepath.Join(t.TempDir(), "kubeconfig")
		addr := freeAddr(t)
		os.WriteFile(kc, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://"+addr+"'}}]\n"+
			"users: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"), 0o600)
		out, stderr, code := printConfig(t, "--kubeconfig", kc, "--listen", "169.254.20.10:53", "--upstream", "192.0.2.53:53",
			"--cluster-upstream", "10.0.0.10:53", "--cluster-upstream", "10.0.0.11:53")
		if code != 0 || !strings.Contains(clusterBlock(out), "nodecache 10.0.0.10:53 10.0.0.11:53 {") {
			t.Fatalf("exit %d, want the given cluster upstreams:\n%s\n%s", code, out, stderr)
		}
		if !strings.Contains(stderr, `"cluster-upstreams-from":"--cluster-upstream"`) {
			t.Errorf("start-up log does not say the upstreams came from the flag:\n%s", stderr)
		}
	})
	t.Run("standalone without a kubeconfig", func(t *testing.T) {
		out, _, code := printConfig(t, "--listen", "127.0.0.1:5301", "--upstream", "192.0.2.53:53", "--metrics", "")
		want := ".:5301 {\n    bind 127.0.0.1\n    errors\n    nodecache 192.0.2.53:53 {\n" + cacheOpts
		if code != 0 || out != want {
			t.Fatalf("exit %d, got:\n%s\nwant:\n%s", code, out, want)
		}
	})
}

// recordingZone is a dnstest.Zone that also records how each name reached it.
type recordingZone struct {
	zone *dnstest.Zone
	Addr string

	mu    sync.Mutex
	asked map[string][]string // lower-case name -> networks ("udp", "tcp")
}

func newRecordingZone(t *testing.T, rrs ...string) *recordingZone {
	r := &recordingZone{zone: dnstest.NewZone(t), asked: map[string][]string{}}
	r.zone.Add(t, rrs...)
	r.Addr = dnstest.NewServer(t, r).Addr
	return r
}

func (r *recordingZone) ServeDNS(w dns.ResponseWriter, m *dns.Msg) {
	if len(m.Question) == 1 {
		r.mu.Lock()
		name := strings.ToLower(m.Question[0].Name)
		r.asked[name] = append(r.asked[name], w.RemoteAddr().Network())
		r.mu.Unlock()
	}
	r.zone.ServeDNS(w, m)
}

// networks returns how name was asked, e.g. [tcp].
func (r *recordingZone) networks(name string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.asked[strings.ToLower(dns.Fqdn(name))]...)
}

// names returns every name asked, the root (health probes) left out.
func (r *recordingZone) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for n := range r.asked {
		if n != "." {
			out = append(out, n)
		}
	}
	return out
}

func query(t *testing.T, server, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, server)
	if err != nil {
		t.Fatalf("%s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return r
}

func underAny(name string, zones ...string) bool {
	for _, z := range zones {
		if dns.IsSubDomain(z, name) {
			return true
		}
	}
	return false
}

// TestBinaryKubernetes runs the real bin/node-cache in Kubernetes mode
// against the real API server: cluster names go only to the cluster DNS,
// over TCP; the rest only to the node's resolver; k8s_autopath answers a
// pod's search walk in one query through both.
func TestBinaryKubernetes(t *testing.T) {
	c := cluster.Shared(t)
	bin := buildBinary(t)
	ns := c.CreateNamespace(t, "nodecache-")
	const pod = "127.0.11.1" // a loopback address as the pod's IP: queries come from it
	c.MustCreatePod(t, cluster.PodOptions{Namespace: ns, Name: "client", NodeName: "node-a", PodIPs: []string{pod}})

	clusterDNS := newRecordingZone(t, "x.cluster.local. 30 IN A 10.96.1.1",
		"10.0.96.10.in-addr.arpa. 30 IN PTR kube-dns.kube-system.svc.cluster.local.")
	world := newRecordingZone(t, "example.com. 60 IN A 192.0.2.10", "www.example.com. 60 IN A 192.0.2.11")
	resolvConf := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(resolvConf, []byte("nameserver 192.0.2.1\nsearch corp.example\n"), 0o644)
	listen, metrics, health := freeAddr(t), freeAddr(t), freeAddr(t)

	var logs syncBuffer
	cmd := command(bin, "--steer=false", "--kubeconfig", c.Kubeconfig, "--node-name", "node-a", "--listen", listen,
		"--upstream", world.Addr, "--cluster-upstream", clusterDNS.Addr, "--resolv-conf", resolvConf,
		"--metrics", metrics, "--health", health)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	waitFor(t, "ready", func() bool { return httpGet(health, "/ready") == 200 })
	if !strings.Contains(logs.String(), `"mode":"kubernetes"`) {
		t.Errorf("no start-up log of the mode:\n%s", logs.String())
	}

	if r := query(t, listen, "x.cluster.local", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("x.cluster.local: %v", r)
	}
	if r := query(t, listen, "10.0.96.10.in-addr.arpa", dns.TypePTR); len(r.Answer) != 1 {
		t.Fatalf("PTR: %v", r)
	}
	if r := query(t, listen, "example.com", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("example.com: %v", r)
	}
	for _, tc := range []struct {
		name     string
		up       *recordingZone
		notThere *recordingZone
	}{
		{"x.cluster.local.", clusterDNS, world},
		{"10.0.96.10.in-addr.arpa.", clusterDNS, world},
		{"example.com.", world, clusterDNS},
	} {
		if got := tc.up.networks(tc.name); strings.Join(got, ",") != "tcp" {
			t.Errorf("%s reached its upstream as %v, want once over tcp", tc.name, got)
		}
		if got := tc.notThere.networks(tc.name); len(got) != 0 {
			t.Errorf("%s also reached the wrong upstream: %v", tc.name, got)
		}
	}

	// The pod's first search candidate for www.example.com: once the pod
	// index has synced, answered with a CNAME to the name that exists.
	qname := "www.example.com." + ns + ".svc.cluster.local."
	var r *dns.Msg
	waitFor(t, "k8s_autopath to expand", func() bool {
		r = askFrom(t, listen, pod, qname)
		return len(r.Answer) == 2
	})
	cname, ok := r.Answer[0].(*dns.CNAME)
	if r.Rcode != dns.RcodeSuccess || !ok || cname.Target != "www.example.com." {
		t.Fatalf("autopath answer: %v", r)
	}
	if got := world.networks("www.example.com.corp.example."); len(got) == 0 {
		t.Errorf("the node's search domain (from --resolv-conf) was not tried")
	}
	for _, n := range world.names() {
		if underAny(n, "cluster.local.", "in-addr.arpa.", "ip6.arpa.") {
			t.Errorf("the node's resolver was asked %s", n)
		}
	}
	for _, n := range clusterDNS.names() {
		if !underAny(n, "cluster.local.", "in-addr.arpa.", "ip6.arpa.") {
			t.Errorf("the cluster DNS was asked %s", n)
		}
	}
	if body := httpBody(t, metrics, "/metrics"); !strings.Contains(body, `coredns_k8s_autopath_index_synced{node="node-a"} 1`) {
		t.Errorf("/metrics does not show the synced pod index of node-a")
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no exit 10 s after SIGTERM\n%s", logs.String())
	}
}

// askFrom sends one UDP query from a loopback source address.
func askFrom(t *testing.T, server, src, name string) *dns.Msg {
	t.Helper()
	c := &dns.Client{Timeout: 3 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(src)}, Timeout: 3 * time.Second}}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("%s from %s: %v", name, src, err)
	}
	return r
}

// syncBuffer is a bytes.Buffer the child's output and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
