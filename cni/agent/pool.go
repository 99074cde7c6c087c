// Package agent is bin/eni-agent: the node daemon that owns the ENI address
// pool. It keeps idle addresses between --min-idle and --max-idle, refilled
// in batches (several addresses per AssignPrivateIpAddresses, a new ENI
// when every ENI is full, up to the instance type's limits), picks the
// vSwitch with the most free addresses, rate-limits and retries cloud calls
// (reusing ClientTokens), backs off on address shortages and ENI limits
// (with a node condition and Events saying why), persists allocations in
// bbolt, reconciles them on start against DescribeNetworkInterfaces and the
// node's pods, and frees leaks through CNI GC and a periodic loop. It serves
// eni-cni over HTTP on a unix socket (cni/api).
package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dnsaccel/dnsaccel/cni/api"
)

// MetaSource is what the pool reads from instance metadata.
type MetaSource interface {
	MACs(ctx context.Context) ([]string, error)
	ENIInfo(ctx context.Context, mac string) (ENIInfo, error)
}

// Reporter tells Kubernetes about the pool (node Events and condition).
type Reporter interface {
	Event(warning bool, reason, msg string)
	Condition(ok bool, reason, msg string)
}

// PoolConfig configures a Pool.
type PoolConfig struct {
	InstanceID     string
	NodeIP         string
	VSwitches      []string
	SecurityGroups []string
	MinIdle        int
	MaxIdle        int
	Limits         Limits
	// ENIName names the ENIs this agent creates (and finds again).
	ENIName string
	// QuotaBackoff: how long a vSwitch out of addresses (or the address
	// quota) is left alone; ENILimitBackoff the same for the ENI limit.
	QuotaBackoff    time.Duration
	ENILimitBackoff time.Duration
	// ErrorBackoff: pause after any other failed refill.
	ErrorBackoff time.Duration
	// AttachTimeout bounds the wait for an attached ENI in metadata.
	AttachTimeout time.Duration
	// VSwitchTTL: DescribeVSwitches answers are reused this long.
	VSwitchTTL time.Duration
	// MaxAssignBatch caps addresses per AssignPrivateIpAddresses (ECS: 10).
	MaxAssignBatch int
}

func (c *PoolConfig) defaults() {
	if c.QuotaBackoff <= 0 {
		c.QuotaBackoff = time.Minute
	}
	if c.ENILimitBackoff <= 0 {
		c.ENILimitBackoff = time.Minute
	}
	if c.ErrorBackoff <= 0 {
		c.ErrorBackoff = 2 * time.Second
	}
	if c.AttachTimeout <= 0 {
		c.AttachTimeout = 60 * time.Second
	}
	if c.VSwitchTTL <= 0 {
		c.VSwitchTTL = 10 * time.Minute
	}
	if c.MaxAssignBatch <= 0 {
		c.MaxAssignBatch = 10
	}
	if c.MaxIdle < c.MinIdle {
		c.MaxIdle = c.MinIdle
	}
	if c.ENIName == "" {
		c.ENIName = "dnsaccel-" + c.InstanceID
	}
}

type poolENI struct {
	ID, MAC, VSwitchID string
	CIDR               netip.Prefix
	Gateway            netip.Addr
	Primary            netip.Addr
	Exclusive          bool
	// full: ECS refused more addresses for this ENI
	// (QuotaExceeded.PrivateIpAddress) before the instance type's limit.
	full bool
	ips  map[netip.Addr]api.Key // zero Key: idle
}

func (e *poolENI) hasRoom(limit int) bool { return !e.Exclusive && !e.full && len(e.ips) < limit }

func (e *poolENI) inUse() int {
	n := 0
	for _, k := range e.ips {
		if k != (api.Key{}) {
			n++
		}
	}
	return n
}

type block struct {
	until  time.Time
	code   string
	reason string
}

