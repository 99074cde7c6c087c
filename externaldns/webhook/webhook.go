// Package webhook is an ExternalDNS webhook provider for Alibaba Cloud
// PrivateZone (bin/pvtz-webhook): the HTTP protocol of ExternalDNS's
// provider/webhook (GET / negotiates the domain filter, GET /records lists,
// POST /records applies a plan's changes and answers 204, POST
// /adjustendpoints canonicalises) on top of the PrivateZone provider
// package shared with pvtz-sync (externaldns/provider: SDK client, token
// buckets, retries, idempotent creates, dry run, credentials).
//
// # Ownership: who may touch which record
//
// Two owners can share a zone: ExternalDNS, through this webhook and its
// TXT registry (an "a-<name>" TXT record per owned name), and pvtz-sync,
// whose records carry the ownership marker "ed;o=<owner>;r=<resource>" in
// their Remark (externaldns/registry). The rule:
//
//   - A record whose Remark is a pvtz-sync marker is pvtz-sync's. This
//     webhook lists it (so ExternalDNS's planner sees the name is taken and,
//     finding no TXT ownership record of its own, leaves it alone), but
//     never updates, disables, re-marks or deletes it, never adds a value
//     beside it (no record set of mixed owners), and never writes a
//     pvtz-sync marker into a Remark — whatever ExternalDNS asks, also with
//     --registry=noop. Such changes are skipped, logged and counted in
//     dnsaccel_pvtzwebhook_foreign_skipped_total; the answer is still 204.
//   - Records this webhook writes carry the Remark --remark ("external-dns"
//     by default) or the endpoint's webhook/pvtz-remark, which is never a
//     pvtz-sync marker: to pvtz-sync they are unowned, and it never updates
//     or deletes unowned records.
//   - Everything else (records nobody marked) is ExternalDNS's business: its
//     TXT registry only changes the names it owns.
//
// # Cost
//
// GET /records serves a cached listing of each zone while the zone's change
// log has no new entry (one DescribeChangeLogs call per zone), and lists
// the zone again otherwise, or after --full-resync. POST /records writes
// through the provider's token bucket (--qps) with --workers in flight,
// deletes first, then updates, then creates, updates the cache with what
// it wrote, starts no write after 80% of --apply-timeout and abandons calls
// still retrying at --apply-timeout (answering 500, so ExternalDNS retries
// the rest in its next cycle instead of timing out: a timeout is not a 5xx,
// ExternalDNS would exit; its default client timeout is 15 s).
package webhook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

// Config of a Server.
type Config struct {
	Provider *provider.Provider // built with Metrics.Observe as its Observe hook
	Zones    []string           // zone names
	VPCID    string             // picks each zone among same-named ones
	// TTL of records whose endpoint sets none (default 60).
	TTL int
	// Remark of the records the webhook writes (default "external-dns");
	// never a pvtz-sync ownership marker.
	Remark string
	// Workers: writes in flight (default 8).
	Workers int
	// ApplyTimeout bounds a POST /records: no write starts after 80% of
	// it, calls still running at its end are abandoned (default 10s).
	ApplyTimeout time.Duration
	// FullResync: list each zone fully at least this often even when its
	// change log is unchanged (default 10m).
	FullResync time.Duration
	Metrics    *Metrics
	Logger     *slog.Logger
}

// Server serves the protocol for the configured zones.
type Server struct {
	cfg Config
	p   *provider.Provider
	log *slog.Logger
	m   *Metrics

	mu    sync.Mutex // one request at a time touches zones and their caches
	zones []*zoneState

	rmu      sync.Mutex
	ready    bool
	notReady string
}

type zoneState struct {
	name   string
	id     string
	recs   map[int64]endpoint.Record
	mark   provider.ChangeMark
	listed time.Time
	valid  bool
	byName map[string][]endpoint.Record // during a plan
}

