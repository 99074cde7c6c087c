package agent

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/dnsaccel/dnsaccel/cni/api"
)

// Pods tells which pods run on this node (the API server's view).
type Pods interface {
	// OnNode returns "namespace/name" of every pod bound to the node.
	OnNode(ctx context.Context) (map[string]bool, error)
}

// Reconcile rebuilds the pool on start: pending cloud calls are repeated
// with their ClientTokens, the attached ENIs and their addresses come from
// DescribeNetworkInterfaces (the truth), unattached ENIs of this agent are
// deleted, recorded allocations are kept only where the cloud still has the
// address (never two pods on one address), and allocations of pods that are
// gone from the API server are released.
func (p *Pool) Reconcile(ctx context.Context, pods Pods) error {
	ops, err := p.store.Ops()
	if err != nil {
		return err
	}
	for _, op := range ops {
		switch op.Kind {
		case opCreate:
			p.mu.Lock()
			p.creating++
			p.mu.Unlock()
			_, err := p.finishCreate(ctx, op)
			p.mu.Lock()
			p.creating--
			p.mu.Unlock()
			if err != nil {
				p.log.Warn("repeating an interrupted ENI create", "token", op.Token, "err", err)
			} else {
				p.log.Info("repeated an interrupted ENI create with its ClientToken", "token", op.Token)
			}
		case opAssign:
			if _, err := p.cloud.AssignIPs(ctx, op.ENIID, op.Count, op.Token); err != nil && !definitive(err) {
				p.log.Warn("repeating an interrupted assign", "eni", op.ENIID, "err", err)
				continue
			}
			p.log.Info("repeated an interrupted assign with its ClientToken", "eni", op.ENIID, "token", op.Token)
			_ = p.store.DelOp(op.ID)
		default:
			_ = p.store.DelOp(op.ID)
		}
	}

	attached, err := p.cloud.DescribeENIs(ctx, p.cfg.InstanceID, "")
	if err != nil {
		return fmt.Errorf("listing the instance's ENIs: %w", err)
	}
	named, err := p.cloud.DescribeENIs(ctx, "", p.cfg.ENIName)
	if err != nil {
		return fmt.Errorf("listing this agent's ENIs: %w", err)
	}
	records, err := p.store.ENIs()
	if err != nil {
		return err
	}
	exclusive := map[string]bool{}
	for _, r := range records {
		exclusive[r.ID] = r.Exclusive
	}
	live := map[string]bool{}
	enis := map[string]*poolENI{}
	for _, e := range attached {
		if e.Type == "Primary" || e.Name != p.cfg.ENIName || e.Status != "InUse" {
			continue
		}
		info, err := p.waitAttached(ctx, e.MAC)
		if err != nil {
			return fmt.Errorf("ENI %s: %w", e.ID, err)
		}
		pe := &poolENI{ID: e.ID, MAC: e.MAC, VSwitchID: e.VSwitchID, CIDR: info.CIDR, Gateway: info.Gateway, Primary: e.Primary, Exclusive: exclusive[e.ID], ips: map[netip.Addr]api.Key{}}
		for _, a := range e.IPs {
			pe.ips[a] = api.Key{}
		}
		if pe.Exclusive {
			pe.ips = map[netip.Addr]api.Key{e.Primary: {}}
		}
		enis[e.ID] = pe
		live[e.ID] = true
	}
	var leaked []string
	for _, e := range named {
		if !live[e.ID] && (e.Status == "Available" || e.InstanceID == p.cfg.InstanceID) {
			leaked = append(leaked, e.ID)
			live[e.ID] = true
		}
	}
	for _, r := range records {
		if !live[r.ID] {
			_ = p.store.DelENI(r.ID)
		}
	}

	allocs, err := p.store.Allocs()
	if err != nil {
		return err
	}
	// Oldest first: if two records ever claimed one address, the older
	// one is stale.
	slices.SortFunc(allocs, func(a, b api.Allocation) int { return cmp.Compare(a.Created.UnixNano(), b.Created.UnixNano()) })
	kept := map[api.Key]*api.Allocation{}
	var dropped []api.Allocation
	for i := len(allocs) - 1; i >= 0; i-- {
		a := allocs[i]
		e := enis[a.ENIID]
		ip, perr := netip.ParseAddr(a.IP)
		owner, has := api.Key{}, false
		if e != nil && perr == nil {
			owner, has = e.ips[ip]
		}
		if e == nil || !has || owner != (api.Key{}) || e.Exclusive != (a.Mode == api.ModeExclusive) {
			dropped = append(dropped, a)
			continue
		}
		e.ips[ip] = a.Key
		c := a
		kept[a.Key] = &c
	}
	held := map[string]bool{}
	for _, a := range kept {
		held[a.IP] = true
	}
	for _, a := range dropped {
		_ = p.store.DelAllocs(a.Key)
		p.log.Warn("dropped an allocation the cloud no longer backs", "key", a.Key.String(), "ip", a.IP, "eni", a.ENIID, "address_kept_by_another", held[a.IP])
		if p.HostCleanup != nil {
			// A kept allocation on the same address keeps its rules.
			p.HostCleanup(a, held[a.IP])
		}
	}
	p.mu.Lock()
	p.enis = enis
	p.allocs = kept
	p.exclReady = nil
	for _, e := range enis {
		if e.Exclusive && e.inUse() == 0 {
			delete(p.enis, e.ID)
			p.toDelete = append(p.toDelete, e.ID)
		}
	}
	p.toDelete = append(p.toDelete, leaked...)
	p.notifyLocked()
	p.mu.Unlock()
	p.log.Info("reconciled with the cloud", "enis", len(enis), "allocations", len(kept), "dropped", len(dropped), "leaked_enis", len(leaked), "repeated_ops", len(ops))

	if pods != nil {
		n, err := p.ReleaseGonePods(ctx, pods, 0, "reconcile")
		if err != nil {
			return err
		}
		if n > 0 {
			p.log.Info("released addresses of pods that are gone", "count", n)
		}
	}
	p.poke()
	return nil
}