// Pool is the node's address pool.
type Pool struct {
	cfg   PoolConfig
	cloud Cloud
	meta  MetaSource
	store *Store
	rep   Reporter
	log   *slog.Logger
	m     *Metrics
	// HostCleanup undoes the host side of a pod whose address is freed
	// without a CNI DEL (GC, reconcile); nil: nothing.
	HostCleanup func(a api.Allocation)

	mu            sync.Mutex
	enis          map[string]*poolENI
	allocs        map[api.Key]*api.Allocation
	exclReady     []string // exclusive ENIs created for waiters, not handed out yet
	sharedWaiting int
	exclWaiting   int
	creating      int
	toDelete      []string
	changed       chan struct{}
	kick          chan struct{}
	vsw           map[string]VSwitch
	vswAt         time.Time
	blocked       map[string]block // vSwitch id -> block
	eniLimitUntil time.Time
	retryAfter    time.Time
	lastErr       string
	failSeq       uint64
	condOK        *bool
}

// NewPool returns a pool; call Reconcile, then Run.
func NewPool(cfg PoolConfig, cloud Cloud, meta MetaSource, store *Store, rep Reporter, log *slog.Logger, m *Metrics) *Pool {
	cfg.defaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Pool{cfg: cfg, cloud: cloud, meta: meta, store: store, rep: rep, log: log, m: m,
		enis: map[string]*poolENI{}, allocs: map[api.Key]*api.Allocation{}, changed: make(chan struct{}),
		kick: make(chan struct{}, 1), blocked: map[string]block{}}
}

func (p *Pool) report(warning bool, reason, msg string) {
	if p.rep != nil {
		p.rep.Event(warning, reason, msg)
	}
}

// notifyLocked wakes everybody waiting for a change. p.mu held.
func (p *Pool) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
	p.updateGaugesLocked()
}

func (p *Pool) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *Pool) updateGaugesLocked() {
	idle, used := 0, 0
	for _, e := range p.enis {
		if e.Exclusive {
			if e.inUse() > 0 {
				used++
			}
			continue
		}
		u := e.inUse()
		used += u
		idle += len(e.ips) - u
	}
	p.m.Idle.Set(float64(idle))
	p.m.InUse.Set(float64(used))
	p.m.ENIs.Set(float64(len(p.enis)))
}

func (p *Pool) idleSharedLocked() int {
	n := 0
	for _, e := range p.enis {
		if !e.Exclusive {
			n += len(e.ips) - e.inUse()
		}
	}
	return n
}

func (p *Pool) maxSecondary() int { return max(0, p.cfg.Limits.ENIs-1) }

func (p *Pool) blockedLocked(vsw string, now time.Time) (block, bool) {
	b, ok := p.blocked[vsw]
	if !ok {
		return block{}, false
	}
	if now.After(b.until) {
		delete(p.blocked, vsw)
		return block{}, false
	}
	return b, true
}

// canCreateLocked reports whether a new ENI may be created now, or why not.
func (p *Pool) canCreateLocked(now time.Time) string {
	if len(p.enis)+p.creating >= p.maxSecondary() {
		return fmt.Sprintf("ENI limit reached: %d secondary ENIs of %d addresses each (instance type allows %d ENIs including the primary)",
			len(p.enis)+p.creating, p.cfg.Limits.IPsPerENI, p.cfg.Limits.ENIs)
	}
	if now.Before(p.eniLimitUntil) {
		return fmt.Sprintf("ECS refused another ENI (%s) until %s", CodeENILimit, p.eniLimitUntil.Format(time.TimeOnly))
	}
	var why []string
	for _, id := range p.cfg.VSwitches {
		b, ok := p.blockedLocked(id, now)
		if !ok {
			return ""
		}
		why = append(why, fmt.Sprintf("vSwitch %s: %s (%s), retrying after %s", id, b.reason, b.code, b.until.Format(time.TimeOnly)))
	}
	return strings.Join(why, "; ")
}