// New checks cfg; it makes no call.
func New(cfg Config) (*Server, error) {
	if cfg.Provider == nil {
		return nil, errors.New("webhook: no provider")
	}
	if len(cfg.Zones) == 0 {
		return nil, errors.New("webhook: no zone (--zone)")
	}
	if cfg.TTL == 0 {
		cfg.TTL = 60
	}
	if cfg.TTL < MinTTL || cfg.TTL > MaxTTL {
		return nil, fmt.Errorf("--ttl %d: PrivateZone takes %d to %d", cfg.TTL, MinTTL, MaxTTL)
	}
	if cfg.Remark == "" {
		cfg.Remark = "external-dns"
	}
	if len(cfg.Remark) > MaxRemark {
		return nil, fmt.Errorf("--remark %q: longer than %d bytes", cfg.Remark, MaxRemark)
	}
	if _, _, ok := registry.Parse(cfg.Remark); ok {
		return nil, fmt.Errorf("--remark %q is a pvtz-sync ownership marker: pvtz-sync would take the records over", cfg.Remark)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.ApplyTimeout <= 0 {
		cfg.ApplyTimeout = 10 * time.Second
	}
	if cfg.FullResync <= 0 {
		cfg.FullResync = 10 * time.Minute
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{cfg: cfg, p: cfg.Provider, log: cfg.Logger, m: cfg.Metrics, notReady: "zones not looked up yet"}
	seen := map[string]bool{}
	for _, z := range cfg.Zones {
		n := normalizeName(z)
		if n == "" || seen[n] {
			continue
		}
		seen[n] = true
		s.zones = append(s.zones, &zoneState{name: n})
	}
	// Most specific zone first, for locate.
	sort.Slice(s.zones, func(i, j int) bool { return len(s.zones[i].name) > len(s.zones[j].name) })
	return s, nil
}

// DomainFilter is the answer to GET /: the zones.
func (s *Server) DomainFilter() DomainFilter {
	var inc []string
	for _, z := range s.zones {
		inc = append(inc, z.name)
	}
	sort.Strings(inc)
	return DomainFilter{Include: inc}
}

func (s *Server) setReady(ok bool, reason string) {
	s.rmu.Lock()
	s.ready, s.notReady = ok, reason
	s.rmu.Unlock()
}

// Ready reports whether the zones were found and last read without error.
func (s *Server) Ready() (bool, string) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return s.ready, s.notReady
}

// Init looks the zones up (DescribeZones by name, --vpc-id); called by
// every request until it succeeds.
func (s *Server) Init(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.lookup(ctx); err != nil {
		return err
	}
	s.setReady(true, "")
	return nil
}

func (s *Server) lookup(ctx context.Context) error {
	for _, z := range s.zones {
		if z.id != "" {
			continue
		}
		id, err := s.p.FindZone(ctx, z.name, s.cfg.VPCID)
		if err != nil {
			s.setReady(false, fmt.Sprintf("look up zone %s: %v", z.name, err))
			return fmt.Errorf("look up zone %s: %w", z.name, err)
		}
		if id == "" {
			where := ""
			if s.cfg.VPCID != "" {
				where = " bound to VPC " + s.cfg.VPCID
			}
			s.setReady(false, fmt.Sprintf("zone %s%s not found", z.name, where))
			return fmt.Errorf("zone %s%s not found", z.name, where)
		}
		z.id = id
		s.log.Info("zone found", "zone", z.name, "zone_id", id)
	}
	return nil
}

// refresh makes z's cache current: one DescribeChangeLogs call, and a full
// listing when the change log moved (or the cache is older than
// FullResync, or force).
func (s *Server) refresh(ctx context.Context, z *zoneState, force bool) error {
	mark, err := s.p.LatestChange(ctx, z.id)
	if err != nil {
		return fmt.Errorf("zone %s: change log: %w", z.name, err)
	}
	if !force && z.valid && mark == z.mark && time.Since(z.listed) < s.cfg.FullResync {
		s.m.Listings.WithLabelValues("cached").Inc()
		return nil
	}
	recs, err := s.p.Records(ctx, z.id, "")
	if err != nil {
		z.valid = false
		return fmt.Errorf("zone %s: list records: %w", z.name, err)
	}
	z.recs = make(map[int64]endpoint.Record, len(recs))
	for _, r := range recs {
		z.recs[r.ID] = r
	}
	z.mark, z.listed, z.valid = mark, time.Now(), true
	s.m.Listings.WithLabelValues("full").Inc()
	s.m.Records.WithLabelValues(z.name).Set(float64(len(recs)))
	return nil
}

// Records answers GET /records: every record of the zones, one endpoint
// per name and type.
func (s *Server) Records(ctx context.Context) ([]*Endpoint, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.lookup(ctx); err != nil {
		return nil, err
	}
	out := []*Endpoint{}
	for _, z := range s.zones {
		if err := s.refresh(ctx, z, false); err != nil {
			s.setReady(false, err.Error())
			return nil, err
		}
		recs := make([]endpoint.Record, 0, len(z.recs))
		for _, r := range z.recs {
			recs = append(recs, r)
		}
		sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
		out = append(out, s.toEndpoints(z.name, recs)...)
	}
	s.setReady(true, "")
	return out, nil
}

// locate returns the zone of a DNS name and the name relative to it.
func (s *Server) locate(name string) (*zoneState, string, bool) {
	n := normalizeName(name)
	for _, z := range s.zones {
		if n == z.name {
			return z, "@", true
		}
		if rr, ok := strings.CutSuffix(n, "."+z.name); ok && rr != "" {
			return z, rr, true
		}
	}
	return nil, "", false
}

// op is the writes of one record: a delete, a create (then a disable when
// status says so), or an update of its attributes (TTL, status, remark:
// those that differ, one call each, in one op so that the cache gets them
// all).
type op struct {
	kind   string // delete, update, create
	z      *zoneState
	rec    endpoint.Record // as it is (update: as it will be)
	status string          // create, update: the status to set ("" keep)
	ttl    bool            // update: write rec.TTL
	remark bool            // update: write rec.Remark
}

func (o op) String() string {
	return fmt.Sprintf("%s %s %s %s (zone %s, id %d)", o.kind, o.rec.Name, o.rec.Type, o.rec.Value, o.z.name, o.rec.ID)
}

// pvtzSyncs reports whether r is pvtz-sync's (its Remark is a marker).
func pvtzSyncs(r endpoint.Record) bool {
	_, _, ok := registry.Parse(r.Remark)
	return ok
}

// index groups the cached records by name (for a plan; the cache does not
// change while one is made).
func (z *zoneState) index() {
	z.byName = make(map[string][]endpoint.Record, len(z.recs))
	for _, r := range z.recs {
		n := strings.ToLower(r.Name)
		z.byName[n] = append(z.byName[n], r)
	}
	for _, rs := range z.byName {
		sort.Slice(rs, func(i, j int) bool { return rs[i].ID < rs[j].ID })
	}
}

// set returns the zone's records of one name and type (all types: "").
func (z *zoneState) set(rr, typ string) []endpoint.Record {
	var out []endpoint.Record
	for _, r := range z.byName[strings.ToLower(rr)] {
		if typ == "" || r.Type == typ {
			out = append(out, r)
		}
	}
	return out
}

// plan turns changes into writes against the caches. Changes to
// pvtz-sync's records are skipped (foreign); targets that cannot be
// written are returned as errors.
func (s *Server) plan(ch *Changes) (ops []op, errs []error) {
	for _, z := range s.zones {
		if z.valid {
			z.index()
		} else {
			z.byName = nil
		}
	}
	defer func() {
		for _, z := range s.zones {
			z.byName = nil
		}
	}()
	skip := func(kind string, ep *Endpoint, why string) {
		s.m.ForeignSkipped.WithLabelValues(kind).Inc()
		s.log.Warn("change skipped: the record belongs to pvtz-sync", "change", kind, "name", ep.DNSName, "type", ep.RecordType, "why", why)
	}
	resolve := func(ep *Endpoint) (*zoneState, string, string, bool) {
		z, rr, ok := s.locate(ep.DNSName)
		if !ok {
			s.m.Changes.WithLabelValues("outside", "skipped").Inc()
			s.log.Warn("change outside the zones skipped", "name", ep.DNSName, "zones", s.cfg.Zones)
			return nil, "", "", false
		}
		return z, rr, strings.ToUpper(ep.RecordType), true
	}
	// Deletes: the listed values only.
	for _, ep := range ch.Delete {
		z, rr, typ, ok := resolve(ep)
		if !ok {
			continue
		}
		d, bad := s.want(ep)
		errs = append(errs, bad...)
		for _, r := range z.set(rr, typ) {
			if !matches(r, d.values) {
				continue
			}
			if pvtzSyncs(r) {
				skip("delete", ep, fmt.Sprintf("record %d has remark %q", r.ID, r.Remark))
				continue
			}
			ops = append(ops, op{kind: "delete", z: z, rec: r})
		}
	}
	// Updates: the set converges to UpdateNew (UpdateOld is what ExternalDNS
	// saw; the cache is what is there).
	for _, ep := range ch.UpdateNew {
		z, rr, typ, ok := resolve(ep)
		if !ok {
			continue
		}
		ops, errs = s.converge(ops, errs, z, rr, typ, ep, true, skip)
	}
	for _, ep := range ch.Create {
		z, rr, typ, ok := resolve(ep)
		if !ok {
			continue
		}
		ops, errs = s.converge(ops, errs, z, rr, typ, ep, false, skip)
	}
	return ops, errs
}

func matches(r endpoint.Record, vs []value) bool {
	for _, v := range vs {
		if sameValue(r, v) {
			return true
		}
	}
	return false
}

// converge plans the writes that make (rr, typ) hold ep: values added,
// attributes (TTL when set, status, remark) corrected, and with prune the
// values ep does not list deleted. A name where pvtz-sync owns any record
// is skipped whole.
func (s *Server) converge(ops []op, errs []error, z *zoneState, rr, typ string, ep *Endpoint, prune bool,
	skip func(string, *Endpoint, string)) ([]op, []error) {
	kind := "create"
	if prune {
		kind = "update"
	}
	for _, r := range z.set(rr, "") {
		if pvtzSyncs(r) {
			skip(kind, ep, fmt.Sprintf("record %d (%s %s) at that name has remark %q", r.ID, r.Type, r.Value, r.Remark))
			return ops, errs
		}
	}
	d, bad := s.want(ep)
	errs = append(errs, bad...)
	cur := z.set(rr, typ)
	for _, r := range cur {
		if !matches(r, d.values) {
			if prune {
				ops = append(ops, op{kind: "delete", z: z, rec: r})
			}
			continue
		}
		u := op{kind: "update", z: z, rec: r}
		if d.ttl != 0 && r.TTL != d.ttl {
			u.rec.TTL, u.ttl = d.ttl, true
		}
		if !strings.EqualFold(r.Status, d.status) {
			u.rec.Status, u.status = d.status, d.status
		}
		if r.Remark != d.remark {
			u.rec.Remark, u.remark = d.remark, true
		}
		if u.ttl || u.status != "" || u.remark {
			ops = append(ops, u)
		}
	}
	for _, v := range d.values {
		have := false
		for _, r := range cur {
			have = have || sameValue(r, v)
		}
		if have {
			continue
		}
		ttl := d.ttl
		if ttl == 0 {
			ttl = s.cfg.TTL
		}
		ops = append(ops, op{kind: "create", z: z, status: d.status,
			rec: endpoint.Record{Name: rr, Type: typ, Value: v.Value, Priority: v.Priority, TTL: ttl, Remark: d.remark, Status: StatusEnable}})
	}
	return ops, errs
}

// ErrIncomplete: an apply stopped at its time budget.
var ErrIncomplete = errors.New("apply incomplete")

// ApplyChanges answers POST /records: it plans the writes against the
// cached zones (read current first) and runs them, deletes first, then
// attribute updates, then creates, at most Workers at a time through the
// provider's token bucket. It returns an error when any write failed or
// the time budget ran out (ExternalDNS then retries in its next cycle).
func (s *Server) ApplyChanges(ctx context.Context, ch *Changes) error {
	start := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.lookup(ctx); err != nil {
		return err
	}
	touched := map[*zoneState]bool{}
	for _, l := range [][]*Endpoint{ch.Create, ch.UpdateNew, ch.Delete} {
		for _, ep := range l {
			if z, _, ok := s.locate(ep.DNSName); ok {
				touched[z] = true
			}
		}
	}
	before := map[*zoneState]provider.ChangeMark{}
	for z := range touched {
		if err := s.refresh(ctx, z, false); err != nil {
			return err
		}
		before[z] = z.mark
	}
	ops, errs := s.plan(ch)
	for _, err := range errs {
		s.m.Changes.WithLabelValues("invalid", "error").Inc()
		s.log.Warn("target not written", "err", err)
	}
	dry := s.p.DryRun()
	writes0 := s.m.writes.Load()
	// The answer must reach ExternalDNS before its client gives up (a
	// timeout is not a 5xx: it would exit): no write starts after 80% of
	// ApplyTimeout, and calls still retrying at ApplyTimeout are abandoned
	// (their zone is listed again next time).
	wctx, cancel := context.WithDeadline(ctx, start.Add(s.cfg.ApplyTimeout))
	defer cancel()
	deadline := start.Add(s.cfg.ApplyTimeout * 4 / 5)
	var failed, notStarted int
	for _, phase := range []string{"delete", "update", "create"} {
		var batch []op
		for _, o := range ops {
			if o.kind == phase {
				batch = append(batch, o)
			}
		}
		f, n := s.run(wctx, batch, deadline, dry)
		failed += f
		notStarted += n
	}
	// The cache holds what we wrote; it stays valid if the change log grew
	// by exactly our writes (nobody else wrote meanwhile).
	if !dry && len(ops) > 0 {
		grown := 0
		for z := range touched {
			m, err := s.p.LatestChange(ctx, z.id)
			if err != nil {
				z.valid = false
				continue
			}
			grown += m.Total - before[z].Total
			z.mark = m
		}
		if int64(grown) != s.m.writes.Load()-writes0 {
			for z := range touched {
				z.valid = false
			}
		}
	}
	s.m.ApplySeconds.Observe(time.Since(start).Seconds())
	s.log.Info("changes applied", "create", len(ch.Create), "update", len(ch.UpdateNew), "delete", len(ch.Delete),
		"writes", len(ops), "failed", failed, "not_started", notStarted, "dry_run", dry, "duration", time.Since(start).Round(time.Millisecond).String())
	switch {
	case failed > 0:
		return fmt.Errorf("%d of %d writes failed", failed, len(ops))
	case notStarted > 0:
		return fmt.Errorf("%w: %d of %d writes not started within --apply-timeout %v; the next cycle continues", ErrIncomplete, notStarted, len(ops), s.cfg.ApplyTimeout)
	}
	return nil
}

// run executes ops with Workers in flight; it returns how many failed and
// how many were not started (deadline or ctx).
func (s *Server) run(ctx context.Context, ops []op, deadline time.Time, dry bool) (failed, notStarted int) {
	if len(ops) == 0 {
		return 0, 0
	}
	type result struct {
		o   op
		id  int64
		err error
	}
	work := make(chan op)
	results := make(chan result)
	var wg sync.WaitGroup
	for range min(s.cfg.Workers, len(ops)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range work {
				id, err := s.write(ctx, o)
				results <- result{o, id, err}
			}
		}()
	}
	go func() {
		defer close(work)
		for i, o := range ops {
			if time.Now().After(deadline) || ctx.Err() != nil {
				results <- result{o: op{kind: "not-started"}, id: int64(len(ops) - i)}
				return
			}
			work <- o
		}
	}()
	go func() { wg.Wait(); close(results) }()
	for r := range results {
		if r.o.kind == "not-started" {
			notStarted += int(r.id)
			continue
		}
		res := "ok"
		switch {
		case dry:
			res = "dry_run"
		case r.err != nil:
			res = "error"
			failed++
			s.log.Error("write failed", "op", r.o.String(), "err", r.err)
		}
		s.m.Changes.WithLabelValues(r.o.kind, res).Inc()
		z := r.o.z
		if r.err != nil {
			z.valid = false // some calls of the op may have landed: list again
			continue
		}
		if dry {
			continue
		}
		switch r.o.kind {
		case "delete":
			delete(z.recs, r.o.rec.ID)
		case "create":
			rec := r.o.rec
			rec.ID = r.id
			if r.o.status == StatusDisable {
				rec.Status = StatusDisable
			}
			z.recs[rec.ID] = rec
		default:
			z.recs[r.o.rec.ID] = r.o.rec
		}
	}
	return failed, notStarted
}

