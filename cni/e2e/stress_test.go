package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cni/agent"
	"github.com/dnsaccel/dnsaccel/cni/api"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/cnitest"
)

// podAddr reads eth0's IPv4 address inside the pod.
func podAddr(p *cnitest.Pod) (netip.Addr, error) {
	var a netip.Addr
	err := p.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil || len(addrs) == 0 {
			return fmt.Errorf("eth0 has no address (%v)", err)
		}
		a, _ = netip.AddrFromSlice(addrs[0].IP.To4())
		return nil
	})
	return a, err
}

// verify checks the agent's allocations against the live pods and the
// emulator: exactly the live pods hold addresses, no address twice, every
// address on an ENI attached to the instance, each pod configured with its
// address.
func (e *env) verify(live map[string]*cnitest.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	allocs, err := api.NewClient(e.Socket).Allocations(ctx)
	if err != nil {
		return err
	}
	attached := map[netip.Addr]string{}
	inst := e.Emu.Store.Config().InstanceID
	for _, x := range e.Emu.Store.ENIs() {
		if x.InstanceID == inst && x.Status == "InUse" {
			for _, a := range x.IPs() {
				attached[a] = x.ID
			}
		}
	}
	var errs []string
	seen := map[string]string{}
	held := map[string]bool{}
	for _, a := range allocs {
		held[a.ContainerID] = true
		if o, dup := seen[a.IP]; dup {
			errs = append(errs, fmt.Sprintf("%s given to %s and %s", a.IP, o, a.ContainerID))
		}
		seen[a.IP] = a.ContainerID
		ip, _ := netip.ParseAddr(a.IP)
		if attached[ip] != a.ENIID {
			errs = append(errs, fmt.Sprintf("%s (%s) is not on its ENI %s in the cloud (cloud: %q)", a.IP, a.ContainerID, a.ENIID, attached[ip]))
		}
		p := live[a.ContainerID]
		if p == nil {
			errs = append(errs, fmt.Sprintf("leak: %s still held by %s, which is gone", a.IP, a.ContainerID))
			continue
		}
		got, err := podAddr(p)
		if err != nil || got != ip {
			errs = append(errs, fmt.Sprintf("pod %s has %s (%v), the agent says %s", p.Name, got, err, a.IP))
		}
	}
	for id, p := range live {
		if !held[id] {
			errs = append(errs, fmt.Sprintf("live pod %s holds no address", p.Name))
		}
	}
	if len(errs) > 0 {
		sort.Strings(errs)
		return fmt.Errorf("%d problems: %s", len(errs), strings.Join(errs, "; "))
	}
	return nil
}

func TestConcurrent100(t *testing.T) {
	e := newEnv(t, cnitest.Options{MinIdle: 2, MaxIdle: 10, Net: "10.211"})
	const n = 100
	pods := make([]*cnitest.Pod, n)
	for i := range pods {
		pods[i] = e.pod(fmt.Sprintf("c-%03d", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, n)
	t0 := time.Now()
	for i, p := range pods {
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i] = e.Add(ctx, api.ModeVeth, p) }()
	}
	wg.Wait()
	t.Logf("%d concurrent ADDs in %s", n, time.Since(t0).Round(time.Millisecond))
	live := map[string]*cnitest.Pod{}
	for i, err := range errs {
		if err != nil {
			t.Errorf("ADD %s: %v", pods[i].Name, err)
			continue
		}
		live[pods[i].ContainerID] = pods[i]
	}
	if err := e.verify(live); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	for i, p := range pods {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = e.Del(ctx, api.ModeVeth, p) }()
	}
	wg.Wait()
	t.Logf("%d concurrent DELs in %s", n, time.Since(t0).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL %s: %v", pods[i].Name, err)
		}
	}
	if err := e.verify(map[string]*cnitest.Pod{}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range pods {
		ids = append(ids, p.ContainerID)
	}
	if left := hostLeftovers(nil, ids); len(left) > 0 {
		t.Fatalf("left on the host: %v", left)
	}
}

