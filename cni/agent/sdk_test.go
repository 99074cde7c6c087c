package agent

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"

	"github.com/dnsaccel/dnsaccel/cloud/ecs"
	"github.com/dnsaccel/dnsaccel/cloud/ecs/ecstest"
	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cni/api"
)

// The pool through the real Alibaba Cloud SDK against the ECS emulator
// while it throttles and fails requests, before and after they take
// effect (503 and dropped connections, the "after" ones are lost answers):
// few retries per call, so the pool itself has to repeat calls with their
// ClientTokens. Afterwards the cloud and the pool agree on every ENI and
// address: nothing leaked, nothing handed out twice.
func TestPoolThroughSDKWithFaults(t *testing.T) {
	cfg := ecs.DefaultConfig() // ecs.g7.2xlarge: 6 ENIs of 15 addresses
	cfg.AttachDelay, cfg.DetachDelay = 20*time.Millisecond, 10*time.Millisecond
	emu := ecstest.Start(t, openapi.Config{}, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	meta := NewMetadata(emu.URL)
	id, err := meta.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sdk, err := NewECS(id.Region, emu.URL, credentials.NewAccessKeyCredential(ecstest.AccessKeyID, ecstest.AccessKeySecret))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var throttled []string
	cloud := NewLimited(sdk, 0, observerFunc(func(action string) { mu.Lock(); throttled = append(throttled, action); mu.Unlock() }))
	cloud.Attempts, cloud.Base = 2, time.Millisecond // the pool must repeat calls itself
	lim, err := cloud.InstanceLimits(ctx, id.InstanceType)
	if err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(filepath.Join(t.TempDir(), "eni.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	p := NewPool(PoolConfig{InstanceID: id.InstanceID, NodeIP: id.PrimaryIP.String(), VSwitches: []string{id.VSwitchID}, SecurityGroups: id.SecurityGroups,
		MinIdle: 2, MaxIdle: 6, Limits: lim, ErrorBackoff: 10 * time.Millisecond, AttachTimeout: 5 * time.Second}, cloud, meta, st, nil, nil, nil)
	if err := p.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	run(t, p)

	emu.Server.SetFaults(0, 0.5, 0.15)
	for i := range 60 {
		if _, err := p.Alloc(ctx, api.AllocRequest{Key: key(i), Mode: api.ModeVeth}); err != nil {
			t.Fatalf("alloc %d with faults: %v", i, err)
		}
	}
	for i := range 50 {
		if _, err := p.Release(key(i), "del"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the pool to trim with faults", func() bool { return p.Status(api.ModeVeth).Idle <= 6 })
	emu.Server.SetFaults(0, 0, 0)
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := agree(p, emu, id.InstanceID)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			ents, _ := emu.Server.Log(0)
			var b strings.Builder
			for _, e := range ents {
				if e.Write {
					fmt.Fprintf(&b, "%d %s %v %s %s\n", e.Seq, e.Action, e.Params, e.Code, e.Fault)
				}
			}
			t.Fatalf("%v\nwrites:\n%s", err, b.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := p.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(throttled) == 0 {
		t.Error("no Throttling.User seen: the test did not exercise throttling")
	}
	faults := 0
	ents, _ := emu.Server.Log(0)
	for _, e := range ents {
		if e.Fault == "drop-after" || e.Fault == "503-after" {
			faults++
		}
	}
	if faults == 0 {
		t.Error("no lost answers: the test did not exercise them")
	}
	t.Logf("%d requests, %d lost answers, %d throttled", len(ents), faults, len(throttled))
}

// agree compares the pool with the emulator once the pool is quiet: the
// same ENIs (this agent's, attached), the same addresses on each.
func agree(p *Pool, emu *ecstest.Emulator, instance string) error {
	p.mu.Lock()
	quiet := p.refillsLocked() == 0 && len(p.retryOps) == 0 && len(p.toDelete) == 0 && !p.deleting
	pool := map[string][]netip.Addr{}
	for id, e := range p.enis {
		for a := range e.ips {
			pool[id] = append(pool[id], a)
		}
		slices.SortFunc(pool[id], netip.Addr.Compare)
	}
	name := p.cfg.ENIName
	p.mu.Unlock()
	if !quiet {
		return fmt.Errorf("pool still busy")
	}
	cloud := map[string][]netip.Addr{}
	for _, e := range emu.Store.ENIs() {
		if e.Name != name {
			continue
		}
		if e.InstanceID != instance || e.Status != "InUse" {
			return fmt.Errorf("ENI %s is %s (instance %q): leaked", e.ID, e.Status, e.InstanceID)
		}
		ips := e.IPs()
		slices.SortFunc(ips, netip.Addr.Compare)
		cloud[e.ID] = ips
	}
	if fmt.Sprint(pool) != fmt.Sprint(cloud) {
		return fmt.Errorf("pool %v != cloud %v", pool, cloud)
	}
	return nil
}

type observerFunc func(action string)

func (observerFunc) APICall(string, string, time.Duration) {}
func (f observerFunc) Throttled(action string, _ error)    { f(action) }
