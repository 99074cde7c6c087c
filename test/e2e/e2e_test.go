// Package e2e runs the whole node (test/node, what `make demo` shows) and
// asserts every step: pods get ENI addresses, a pod's queries for the
// kube-dns VIP are answered by node-cache with replies from the VIP and
// k8s_autopath expanding search paths, kill -9 of node-cache falls back to
// the central CoreDNS within --heartbeat-timeout + 1 s, pvtz-sync's records
// are in PrivateZone, and teardown leaves nothing behind.
//
// It runs the binaries in bin/ (`make test` builds them first; or set
// DNSACCEL_BIN to a directory holding them).
package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/cnitest"
	"github.com/dnsaccel/dnsaccel/test/node"
)

func binDir(t *testing.T) string {
	if d := os.Getenv("DNSACCEL_BIN"); d != "" {
		return d
	}
	d, err := node.DefaultBinDir()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestWholeNode(t *testing.T) {
	bin := binDir(t)
	if err := node.Check(bin); err != nil {
		if errors.Is(err, cluster.ErrUnavailable) {
			cluster.SkipOrFail(t, "%v", err)
		}
		t.Fatal(err)
	}
	ensureKube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	t0 := time.Now()
	n, err := node.Up(ctx, node.Options{BinDir: bin, HeartbeatTimeout: time.Second, Logf: t.Logf})
	if err != nil {
		t.Fatalf("node.Up: %v", err)
	}
	t.Logf("node up in %s", time.Since(t0).Round(time.Millisecond))
	down := false
	t.Cleanup(func() {
		if !down {
			if err := n.Down(); err != nil {
				t.Errorf("Down: %v", err)
			}
		}
	})
	pods := append([]*node.Pod(nil), n.Pods...)
	nodeCachePid := n.NodeCache.Pid()
	bpffs := n.BPFFS

	steps := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"1 pods have ENI addresses", func(t *testing.T) {
			if err := n.CheckPods(); err != nil {
				t.Fatal(err)
			}
			if len(n.Pods) != 2 || n.Pods[0].IP == n.Pods[1].IP {
				t.Fatalf("pods: %+v", n.Pods)
			}
			for _, p := range n.Pods {
				if !node.VPCCIDR.Contains(p.IP) || !strings.HasPrefix(p.ENI, "eni-") {
					t.Errorf("pod %s: %s on %q", p.Name, p.IP, p.ENI)
				}
				got, err := n.Cluster.Client.CoreV1().Pods(node.ServiceNamespace).Get(ctx, p.Name, metav1.GetOptions{})
				if err != nil || got.Status.PodIP != p.IP.String() || got.Spec.NodeName != node.NodeName {
					t.Errorf("Pod object %s: %v %v", p.Name, got.Status.PodIP, err)
				}
			}
			if !node.VPCCIDR.Contains(n.NodeIP) {
				t.Errorf("node address %s not in the VPC", n.NodeIP)
			}
		}},
		{"2 resolved by node-cache from the VIP", func(t *testing.T) {
			r, err := n.ResolveFromPod(ctx)
			if err != nil {
				t.Fatal(err)
			}
			svc := n.ServiceIP.String()
			if r.Miss.Answer != svc || r.Hit.Answer != svc {
				t.Errorf("dig answers %s, %s; want %s", r.Miss.Answer, r.Hit.Answer, svc)
			}
			if r.From != netip.AddrPortFrom(n.VIP, 53) {
				t.Errorf("reply from %s, want the VIP", r.From)
			}
			if len(r.Short.Queries) != 2 || len(r.External.Queries) != 2 {
				t.Errorf("wire queries: short name %v, PrivateZone name %v; want 2 each", r.Short.Queries, r.External.Queries)
			}
			if len(r.NoAutopath.Queries) != 8 {
				t.Errorf("wire queries without autopath: %v; want 8", r.NoAutopath.Queries)
			}
			if !r.Kernel.On || r.Kernel.Interfaces != 2 || r.Kernel.Hits != float64(r.Kernel.Queries) {
				t.Errorf("kernel cache: %+v; want it on both pods' veths, answering every query", r.Kernel)
			}
			if r.CentralSaw != n.Central.HostIP {
				t.Errorf("central CoreDNS saw %s, want the node's %s", r.CentralSaw, n.Central.HostIP)
			}
			if r.Counters.Hits < 1 || r.Counters.AutopathHits < 1 {
				t.Errorf("node-cache counters %+v", r.Counters)
			}
			if r.ClusterDNSLog != "Service kube-system/kube-dns" {
				t.Errorf("node-cache found the VIP from %q, want the kube-dns Service", r.ClusterDNSLog)
			}
			t.Logf("dig miss %s hit %s; autopath: %v; counters %+v", r.Miss.Time, r.Hit.Time, r.External.Queries, r.Counters)
		}},
		{"3 kill -9 falls back, restart steers again", func(t *testing.T) {
			f, err := n.KillAndRestart(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if f.Recovered > n.Opt.HeartbeatTimeout+time.Second || f.Stale == 0 || f.Dig.Answer != n.ServiceIP.String() {
				t.Errorf("fallback: %+v", f)
			}
			if f.Adopted != 8 {
				t.Errorf("the restarted node-cache adopted %d pinned links, want 8 (one per hook)", f.Adopted)
			}
			if n.NodeCache.Pid() == nodeCachePid || n.NodeCache.Exited() {
				t.Errorf("node-cache not restarted")
			}
			t.Logf("fallback after %s (%d queries timed out), restart ready in %s, steering again after %s", f.Recovered.Round(time.Millisecond), f.Failed, f.Restart.Round(time.Millisecond), f.SteerAgain.Round(time.Millisecond))
		}},
		{"4 pvtzctl records", func(t *testing.T) {
			rec, err := n.PrivateZoneRecords(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"web.default", n.ServiceIP.String(), "kube-dns.kube-system", n.VIP.String(), "svc/default/web"} {
				if !strings.Contains(rec.Output, want) {
					t.Errorf("pvtzctl records lacks %q:\n%s", want, rec.Output)
				}
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.fn) {
			break
		}
	}

	t.Run("5 teardown leaves nothing", func(t *testing.T) {
		before := n.Leftovers()
		if !containsPrefix(before, "network namespace "+node.VPCNetns) || !containsPrefix(before, "eBPF program") || !containsPrefix(before, "process") {
			t.Fatalf("before Down the node's parts should be found, got %v", before)
		}
		down = true
		t0 := time.Now()
		if err := n.Down(); err != nil {
			t.Fatalf("Down: %v", err)
		}
		t.Logf("down in %s; it removed %d things", time.Since(t0).Round(time.Millisecond), len(before))
		if left := n.Leftovers(); len(left) > 0 {
			t.Errorf("left behind:\n%s", strings.Join(left, "\n"))
		}
		// The same, without the node's own bookkeeping.
		for _, p := range pods {
			if _, err := os.Stat(filepath.Join("/run/netns", p.Netns)); err == nil {
				t.Errorf("namespace %s remains", p.Netns)
			}
			if _, err := netlink.LinkByName(p.HostVeth); err == nil {
				t.Errorf("veth %s remains", p.HostVeth)
			}
		}
		if _, err := os.Stat(filepath.Join("/run/netns", node.VPCNetns)); err == nil {
			t.Error("vpc namespace remains")
		}
		addrs, _ := netlink.AddrList(nil, netlink.FAMILY_V4)
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && (node.VPCCIDR.Contains(ip) || ip == n.LocalIP) {
				t.Errorf("address %s remains", a.IPNet)
			}
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", n.NodeCache.Pid())); err == nil {
			t.Errorf("node-cache (pid %d) still runs", n.NodeCache.Pid())
		}
		if m, _ := os.ReadFile("/proc/self/mounts"); strings.Contains(string(m), bpffs) {
			t.Errorf("bpffs %s still mounted", bpffs)
		}
	})
}

// ensureKube builds kube-apiserver into the cache if it is not there yet
// (minutes, once), outside Up's time limit, as cluster.Shared does.
func ensureKube(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if _, err := cluster.KubeAPIServerPath(ctx); err != nil {
		if errors.Is(err, cluster.ErrUnavailable) {
			cluster.SkipOrFail(t, "%v", err)
		}
		t.Fatal(err)
	}
}

func containsPrefix(s []string, p string) bool {
	for _, x := range s {
		if strings.HasPrefix(x, p) {
			return true
		}
	}
	return false
}

// TestFailedUpLeavesNothing: when a part fails to start (here node-cache,
// the last one), Up removes everything it had started.
func TestFailedUpLeavesNothing(t *testing.T) {
	real := binDir(t)
	if err := node.Check(real); err != nil {
		if errors.Is(err, cluster.ErrUnavailable) {
			cluster.SkipOrFail(t, "%v", err)
		}
		t.Fatal(err)
	}
	bin := t.TempDir()
	for _, b := range node.Binaries {
		if b == "node-cache" {
			if err := os.WriteFile(filepath.Join(bin, b), []byte("#!/bin/sh\necho 'node-cache: broken on purpose' >&2\nexit 3\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.Symlink(filepath.Join(real, b), filepath.Join(bin, b)); err != nil {
			t.Fatal(err)
		}
	}
	ensureKube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n, err := node.Up(ctx, node.Options{BinDir: bin})
	if err == nil {
		n.Down()
		t.Fatal("Up succeeded with a node-cache that exits at once")
	}
	if !strings.Contains(err.Error(), "node-cache") || !strings.Contains(err.Error(), "broken on purpose") {
		t.Errorf("the error should name node-cache and quote its log: %v", err)
	}
	if strings.Contains(err.Error(), "left behind") {
		t.Errorf("Up left parts behind: %v", err)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", node.VPCNetns)); err == nil {
		t.Error("vpc namespace remains")
	}
	if m, _ := filepath.Glob(fmt.Sprintf("/run/netns/%s%d-*", cnitest.PodNetnsPrefix, os.Getpid())); len(m) > 0 {
		t.Errorf("pod namespaces remain: %v", m)
	}
	if m, _ := filepath.Glob(fmt.Sprintf("/etc/netns/%s%d-*", cnitest.PodNetnsPrefix, os.Getpid())); len(m) > 0 {
		t.Errorf("/etc/netns files remain: %v", m)
	}
	addrs, _ := netlink.AddrList(nil, netlink.FAMILY_V4)
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && (node.VPCCIDR.Contains(ip) || ip == node.KubeDNSVIP) {
			t.Errorf("address %s remains", a.IPNet)
		}
	}
	rules, _ := netlink.RuleList(netlink.FAMILY_V4)
	for _, r := range rules {
		for _, p := range []*net.IPNet{r.Src, r.Dst} {
			if p != nil && (node.VPCCIDR.Contains(netip.MustParseAddr(p.IP.String())) || p.IP.Equal(node.KubeDNSVIP.AsSlice())) {
				t.Errorf("rule %s remains", r)
			}
		}
	}
	if kids := children(); len(kids) > 0 {
		t.Errorf("child processes remain: %v", kids)
	}
}

// children lists the processes whose parent is this test binary.
func children() []string {
	var out []string
	dirs, _ := filepath.Glob("/proc/[0-9]*/stat")
	me := strconv.Itoa(os.Getpid())
	for _, d := range dirs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == me {
			out = append(out, s[:i+1])
		}
	}
	return out
}
