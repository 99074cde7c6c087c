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
	"math"
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
	// MaxRefills caps the creates/assigns/unassigns running at once
	// (default 3; assigns always on distinct ENIs).
	MaxRefills int
	// UnclaimedENITTL: how long an exclusive ENI made for an ADD that gave
	// up waiting is kept for a retry before it is deleted (default 1 min).
	UnclaimedENITTL time.Duration
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
	if c.MaxRefills <= 0 {
		c.MaxRefills = 3
	}
	if c.UnclaimedENITTL <= 0 {
		c.UnclaimedENITTL = time.Minute
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

// readyENI is an exclusive ENI waiting for its ADD, and since when.
type readyENI struct {
	id string
	at time.Time
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
	// without a CNI DEL (GC, reconcile, leak loop); nil: nothing. taken:
	// the address belongs to another attachment now, so what is keyed by
	// the address alone must stay.
	HostCleanup func(a api.Allocation, taken bool)

	mu            sync.Mutex
	enis          map[string]*poolENI
	allocs        map[api.Key]*api.Allocation
	exclReady     []readyENI // exclusive ENIs created for waiters, not handed out yet
	sharedWaiting int
	exclWaiting   int
	creating      int            // creates running (shared and exclusive)
	exclCreating  int            // of which exclusive
	inflight      int            // shared addresses the running creates/assigns bring
	assigning     map[string]int // ENIs with an assign (or unassign) running -> addresses it brings
	retryOps      []*pendingOp   // failed without a definite answer: repeated with their tokens
	allocTimes    []time.Time    // shared allocations of the last demandWindow
	createDur     time.Duration
	assignDur     time.Duration
	work          sync.WaitGroup
	toDelete      []string
	deleting      bool
	changed       chan struct{}
	kick          chan struct{}
	vsw           map[string]VSwitch
	vswAt         time.Time
	blocked       map[string]block // vSwitch id -> block
	eniLimitUntil time.Time
	retryAfter    time.Time
	lastErr       string
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
		kick: make(chan struct{}, 1), blocked: map[string]block{}, assigning: map[string]int{}}
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

// refillsLocked counts the creates, assigns and unassigns running.
func (p *Pool) refillsLocked() int { return p.creating + len(p.assigning) }

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
	// Creates waiting to be repeated may each have made an ENI already.
	if n := len(p.enis) + p.creating + p.retryCreatesLocked(); n >= p.maxSecondary() {
		return fmt.Sprintf("ENI limit reached: %d secondary ENIs of %d addresses each (instance type allows %d ENIs including the primary)",
			n, p.cfg.Limits.IPsPerENI, p.cfg.Limits.ENIs)
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

// retryAddrsLocked counts the shared addresses of calls waiting to be
// repeated: they may have been made already, so they count as on their way.
func (p *Pool) retryAddrsLocked() int {
	n := 0
	for _, op := range p.retryOps {
		if !op.Exclusive {
			n += op.Count
		}
	}
	return n
}

func (p *Pool) retryCreatesLocked() int {
	n := 0
	for _, op := range p.retryOps {
		if op.Kind == opCreate {
			n++
		}
	}
	return n
}

// cannotServeLocked returns why an ADD of mode cannot be served now ("" if
// it can).
func (p *Pool) cannotServeLocked(mode api.Mode) string {
	now := time.Now()
	if p.creating > 0 || len(p.retryOps) > 0 || (mode.Shared() && p.inflight > 0) {
		return "" // an ENI or addresses are on their way
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
		// Nothing on its way and no way to get more: fail now (code 11)
		// rather than wait for the timeout.
		if why := p.cannotServeLocked(req.Mode); why != "" {
			unregister()
			p.mu.Unlock()
			p.m.AllocErrors.Inc()
			return nil, &api.Error{Code: api.CodeTryAgainLater, Msg: fmt.Sprintf("%v for %s mode", ErrNoAddress, req.Mode), Details: why}
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
			details := ""
			if last != "" {
				details = "last cloud error: " + last
			}
			return nil, &api.Error{Code: api.CodeTryAgainLater, Msg: fmt.Sprintf("timed out after %s waiting for the pool to refill", time.Since(t0).Round(time.Millisecond)), Details: details}
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
		eni = p.enis[p.exclReady[0].id]
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
	if req.Mode.Shared() {
		p.noteAllocLocked(time.Now())
	}
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

// cleanupHeld undoes a's host side before its release, while the address
// is still a's (once released it may be another pod's at once); an
// allocation released meanwhile (its DEL did the teardown) is skipped.
func (p *Pool) cleanupHeld(a api.Allocation) {
	if p.HostCleanup == nil {
		return
	}
	if cur := p.Get(a.Key); cur != nil && cur.IP == a.IP && cur.Created.Equal(a.Created) {
		p.HostCleanup(*cur, false)
	}
}

// Owner returns the allocation holding ip, nil if none does.
func (p *Pool) Owner(ip string) *api.Allocation {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, a := range p.allocs {
		if a.IP == ip {
			c := *a
			return &c
		}
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

// GC frees every allocation not in valid (CNI GC). It frees as many as it
// can and reports the ones it could not (the spec: continue, then report).
func (p *Pool) GC(valid []api.Key) ([]api.Key, error) {
	keep := map[api.Key]bool{}
	for _, k := range valid {
		keep[k] = true
	}
	var out []api.Key
	var errs []error
	for _, a := range p.Allocations() {
		if keep[a.Key] {
			continue
		}
		p.cleanupHeld(a)
		r, err := p.Release(a.Key, "gc")
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): %w", a.Key, a.IP, err))
			continue
		}
		if r != nil {
			out = append(out, a.Key)
		}
	}
	if len(out) > 0 {
		p.log.Info("CNI GC released stale allocations", "count", len(out))
	}
	if len(errs) > 0 {
		return out, &api.Error{Code: api.CodeInternal, Msg: fmt.Sprintf("GC could not release %d allocations", len(errs)), Details: errors.Join(errs...).Error()}
	}
	return out, nil
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

// Run refills and trims the pool until ctx ends; it returns once the
// cloud calls it started have returned.
func (p *Pool) Run(ctx context.Context) {
	defer p.work.Wait()
	for {
		for ctx.Err() == nil && p.step(ctx) {
		}
		p.updateCondition()
		// Look again in a second at the latest (backoffs, the demand
		// estimate), or when a backoff ends, or when poked.
		wait := time.Second
		p.mu.Lock()
		if d := time.Until(p.retryAfter); d > 0 && d < wait {
			wait = d
		}
		p.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-p.kick:
		case <-t.C:
		}
		t.Stop()
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

// demandWindow is how far back allocations count for the demand estimate.
const demandWindow = 5 * time.Second

// noteAllocLocked records a shared-ENI allocation for the demand estimate.
func (p *Pool) noteAllocLocked(now time.Time) {
	p.trimAllocTimesLocked(now)
	p.allocTimes = append(p.allocTimes, now)
}

func (p *Pool) trimAllocTimesLocked(now time.Time) {
	i := 0
	for i < len(p.allocTimes) && now.Sub(p.allocTimes[i]) > demandWindow {
		i++
	}
	p.allocTimes = append(p.allocTimes[:0], p.allocTimes[i:]...)
}

// demandLocked is how many addresses pods will take while a refill that
// lasts d is on its way: the allocation rate of the last few seconds times
// d, at most max-idle − min-idle. The refill trigger and target move up by
// it, so that the refill lands before the pool runs dry and the pool is
// back near max-idle when it does.
func (p *Pool) demandLocked(now time.Time, d time.Duration) int {
	p.trimAllocTimesLocked(now)
	n := len(p.allocTimes)
	if n == 0 || d <= 0 {
		return 0
	}
	span := max(now.Sub(p.allocTimes[0]), time.Second)
	rate := float64(n) / span.Seconds()
	return min(int(math.Ceil(rate*d.Seconds())), max(0, p.cfg.MaxIdle-p.cfg.MinIdle))
}

// observeLocked folds a refill's duration into the running estimate.
func observeLocked(est *time.Duration, d time.Duration) {
	if *est == 0 {
		*est = d
		return
	}
	*est = (*est + d) / 2
}

// step starts one change to the pool; false when there is nothing to
// start now (nothing to do, waiting on a backoff, or every refill slot in
// use). Refills and deletes run in their own goroutines (p.work), so a
// slow cloud call never holds up the next decision: up to
// PoolConfig.MaxRefills run at once, each assign on its own ENI.
func (p *Pool) step(ctx context.Context) bool {
	now := time.Now()
	p.mu.Lock()
	if len(p.toDelete) > 0 && !p.deleting {
		id := p.toDelete[0]
		p.toDelete = p.toDelete[1:]
		p.deleting = true
		p.mu.Unlock()
		p.background(func() {
			p.deleteENI(ctx, id)
			p.mu.Lock()
			p.deleting = false
			p.mu.Unlock()
		})
		return true
	}
	if now.Before(p.retryAfter) || p.refillsLocked() >= p.cfg.MaxRefills {
		p.mu.Unlock()
		return false
	}
	// Calls that failed without a definite answer first, with their
	// tokens: they may have taken effect.
	if op := p.takeRetryLocked(now); op != nil {
		p.launchLocked(ctx, op)
		p.mu.Unlock()
		return true
	}
	// An exclusive ENI whose ADD gave up waiting is kept a while for the
	// runtime's retry, then deleted (it counts against the ENI limit).
	if p.exclWaiting == 0 && len(p.exclReady) > 0 && now.Sub(p.exclReady[0].at) > p.cfg.UnclaimedENITTL {
		id := p.exclReady[0].id
		p.exclReady = p.exclReady[1:]
		delete(p.enis, id)
		p.toDelete = append(p.toDelete, id)
		p.log.Info("deleting an exclusive ENI no ADD claimed", "eni", id)
		p.notifyLocked()
		p.mu.Unlock()
		return true
	}
	if p.exclWaiting > len(p.exclReady)+p.exclCreating && p.canCreateLocked(now) == "" {
		p.launchLocked(ctx, &pendingOp{Kind: opCreate, Count: 1, Exclusive: true})
		p.mu.Unlock()
		return true
	}
	idle := p.idleSharedLocked()
	supply := idle + p.inflight + p.retryAddrsLocked()
	room, busyRoom := p.roomLocked(now)
	d := p.createDur
	if room != nil {
		d = p.assignDur
	}
	if d == 0 { // not measured yet: the other kind's
		d = max(p.createDur, p.assignDur)
	}
	demand := p.demandLocked(now, d)
	if supply < p.cfg.MinIdle+p.sharedWaiting+demand {
		want := p.cfg.MaxIdle + p.sharedWaiting + demand - supply
		switch {
		case room != nil:
			n := min(want, p.cfg.Limits.IPsPerENI-len(room.ips), p.cfg.MaxAssignBatch)
			p.launchLocked(ctx, &pendingOp{Kind: opAssign, ENIID: room.ID, VSwitchID: room.VSwitchID, Count: n})
			p.mu.Unlock()
			return true
		case busyRoom && p.sharedWaiting == 0:
			// The ENIs with room are being filled; a new ENI only when
			// pods are already waiting.
		case p.canCreateLocked(now) == "":
			p.launchLocked(ctx, &pendingOp{Kind: opCreate, Count: min(want, p.cfg.Limits.IPsPerENI)})
			p.mu.Unlock()
			return true
		}
		p.mu.Unlock()
		return false
	}
	if p.refillsLocked() == 0 && p.sharedWaiting == 0 && idle > p.cfg.MaxIdle+demand {
		return p.shrinkLocked(ctx, idle-p.cfg.MaxIdle-demand) // unlocks
	}
	p.mu.Unlock()
	return false
}

// roomLocked returns the ENI to assign addresses to (the fullest with
// room, not blocked, no assign in flight), and whether ENIs busy with an
// assign will still have room after it.
func (p *Pool) roomLocked(now time.Time) (*poolENI, bool) {
	var room *poolENI
	busy := false
	for _, e := range p.enis {
		if !e.hasRoom(p.cfg.Limits.IPsPerENI) {
			continue
		}
		if _, blocked := p.blockedLocked(e.VSwitchID, now); blocked {
			continue
		}
		if n, ok := p.assigning[e.ID]; ok {
			busy = busy || len(e.ips)+n < p.cfg.Limits.IPsPerENI
			continue
		}
		if room == nil || len(e.ips) > len(room.ips) || (len(e.ips) == len(room.ips) && e.ID < room.ID) {
			room = e
		}
	}
	return room, busy
}

// takeRetryLocked returns the first failed call that can be repeated now
// (each waits longer after every failure, up to a minute; none is given
// up: a create may have made an ENI that only its token finds again).
func (p *Pool) takeRetryLocked(now time.Time) *pendingOp {
	for i, op := range p.retryOps {
		if now.Before(op.notBefore) {
			continue
		}
		switch op.Kind {
		case opCreate:
			if now.Before(p.eniLimitUntil) || len(p.enis)+p.creating >= p.maxSecondary() {
				continue
			}
		case opAssign:
			if p.enis[op.ENIID] == nil {
				// The ENI is gone: so are its addresses.
				_ = p.store.DelOp(op.ID)
				p.retryOps = slices.Delete(p.retryOps, i, i+1)
				return p.takeRetryLocked(now)
			}
			if _, busy := p.assigning[op.ENIID]; busy {
				continue
			}
		}
		p.retryOps = slices.Delete(p.retryOps, i, i+1)
		return op
	}
	return nil
}

// Kinds of pendingOp.
const (
	opCreate = "create"
	opAssign = "assign"
)

// launchLocked runs a create or an assign in its own goroutine, counting
// the addresses it brings as in flight until it returns. An op without an
// ID is new; one with an ID is repeated with its token.
func (p *Pool) launchLocked(ctx context.Context, op *pendingOp) {
	p.runningLocked(op, 1)
	p.background(func() {
		t0 := time.Now()
		retry, err := p.runOp(ctx, op)
		took := time.Since(t0)
		p.mu.Lock()
		p.runningLocked(op, -1)
		if err == nil {
			if op.Kind == opAssign {
				observeLocked(&p.assignDur, took)
			} else {
				observeLocked(&p.createDur, took)
			}
		}
		if retry && ctx.Err() == nil {
			op.attempts++
			op.notBefore = time.Now().Add(min(p.cfg.ErrorBackoff<<min(op.attempts, 10), time.Minute))
			p.retryOps = append(p.retryOps, op)
		}
		p.mu.Unlock()
		p.done(err)
	})
}

// runningLocked counts op as running (d = 1) or no longer (d = -1).
func (p *Pool) runningLocked(op *pendingOp, d int) {
	if !op.Exclusive {
		p.inflight += d * op.Count
	}
	switch {
	case op.Kind == opAssign && d > 0:
		p.assigning[op.ENIID] = op.Count
	case op.Kind == opAssign:
		delete(p.assigning, op.ENIID)
	case op.Exclusive:
		p.creating += d
		p.exclCreating += d
	default:
		p.creating += d
	}
}

// background runs f in a goroutine that Run waits for, and pokes the pool
// when f returns.
func (p *Pool) background(f func()) {
	p.work.Add(1)
	go func() {
		defer p.work.Done()
		defer p.poke()
		f()
	}()
}

// runOp records a new op (picking the vSwitch of a create) and runs it;
// retry is true when it failed without a definite answer and must be
// repeated with its token.
func (p *Pool) runOp(ctx context.Context, op *pendingOp) (retry bool, err error) {
	if op.ID == "" {
		if op.Kind == opCreate {
			if op.VSwitchID, err = p.pickVSwitch(ctx); err != nil {
				return false, err
			}
		}
		op.ID, op.Token, op.Started = NewToken(), NewToken(), time.Now().UTC()
		if err := p.store.PutOp(*op); err != nil {
			return false, fmt.Errorf("recording the %s: %w", op.Kind, err)
		}
	}
	if op.Kind == opCreate {
		return p.finishCreate(ctx, *op)
	}
	return p.finishAssign(ctx, *op)
}

// done records the outcome of a refill.
func (p *Pool) done(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.lastErr = ""
		p.notifyLocked()
		return
	}
	p.lastErr = err.Error()
	if !IsAddressShortage(err) && !IsENILimit(err) {
		p.retryAfter = time.Now().Add(p.cfg.ErrorBackoff)
	}
	p.notifyLocked()
	p.log.Warn("refilling the pool failed", "err", err)
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

// callFailed ends a create or assign whose call failed with err (what: the
// call, for the error): a quota answer blocks its vSwitch or ENI creation;
// a definite answer forgets the op, any other leaves it to be repeated
// with its token.
func (p *Pool) callFailed(op pendingOp, err error, what string) (retry bool, _ error) {
	p.noteFailure(op.VSwitchID, err)
	if definitive(err) {
		_ = p.store.DelOp(op.ID)
		return false, fmt.Errorf("%s: %w", what, err)
	}
	return true, fmt.Errorf("%s: %w", what, err)
}

// finishCreate runs (or repeats with the same token) a create, then
// attaches the ENI and adds it to the pool. retry: the op is still
// pending (no definite answer) and must be repeated with its token.
func (p *Pool) finishCreate(ctx context.Context, op pendingOp) (retry bool, err error) {
	eni, err := p.cloud.CreateENI(ctx, CreateENIRequest{VSwitchID: op.VSwitchID, SecurityGroups: p.cfg.SecurityGroups, Count: op.Count, Name: p.cfg.ENIName, Token: op.Token})
	if err != nil {
		return p.callFailed(op, err, fmt.Sprintf("creating an ENI in %s", op.VSwitchID))
	}
	if err := p.store.PutENI(eniRecord{ID: eni.ID, Exclusive: op.Exclusive}); err != nil {
		return true, fmt.Errorf("recording ENI %s: %w", eni.ID, err)
	}
	if eni.InstanceID != p.cfg.InstanceID || eni.Status != "InUse" {
		if err := p.cloud.AttachENI(ctx, eni.ID, p.cfg.InstanceID); err != nil {
			p.noteFailure(op.VSwitchID, err)
			if definitive(err) {
				// Nothing will attach it (ENI limit, ...): delete it now
				// rather than leak it.
				if derr := p.cloud.DeleteENI(ctx, eni.ID); derr == nil || IsNotFound(derr) {
					_ = p.store.DelENI(eni.ID)
					_ = p.store.DelOp(op.ID)
					return false, fmt.Errorf("attaching %s: %w", eni.ID, err)
				}
			}
			return true, fmt.Errorf("attaching %s: %w", eni.ID, err)
		}
	}
	info, err := p.waitAttached(ctx, eni.MAC)
	if err != nil {
		return true, fmt.Errorf("waiting for %s: %w", eni.ID, err)
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
	if p.enis[pe.ID] == nil {
		p.enis[pe.ID] = pe
		if op.Exclusive {
			p.exclReady = append(p.exclReady, readyENI{id: pe.ID, at: time.Now()})
		}
	}
	p.notifyLocked()
	p.mu.Unlock()
	_ = p.store.DelOp(op.ID)
	p.log.Info("ENI ready", "eni", eni.ID, "vswitch", eni.VSwitchID, "addresses", n, "exclusive", op.Exclusive)
	return false, nil
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

// finishAssign runs (or repeats with the same token) an assign and adds
// the addresses to their ENI. retry as for finishCreate.
func (p *Pool) finishAssign(ctx context.Context, op pendingOp) (retry bool, err error) {
	ips, err := p.cloud.AssignIPs(ctx, op.ENIID, op.Count, op.Token)
	if cloudCode(err) == CodeIPQuota {
		// This ENI is full: use another one (or a new one).
		p.mu.Lock()
		if e := p.enis[op.ENIID]; e != nil {
			e.full = true
		}
		p.mu.Unlock()
		_ = p.store.DelOp(op.ID)
		return false, fmt.Errorf("assigning %d addresses to %s: %w", op.Count, op.ENIID, err)
	}
	if err != nil {
		return p.callFailed(op, err, fmt.Sprintf("assigning %d addresses to %s", op.Count, op.ENIID))
	}
	p.mu.Lock()
	if e := p.enis[op.ENIID]; e != nil {
		for _, a := range ips {
			if _, ok := e.ips[a]; !ok {
				e.ips[a] = api.Key{}
			}
		}
	}
	p.notifyLocked()
	p.mu.Unlock()
	_ = p.store.DelOp(op.ID)
	return false, nil
}

// shrinkLocked gives back excess idle addresses: a whole idle ENI when it
// fits in the excess, else secondary addresses of the least used ENI (in
// the background). Called with p.mu held; unlocks it.
func (p *Pool) shrinkLocked(ctx context.Context, excess int) bool {
	var cands []*poolENI
	for _, e := range p.enis {
		if _, busy := p.assigning[e.ID]; !e.Exclusive && !busy {
			cands = append(cands, e)
		}
	}
	slices.SortFunc(cands, func(a, b *poolENI) int {
		return cmp.Or(cmp.Compare(a.inUse(), b.inUse()), cmp.Compare(a.ID, b.ID))
	})
	for _, e := range cands {
		if e.inUse() == 0 && len(e.ips) <= excess {
			delete(p.enis, e.ID)
			p.toDelete = append(p.toDelete, e.ID)
			p.notifyLocked()
			p.mu.Unlock()
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
		id := e.ID
		p.assigning[id] = 0 // no assign on this ENI meanwhile
		p.notifyLocked()
		p.mu.Unlock()
		p.background(func() { p.unassign(ctx, id, free) })
		return true
	}
	p.mu.Unlock()
	return false
}

// unassign gives idle addresses (already out of the pool) back. Refused
// outright, they return to the pool; without a definite answer they may be
// gone already, so they stay out and the call is repeated (an address the
// cloud no longer has must never be handed out).
func (p *Pool) unassign(ctx context.Context, id string, ips []netip.Addr) {
	for attempt := 1; ; attempt++ {
		err := p.cloud.UnassignIPs(ctx, id, ips)
		if err == nil || IsNotFound(err) || ctx.Err() != nil {
			break
		}
		p.log.Warn("unassigning idle addresses failed", "eni", id, "attempt", attempt, "err", err)
		if definitive(err) {
			p.mu.Lock()
			if e := p.enis[id]; e != nil {
				for _, a := range ips {
					e.ips[a] = api.Key{}
				}
			}
			p.retryAfter = time.Now().Add(p.cfg.ErrorBackoff)
			p.mu.Unlock()
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(p.cfg.ErrorBackoff):
		}
	}
	p.mu.Lock()
	delete(p.assigning, id)
	p.notifyLocked()
	p.mu.Unlock()
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
