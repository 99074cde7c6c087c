package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/cni/agent"
	"github.com/dnsaccel/dnsaccel/cni/api"
	"github.com/dnsaccel/dnsaccel/cni/netsetup"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/cnitest"
)

// vethHostSide checks the host side a veth pod with ip needs: its host
// veth with the route to ip, the rule to ip through main and its egress
// rule from ip on its host veth.
func vethHostSide(ip netip.Addr, containerID string) error {
	name := netsetup.HostIfName(containerID, "eth0")
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", name, err)
	}
	routes, err := netlink.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	route := false
	for _, r := range routes {
		route = route || (r.Dst != nil && r.Dst.String() == ip.String()+"/32")
	}
	rules, err := netlink.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	to, from := false, false
	for _, r := range rules {
		to = to || (r.Priority == netsetup.PrioToPod && r.Dst != nil && r.Dst.String() == ip.String()+"/32" && r.Table == unix.RT_TABLE_MAIN)
		from = from || (r.Priority == netsetup.PrioFromPod && r.Src != nil && r.Src.String() == ip.String()+"/32" && r.IifName == name)
	}
	var errs []error
	if !route {
		errs = append(errs, fmt.Errorf("no route to %s on %s", ip, name))
	}
	if !to {
		errs = append(errs, fmt.Errorf("no rule %d to %s", netsetup.PrioToPod, ip))
	}
	if !from {
		errs = append(errs, fmt.Errorf("no rule %d from %s iif %s", netsetup.PrioFromPod, ip, name))
	}
	return errors.Join(errs...)
}

// checkReassigned checks that pod b, holding ip, still has its host side
// and reaches the VPC both ways. The host side is checked first: without
// its egress rule b's traffic would take the host's default route, which
// a test must never use.
func (e *env) checkReassigned(ctx context.Context, b *cnitest.Pod, ip netip.Addr, after string) {
	e.t.Helper()
	if err := vethHostSide(ip, b.ContainerID); err != nil {
		e.t.Fatalf("%s, pod B's host side is broken: %v", after, err)
	}
	if err := e.Check(ctx, api.ModeVeth, b); err != nil {
		e.t.Fatalf("CHECK pod B %s: %v", after, err)
	}
	vpc, err := netns.GetFromName(e.VPCNetns)
	if err != nil {
		e.t.Fatal(err)
	}
	defer vpc.Close()
	hb := podNS(e.t, b)
	reach(e.t, ctx, hb, vpc, e.VPCHost, "pod B -> VPC address "+after)
	reach(e.t, ctx, vpc, hb, ip, "VPC address -> pod B "+after)
	reach(e.t, ctx, netns.None(), hb, ip, "node -> pod B "+after)
}

// TestLateDelAfterReassign: pod A's sandbox vanishes without a DEL and the
// pod is force-deleted; the leak loop releases A's address, pod B gets it;
// then A's DEL arrives late (the runtime catching up, from A's cached
// result). It must succeed and leave B's rules and routes alone.
func TestLateDelAfterReassign(t *testing.T) {
	e := newEnv(t, cnitest.Options{MinIdle: 2, MaxIdle: 10, AgentArgs: []string{"--gc-interval", "300ms"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := api.NewClient(e.Socket)
	a := e.pod("late-a")
	ipA := e.add(api.ModeVeth, a)

	// A's namespace goes (its veth pair with it) and the pod is
	// force-deleted: no DEL yet.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	zero := int64(0)
	if err := e.c.Client.CoreV1().Pods(e.ns).Delete(ctx, a.PodName, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	keyA := api.Key{ContainerID: a.ContainerID, IfName: "eth0"}
	for {
		_, err := cl.Get(ctx, keyA)
		if errors.Is(err, api.ErrNotFound) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the leak loop did not release pod A's %s: %v", ipA, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	b := e.pod("late-b")
	ipB := e.add(api.ModeVeth, b)
	if ipB != ipA {
		t.Fatalf("pod B got %s, not A's released %s: the pool's choice changed, the test needs the same address", ipB, ipA)
	}
	e.checkReassigned(ctx, b, ipB, "before A's late DEL")

	e.del(api.ModeVeth, a)
	e.checkReassigned(ctx, b, ipB, "after A's late DEL")
	e.del(api.ModeVeth, a) // still idempotent
	if owner, err := cl.Owner(ctx, ipB.String()); err != nil || owner.ContainerID != b.ContainerID {
		t.Fatalf("agent: %s owned by %+v (%v), want pod B", ipB, owner, err)
	}

	e.del(api.ModeVeth, b)
	if left := hostLeftovers([]netip.Addr{ipA}, []string{a.ContainerID, b.ContainerID}); len(left) > 0 {
		t.Errorf("left on the host after both DELs: %v", left)
	}
}

// newBareEnv is newEnv without the API server: no pod objects, no leak
// loop.
func newBareEnv(t *testing.T, o cnitest.Options) *env {
	t.Helper()
	if err := cnitest.Check(); err != nil {
		cluster.SkipOrFail(t, "%v", err)
	}
	o.Dir, o.BinDir = t.TempDir(), binDir
	e, err := cnitest.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", tailLines(e.AgentLog(), 40))
		}
	})
	return &env{Env: e, t: t}
}

// barePod is a pod namespace without a Pod object.
func (e *env) barePod(name string) *cnitest.Pod {
	e.t.Helper()
	p, err := cnitest.NewPod("default", name)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if err := p.Close(); err != nil {
			e.t.Error(err)
		}
	})
	return p
}