// write makes one op's calls.
func (s *Server) write(ctx context.Context, o op) (int64, error) {
	switch o.kind {
	case "delete":
		return o.rec.ID, s.p.Delete(ctx, o.rec.ID)
	case "update":
		if o.ttl {
			if err := s.p.Update(ctx, o.rec); err != nil {
				return o.rec.ID, fmt.Errorf("TTL: %w", err)
			}
		}
		if o.status != "" {
			if err := s.p.SetStatus(ctx, o.rec.ID, o.status); err != nil {
				return o.rec.ID, fmt.Errorf("status: %w", err)
			}
		}
		if o.remark {
			if err := s.p.UpdateRemark(ctx, o.rec.ID, o.rec.Remark); err != nil {
				return o.rec.ID, fmt.Errorf("remark: %w", err)
			}
		}
		return o.rec.ID, nil
	case "create":
		// Owner id "" never matches a pvtz-sync marker; adopt: an identical
		// record nobody marked (our own create whose answer was lost) is
		// taken over, a pvtz-sync one is a conflict.
		id, err := s.p.Create(ctx, o.z.id, "", o.rec, true)
		if err != nil {
			return 0, err
		}
		if o.status == StatusDisable && !s.p.DryRun() {
			if err := s.p.SetStatus(ctx, id, StatusDisable); err != nil {
				return id, fmt.Errorf("created as record %d but not disabled: %w", id, err)
			}
		}
		return id, nil
	}
	return 0, fmt.Errorf("unknown op %q", o.kind)
}