// cannotServeLocked returns why an ADD of mode cannot be served now ("" if
// it can).
func (p *Pool) cannotServeLocked(mode api.Mode) string {
	now := time.Now()
	if p.creating > 0 {
		return "" // an ENI is on its way
	}
	if mode == api.ModeExclusive {
		if len(p.exclReady) > 0 {
			return ""
		}
		return p.canCreateLocked(now)
	}
	if p.idleSharedLocked() > 0 {
		return ""
	}
	var why []string
	for _, e := range p.enis {
		if !e.hasRoom(p.cfg.Limits.IPsPerENI) {
			continue
		}
		b, ok := p.blockedLocked(e.VSwitchID, now)
		if !ok {
			return ""
		}
		why = append(why, fmt.Sprintf("ENI %s: vSwitch %s %s (%s)", e.ID, e.VSwitchID, b.reason, b.code))
	}
	r := p.canCreateLocked(now)
	if r == "" {
		return ""
	}
	return strings.Join(append(why, r), "; ")
}

// ErrNoAddress is wrapped by Alloc errors when the pool cannot serve.
var ErrNoAddress = errors.New("no address available")

// Alloc gives the attachment an address (an ENI in exclusive mode),
// waiting for a refill if the pool is empty. A key that has an allocation
// gets it again.
func (p *Pool) Alloc(ctx context.Context, req api.AllocRequest) (*api.Allocation, error) {
	if !req.Mode.Valid() {
		return nil, &api.Error{Code: api.CodeInvalidConfig, Msg: fmt.Sprintf("mode %q is not veth, ipvlan or exclusive", req.Mode)}
	}
	if req.ContainerID == "" || req.IfName == "" {
		return nil, &api.Error{Code: api.CodeInvalidConfig, Msg: "containerID and ifName are required"}
	}
	t0 := time.Now()
	p.mu.Lock()
	if a := p.allocs[req.Key]; a != nil {
		p.mu.Unlock()
		return a, nil
	}
	seq := p.failSeq
	registered := false
	unregister := func() {
		if registered {
			if req.Mode == api.ModeExclusive {
				p.exclWaiting--
			} else {
				p.sharedWaiting--
			}
		}
	}
	for {
		if a := p.takeLocked(req); a != nil {
			unregister()
			p.notifyLocked()
			p.mu.Unlock()
			p.poke()
			if err := p.store.PutAlloc(a); err != nil {
				p.undo(a)
				return nil, &api.Error{Code: api.CodeInternal, Msg: "recording the allocation", Details: err.Error()}
			}
			p.m.AllocSeconds.WithLabelValues(string(req.Mode)).Observe(time.Since(t0).Seconds())
			p.log.Debug("allocated", "key", req.Key.String(), "ip", a.IP, "eni", a.ENIID, "took", time.Since(t0))
			return a, nil
		}
		if why := p.cannotServeLocked(req.Mode); why != "" && (!registered || p.failSeq != seq) {
			unregister()
			p.mu.Unlock()
			p.m.AllocErrors.Inc()
			return nil, &api.Error{Code: api.CodeTryAgainLater, Msg: fmt.Sprintf("%v for %s mode: %s", ErrNoAddress, req.Mode, why)}
		}
		if !registered {
			registered = true
			if req.Mode == api.ModeExclusive {
				p.exclWaiting++
			} else {
				p.sharedWaiting++
			}
			p.poke()
		}
		seq = p.failSeq
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			p.mu.Lock()
			unregister()
			last := p.lastErr
			p.mu.Unlock()
			p.m.AllocErrors.Inc()
			msg := fmt.Sprintf("timed out after %s waiting for the pool to refill", time.Since(t0).Round(time.Millisecond))
			if last != "" {
				msg += "; last cloud error: " + last
			}
			return nil, &api.Error{Code: api.CodeTryAgainLater, Msg: msg}
		}
		p.mu.Lock()
	}
}