// TestLateDelAfterGC: as TestLateDelAfterReassign without the API server:
// the agent's GC releases A's address (with its host cleanup, as the leak
// loop does) while the runtime still has A's cached result. (The runtime's
// own CNI GC would drop that cache, and its late DEL would carry no
// address.)
func TestLateDelAfterGC(t *testing.T) {
	e := newBareEnv(t, cnitest.Options{MinIdle: 2, MaxIdle: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := e.barePod("gc-a")
	ipA := e.add(api.ModeVeth, a)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := api.NewClient(e.Socket).GC(ctx, nil); err != nil {
		t.Fatalf("agent GC: %v", err)
	}
	b := e.barePod("gc-b")
	ipB := e.add(api.ModeVeth, b)
	if ipB != ipA {
		t.Fatalf("pod B got %s, not A's released %s: the pool's choice changed, the test needs the same address", ipB, ipA)
	}
	e.checkReassigned(ctx, b, ipB, "before A's late DEL")
	e.del(api.ModeVeth, a)
	e.checkReassigned(ctx, b, ipB, "after A's late DEL")
	e.del(api.ModeVeth, b)
	if left := hostLeftovers([]netip.Addr{ipA}, []string{a.ContainerID, b.ContainerID}); len(left) > 0 {
		t.Errorf("left on the host after both DELs: %v", left)
	}
}

// TestReconcileDuplicateKeepsRules: the state file holds two allocations
// claiming pod B's address (an older, stale one under another container
// ID). On restart the agent keeps B's and drops the other; the dropped
// one's host cleanup must leave B's rules and routes alone.
func TestReconcileDuplicateKeepsRules(t *testing.T) {
	e := newBareEnv(t, cnitest.Options{MinIdle: 1, MaxIdle: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b := e.barePod("dup-b")
	ipB := e.add(api.ModeVeth, b)
	e.StopAgent()

	st, err := agent.OpenStore(e.State)
	if err != nil {
		t.Fatal(err)
	}
	allocs, err := st.Allocs()
	if err != nil || len(allocs) != 1 || allocs[0].IP != ipB.String() {
		st.Close()
		t.Fatalf("state before the restart: %+v %v, want pod B's allocation", allocs, err)
	}
	stale := allocs[0]
	stale.Key = api.Key{ContainerID: b.ContainerID + "old", IfName: "eth0"}
	stale.Created = stale.Created.Add(-time.Minute)
	err = st.PutAlloc(&stale)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}

	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	cl := api.NewClient(e.Socket)
	if _, err := cl.Get(ctx, stale.Key); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("the stale duplicate survived the restart: %v", err)
	}
	e.checkReassigned(ctx, b, ipB, "after the restart dropped the duplicate")
	if owner, err := cl.Owner(ctx, ipB.String()); err != nil || owner.ContainerID != b.ContainerID {
		t.Fatalf("agent: %s owned by %+v (%v), want pod B", ipB, owner, err)
	}
	e.del(api.ModeVeth, b)
	if left := hostLeftovers([]netip.Addr{ipB}, []string{b.ContainerID}); len(left) > 0 {
		t.Errorf("left on the host after DEL: %v", left)
	}
}

// TestCheckHostSide: CHECK fails once the node's route to a pod is gone,
// for veth and exclusive mode (without the API server).
func TestCheckHostSide(t *testing.T) {
	e := newBareEnv(t, cnitest.Options{MinIdle: 1, MaxIdle: 4})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, mode := range []api.Mode{api.ModeVeth, api.ModeExclusive} {
		p := e.barePod("check-" + string(mode))
		ip := e.add(mode, p)
		if err := e.Check(ctx, mode, p); err != nil {
			t.Fatalf("CHECK %s after ADD: %v", mode, err)
		}
		name := netsetup.HostIfName(p.ContainerID, "eth0")
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		rt := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteDel(rt); err != nil {
			t.Fatal(err)
		}
		if err := e.Check(ctx, mode, p); err == nil || !strings.Contains(err.Error(), "no host route") {
			t.Errorf("CHECK %s without the host route: %v", mode, err)
		}
		e.del(mode, p)
	}
}