// Metrics of the webhook, dnsaccel_pvtzwebhook_*.
type Metrics struct {
	Registry       *prometheus.Registry
	Requests       *prometheus.CounterVec // handler, code
	RequestSeconds *prometheus.HistogramVec
	APIRequests    *prometheus.CounterVec // action, write, code
	APIRetries     *prometheus.CounterVec // action, code
	Changes        *prometheus.CounterVec // op, result
	ForeignSkipped *prometheus.CounterVec // change
	Listings       *prometheus.CounterVec // kind: cached, full
	Records        *prometheus.GaugeVec   // zone
	ApplySeconds   prometheus.Histogram
	writes         atomic.Int64 // successful write attempts
}

// NewMetrics registers the metrics in a new registry.
func NewMetrics() *Metrics {
	const ns, sub = "dnsaccel", "pvtzwebhook"
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Webhook requests by handler (negotiate, records, apply, adjust) and HTTP status code."}, []string{"handler", "code"}),
		RequestSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "request_duration_seconds",
			Help: "Webhook request latency by handler.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}, []string{"handler"}),
		APIRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "api_requests_total",
			Help: "PrivateZone API attempts by action, whether it writes, and result code (ok, an API error code, network)."}, []string{"action", "write", "code"}),
		APIRetries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "api_retries_total",
			Help: "PrivateZone API attempts retried after a retryable error, by action and code."}, []string{"action", "code"}),
		Changes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "changes_total",
			Help: "Record writes by op (create, delete, update; invalid, outside) and result (ok, error, dry_run, skipped)."}, []string{"op", "result"}),
		ForeignSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "foreign_skipped_total",
			Help: "Changes ExternalDNS asked for that would touch pvtz-sync's records, skipped, by change (create, update, delete)."}, []string{"change"}),
		Listings: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "zone_reads_total",
			Help: "Zone reads for GET /records and POST /records: cached (change log unchanged, one call) or full (listing)."}, []string{"kind"}),
		Records: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "records",
			Help: "Records in the zone at its last full listing."}, []string{"zone"}),
		ApplySeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "apply_duration_seconds",
			Help: "Duration of POST /records.", Buckets: prometheus.ExponentialBuckets(0.005, 4, 10)}),
	}
	m.Registry.MustRegister(m.Requests, m.RequestSeconds, m.APIRequests, m.APIRetries, m.Changes, m.ForeignSkipped,
		m.Listings, m.Records, m.ApplySeconds,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Observe is the provider's per-attempt hook (provider.Config.Observe).
func (m *Metrics) Observe(action string, write bool, code string, retry bool) {
	w := "false"
	if write {
		w = "true"
		if code == "" {
			m.writes.Add(1)
		}
	}
	c := code
	if c == "" {
		c = "ok"
	}
	m.APIRequests.WithLabelValues(action, w, c).Inc()
	if retry {
		m.APIRetries.WithLabelValues(action, c).Inc()
	}
}
