// Package controller runs the sync: informer events enqueue the record
// names they touch into a rate-limited work queue; workers plan and apply
// one name at a time against a cache of the zone (so a change to one
// Service costs calls for its own records only); a periodic full reconcile
// lists the zone (paged), refreshes the cache and enqueues only the names
// that drifted (no drift, no write).
package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/plan"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

// Source is the desired state (source.Source).
type Source interface {
	// Start runs the source and returns once the desired state is complete
	// (every handler has processed its initial list); false if it never
	// got there (ctx ended).
	Start(ctx context.Context) bool
	// Synced: the desired state is complete (deletes may follow from it).
	Synced() bool
	Endpoints() []endpoint.Endpoint
	EndpointsFor(name string) []endpoint.Endpoint
	Resources() int
	Ref(resource string) *corev1.ObjectReference
}

// Provider is what the controller calls on PrivateZone: *provider.Provider,
// or provider/inmemory in tests. Errors follow provider's: ErrConflict for
// a create held by another owner, *provider.CredentialError for rejected
// credentials.
type Provider interface {
	// FindZone returns the zone id of name (bound to vpcID when set), "" if none.
	FindZone(ctx context.Context, name, vpcID string) (string, error)
	// CreateZone adds the zone and binds it to vpcID in region.
	CreateZone(ctx context.Context, name, vpcID, region string) (string, error)
	// Records lists the zone's records; keyword limits it to one name.
	Records(ctx context.Context, zoneID, keyword string) ([]endpoint.Record, error)
	// Create adds a record owned by ownerID (idempotent) and returns its id.
	Create(ctx context.Context, zoneID, ownerID string, r endpoint.Record, adopt bool) (int64, error)
	Update(ctx context.Context, r endpoint.Record) error
	UpdateRemark(ctx context.Context, id int64, remark string) error
	SetStatus(ctx context.Context, id int64, status string) error
	// Delete removes a record; one already gone is not an error.
	Delete(ctx context.Context, id int64) error
}

var _ Provider = (*provider.Provider)(nil)

// Config of a Controller.
type Config struct {
	Provider   Provider
	Source     Source
	Zone       string
	VPCID      string
	Region     string
	CreateZone bool
	OwnerID    string
	Policy     plan.Policy
	Interval   time.Duration // full reconcile period
	Workers    int
	DryRun     bool
	Recorder   record.EventRecorder // nil: no Events
	Metrics    *Metrics
	Logger     *slog.Logger
	PlanOut    io.Writer // dry-run plan; default: discarded
	// RetryBase/RetryMax bound the per-name backoff after failures.
	RetryBase, RetryMax time.Duration
}

// Controller is the sync.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	m     *Metrics
	queue workqueue.TypedRateLimitingInterface[string]

	zoneID string

	mu    sync.Mutex
	cache map[string][]endpoint.Record // name → records
	stale map[string]bool              // names to re-read before the next attempt

	ready      atomic.Bool
	notReady   atomic.Value // string
	planMu     sync.Mutex
	failedOnce atomic.Int64
}

// New builds a controller.
func New(cfg Config) (*Controller, error) {
	if cfg.Provider == nil || cfg.Source == nil {
		return nil, errors.New("controller: Provider and Source are required")
	}
	if err := registry.ValidateOwnerID(cfg.OwnerID); err != nil {
		return nil, fmt.Errorf("--owner-id: %w", err)
	}
	if cfg.Policy == "" {
		return nil, errors.New("--policy is required (sync, upsert-only or create-only)")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.PlanOut == nil {
		cfg.PlanOut = io.Discard
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = 500 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 5 * time.Minute
	}
	c := &Controller{cfg: cfg, log: cfg.Logger, m: cfg.Metrics, cache: map[string][]endpoint.Record{}, stale: map[string]bool{}}
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](cfg.RetryBase, cfg.RetryMax),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "pvtz-sync"})
	c.notReady.Store("starting")
	return c, nil
}

// Metrics returns the controller's metrics.
func (c *Controller) Metrics() *Metrics { return c.m }

// Enqueue schedules record names (the source's OnChange).
func (c *Controller) Enqueue(names []string) {
	for _, n := range names {
		c.queue.Add(n)
	}
	c.m.QueueDepth.Set(float64(c.queue.Len()))
}

// ZoneID is the zone's id once resolved.
func (c *Controller) ZoneID() string { return c.zoneID }