// ReleaseGonePods releases allocations older than grace whose pod is no
// longer on the node. Allocations without a pod name (not made for a
// Kubernetes pod) are left to CNI GC.
func (p *Pool) ReleaseGonePods(ctx context.Context, pods Pods, grace time.Duration, why string) (int, error) {
	on, err := pods.OnNode(ctx)
	if err != nil {
		return 0, fmt.Errorf("listing the node's pods: %w", err)
	}
	n := 0
	for _, a := range p.Allocations() {
		if a.PodName == "" || on[a.PodNamespace+"/"+a.PodName] || time.Since(a.Created) < grace {
			continue
		}
		p.cleanupHeld(a)
		r, err := p.Release(a.Key, why)
		if err != nil || r == nil {
			continue
		}
		n++
		p.log.Info("released the address of a pod that is gone", "pod", a.PodNamespace+"/"+a.PodName, "ip", a.IP, "why", why)
	}
	return n, nil
}

// LeakLoop releases, every interval, addresses of pods gone from the node.
func (p *Pool) LeakLoop(ctx context.Context, pods Pods, interval time.Duration) {
	if pods == nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if _, err := p.ReleaseGonePods(ctx, pods, interval, "leak"); err != nil && ctx.Err() == nil {
			p.log.Warn("leak check", "err", err)
		}
	}
}

// CheckInvariants verifies that no address is held twice and that every
// allocation points at an address of a pool ENI (tests and debugging).
func (p *Pool) CheckInvariants() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []string
	seen := map[string]api.Key{}
	for k, a := range p.allocs {
		if o, dup := seen[a.IP]; dup {
			errs = append(errs, fmt.Sprintf("%s given to %s and %s", a.IP, o, k))
		}
		seen[a.IP] = k
		e := p.enis[a.ENIID]
		ip, _ := netip.ParseAddr(a.IP)
		if e == nil || e.ips[ip] != k {
			errs = append(errs, fmt.Sprintf("%s of %s not held on ENI %s", a.IP, k, a.ENIID))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}
