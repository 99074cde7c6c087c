package k8sautopath_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coredns/caddy"
	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"

	_ "github.com/dnsaccel/dnsaccel/plugin" // directives and plugin set of bin/coredns
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

// startNodeCache runs CoreDNS in-process as bin/node-cache configures it
// in Kubernetes mode: the cluster zone with k8s_autopath in front of the
// cache, everything else straight to the world. Returns 127.0.0.1:port.
func startNodeCache(t *testing.T, kubeconfig, upstream string) string {
	t.Helper()
	return dnstest.StartCorefile(t, `cluster.local:%[1]s in-addr.arpa:%[1]s {
    bind 127.0.0.1
    k8s_autopath {
        kubeconfig %[2]s
        search corp.example
    }
    nodecache %[3]s
}
.:%[1]s {
    bind 127.0.0.1
    nodecache %[3]s
}
`, kubeconfig, upstream)
}

// askFrom sends one query from source address src (on lo) over UDP.
func askFrom(t *testing.T, server string, src netip.Addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: "udp", Timeout: 3 * time.Second,
		Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: src.AsSlice()}, Timeout: 3 * time.Second}}
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", name, dns.TypeToString[qtype], src, err)
	}
	return r
}

// answerText is the answer section as "TYPE target" strings, TTLs left out.
func answerText(m *dns.Msg) string {
	var s []string
	for _, rr := range m.Answer {
		switch v := rr.(type) {
		case *dns.CNAME:
			s = append(s, v.Hdr.Name+" CNAME "+v.Target)
		case *dns.A:
			s = append(s, v.Hdr.Name+" A "+v.A.String())
		case *dns.AAAA:
			s = append(s, v.Hdr.Name+" AAAA "+v.AAAA.String())
		}
	}
	return strings.Join(s, "; ")
}