// resolveZone finds (or creates) the zone; a rejected credential is retried
// with a growing delay, without exiting (no crash loop), unless once.
func (c *Controller) resolveZone(ctx context.Context, once bool) error {
	delay := min(5*time.Second, c.cfg.Interval)
	for {
		id, err := c.cfg.Provider.FindZone(ctx, c.cfg.Zone, c.cfg.VPCID)
		if err == nil && id == "" {
			if !c.cfg.CreateZone {
				err = fmt.Errorf("zone %s not found (bound to VPC %q); create it or pass --create-zone", c.cfg.Zone, c.cfg.VPCID)
			} else if c.cfg.DryRun {
				fmt.Fprintf(c.cfg.PlanOut, "CREATE-ZONE %s vpc=%s\n", c.cfg.Zone, c.cfg.VPCID)
				err = fmt.Errorf("zone %s does not exist (dry run: not created)", c.cfg.Zone)
			} else {
				id, err = c.cfg.Provider.CreateZone(ctx, c.cfg.Zone, c.cfg.VPCID, c.cfg.Region)
				if err == nil {
					c.log.Info("zone created", "zone", c.cfg.Zone, "zone_id", id, "vpc", c.cfg.VPCID)
				}
			}
		}
		if err == nil {
			c.zoneID = id
			c.m.CredentialErr.Set(0)
			return nil
		}
		reason := "zone"
		if provider.IsCredentialError(err) {
			reason = "credentials"
			c.m.CredentialErr.Set(1)
		}
		c.m.SyncErrors.WithLabelValues(reason).Inc()
		c.notReady.Store(err.Error())
		if once || ctx.Err() != nil {
			return err
		}
		c.log.Error("cannot use the zone; retrying", "zone", c.cfg.Zone, "err", err, "retry_in", delay.String())
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, 5*time.Minute)
	}
}

// Run syncs until ctx ends. With once it does one full reconcile, applies
// it, and returns an error if any name failed.
func (c *Controller) Run(ctx context.Context, once bool) error {
	defer c.queue.ShutDown()
	c.notReady.Store("waiting for the API server caches")
	if !c.cfg.Source.Start(ctx) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("informer caches did not sync")
	}
	c.notReady.Store("resolving zone " + c.cfg.Zone)
	if err := c.resolveZone(ctx, once); err != nil {
		if ctx.Err() != nil && !once {
			return nil
		}
		return err
	}
	if err := c.Reconcile(ctx); err != nil {
		if once {
			return err
		}
		c.log.Error("reconcile", "err", err)
	} else {
		c.ready.Store(true)
	}
	if once {
		return c.drain(ctx)
	}
	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c.processNext(ctx) {
			}
		}()
	}
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-t.C:
			if err := c.Reconcile(ctx); err != nil && ctx.Err() == nil {
				c.log.Error("reconcile", "err", err)
			} else if err == nil {
				c.ready.Store(true)
			}
		}
	}
	c.queue.ShutDown()
	wg.Wait()
	c.log.Info("stopped")
	return nil
}

// drain processes the queue until it is empty (once mode): each name gets a
// few attempts; the result is an error naming the failures.
func (c *Controller) drain(ctx context.Context) error {
	var failed sync.Map
	var wg sync.WaitGroup
	var inflight atomic.Int64
	done := make(chan struct{})
	for range c.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				name, shut := c.queue.Get()
				if shut {
					return
				}
				inflight.Add(1)
				err := c.syncName(ctx, name)
				switch {
				case err == nil:
					c.queue.Forget(name)
					failed.Delete(name)
				case c.queue.NumRequeues(name) < 4 && ctx.Err() == nil:
					failed.Store(name, err)
					c.queue.AddRateLimited(name)
				default:
					failed.Store(name, err)
					c.queue.Forget(name)
				}
				c.queue.Done(name)
				inflight.Add(-1)
			}
		}()
	}
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				close(done)
				return
			case <-tick.C:
				if c.queue.Len() == 0 && inflight.Load() == 0 && !c.hasPending(&failed) {
					close(done)
					return
				}
			}
		}
	}()
	<-done
	c.queue.ShutDown()
	wg.Wait()
	var names []string
	failed.Range(func(k, v any) bool {
		names = append(names, fmt.Sprintf("%s: %v", k, v))
		return true
	})
	sort.Strings(names)
	if len(names) > 0 {
		return fmt.Errorf("%d names failed: %s", len(names), strings.Join(names, "; "))
	}
	return ctx.Err()
}

// hasPending reports whether a failed name still waits for a retry.
func (c *Controller) hasPending(failed *sync.Map) bool {
	pending := false
	failed.Range(func(k, _ any) bool {
		if c.queue.NumRequeues(k.(string)) > 0 {
			pending = true
			return false
		}
		return true
	})
	return pending
}