// TestAgentKilled SIGKILLs the agent during ADDs, 50 times; after each
// restart (reconcile against the cloud and the API server) and CNI GC,
// exactly the pods that exist hold addresses, none twice, all backed by the
// cloud, and no ENI leaks.
func TestAgentKilled(t *testing.T) {
	// 20 ms per API call, so that kills land inside cloud calls too.
	e := newEnv(t, cnitest.Options{MinIdle: 2, MaxIdle: 6, Net: "10.211", API: openapi.Config{Latency: 20 * time.Millisecond}})
	const rounds, perRound, maxLive = 50, 3, 12
	live := map[string]*cnitest.Pod{}
	var order []*cnitest.Pod
	kube := e.c.Client
	t.Cleanup(func() {
		// DEL what is still running, while the agent is up.
		for _, p := range live {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			if err := e.Del(ctx, api.ModeVeth, p); err != nil {
				t.Errorf("DEL %s: %v", p.Name, err)
			}
			cancel()
		}
	})
	deletePod := func(p *cnitest.Pod) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = cluster.DeletePod(ctx, kube, e.ns, p.PodName)
		_ = p.Close()
	}
	added, failed := 0, 0
	for round := 0; round < rounds; round++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		// Keep the node from filling up: pods come and go.
		for len(order) > maxLive {
			p := order[0]
			order = order[1:]
			if err := e.Del(ctx, api.ModeVeth, p); err != nil {
				cancel()
				t.Fatalf("round %d: DEL %s: %v", round, p.Name, err)
			}
			delete(live, p.ContainerID)
			deletePod(p)
		}
		batch := make([]*cnitest.Pod, perRound)
		for i := range batch {
			batch[i] = e.pod(fmt.Sprintf("k-%02d-%d", round, i))
		}
		errs := make([]error, perRound)
		var wg sync.WaitGroup
		for i, p := range batch {
			wg.Add(1)
			go func() { defer wg.Done(); _, errs[i] = e.Add(ctx, api.ModeVeth, p) }()
		}
		// The kill lands at a random point of the ADDs (fault injection,
		// not synchronisation).
		time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
		e.KillAgent()
		wg.Wait()
		for i, p := range batch {
			if errs[i] == nil {
				live[p.ContainerID] = p
				order = append(order, p)
				added++
				continue
			}
			failed++
			// What the kubelet does: DEL (best effort while the agent is
			// down) and the pod goes away.
			_ = e.Del(ctx, api.ModeVeth, p)
			deletePod(p)
		}
		if err := e.StartAgent(ctx); err != nil {
			cancel()
			t.Fatalf("round %d: restart: %v", round, err)
		}
		var valid []*cnitest.Pod
		for _, p := range live {
			valid = append(valid, p)
		}
		if err := e.GC(ctx, valid); err != nil {
			cancel()
			t.Fatalf("round %d: GC: %v", round, err)
		}
		cancel()
		if err := e.verify(live); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	repeated := 0
	for i := 1; i <= rounds+1; i++ {
		b, _ := os.ReadFile(filepath.Join(e.Opt.Dir, fmt.Sprintf("agent-%d.log", i)))
		repeated += strings.Count(string(b), "with its ClientToken")
	}
	t.Logf("%d rounds: %d ADDs succeeded, %d failed by the kill; %d interrupted creates/assigns repeated with their ClientToken", rounds, added, failed, repeated)
	// No leaked ENIs: every ENI of the agent is attached (unattached ones
	// are deleted after the restart).
	name := "dnsaccel-" + e.Emu.Store.Config().InstanceID
	deadline := time.Now().Add(20 * time.Second)
	for {
		var loose []string
		for _, x := range e.Emu.Store.ENIs() {
			if x.Name == name && x.Status != "InUse" {
				loose = append(loose, x.ID+":"+x.Status)
			}
		}
		if len(loose) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ENIs not attached and not deleted: %v", loose)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Every address the cloud assigned is either a live pod's or idle in
	// the pool: the cloud's count equals pool idle + in use.
	st, err := api.NewClient(e.Socket).Status(context.Background(), api.ModeVeth)
	if err != nil {
		t.Fatal(err)
	}
	cloudIPs := 0
	for _, x := range e.Emu.Store.ENIs() {
		if x.Name == name {
			cloudIPs += len(x.IPs())
		}
	}
	if cloudIPs != st.Idle+st.InUse {
		t.Fatalf("the cloud has %d addresses on the agent's ENIs, the agent knows %d idle + %d in use", cloudIPs, st.Idle, st.InUse)
	}
	if st.InUse != len(live) {
		t.Fatalf("%d in use, %d live pods", st.InUse, len(live))
	}
}

// TestExhausted: an exhausted vSwitch makes STATUS answer 50 and ADD fail
// with a clear error (and the node condition say why); when addresses
// return, both recover.
func TestExhausted(t *testing.T) {
	e := newEnv(t, cnitest.Options{MinIdle: 0, MaxIdle: 2, Net: "10.211", AgentArgs: []string{"--quota-backoff", "500ms"}})
	vsw := e.Emu.Store.Config().VSwitches[0].ID
	held := e.Emu.Store.Hold(vsw, 1000)
	t.Cleanup(func() { e.Emu.Store.Unhold(vsw) })
	if held == 0 {
		t.Fatal("nothing to hold")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := e.pod("ex-1")
	_, err := e.Add(ctx, api.ModeVeth, p)
	if err == nil {
		t.Fatal("ADD succeeded with the vSwitch exhausted")
	}
	if !strings.Contains(err.Error(), agent.CodeIPNotEnough) || !strings.Contains(err.Error(), vsw) || cnitest.CNICode(err) != 11 {
		t.Fatalf("ADD error (code %d) does not say why: %v", cnitest.CNICode(err), err)
	}
	t.Logf("ADD error: %v", err)
	err = e.Status(ctx, api.ModeVeth)
	if cnitest.CNICode(err) != 50 {
		t.Fatalf("STATUS: %v (code %d), want 50", err, cnitest.CNICode(err))
	}
	// The node condition says why (written by the agent's pool loop).
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, err := e.c.Client.CoreV1().Nodes().Get(ctx, e.node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var c *corev1.NodeCondition
		for i := range n.Status.Conditions {
			if n.Status.Conditions[i].Type == agent.ConditionType {
				c = &n.Status.Conditions[i]
			}
		}
		if c != nil && c.Status == corev1.ConditionFalse && c.Reason == "VSwitchIPNotEnough" {
			t.Logf("node condition: %s %s: %s", c.Status, c.Reason, c.Message)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node condition %s: %+v", agent.ConditionType, c)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Addresses return.
	e.Emu.Store.Unhold(vsw)
	deadline = time.Now().Add(20 * time.Second)
	for {
		err := e.Status(ctx, api.ModeVeth)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("STATUS still failing after the addresses returned: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ip := e.add(api.ModeVeth, p)
	if err := e.Check(ctx, api.ModeVeth, p); err != nil {
		t.Fatal(err)
	}
	h := podNS(t, p)
	reach(t, ctx, h, netns.None(), e.NodeIP(), "pod -> node after recovery")
	t.Logf("recovered: %s", ip)
	e.del(api.ModeVeth, p)
}