func TestAutopath(t *testing.T) {
	c := cluster.Shared(t)
	nsA, nsB := c.CreateNamespace(t, "apa-"), c.CreateNamespace(t, "apb-")
	// Clients are loopback addresses registered as pod IPs.
	podA, podB, podCustom, stranger := netip.MustParseAddr("127.0.10.1"), netip.MustParseAddr("127.0.10.2"),
		netip.MustParseAddr("127.0.10.3"), netip.MustParseAddr("127.0.10.4")
	c.MustCreatePod(t, cluster.PodOptions{Namespace: nsA, Name: "client", PodIPs: []string{podA.String()}})
	c.MustCreatePod(t, cluster.PodOptions{Namespace: nsB, Name: "client", PodIPs: []string{podB.String()}})
	c.MustCreatePod(t, cluster.PodOptions{Namespace: nsA, Name: "custom", PodIPs: []string{podCustom.String()},
		DNSConfig: &corev1.PodDNSConfig{Searches: []string{"corp.example"}}})

	w := dnstest.NewZone(t)
	w.Add(t,
		"web."+nsA+".svc.cluster.local. 30 IN A 10.96.0.5",
		"api."+nsB+".svc.cluster.local. 30 IN A 10.96.0.6",
		"www.example.com. 60 IN A 192.0.2.10", "www.example.com. 60 IN AAAA 2001:db8::10",
		"v4only.example.com. 60 IN A 192.0.2.11",
		"intranet.corp.example. 60 IN A 192.0.2.12",
		"flaky.cluster.local. 60 IN A 192.0.2.13",
	)
	w.Fail("flaky.svc.cluster.local.")
	server := startNodeCache(t, c.Kubeconfig, w.Addr)
	suffix := "." + nsA + ".svc.cluster.local."

	// Wait until the index has the pods: a pod's external lookup is expanded.
	deadline := time.Now().Add(20 * time.Second)
	for askFrom(t, server, podA, "www.example.com"+suffix, dns.TypeA).Rcode != dns.RcodeSuccess {
		if time.Now().After(deadline) {
			t.Fatal("autopath never kicked in: pod index not synced?")
		}
		time.Sleep(50 * time.Millisecond)
	}

	tests := []struct {
		name  string
		from  netip.Addr
		qname string
		qtype uint16
		rcode int
		want  string // answerText
	}{
		{"external A", podA, "www.example.com" + suffix, dns.TypeA, dns.RcodeSuccess,
			"www.example.com" + suffix + " CNAME www.example.com.; www.example.com. A 192.0.2.10"},
		{"external AAAA: same candidate", podA, "www.example.com" + suffix, dns.TypeAAAA, dns.RcodeSuccess,
			"www.example.com" + suffix + " CNAME www.example.com.; www.example.com. AAAA 2001:db8::10"},
		{"NODATA for the other type is an answer", podA, "v4only.example.com" + suffix, dns.TypeAAAA, dns.RcodeSuccess,
			"v4only.example.com" + suffix + " CNAME v4only.example.com."},
		{"keeps the client's case", podA, "WWW.Example.com" + suffix, dns.TypeA, dns.RcodeSuccess,
			"WWW.Example.com" + suffix + " CNAME www.example.com.; www.example.com. A 192.0.2.10"},
		{"service in own namespace: literal", podA, "web" + suffix, dns.TypeA, dns.RcodeSuccess,
			"web" + suffix + " A 10.96.0.5"},
		{"svc.other-ns", podA, "api." + nsB + suffix, dns.TypeA, dns.RcodeSuccess,
			"api." + nsB + suffix + " CNAME api." + nsB + ".svc.cluster.local.; api." + nsB + ".svc.cluster.local. A 10.96.0.6"},
		{"node search domain", podA, "intranet" + suffix, dns.TypeA, dns.RcodeSuccess,
			"intranet" + suffix + " CNAME intranet.corp.example.; intranet.corp.example. A 192.0.2.12"},
		{"nowhere", podA, "nowhere" + suffix, dns.TypeA, dns.RcodeNameError, ""},
		{"failed candidate: literal NXDOMAIN", podA, "flaky" + suffix, dns.TypeA, dns.RcodeNameError, ""},
		{"other namespace's pod: untouched", podB, "www.example.com" + suffix, dns.TypeA, dns.RcodeNameError, ""},
		{"custom dnsConfig: untouched", podCustom, "www.example.com" + suffix, dns.TypeA, dns.RcodeNameError, ""},
		{"unknown IP: untouched", stranger, "www.example.com" + suffix, dns.TypeA, dns.RcodeNameError, ""},
		{"pod B's own namespace", podB, "www.example.com." + nsB + ".svc.cluster.local.", dns.TypeA, dns.RcodeSuccess,
			"www.example.com." + nsB + ".svc.cluster.local. CNAME www.example.com.; www.example.com. A 192.0.2.10"},
		{"absolute name: untouched", podA, "www.example.com.", dns.TypeA, dns.RcodeSuccess, "www.example.com. A 192.0.2.10"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Twice: the second answer may come from the cache or its fast
			// path, and must be the same.
			for round := 0; round < 2; round++ {
				r := askFrom(t, server, tc.from, tc.qname, tc.qtype)
				if r.Rcode != tc.rcode || answerText(r) != tc.want || r.Question[0].Name != tc.qname {
					t.Fatalf("round %d: %s %s from %s:\n got %s %q (question %s)\nwant %s %q",
						round, tc.qname, dns.TypeToString[tc.qtype], tc.from, dns.RcodeToString[r.Rcode], answerText(r),
						r.Question[0].Name, dns.RcodeToString[tc.rcode], tc.want)
				}
			}
		})
	}

	// A client that goes on with its own search after a final NXDOMAIN is
	// answered from the cache: the world is not asked again.
	before := w.Total()
	for _, name := range []string{"nowhere.svc.cluster.local.", "nowhere.cluster.local.", "nowhere.corp.example.", "nowhere."} {
		if r := askFrom(t, server, podA, name, dns.TypeA); r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: %s, want NXDOMAIN", name, dns.RcodeToString[r.Rcode])
		}
	}
	if n := w.Total(); n != before {
		t.Errorf("the client's own search walk reached the upstream %d times; want every step from cache", n-before)
	}
	// Each candidate was asked once, however often the pod asked.
	if n := w.Count("www.example.com.", dns.TypeA); n != 1 {
		t.Errorf("www.example.com. A asked upstream %d times, want 1", n)
	}
}

