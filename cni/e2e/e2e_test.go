// Package e2e tests the ENI CNI end to end: the ECS emulator with
// --local-enis (real interfaces, the VPC a namespace), the real eni-agent
// binary with the test API server, eni-cni through libcni, pods as network
// namespaces.
package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/cni/api"
	"github.com/dnsaccel/dnsaccel/cni/netsetup"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/cnitest"
)

var binDir string

func TestMain(m *testing.M) {
	if cnitest.Check() == nil {
		d, err := os.MkdirTemp("", "dnsaccel-eni-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := cnitest.Build(d); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.RemoveAll(d)
			os.Exit(1)
		}
		binDir = d
	}
	code := cluster.Run(m)
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

type env struct {
	*cnitest.Env
	t    *testing.T
	c    *cluster.Cluster
	ns   string
	node string
}

// newEnv starts the emulator and the agent for one test.
func newEnv(t *testing.T, o cnitest.Options) *env {
	t.Helper()
	if err := cnitest.Check(); err != nil {
		cluster.SkipOrFail(t, "%v", err)
	}
	c := cluster.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	node := "eni-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	if _, err := cluster.CreateNode(ctx, c.Client, node, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Client.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{}) })
	o.Dir, o.BinDir, o.Kubeconfig, o.NodeName = t.TempDir(), binDir, c.Kubeconfig, node
	if o.Net == "" {
		o.Net = "10.211"
	}
	e, err := cnitest.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", tailLines(e.AgentLog(), 40))
			t.Logf("emulator log:\n%s", tailLines(e.EmulatorLog(), 40))
		}
	})
	return &env{Env: e, t: t, c: c, ns: c.CreateNamespace(t, "eni-"), node: node}
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// pod creates a pod namespace and its Pod object on the node.
func (e *env) pod(name string) *cnitest.Pod {
	e.t.Helper()
	p, err := cnitest.NewPod(e.ns, name)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if err := p.Close(); err != nil {
			e.t.Error(err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cluster.CreatePod(ctx, e.c.Client, cluster.PodOptions{Namespace: e.ns, Name: name, NodeName: e.node}); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) add(mode api.Mode, p *cnitest.Pod) netip.Addr {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := e.Add(ctx, mode, p)
	if err != nil {
		e.t.Fatalf("ADD %s (%s): %v", p.Name, mode, err)
	}
	if len(r.IPs) != 1 {
		e.t.Fatalf("ADD %s: %d IPs in the result", p.Name, len(r.IPs))
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	return a
}

func (e *env) del(mode api.Mode, p *cnitest.Pod) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.Del(ctx, mode, p); err != nil {
		e.t.Fatalf("DEL %s: %v", p.Name, err)
	}
}

// withNodeLocalDNS puts 169.254.20.10 on lo for the test (unless present)
// and removes it afterwards.
func withNodeLocalDNS(t *testing.T) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: cnitest.NodeLocalDNS.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	addrs, _ := netlink.AddrList(lo, netlink.FAMILY_V4)
	for _, a := range addrs {
		if a.IP.Equal(addr.IP) {
			return // someone else's; leave it alone
		}
	}
	if err := netlink.AddrAdd(lo, addr); err != nil {
		t.Fatalf("adding %s to lo: %v", cnitest.NodeLocalDNS, err)
	}
	t.Cleanup(func() { _ = netlink.AddrDel(lo, addr) })
}

func podNS(t *testing.T, p *cnitest.Pod) netns.NsHandle {
	h, err := netns.GetFromPath(p.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// reach checks a UDP round trip from src (a namespace, netns.None() for the
// host) to an echo server on dst in dstNS.
func reach(t *testing.T, ctx context.Context, src netns.NsHandle, dstNS netns.NsHandle, dst netip.Addr, what string) {
	t.Helper()
	addr, err := cnitest.Echo(ctx, dstNS, net.JoinHostPort(dst.String(), "0"))
	if err != nil {
		t.Fatalf("%s: echo server on %s: %v", what, dst, err)
	}
	if err := cnitest.RoundTrip(src, addr, 5*time.Second); err != nil {
		t.Errorf("%s: %v", what, err)
		if os.Getenv("ENI_E2E_DEBUG") != "" {
			for _, c := range [][]string{{"ip", "-all", "netns", "exec", "ip", "-4", "neigh"}, {"ip", "-all", "netns", "exec", "ip", "-4", "route"}, {"ip", "-4", "neigh"}, {"ip", "rule"}} {
				out, _ := exec.Command(c[0], c[1:]...).CombinedOutput()
				t.Logf("%v:\n%s", c, out)
			}
		}
	}
}

// hostLeftovers lists host rules and links that mention the pods.
func hostLeftovers(ips []netip.Addr, containerIDs []string) []string {
	var out []string
	rules, _ := netlink.RuleList(netlink.FAMILY_V4)
	for _, r := range rules {
		for _, ip := range ips {
			if (r.Src != nil && r.Src.IP.Equal(ip.AsSlice())) || (r.Dst != nil && r.Dst.IP.Equal(ip.AsSlice())) {
				out = append(out, fmt.Sprintf("rule %s", r))
			}
		}
	}
	for _, id := range containerIDs {
		name := netsetup.HostIfName(id, "eth0")
		if _, err := netlink.LinkByName(name); err == nil {
			out = append(out, "link "+name)
		}
	}
	return out
}

func TestVeth(t *testing.T) {
	e := newEnv(t, cnitest.Options{MinIdle: 2, MaxIdle: 6})
	withNodeLocalDNS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p1, p2 := e.pod("veth-1"), e.pod("veth-2")
	ip1, ip2 := e.add(api.ModeVeth, p1), e.add(api.ModeVeth, p2)
	if ip1 == ip2 {
		t.Fatalf("both pods got %s", ip1)
	}
	for _, p := range []*cnitest.Pod{p1, p2} {
		if err := e.Check(ctx, api.ModeVeth, p); err != nil {
			t.Fatalf("CHECK %s: %v", p.Name, err)
		}
	}
	h1, h2 := podNS(t, p1), podNS(t, p2)
	vpc, err := netns.GetFromName(e.VPCNetns)
	if err != nil {
		t.Fatal(err)
	}
	defer vpc.Close()
	reach(t, ctx, h1, h2, ip2, "pod -> pod")
	reach(t, ctx, h2, h1, ip1, "pod -> pod (back)")
	reach(t, ctx, h1, netns.None(), e.NodeIP(), "pod -> node")
	reach(t, ctx, netns.None(), h1, ip1, "node -> pod")
	reach(t, ctx, h1, vpc, e.VPCHost, "pod -> VPC address")
	reach(t, ctx, vpc, h2, ip2, "VPC address -> pod")
	reach(t, ctx, h2, netns.None(), cnitest.NodeLocalDNS, "pod -> node-local DNS")
	if t.Failed() {
		return
	}
	// Egress leaves through the pod's ENI: the rule from the pod points at
	// the ENI's table, whose default route uses the ENI's interface.
	if err := checkEgressViaENI(e, ip1); err != nil {
		t.Error(err)
	}

	e.del(api.ModeVeth, p1)
	e.del(api.ModeVeth, p1) // idempotent
	e.del(api.ModeVeth, p2)
	if err := e.Check(ctx, api.ModeVeth, p1); err == nil {
		t.Error("CHECK after DEL succeeded")
	}
	if left := hostLeftovers([]netip.Addr{ip1, ip2}, []string{p1.ContainerID, p2.ContainerID}); len(left) > 0 {
		t.Errorf("left on the host after DEL: %v", left)
	}
}

func checkEgressViaENI(e *env, ip netip.Addr) error {
	var eniMAC string
	for _, x := range e.Emu.Store.ENIs() {
		for _, a := range x.IPs() {
			if a == ip {
				eniMAC = x.MAC
			}
		}
	}
	link, err := netsetup.LinkByMAC(netsetup.Kernel{}, eniMAC)
	if err != nil {
		return fmt.Errorf("ENI of %s (MAC %q): %v", ip, eniMAC, err)
	}
	rules, _ := netlink.RuleList(netlink.FAMILY_V4)
	for _, r := range rules {
		if r.Src != nil && r.Src.IP.Equal(ip.AsSlice()) && r.Priority == netsetup.PrioFromPod {
			if r.Table != netsetup.TableBase+link.Attrs().Index {
				return fmt.Errorf("egress rule of %s uses table %d, the ENI %s's is %d", ip, r.Table, link.Attrs().Name, netsetup.TableBase+link.Attrs().Index)
			}
			routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
			if err != nil || len(routes) == 0 || routes[0].LinkIndex != link.Attrs().Index {
				return fmt.Errorf("table %d: %v %v", r.Table, routes, err)
			}
			return nil
		}
	}
	return fmt.Errorf("no egress rule for %s", ip)
}

func TestExclusive(t *testing.T) {
	e := newEnv(t, cnitest.Options{MinIdle: 1, MaxIdle: 4, Net: "10.211"})
	withNodeLocalDNS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	px, pv := e.pod("excl-1"), e.pod("veth-1")
	ipx := e.add(api.ModeExclusive, px)
	ipv := e.add(api.ModeVeth, pv)
	if err := e.Check(ctx, api.ModeExclusive, px); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	var eniID string
	for _, x := range e.Emu.Store.ENIs() {
		if x.Primary == ipx {
			eniID = x.ID
		}
	}
	if eniID == "" {
		t.Fatalf("%s is not an ENI's primary address", ipx)
	}
	hx, hv := podNS(t, px), podNS(t, pv)
	vpc, err := netns.GetFromName(e.VPCNetns)
	if err != nil {
		t.Fatal(err)
	}
	defer vpc.Close()
	reach(t, ctx, hx, vpc, e.VPCHost, "exclusive pod -> VPC address")
	reach(t, ctx, vpc, hx, ipx, "VPC address -> exclusive pod")
	reach(t, ctx, hx, netns.None(), e.NodeIP(), "exclusive pod -> node")
	reach(t, ctx, netns.None(), hx, ipx, "node -> exclusive pod")
	reach(t, ctx, hx, netns.None(), cnitest.NodeLocalDNS, "exclusive pod -> node-local DNS")
	reach(t, ctx, hx, hv, ipv, "exclusive pod -> veth pod")
	reach(t, ctx, hv, hx, ipx, "veth pod -> exclusive pod")

	e.del(api.ModeExclusive, px)
	e.del(api.ModeExclusive, px)
	e.del(api.ModeVeth, pv)
	// The ENI is detached and deleted.
	deadline := time.Now().Add(20 * time.Second)
	for {
		gone := true
		for _, x := range e.Emu.Store.ENIs() {
			gone = gone && x.ID != eniID
		}
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("exclusive ENI %s still exists after DEL", eniID)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestIPVLAN(t *testing.T) {
	if err := cnitest.Check(); err != nil {
		cluster.SkipOrFail(t, "%v", err)
	}
	ok, err := netsetup.IPVLANSupported()
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Skip("kernel has no ipvlan driver (CONFIG_IPVLAN): ipvlan mode is covered by the recorded netlink sequence in cni/netsetup")
	}
	e := newEnv(t, cnitest.Options{MinIdle: 1, MaxIdle: 4})
	p := e.pod("ipvl-1")
	e.add(api.ModeIPVLAN, p)
	if err := e.Check(context.Background(), api.ModeIPVLAN, p); err != nil {
		t.Fatal(err)
	}
	e.del(api.ModeIPVLAN, p)
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func httpGet(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestAgentEndpoints: /healthz, /readyz and /metrics of the real binary,
// and a graceful stop on SIGTERM that keeps the allocations.
func TestAgentEndpoints(t *testing.T) {
	metrics, health := freePort(t), freePort(t)
	e := newEnv(t, cnitest.Options{MinIdle: 1, MaxIdle: 3, AgentArgs: []string{"--metrics", metrics, "--health", health}})
	p := e.pod("m-1")
	ip := e.add(api.ModeVeth, p)
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body, err := httpGet("http://" + health + path); err != nil || code != 200 {
			t.Fatalf("%s: %d %s %v", path, code, body, err)
		}
	}
	code, body, err := httpGet("http://" + metrics + "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	for _, m := range []string{"dnsaccel_eni_pool_in_use_addresses 1", "dnsaccel_eni_api_calls_total{action=\"CreateNetworkInterface\",code=\"OK\"}", "dnsaccel_eni_alloc_seconds_bucket", "dnsaccel_eni_pool_ready 1"} {
		if !strings.Contains(body, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	e.StopAgent()
	if !strings.Contains(e.AgentLog(), `"msg":"stopped"`) {
		t.Fatalf("no graceful stop:\n%s", tailLines(e.AgentLog(), 10))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// DEL while the agent is down: the pod and host sides are undone, and
	// code 11 asks the runtime to retry (the address is still held).
	if err := e.Del(ctx, api.ModeVeth, p); cnitest.CNICode(err) != 11 {
		t.Fatalf("DEL with the agent down: %v (code %d), want code 11", err, cnitest.CNICode(err))
	}
	if err := p.Do(func() error {
		if _, err := netlink.LinkByName("eth0"); err == nil {
			return fmt.Errorf("eth0 still in the pod")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(netsetup.HostIfName(p.ContainerID, "eth0")); err == nil {
		t.Fatal("host veth left after DEL with the agent down")
	}
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	a, err := api.NewClient(e.Socket).Get(ctx, api.Key{ContainerID: p.ContainerID, IfName: "eth0"})
	if err != nil || a.IP != ip.String() {
		t.Fatalf("after a restart: %v %v, want %s still held", a, err, ip)
	}
	// The runtime's retry: released now.
	e.del(api.ModeVeth, p)
	if _, err := api.NewClient(e.Socket).Get(ctx, api.Key{ContainerID: p.ContainerID, IfName: "eth0"}); err != api.ErrNotFound {
		t.Fatalf("after the retried DEL: %v, want no allocation", err)
	}
}
