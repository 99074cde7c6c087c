package nodecache

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/dnstest"
	"github.com/dnsaccel/dnsaccel/test/netns"
)

// TestAutopathFromPods is the node cache as pods use it: network-namespace
// pods registered in the real API server, glibc's getent with the pod's
// resolv.conf (ndots:5, the cluster search list plus the node's domain),
// bin/node-cache in Kubernetes mode as their nameserver, and tcpdump on each
// pod's veth counting what the pod puts on the wire.
func TestAutopathFromPods(t *testing.T) {
	c := cluster.Shared(t)
	ns, other := c.CreateNamespace(t, "e2e-"), c.CreateNamespace(t, "e2e-other-")
	const node, nodeDomain = "node-e2e", "corp.example"
	searches := func(ns string) []string {
		return []string{ns + ".svc.cluster.local", "svc.cluster.local", "cluster.local", nodeDomain}
	}
	pod := netns.NewPod(t, netns.Options{Namespace: ns, Client: c.Client, NodeName: node, Searches: searches(ns)})
	// The same resolv.conf, but the Pod object says custom dnsConfig: no autopath.
	custom := netns.NewPod(t, netns.Options{Namespace: ns, Client: c.Client, NodeName: node, Searches: searches(ns),
		DNSConfig: &corev1.PodDNSConfig{Searches: []string{nodeDomain}}})

	world := dnstest.NewZone(t) // the cluster DNS and the node's resolvers at once
	world.Add(t,
		"web."+ns+".svc.cluster.local. 30 IN A 10.96.7.1",
		"api."+other+".svc.cluster.local. 30 IN A 10.96.7.2",
		"www.example.com. 60 IN A 192.0.2.10", "www.example.com. 60 IN AAAA 2001:db8::10",
	)

	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(resolv, []byte("nameserver 192.0.2.53\nsearch "+nodeDomain+"\n"), 0o644)
	listen := []string{pod.HostIP.String() + ":53", custom.HostIP.String() + ":53"}
	health, metrics := freeAddr(t), freeAddr(t)
	args := []string{"--steer=false", "--kubeconfig", c.Kubeconfig, "--node-name", node,
		"--cluster-upstream", world.Addr, "--upstream", world.Addr, "--resolv-conf", resolv,
		"--health", health, "--metrics", metrics}
	for _, l := range listen {
		args = append(args, "--listen", l)
	}
	var logs bytes.Buffer
	cmd := exec.Command(buildBinary(t), args...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("node-cache logs:\n%s", logs.String())
		}
	})
	waitFor(t, "node-cache ready", func() bool { return httpGet(health, "/ready") == 200 })
	waitFor(t, "pod index synced", func() bool {
		return strings.Contains(httpBody(t, metrics, "/metrics"), `coredns_k8s_autopath_index_synced{node="`+node+`"} 1`)
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	capture := func(p *netns.Pod) *netns.Capture {
		cp, err := p.CaptureDNS(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cp.Stop() })
		return cp
	}
	wire, customWire := capture(pod), capture(custom)
	getent := func(p *netns.Pod, name string) (string, error) {
		out, err := p.Exec(ctx, "getent", "ahosts", name)
		return string(out), err
	}

	tests := []struct {
		name, lookup string
		want         []string // addresses getent must print; nil = not found
		queries      int      // wire queries the pod sends
	}{
		{"external name", "www.example.com", []string{"192.0.2.10", "2001:db8::10"}, 2},
		{"service by short name", "web", []string{"10.96.7.1"}, 2},
		{"service in another namespace", "api." + other, []string{"10.96.7.2"}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wire.Take()
			out, err := getent(pod, tc.lookup)
			q := wire.Take()
			if err != nil {
				t.Fatalf("getent ahosts %s: %v\nwire: %v", tc.lookup, err, q)
			}
			for _, a := range tc.want {
				if !strings.Contains(out, a) {
					t.Errorf("getent ahosts %s: no %s in\n%s", tc.lookup, a, out)
				}
			}
			if len(q) != tc.queries {
				t.Errorf("getent ahosts %s: the pod sent %d queries, want %d: %v", tc.lookup, len(q), tc.queries, q)
			}
		})
	}

	t.Run("name that exists nowhere", func(t *testing.T) {
		wire.Take()
		before := world.Total()
		out, err := getent(pod, "nowhere")
		q := wire.Take()
		if err == nil {
			t.Fatalf("getent ahosts nowhere succeeded: %s", out)
		}
		// The pod walks its whole search list (A and AAAA per candidate)...
		if want := 2 * (len(searches(ns)) + 1); len(q) != want {
			t.Errorf("the pod sent %d queries, want %d: %v", len(q), want, q)
		}
		// ...but only the first pair reached past the cache: the server-side
		// expansion resolved every candidate once, and cached each answer.
		if n := world.Total() - before; n != len(q) {
			t.Errorf("the upstream was asked %d questions for %d client queries; want each candidate once", n, len(q))
		}
		if n := world.Count("nowhere.svc.cluster.local.", 1); n != 1 {
			t.Errorf("nowhere.svc.cluster.local. A asked upstream %d times, want 1", n)
		}
	})

	t.Run("custom dnsConfig gets no autopath", func(t *testing.T) {
		customWire.Take()
		out, err := getent(custom, "www.example.com")
		q := customWire.Take()
		if err != nil || !strings.Contains(out, "192.0.2.10") {
			t.Fatalf("getent: %v %s", err, out)
		}
		if want := 2 * (len(searches(ns)) + 1); len(q) != want {
			t.Errorf("a pod without autopath sent %d queries, want the full walk %d: %v", len(q), want, q)
		}
	})
	t.Logf("metrics:\n%s", grepLines(httpBody(t, metrics, "/metrics"), "coredns_k8s_autopath_"))
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