func (c *Controller) processNext(ctx context.Context) bool {
	name, shut := c.queue.Get()
	if shut {
		return false
	}
	defer c.queue.Done(name)
	c.m.QueueDepth.Set(float64(c.queue.Len()))
	if err := c.syncName(ctx, name); err != nil {
		if ctx.Err() != nil {
			return true
		}
		c.log.Warn("sync failed; will retry", "name", name, "err", err, "attempts", c.queue.NumRequeues(name)+1)
		c.queue.AddRateLimited(name)
		return true
	}
	c.queue.Forget(name)
	return true
}

// allowDeletes: never delete on an empty or unsynced desired state.
func (c *Controller) allowDeletes() bool {
	return c.cfg.Source.Synced() && c.cfg.Source.Resources() > 0
}

// syncName plans and applies one record name.
func (c *Controller) syncName(ctx context.Context, name string) error {
	c.mu.Lock()
	stale := c.stale[name]
	c.mu.Unlock()
	if stale {
		recs, err := c.cfg.Provider.Records(ctx, c.zoneID, name)
		if err != nil {
			c.m.SyncErrors.WithLabelValues("list").Inc()
			return fmt.Errorf("re-read %s: %w", name, err)
		}
		c.mu.Lock()
		c.setCache(name, recs)
		delete(c.stale, name)
		c.mu.Unlock()
	}
	desired := c.cfg.Source.EndpointsFor(name)
	c.mu.Lock()
	current := append([]endpoint.Record(nil), c.cache[name]...)
	c.mu.Unlock()
	allow := c.allowDeletes()
	res := plan.Calculate(plan.Input{OwnerID: c.cfg.OwnerID, Policy: c.cfg.Policy, Desired: desired, Current: current, AllowDeletes: allow})
	if !allow && hasOwned(current, c.cfg.OwnerID) && len(desired) == 0 {
		c.m.SkippedDelete.Inc()
	}
	c.reportConflicts(res.Conflicts)
	if len(res.Changes) == 0 {
		return nil
	}
	if c.cfg.DryRun {
		c.printPlan(res.Changes)
		for _, ch := range res.Changes {
			c.m.Changes.WithLabelValues(string(ch.Op), "dry_run").Inc()
		}
		return nil
	}
	var errs []error
	for _, ch := range res.Changes {
		if err := c.apply(ctx, ch); err != nil {
			c.m.Changes.WithLabelValues(string(ch.Op), "error").Inc()
			c.m.SyncErrors.WithLabelValues("record").Inc()
			c.event(ch.Resource, corev1.EventTypeWarning, "PrivateZoneSyncFailed", fmt.Sprintf("%s %s %s %s: %v", ch.Op, ch.Record.Name, ch.Record.Type, ch.Record.Value, err))
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		c.m.Changes.WithLabelValues(string(ch.Op), "ok").Inc()
	}
	if len(errs) > 0 {
		c.mu.Lock()
		c.stale[name] = true // re-read before the next attempt
		c.mu.Unlock()
		return errors.Join(errs...)
	}
	return nil
}

func hasOwned(recs []endpoint.Record, owner string) bool {
	for _, r := range recs {
		if o, _, ok := registry.Parse(r.Remark); ok && o == owner {
			return true
		}
	}
	return false
}

// apply makes one change and updates the cache.
func (c *Controller) apply(ctx context.Context, ch plan.Change) error {
	p, r := c.cfg.Provider, ch.Record
	var err error
	switch ch.Op {
	case plan.Create:
		var id int64
		id, err = p.Create(ctx, c.zoneID, c.cfg.OwnerID, r, ch.Adopt)
		if err == nil {
			r.ID = id
			c.cacheUpsert(r)
		}
		if errors.Is(err, provider.ErrConflict) {
			c.m.Conflicts.Inc()
		}
		return err
	case plan.Update:
		err = p.Update(ctx, r)
	case plan.Remark, plan.Adopt:
		err = p.UpdateRemark(ctx, r.ID, r.Remark)
	case plan.Enable:
		err = p.SetStatus(ctx, r.ID, "ENABLE")
	case plan.Delete:
		err = p.Delete(ctx, r.ID)
		if err == nil {
			c.cacheDelete(r)
		}
		return err
	default:
		return fmt.Errorf("unknown op %q", ch.Op)
	}
	if err == nil {
		c.cacheUpsert(r)
	}
	return err
}

func (c *Controller) setCache(name string, recs []endpoint.Record) {
	if len(recs) == 0 {
		delete(c.cache, name)
		return
	}
	c.cache[name] = recs
}

func (c *Controller) cacheUpsert(r endpoint.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	recs := c.cache[r.Name]
	for i := range recs {
		if recs[i].ID == r.ID {
			recs[i] = r
			return
		}
	}
	c.cache[r.Name] = append(recs, r)
}

func (c *Controller) cacheDelete(r endpoint.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	recs := c.cache[r.Name]
	out := recs[:0]
	for _, x := range recs {
		if x.ID != r.ID {
			out = append(out, x)
		}
	}
	c.setCache(r.Name, out)
}

// Reconcile lists the zone, refreshes the cache and enqueues every name
// that drifted from the desired state. It writes nothing itself.
func (c *Controller) Reconcile(ctx context.Context) error {
	start := time.Now()
	recs, err := c.cfg.Provider.Records(ctx, c.zoneID, "")
	if err != nil {
		c.m.Reconciles.WithLabelValues("error").Inc()
		c.m.SyncErrors.WithLabelValues("list").Inc()
		if provider.IsCredentialError(err) {
			c.m.CredentialErr.Set(1)
			c.notReady.Store(err.Error())
			c.ready.Store(false)
		}
		return fmt.Errorf("list zone %s: %w", c.cfg.Zone, err)
	}
	c.m.CredentialErr.Set(0)
	byName := map[string][]endpoint.Record{}
	owned := 0
	for _, r := range recs {
		byName[r.Name] = append(byName[r.Name], r)
		if o, _, ok := registry.Parse(r.Remark); ok && o == c.cfg.OwnerID {
			owned++
		}
	}
	c.mu.Lock()
	c.cache = byName
	c.stale = map[string]bool{}
	c.mu.Unlock()

	desired := c.cfg.Source.Endpoints()
	allow := c.allowDeletes()
	if !allow && owned > 0 {
		c.m.SkippedDelete.Inc()
		c.log.Warn("the source is empty or not synced: deletes withheld", "owned_records", owned)
	}
	res := plan.Calculate(plan.Input{OwnerID: c.cfg.OwnerID, Policy: c.cfg.Policy, Desired: desired, Current: recs, AllowDeletes: allow})
	drift := map[string]bool{}
	for _, ch := range res.Changes {
		drift[ch.Record.Name] = true
	}
	nd := 0
	for _, ep := range desired {
		nd += len(ep.Targets)
	}
	c.m.Records.WithLabelValues("owned").Set(float64(owned))
	c.m.Records.WithLabelValues("unowned").Set(float64(len(recs) - owned))
	c.m.Records.WithLabelValues("desired").Set(float64(nd))
	c.m.DriftNames.Set(float64(len(drift)))
	c.reportConflicts(res.Conflicts)
	names := make([]string, 0, len(drift))
	for n := range drift {
		names = append(names, n)
	}
	sort.Strings(names)
	c.Enqueue(names)
	c.m.Reconciles.WithLabelValues("ok").Inc()
	c.m.LastReconcile.SetToCurrentTime()
	c.log.Info("reconciled", "zone", c.cfg.Zone, "records", len(recs), "owned", owned, "desired_values", nd,
		"drifted_names", len(drift), "changes", len(res.Changes), "conflicts", len(res.Conflicts), "took", time.Since(start).String())
	if c.cfg.DryRun {
		fmt.Fprintf(c.cfg.PlanOut, "plan for zone %s (%s, owner %s, policy %s): %d changes, %d conflicts\n",
			c.cfg.Zone, c.zoneID, c.cfg.OwnerID, c.cfg.Policy, len(res.Changes), len(res.Conflicts))
		for _, cf := range res.Conflicts {
			fmt.Fprintf(c.cfg.PlanOut, "CONFLICT %s\n", cf)
		}
	}
	return nil
}

func (c *Controller) printPlan(chs []plan.Change) {
	c.planMu.Lock()
	defer c.planMu.Unlock()
	for _, ch := range chs {
		fmt.Fprintln(c.cfg.PlanOut, ch.String())
	}
}

func (c *Controller) reportConflicts(cs []plan.Conflict) {
	for _, cf := range cs {
		c.m.Conflicts.Inc()
		c.event(cf.Resource, corev1.EventTypeWarning, "PrivateZoneRecordConflict", cf.String())
	}
}

func (c *Controller) event(resource, typ, reason, msg string) {
	if c.cfg.Recorder == nil || resource == "" {
		return
	}
	if ref := c.cfg.Source.Ref(resource); ref != nil {
		c.cfg.Recorder.Event(ref, typ, reason, msg)
	}
}

// Healthz is the liveness handler: 200 while the process runs.
func (c *Controller) Healthz(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") }

// Readyz is 200 once the zone was listed and reconciled, 503 with the
// reason otherwise (e.g. rejected credentials).
func (c *Controller) Readyz(w http.ResponseWriter, _ *http.Request) {
	if c.ready.Load() {
		io.WriteString(w, "ok\n")
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, "not ready: %v\n", c.notReady.Load())
}
