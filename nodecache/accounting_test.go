package nodecache

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dnsaccel/dnsaccel/nodecache/ctl"
	"github.com/dnsaccel/dnsaccel/nodecache/dnsstats"
	"github.com/dnsaccel/dnsaccel/nodecache/obsapi"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/dnstest"
	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

func getJSON[T any](t *testing.T, addr, path string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(httpBody(t, addr, path)), &v); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return v
}

func podRow(top obsapi.Top, ns, pod string) obsapi.Row {
	for _, r := range top.Rows {
		if r.Namespace == ns && r.Pod == pod {
			return r
		}
	}
	return obsapi.Row{}
}

func sub(a, b obsapi.Row) obsapi.Row {
	return obsapi.Row{Queries: a.Queries - b.Queries, Kernel: a.Kernel - b.Kernel, Cache: a.Cache - b.Cache,
		Upstream: a.Upstream - b.Upstream, NoAnswer: a.NoAnswer - b.NoAnswer, NXDomain: a.NXDomain - b.NXDomain,
		ServFail: a.ServFail - b.ServFail, Timeouts: a.Timeouts - b.Timeouts, SearchWaste: a.SearchWaste - b.SearchWaste}
}

// TestAccountingFromPods: two pods (network namespaces registered as Pods in
// the API server) query the cluster DNS VIP, steered to node-cache, with
// the kernel cache on their veths. Their counters are exact for a known
// mix: answers from the kernel, the fast path's cache, the upstream,
// NXDOMAIN, SERVFAIL, search-path waste; the Prometheus series say the
// same; the query log turned on for one pod shows exactly its queries
// (kernel-answerable ones included: the kernel passes them on meanwhile)
// and nothing of the other's; dnsaccelctl shows it (golden).
func TestAccountingFromPods(t *testing.T) {
	c := cluster.Shared(t)
	s := newSteerSetup(t)
	ns := c.CreateNamespace(t, "obs-")
	const node = "node-obs"
	pod := func(name string) *netns.Pod {
		p := netns.NewPod(t, netns.Options{Namespace: ns, PodName: name, Client: c.Client, NodeName: node,
			Nameservers: []string{s.VIP.String()}, NoSearch: true, ResolvOptions: []string{"ndots:1"}})
		os.WriteFile(filepath.Join("/proc/sys/net/ipv4/conf", p.HostVeth, "forwarding"), []byte("1"), 0o644)
		return p
	}
	a, b := pod("web-a"), pod("web-b")

	zone := dnstest.NewZone(t)
	zone.Add(t, "hot.obs.test. 300 IN A 10.31.0.1", "fresh.obs.test. 300 IN A 10.31.0.2", "b-only.obs.test. 300 IN A 10.31.0.3")
	zone.Fail("broken.obs.test.")
	conf := filepath.Join(t.TempDir(), "Corefile")
	// --observe on pod a's host-side address: the API server's pod proxy
	// does not go to loopback addresses.
	_, observePort, _ := net.SplitHostPort(freeAddr(t))
	metrics, observe := freeAddr(t), net.JoinHostPort(a.HostIP.String(), observePort)
	os.WriteFile(conf, []byte(fmt.Sprintf(".:53 {\n    bind %s\n    prometheus %s\n    nodecache %s\n}\n", s.LocalIP, metrics, zone.Addr)), 0o644)
	args := append(s.steerArgs(time.Second), "--conf", conf, "--metrics", metrics, "--observe", observe,
		"--kubeconfig", c.Kubeconfig, "--node-name", node, "--kernel-cache",
		"--kernel-cache-interfaces", "^("+regexp.QuoteMeta(a.HostVeth)+"|"+regexp.QuoteMeta(b.HostVeth)+")$")
	nc := startNodeCache(t, "node-cache", args...)
	if !strings.Contains(nc.logs.String(), "per-pod DNS accounting on") {
		t.Fatalf("accounting not on:\n%s", nc.logs.String())
	}

	vip := netip.AddrPortFrom(s.VIP, 53)
	ask := func(p *netns.Pod, name string, n int) {
		t.Helper()
		for range n {
			var err error
			p.Do(func() error {
				_, _, err = steertest.Query(vip, name, false, 2*time.Second)
				return nil
			})
			if err != nil {
				t.Fatalf("%s: %s: %v", p.PodName, name, err)
			}
		}
	}
	top := func() obsapi.Top { return getJSON[obsapi.Top](t, observe, obsapi.PathTop+"?by=pods&k=100") }
	kernelHits := func() float64 { return scrape(t, metrics, "coredns_nodecache_offload_hits_total") }

	// Warm up until the kernel answers hot.obs.test (and the pod index
	// knows both pods).
	steertest.WaitFor(t, "the kernel answering hot.obs.test", 10*time.Second, func() bool {
		before := kernelHits()
		ask(a, "hot.obs.test.", 1)
		return kernelHits() > before
	})
	steertest.WaitFor(t, "pods attributed by the pod index", 20*time.Second, func() bool {
		ask(b, "b-only.obs.test.", 1)
		t0 := top()
		return podRow(t0, ns, "web-a").Queries > 0 && podRow(t0, ns, "web-b").Queries > 0
	})

	// The known mix.
	before := top()
	ask(a, "hot.obs.test.", 7)                   // kernel
	ask(b, "hot.obs.test.", 2)                   // kernel
	ask(a, "fresh.obs.test.", 2)                 // upstream, then the fast path's cache
	ask(a, "ghost."+ns+".svc.cluster.local.", 1) // NXDOMAIN from upstream: search-path waste
	ask(a, "broken.obs.test.", 1)                // SERVFAIL from upstream
	after := top()
	da, db := sub(podRow(after, ns, "web-a"), podRow(before, ns, "web-a")), sub(podRow(after, ns, "web-b"), podRow(before, ns, "web-b"))
	if want := (obsapi.Row{Queries: 11, Kernel: 7, Cache: 1, Upstream: 3, NXDomain: 1, ServFail: 1, SearchWaste: 1}); da != want {
		t.Errorf("web-a counted %+v\nwant %+v", da, want)
	}
	if want := (obsapi.Row{Queries: 2, Kernel: 2}); db != want {
		t.Errorf("web-b counted %+v\nwant %+v", db, want)
	}
	// Prometheus says the same.
	series := scrapeLabeled(t, metrics, "dnsaccel_nodecache_pod_queries_total", `namespace="`+ns+`",pod="web-a"`)
	if series["kernel"] != float64(podRow(after, ns, "web-a").Kernel) || series["upstream"] != float64(podRow(after, ns, "web-a").Upstream) {
		t.Errorf("dnsaccel_nodecache_pod_queries_total for web-a: %v, /v1/top: %+v", series, podRow(after, ns, "web-a"))
	}

	t.Run("query log", func(t *testing.T) {
		resp, err := http.Post("http://"+observe+obsapi.PathQueryLog+"?namespace="+ns+"&pod=web-b", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("turning the log on: HTTP %d", resp.StatusCode)
		}
		beforeB := podRow(top(), ns, "web-b")
		ask(a, "hot.obs.test.", 2) // not logged: another pod
		ask(b, "hot.obs.test.", 3) // logged: the kernel passes web-b's queries on
		ask(b, "broken.obs.test.", 1)
		ask(a, "fresh.obs.test.", 1)
		var lines []dnsstats.LogLine
		steertest.WaitFor(t, "4 log lines", 5*time.Second, func() bool {
			lines = nil
			sc := bufio.NewScanner(strings.NewReader(httpBody(t, observe, obsapi.PathQueryLogFeed)))
			for sc.Scan() {
				var l dnsstats.LogLine
				if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
					t.Fatalf("log line %q: %v", sc.Text(), err)
				}
				lines = append(lines, l)
			}
			return len(lines) >= 4
		})
		var got []string
		for _, l := range lines {
			got = append(got, fmt.Sprintf("%s/%s %s %s %s %s", l.Namespace, l.Pod, l.Name, l.Type, l.Rcode, l.AnsweredBy))
		}
		want := []string{
			ns + "/web-b hot.obs.test. A NOERROR cache",
			ns + "/web-b hot.obs.test. A NOERROR cache",
			ns + "/web-b hot.obs.test. A NOERROR cache",
			ns + "/web-b broken.obs.test. A SERVFAIL cache",
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("query log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if d := sub(podRow(top(), ns, "web-b"), beforeB); d.Kernel != 0 || d.Queries != 4 {
			t.Errorf("web-b while logged: %+v, want 4 queries, none answered by the kernel", d)
		}
		req, _ := http.NewRequest(http.MethodDelete, "http://"+observe+obsapi.PathQueryLog, nil)
		if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
			t.Fatalf("turning the log off: %v %v", err, resp)
		}
		beforeB = podRow(top(), ns, "web-b")
		ask(b, "hot.obs.test.", 1)
		if d := sub(podRow(top(), ns, "web-b"), beforeB); d.Kernel != 1 {
			t.Errorf("web-b after the log: %+v, want the kernel answering again", d)
		}
	})

	t.Run("dnsaccelctl", func(t *testing.T) {
		run := func(args ...string) (string, int) {
			var out, errb bytes.Buffer
			code := ctl.Main(context.Background(), append(args, "--endpoint", "http://"+observe), &out, &errb)
			if errb.Len() > 0 {
				t.Logf("dnsaccelctl %v stderr: %s", args, errb.String())
			}
			return out.String(), code
		}
		out, code := run("top", "pods", "--interval", "0")
		if code != 0 {
			t.Fatalf("top pods: exit %d", code)
		}
		// The warm-up made the totals vary: the table must show what
		// /v1/top says.
		now := top()
		for _, name := range []string{"web-a", "web-b"} {
			r := podRow(now, ns, name)
			want := fmt.Sprintf("%s  %s  %d  %d  %d  %d", ns, name, r.Queries, r.Kernel, r.Cache, r.Upstream)
			if !strings.Contains(regexp.MustCompile(` +`).ReplaceAllString(out, "  "), want) {
				t.Errorf("top pods: no line %q in\n%s", want, out)
			}
		}
		// Through the API server: a Pod object standing for the
		// DaemonSet's pod on this node, at the address node-cache's
		// --observe listens on.
		if _, err := cluster.CreatePod(context.Background(), c.Client, cluster.PodOptions{Namespace: ns, Name: "node-cache-obs",
			Labels: map[string]string{"app": "nc-obs"}, NodeName: node, PodIPs: []string{a.HostIP.String()}, HostIP: a.HostIP.String()}); err != nil {
			t.Fatal(err)
		}
		var kout, kerr bytes.Buffer
		kargs := []string{"--kubeconfig", c.Kubeconfig, "--node-cache-namespace", ns, "--selector", "app=nc-obs", "--port", observePort}
		code = ctl.Main(context.Background(), append([]string{"top", "namespaces", "--interval", "0"}, kargs...), &kout, &kerr)
		if code != 0 || !strings.Contains(kout.String(), node+"  "+ns) {
			t.Errorf("top namespaces through the API server: exit %d\n%s%s", code, kout.String(), kerr.String())
		}
		kout.Reset()
		code = ctl.Main(context.Background(), append([]string{"steering", "--node", node}, kargs...), &kout, &kerr)
		if code != 0 || !strings.Contains(kout.String(), node+"  on") {
			t.Errorf("steering --node through the API server: exit %d\n%s%s", code, kout.String(), kerr.String())
		}
		kout.Reset()
		if code = ctl.Main(context.Background(), append([]string{"cache", "--node", "no-such-node"}, kargs...), &kout, &kerr); code != 2 {
			t.Errorf("cache --node no-such-node: exit %d, want 2", code)
		}

		out, code = run("steering", "-o", "json")
		var st []obsapi.Steering
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st) != 1 || !st[0].Enabled || st[0].Fallback || st[0].KernelCacheLinks != 2 {
			t.Errorf("steering: exit %d\n%s", code, out)
		}
		out, code = run("cache", "-o", "yaml")
		if code != 0 || !strings.Contains(out, "kernel_hits:") || !strings.Contains(out, "name: hot.obs.test.") {
			t.Errorf("cache: exit %d\n%s", code, out)
		}
		if _, code := run("top", "nothing"); code != 2 {
			t.Errorf("top nothing: exit %d, want 2", code)
		}
	})
}

// scrapeLabeled returns the values of a metric's samples whose labels
// contain match, by their answered_by (or last) label value.
func scrapeLabeled(t *testing.T, addr, name, match string) map[string]float64 {
	t.Helper()
	m, err := dnstest.ParseMetrics(strings.NewReader(httpBody(t, addr, "/metrics")))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, by := range []string{"kernel", "cache", "upstream", "none"} {
		out[by] = m.Sum(name, match+`,answered_by="`+by+`"`)
		if out[by] == 0 {
			out[by] = m.Sum(name, `answered_by="`+by+`",`+match)
		}
	}
	return out
}

// golden compares got with testdata/<name>.golden (UPDATE_GOLDEN=1
// rewrites it).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 writes it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s:\n%s\nwant:\n%s", name, path, got, want)
	}
}