// TestFastPathKeepsAutopath: once a client that gets no autopath has cached
// the literal NXDOMAIN, a pod that does get autopath must still get it (the
// UDP fast path may not answer the cached NXDOMAIN for it).
func TestFastPathKeepsAutopath(t *testing.T) {
	c := cluster.Shared(t)
	ns := c.CreateNamespace(t, "apf-")
	pod, stranger := netip.MustParseAddr("127.0.11.1"), netip.MustParseAddr("127.0.11.2")
	c.MustCreatePod(t, cluster.PodOptions{Namespace: ns, Name: "client", PodIPs: []string{pod.String()}})
	w := dnstest.NewZone(t)
	w.Add(t, "www.example.com. 60 IN A 192.0.2.10")
	server := startNodeCache(t, c.Kubeconfig, w.Addr)
	qname := "www.example.com." + ns + ".svc.cluster.local."

	deadline := time.Now().Add(20 * time.Second)
	for askFrom(t, server, pod, qname, dns.TypeA).Rcode != dns.RcodeSuccess {
		if time.Now().After(deadline) {
			t.Fatal("autopath never kicked in")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; i < 5; i++ {
		if r := askFrom(t, server, stranger, qname, dns.TypeA); r.Rcode != dns.RcodeNameError {
			t.Fatalf("stranger got %s, want the literal NXDOMAIN", dns.RcodeToString[r.Rcode])
		}
		if r := askFrom(t, server, pod, qname, dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
			t.Fatalf("pod after a stranger's query: %s %q, want the CNAME answer", dns.RcodeToString[r.Rcode], answerText(r))
		}
	}
}

// TestUnsyncedPassesThrough: with an API server that never answers, the
// index never syncs and autopath never guesses.
func TestUnsyncedPassesThrough(t *testing.T) {
	dead, err := dnstest.FreeAddr() // nothing listens there over TCP once FreeAddr returns
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(kc, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: dead, cluster: {server: "https://%s", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: dead, user: u}}]
current-context: c
`, dead)), 0o600)
	w := dnstest.NewZone(t)
	w.Add(t, "www.example.com. 60 IN A 192.0.2.10")
	server := startNodeCache(t, kc, w.Addr)
	r := askFrom(t, server, netip.MustParseAddr("127.0.0.1"), "www.example.com.default.svc.cluster.local.", dns.TypeA)
	if r.Rcode != dns.RcodeNameError {
		t.Fatalf("unsynced index: got %s %q, want the literal NXDOMAIN", dns.RcodeToString[r.Rcode], answerText(r))
	}
	if n := w.Count("www.example.com.", dns.TypeA); n != 0 {
		t.Errorf("candidates were resolved (%d) although the index never synced", n)
	}
}

// TestCentralMode: k8s_autopath cluster-wide in front of CoreDNS's own
// kubernetes plugin, as in a central CoreDNS Deployment.
func TestCentralMode(t *testing.T) {
	c := cluster.Shared(t)
	nsA, nsB := c.CreateNamespace(t, "apc-"), c.CreateNamespace(t, "apd-")
	pod := netip.MustParseAddr("127.0.12.1")
	c.MustCreatePod(t, cluster.PodOptions{Namespace: nsA, Name: "client", NodeName: "some-node", PodIPs: []string{pod.String()}})
	web := c.MustCreateService(t, cluster.ServiceOptions{Namespace: nsA, Name: "web"})
	api := c.MustCreateService(t, cluster.ServiceOptions{Namespace: nsB, Name: "api"})
	w := dnstest.NewZone(t)
	w.Add(t, "www.example.com. 60 IN A 192.0.2.10")

	addr, err := dnstest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	corefile := fmt.Sprintf(`.:%[1]s {
    bind 127.0.0.1
    k8s_autopath {
        kubeconfig %[2]s
        search
    }
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %[2]s
    }
    forward . %[3]s
}
`, port, c.Kubeconfig, w.Addr)
	inst, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "Corefile", ServerTypeName: "dns"})
	if err != nil {
		t.Fatalf("start CoreDNS:\n%s\n%v", corefile, err)
	}
	t.Cleanup(func() {
		inst.Stop()
		inst.ShutdownCallbacks()
	})
	suffix := "." + nsA + ".svc.cluster.local."
	deadline := time.Now().Add(20 * time.Second)
	for askFrom(t, addr, pod, "api."+nsB+suffix, dns.TypeA).Rcode != dns.RcodeSuccess {
		if time.Now().After(deadline) {
			t.Fatal("autopath never kicked in")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, tc := range []struct{ qname, want string }{
		{"web" + suffix, "web" + suffix + " A " + web.Spec.ClusterIP},
		{"api." + nsB + suffix, "api." + nsB + suffix + " CNAME api." + nsB + ".svc.cluster.local.; api." + nsB + ".svc.cluster.local. A " + api.Spec.ClusterIP},
		{"www.example.com" + suffix, "www.example.com" + suffix + " CNAME www.example.com.; www.example.com. A 192.0.2.10"},
	} {
		r := askFrom(t, addr, pod, tc.qname, dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || answerText(r) != tc.want {
			t.Errorf("%s: %s %q, want %q", tc.qname, dns.RcodeToString[r.Rcode], answerText(r), tc.want)
		}
	}
	if r := askFrom(t, addr, pod, "nowhere"+suffix, dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Errorf("nowhere: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
}