// takeLocked hands out an idle address (packing ENIs: the busiest first)
// or a ready exclusive ENI.
func (p *Pool) takeLocked(req api.AllocRequest) *api.Allocation {
	var eni *poolENI
	var ip netip.Addr
	if req.Mode == api.ModeExclusive {
		if len(p.exclReady) == 0 {
			return nil
		}
		eni = p.enis[p.exclReady[0]]
		p.exclReady = p.exclReady[1:]
		if eni == nil {
			return nil
		}
		ip = eni.Primary
	} else {
		best := -1
		for _, e := range p.enis {
			u := e.inUse()
			if e.Exclusive || u >= len(e.ips) {
				continue
			}
			if eni == nil || u > best || (u == best && e.ID < eni.ID) {
				eni, best = e, u
			}
		}
		if eni == nil {
			return nil
		}
		for a, k := range eni.ips {
			if k == (api.Key{}) && (!ip.IsValid() || a.Less(ip)) {
				ip = a
			}
		}
	}
	eni.ips[ip] = req.Key
	a := &api.Allocation{Key: req.Key, PodNamespace: req.PodNamespace, PodName: req.PodName, Mode: req.Mode, IP: ip.String(),
		VSwitchCIDR: eni.CIDR.String(), Gateway: eni.Gateway.String(), ENIID: eni.ID, MAC: eni.MAC, NodeIP: p.cfg.NodeIP, Created: time.Now().UTC()}
	p.allocs[req.Key] = a
	return a
}

// undo takes back an allocation that could not be recorded.
func (p *Pool) undo(a *api.Allocation) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.freeLocked(a)
	p.notifyLocked()
}

func (p *Pool) freeLocked(a *api.Allocation) {
	if p.allocs[a.Key] != a {
		return
	}
	delete(p.allocs, a.Key)
	e := p.enis[a.ENIID]
	if e == nil {
		return
	}
	if e.Exclusive {
		delete(p.enis, e.ID)
		p.toDelete = append(p.toDelete, e.ID)
		return
	}
	if ip, err := netip.ParseAddr(a.IP); err == nil && e.ips[ip] == a.Key {
		e.ips[ip] = api.Key{}
	}
}

// Get returns the allocation of a key.
func (p *Pool) Get(k api.Key) *api.Allocation {
	p.mu.Lock()
	defer p.mu.Unlock()
	if a := p.allocs[k]; a != nil {
		c := *a
		return &c
	}
	return nil
}

// Allocations returns a copy of every allocation.
func (p *Pool) Allocations() []api.Allocation {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]api.Allocation, 0, len(p.allocs))
	for _, a := range p.allocs {
		out = append(out, *a)
	}
	slices.SortFunc(out, func(a, b api.Allocation) int { return cmp.Compare(a.Key.String(), b.Key.String()) })
	return out
}

// Release frees a key's address. The record is deleted before the address
// can be handed out again, so a crash never leaves two records for one
// address.
func (p *Pool) Release(k api.Key, why string) (*api.Allocation, error) {
	p.mu.Lock()
	a := p.allocs[k]
	p.mu.Unlock()
	if a == nil {
		return nil, nil
	}
	if err := p.store.DelAllocs(k); err != nil {
		return nil, &api.Error{Code: api.CodeInternal, Msg: "forgetting the allocation", Details: err.Error()}
	}
	p.mu.Lock()
	p.freeLocked(a)
	p.notifyLocked()
	p.mu.Unlock()
	p.poke()
	p.m.Released.WithLabelValues(why).Inc()
	p.log.Debug("released", "key", k.String(), "ip", a.IP, "why", why)
	return a, nil
}

// GC frees every allocation not in valid (CNI GC).
func (p *Pool) GC(valid []api.Key) []api.Key {
	keep := map[api.Key]bool{}
	for _, k := range valid {
		keep[k] = true
	}
	var out []api.Key
	for _, a := range p.Allocations() {
		if keep[a.Key] {
			continue
		}
		if r, err := p.Release(a.Key, "gc"); err == nil && r != nil {
			out = append(out, a.Key)
			if p.HostCleanup != nil {
				p.HostCleanup(*r)
			}
		}
	}
	if len(out) > 0 {
		p.log.Info("CNI GC released stale allocations", "count", len(out))
	}
	return out
}

// Status says whether an ADD of mode can be served now.
func (p *Pool) Status(mode api.Mode) api.Status {
	if mode == "" {
		mode = api.ModeVeth
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	why := p.cannotServeLocked(mode)
	used := 0
	for _, e := range p.enis {
		used += e.inUse()
	}
	return api.Status{Ready: why == "", Reason: why, Idle: p.idleSharedLocked(), InUse: used, ENIs: len(p.enis)}
}

// Run refills and trims the pool until ctx ends.
func (p *Pool) Run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for ctx.Err() == nil && p.step(ctx) {
		}
		p.updateCondition()
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-tick.C:
		}
	}
}

func (p *Pool) updateCondition() {
	p.mu.Lock()
	why := p.cannotServeLocked(api.ModeVeth)
	prev := p.condOK
	ok := why == ""
	p.condOK = &ok
	p.mu.Unlock()
	p.m.Ready.Set(map[bool]float64{true: 1, false: 0}[ok])
	if prev != nil && *prev == ok || p.rep == nil {
		return
	}
	if ok {
		p.rep.Condition(true, "PoolReady", "the ENI address pool can serve pods")
		if prev != nil {
			p.rep.Event(false, "ENIPoolRecovered", "the ENI address pool can serve pods again")
		}
		return
	}
	reason := "PoolExhausted"
	switch {
	case strings.Contains(why, CodeIPNotEnough):
		reason = "VSwitchIPNotEnough"
	case strings.Contains(why, CodeIPQuota):
		reason = "PrivateIPQuotaExceeded"
	case strings.Contains(why, "ENI limit") || strings.Contains(why, CodeENILimit):
		reason = "ENILimitReached"
	}
	p.rep.Condition(false, reason, why)
	p.rep.Event(true, reason, "the ENI address pool cannot serve pods: "+why)
}

// step makes one change to the pool; false when there is nothing to do
// (or it failed and must wait).
func (p *Pool) step(ctx context.Context) bool {
	now := time.Now()
	p.mu.Lock()
	if len(p.toDelete) > 0 {
		id := p.toDelete[0]
		p.toDelete = p.toDelete[1:]
		p.mu.Unlock()
		p.deleteENI(ctx, id)
		return true
	}
	if now.Before(p.retryAfter) {
		p.mu.Unlock()
		return false
	}
	if p.exclWaiting > len(p.exclReady) && p.canCreateLocked(now) == "" {
		p.creating++
		p.mu.Unlock()
		err := p.createENI(ctx, 1, true)
		return p.done(err)
	}
	idle := p.idleSharedLocked()
	if idle < p.cfg.MinIdle+p.sharedWaiting {
		want := p.cfg.MaxIdle + p.sharedWaiting - idle
		var room *poolENI
		for _, e := range p.enis {
			if !e.hasRoom(p.cfg.Limits.IPsPerENI) {
				continue
			}
			if _, blocked := p.blockedLocked(e.VSwitchID, now); blocked {
				continue
			}
			if room == nil || len(e.ips) > len(room.ips) || (len(e.ips) == len(room.ips) && e.ID < room.ID) {
				room = e
			}
		}
		if room != nil {
			n := min(want, p.cfg.Limits.IPsPerENI-len(room.ips), p.cfg.MaxAssignBatch)
			id, vsw := room.ID, room.VSwitchID
			p.mu.Unlock()
			return p.done(p.assign(ctx, id, vsw, n))
		}
		if p.canCreateLocked(now) == "" {
			p.creating++
			p.mu.Unlock()
			return p.done(p.createENI(ctx, min(want, p.cfg.Limits.IPsPerENI), false))
		}
		p.mu.Unlock()
		return false
	}
	if idle > p.cfg.MaxIdle && p.sharedWaiting == 0 {
		return p.shrinkLocked(ctx, idle-p.cfg.MaxIdle) // unlocks
	}
	p.mu.Unlock()
	return false
}

// done records the outcome of a refill.
func (p *Pool) done(err error) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.lastErr = ""
		p.notifyLocked()
		return true
	}
	p.lastErr = err.Error()
	p.failSeq++
	if !IsAddressShortage(err) && !IsENILimit(err) {
		p.retryAfter = time.Now().Add(p.cfg.ErrorBackoff)
	}
	p.notifyLocked()
	p.log.Warn("refilling the pool failed", "err", err)
	return false
}

// pickVSwitch returns the configured vSwitch with the most free addresses
// that is not blocked.
func (p *Pool) pickVSwitch(ctx context.Context) (string, error) {
	p.mu.Lock()
	stale := p.vsw == nil || time.Since(p.vswAt) > p.cfg.VSwitchTTL
	p.mu.Unlock()
	if stale {
		vs, err := p.cloud.DescribeVSwitches(ctx, p.cfg.VSwitches)
		if err != nil {
			return "", err
		}
		m := map[string]VSwitch{}
		for _, v := range vs {
			m[v.ID] = v
		}
		p.mu.Lock()
		p.vsw, p.vswAt = m, time.Now()
		p.mu.Unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	best, bestFree := "", -1
	for _, id := range p.cfg.VSwitches {
		if _, blocked := p.blockedLocked(id, now); blocked {
			continue
		}
		v, ok := p.vsw[id]
		if !ok {
			continue
		}
		if v.Free > bestFree {
			best, bestFree = id, v.Free
		}
	}
	if best == "" {
		return "", fmt.Errorf("none of the vSwitches %s is usable", strings.Join(p.cfg.VSwitches, ","))
	}
	return best, nil
}

// noteFailure blocks a vSwitch or ENI creation after a quota answer.
func (p *Pool) noteFailure(vsw string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	switch {
	case IsAddressShortage(err):
		reason := "has no free addresses"
		if cloudCode(err) == CodeIPQuota {
			reason = "address quota exceeded"
		}
		p.blocked[vsw] = block{until: now.Add(p.cfg.QuotaBackoff), code: cloudCode(err), reason: reason}
		if v, ok := p.vsw[vsw]; ok {
			v.Free = 0
			p.vsw[vsw] = v
		}
		p.vswAt = time.Time{} // re-read free counts next time
		p.m.Backoffs.WithLabelValues(cloudCode(err)).Inc()
		p.report(true, "ENIAddressShortage", fmt.Sprintf("vSwitch %s: %v; not asking again until %s", vsw, err, p.blocked[vsw].until.Format(time.TimeOnly)))
	case IsENILimit(err):
		p.eniLimitUntil = now.Add(p.cfg.ENILimitBackoff)
		p.m.Backoffs.WithLabelValues(CodeENILimit).Inc()
		p.report(true, "ENILimitExceeded", fmt.Sprintf("%v; not creating ENIs until %s", err, p.eniLimitUntil.Format(time.TimeOnly)))
	}
}

// definitive: the call was answered with an error that retrying the same
// request will not change, so nothing was created.
func definitive(err error) bool {
	var ce *CloudError
	return errors.As(err, &ce) && !retryable(err)
}

func (p *Pool) createENI(ctx context.Context, n int, exclusive bool) error {
	defer func() {
		p.mu.Lock()
		p.creating--
		p.mu.Unlock()
	}()
	vsw, err := p.pickVSwitch(ctx)
	if err != nil {
		return err
	}
	op := pendingOp{ID: NewToken(), Kind: "create", VSwitchID: vsw, Count: n, Exclusive: exclusive, Token: NewToken(), Started: time.Now().UTC()}
	if err := p.store.PutOp(op); err != nil {
		return fmt.Errorf("recording the create: %w", err)
	}
	return p.finishCreate(ctx, op)
}

// finishCreate runs (or, after a restart, repeats with the same token) a
// create, then attaches the ENI and adds it to the pool.
func (p *Pool) finishCreate(ctx context.Context, op pendingOp) error {
	eni, err := p.cloud.CreateENI(ctx, CreateENIRequest{VSwitchID: op.VSwitchID, SecurityGroups: p.cfg.SecurityGroups, Count: op.Count, Name: p.cfg.ENIName, Token: op.Token})
	if err != nil {
		p.noteFailure(op.VSwitchID, err)
		if definitive(err) {
			_ = p.store.DelOp(op.ID)
		}
		return fmt.Errorf("creating an ENI in %s: %w", op.VSwitchID, err)
	}
	if err := p.store.PutENI(eniRecord{ID: eni.ID, Exclusive: op.Exclusive}); err != nil {
		return err
	}
	if eni.InstanceID != p.cfg.InstanceID || eni.Status != "InUse" {
		if err := p.cloud.AttachENI(ctx, eni.ID, p.cfg.InstanceID); err != nil {
			p.noteFailure(op.VSwitchID, err)
			if IsENILimit(err) {
				// Nothing will attach it: delete it now rather than leak it.
				if derr := p.cloud.DeleteENI(ctx, eni.ID); derr == nil || IsNotFound(derr) {
					_ = p.store.DelENI(eni.ID)
					_ = p.store.DelOp(op.ID)
				}
			}
			return fmt.Errorf("attaching %s: %w", eni.ID, err)
		}
	}
	info, err := p.waitAttached(ctx, eni.MAC)
	if err != nil {
		return fmt.Errorf("waiting for %s: %w", eni.ID, err)
	}
	pe := &poolENI{ID: eni.ID, MAC: eni.MAC, VSwitchID: eni.VSwitchID, CIDR: info.CIDR, Gateway: info.Gateway, Primary: eni.Primary, Exclusive: op.Exclusive, ips: map[netip.Addr]api.Key{}}
	for _, a := range eni.IPs {
		pe.ips[a] = api.Key{}
	}
	if op.Exclusive {
		pe.ips = map[netip.Addr]api.Key{eni.Primary: {}}
	}
	n := len(pe.ips)
	p.mu.Lock()
	p.enis[pe.ID] = pe
	if op.Exclusive {
		p.exclReady = append(p.exclReady, pe.ID)
	}
	p.notifyLocked()
	p.mu.Unlock()
	_ = p.store.DelOp(op.ID)
	p.log.Info("ENI ready", "eni", eni.ID, "vswitch", eni.VSwitchID, "addresses", n, "exclusive", op.Exclusive)
	return nil
}

// waitAttached polls metadata until the ENI's MAC is listed (attached and
// configured), then reads its gateway and CIDR.
func (p *Pool) waitAttached(ctx context.Context, mac string) (ENIInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.AttachTimeout)
	defer cancel()
	wait := 20 * time.Millisecond
	for {
		macs, err := p.meta.MACs(ctx)
		if err == nil && slices.ContainsFunc(macs, func(m string) bool { return strings.EqualFold(m, mac) }) {
			return p.meta.ENIInfo(ctx, mac)
		}
		select {
		case <-ctx.Done():
			return ENIInfo{}, fmt.Errorf("MAC %s not in instance metadata: %w", mac, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, 500*time.Millisecond)
	}
}

func (p *Pool) assign(ctx context.Context, eniID, vsw string, n int) error {
	op := pendingOp{ID: NewToken(), Kind: "assign", ENIID: eniID, Count: n, Token: NewToken(), Started: time.Now().UTC()}
	if err := p.store.PutOp(op); err != nil {
		return fmt.Errorf("recording the assign: %w", err)
	}
	ips, err := p.cloud.AssignIPs(ctx, eniID, n, op.Token)
	if cloudCode(err) == CodeIPQuota {
		// This ENI is full: use another one (or a new one).
		p.mu.Lock()
		if e := p.enis[eniID]; e != nil {
			e.full = true
		}
		p.mu.Unlock()
		_ = p.store.DelOp(op.ID)
		return fmt.Errorf("assigning %d addresses to %s: %w", n, eniID, err)
	}
	if err != nil {
		p.noteFailure(vsw, err)
		if definitive(err) {
			_ = p.store.DelOp(op.ID)
		}
		return fmt.Errorf("assigning %d addresses to %s: %w", n, eniID, err)
	}
	p.mu.Lock()
	if e := p.enis[eniID]; e != nil {
		for _, a := range ips {
			if _, ok := e.ips[a]; !ok {
				e.ips[a] = api.Key{}
			}
		}
	}
	p.notifyLocked()
	p.mu.Unlock()
	_ = p.store.DelOp(op.ID)
	return nil
}

// shrinkLocked gives back excess idle addresses: a whole idle ENI when it
// fits in the excess, else secondary addresses of the least used ENI.
// Called with p.mu held; unlocks it.
func (p *Pool) shrinkLocked(ctx context.Context, excess int) bool {
	var cands []*poolENI
	for _, e := range p.enis {
		if !e.Exclusive {
			cands = append(cands, e)
		}
	}
	slices.SortFunc(cands, func(a, b *poolENI) int {
		return cmp.Or(cmp.Compare(a.inUse(), b.inUse()), cmp.Compare(a.ID, b.ID))
	})
	for _, e := range cands {
		if e.inUse() == 0 && len(e.ips) <= excess {
			delete(p.enis, e.ID)
			p.notifyLocked()
			p.mu.Unlock()
			p.deleteENI(ctx, e.ID)
			return true
		}
		var free []netip.Addr
		for a, k := range e.ips {
			if k == (api.Key{}) && a != e.Primary {
				free = append(free, a)
			}
		}
		if len(free) == 0 {
			continue
		}
		slices.SortFunc(free, func(a, b netip.Addr) int { return b.Compare(a) })
		free = free[:min(len(free), excess, p.cfg.MaxAssignBatch)]
		for _, a := range free {
			delete(e.ips, a)
		}
		p.notifyLocked()
		id := e.ID
		p.mu.Unlock()
		if err := p.cloud.UnassignIPs(ctx, id, free); err != nil && !IsNotFound(err) {
			p.log.Warn("unassigning idle addresses failed; keeping them", "eni", id, "err", err)
			p.mu.Lock()
			if e := p.enis[id]; e != nil {
				for _, a := range free {
					e.ips[a] = api.Key{}
				}
			}
			p.retryAfter = time.Now().Add(p.cfg.ErrorBackoff)
			p.notifyLocked()
			p.mu.Unlock()
			return false
		}
		return true
	}
	p.mu.Unlock()
	return false
}

// deleteENI detaches and deletes an ENI the pool no longer uses.
func (p *Pool) deleteENI(ctx context.Context, id string) {
	if err := p.detachDelete(ctx, id); err != nil {
		p.log.Warn("deleting ENI failed; will retry", "eni", id, "err", err)
		p.mu.Lock()
		p.toDelete = append(p.toDelete, id)
		p.retryAfter = time.Now().Add(p.cfg.ErrorBackoff)
		p.mu.Unlock()
		return
	}
	_ = p.store.DelENI(id)
	p.log.Info("ENI deleted", "eni", id)
}

func (p *Pool) detachDelete(ctx context.Context, id string) error {
	if err := p.cloud.DetachENI(ctx, id, p.cfg.InstanceID); err != nil && !IsNotFound(err) && cloudCode(err) != "InvalidOperation.EniNotAttached" {
		return err
	}
	wait := 20 * time.Millisecond
	deadline := time.Now().Add(p.cfg.AttachTimeout)
	for {
		err := p.cloud.DeleteENI(ctx, id)
		if err == nil || IsNotFound(err) {
			return nil
		}
		if cloudCode(err) != "InvalidOperation.InvalidEniState" || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, time.Second)
	}
}
