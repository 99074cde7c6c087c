package controller_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/dnsaccel/dnsaccel/externaldns/controller"
	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/plan"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/externaldns/provider/inmemory"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

const (
	owner = "test"
	zone  = "k8s.internal"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// staticSource is a desired state set by the test.
type staticSource struct {
	mu     sync.Mutex
	eps    []endpoint.Endpoint
	synced bool
}

func newSource(eps ...endpoint.Endpoint) *staticSource { return &staticSource{eps: eps, synced: true} }

func (s *staticSource) set(eps ...endpoint.Endpoint) { s.mu.Lock(); s.eps = eps; s.mu.Unlock() }

func (s *staticSource) Start(context.Context) bool { return true }

func (s *staticSource) Synced() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.synced }

func (s *staticSource) Endpoints() []endpoint.Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]endpoint.Endpoint(nil), s.eps...)
}

func (s *staticSource) EndpointsFor(name string) []endpoint.Endpoint {
	var out []endpoint.Endpoint
	for _, ep := range s.Endpoints() {
		if ep.Name == name {
			out = append(out, ep)
		}
	}
	return out
}

func (s *staticSource) Resources() int {
	res := map[string]bool{}
	for _, ep := range s.Endpoints() {
		res[ep.Resource] = true
	}
	return len(res)
}

func (s *staticSource) Ref(resource string) *corev1.ObjectReference {
	parts := strings.SplitN(resource, "/", 3)
	if len(parts) != 3 {
		return nil
	}
	kind := map[string]string{"svc": "Service", "pod": "Pod"}[parts[0]]
	return &corev1.ObjectReference{Kind: kind, APIVersion: "v1", Namespace: parts[1], Name: parts[2]}
}

func ep(name, typ string, ttl int, resource string, targets ...string) endpoint.Endpoint {
	return endpoint.Endpoint{Name: name, Type: typ, Targets: targets, TTL: ttl, Resource: resource}
}

func ours(resource string) string { return registry.Remark(owner, resource) }

func rec(name, typ, value string, ttl int, remark string) endpoint.Record {
	return endpoint.Record{Name: name, Type: typ, Value: value, TTL: ttl, Remark: remark, Status: "ENABLE"}
}

// state renders a zone as sorted lines "name type value ttl status owner".
func state(recs []endpoint.Record) []string {
	out := make([]string, 0, len(recs))
	for _, r := range recs {
		o, _, ok := registry.Parse(r.Remark)
		if !ok {
			o = "-"
			if r.Remark != "" {
				o = "remark:" + r.Remark
			}
		}
		out = append(out, fmt.Sprintf("%s %s %s %d %s %s", r.Name, r.Type, r.Value, r.TTL, r.Status, o))
	}
	sort.Strings(out)
	return out
}

// actions counts write calls by action.
func actions(calls []inmemory.Call) map[string]int {
	m := map[string]int{}
	for _, c := range calls {
		if c.Write() {
			m[c.Action]++
		}
	}
	return m
}

type fixture struct {
	p      *inmemory.Provider
	zoneID string
	src    *staticSource
	rec    *record.FakeRecorder
	out    *syncBuf
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func newFixture(t *testing.T, current ...endpoint.Record) *fixture {
	t.Helper()
	p := inmemory.New()
	zid, err := p.CreateZone(context.Background(), zone, "vpc-1", "cn-hangzhou")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Seed(zid, current...); err != nil {
		t.Fatal(err)
	}
	p.ResetCalls()
	return &fixture{p: p, zoneID: zid, src: newSource(), rec: record.NewFakeRecorder(1000), out: &syncBuf{}}
}

func (f *fixture) controller(t *testing.T, mod func(*controller.Config)) *controller.Controller {
	t.Helper()
	cfg := controller.Config{Provider: f.p, Source: f.src, Zone: zone, VPCID: "vpc-1", Region: "cn-hangzhou", OwnerID: owner,
		Policy: plan.Sync, Workers: 3, Recorder: f.rec, Logger: quietLog(), PlanOut: f.out,
		RetryBase: time.Millisecond, RetryMax: 5 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	c, err := controller.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// events drains the recorder: "Warning Reason message" lines.
func (f *fixture) events() []string {
	var out []string
	for {
		select {
		case e := <-f.rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func hasEvent(evs []string, reason, substr string) bool {
	for _, e := range evs {
		if strings.Contains(e, " "+reason+" ") && strings.Contains(e, substr) {
			return true
		}
	}
	return false
}

// One reconcile and its changes (Run once), table-driven: policies,
// ownership, adoption, dry run, failures per record, withheld deletes.
func TestRunOnce(t *testing.T) {
	web, old, db := "svc/ns/web", "svc/ns/old", "svc/ns/db"
	type tc struct {
		name    string
		current []endpoint.Record
		desired []endpoint.Endpoint
		policy  plan.Policy
		dryRun  bool
		synced  *bool
		fail    inmemory.FailFunc
		want    []string       // zone afterwards (state)
		writes  map[string]int // successful write calls by action
		wantErr string         // Run's error ("" none)
		plan    []string       // substrings of the printed plan
		events  []string       // "Reason substring"
		metrics map[string]float64
	}
	f := false
	base := []endpoint.Record{
		rec("web", "A", "10.0.0.1", 30, ours(web)), // TTL drifted
		rec("old", "A", "10.0.0.9", 60, ours(old)), // no longer wanted
		rec("cname", "CNAME", "x.example.com", 60, ours("svc/ns/cname")),
	}
	want := []endpoint.Endpoint{ep("web", "A", 60, web, "10.0.0.1", "10.0.0.2"), ep("cname", "CNAME", 60, "svc/ns/cname", "x.example.com")}
	cases := []tc{
		{name: "sync creates, updates and deletes", current: base, desired: want, policy: plan.Sync,
			want:   []string{"cname CNAME x.example.com 60 ENABLE test", "web A 10.0.0.1 60 ENABLE test", "web A 10.0.0.2 60 ENABLE test"},
			writes: map[string]int{"AddZoneRecord": 1, "UpdateZoneRecord": 1, "DeleteZoneRecord": 1}},
		{name: "upsert-only never deletes", current: base, desired: want, policy: plan.UpsertOnly,
			want:   []string{"cname CNAME x.example.com 60 ENABLE test", "old A 10.0.0.9 60 ENABLE test", "web A 10.0.0.1 60 ENABLE test", "web A 10.0.0.2 60 ENABLE test"},
			writes: map[string]int{"AddZoneRecord": 1, "UpdateZoneRecord": 1}},
		{name: "create-only only creates", current: base, desired: want, policy: plan.CreateOnly,
			want:   []string{"cname CNAME x.example.com 60 ENABLE test", "old A 10.0.0.9 60 ENABLE test", "web A 10.0.0.1 30 ENABLE test", "web A 10.0.0.2 60 ENABLE test"},
			writes: map[string]int{"AddZoneRecord": 1}},
		{name: "records of other owners and of nobody are never touched",
			current: []endpoint.Record{
				rec("web", "A", "10.0.0.1", 300, registry.Remark("other", web)), // same value, another owner
				rec("db", "A", "10.0.0.5", 300, ""),                             // same value, nobody
				rec("manual", "A", "192.0.2.1", 300, "by hand"),                 // not wanted, nobody's
				rec("gone", "A", "192.0.2.2", 300, registry.Remark("other", old)),
				rec("taken", "CNAME", "elsewhere.example.com", 300, ""),
			},
			desired: []endpoint.Endpoint{ep("web", "A", 60, web, "10.0.0.1", "10.0.0.3"), ep("db", "A", 60, db, "10.0.0.5"),
				ep("taken", "A", 60, "svc/ns/taken", "10.0.0.7")},
			policy: plan.Sync,
			want: []string{"db A 10.0.0.5 300 ENABLE -", "gone A 192.0.2.2 300 ENABLE other", "manual A 192.0.2.1 300 ENABLE remark:by hand",
				"taken CNAME elsewhere.example.com 300 ENABLE -", "web A 10.0.0.1 300 ENABLE other", "web A 10.0.0.3 60 ENABLE test"},
			writes:  map[string]int{"AddZoneRecord": 1},
			events:  []string{"PrivateZoneRecordConflict owned by \"other\"", "PrivateZoneRecordConflict pvtz-adopt", "PrivateZoneRecordConflict CNAME"},
			metrics: map[string]float64{"conflicts": 3}},
		{name: "an identical unowned record is adopted when asked",
			current: []endpoint.Record{rec("db", "A", "10.0.0.5", 300, "")},
			desired: []endpoint.Endpoint{{Name: "db", Type: "A", Targets: []string{"10.0.0.5"}, TTL: 60, Resource: db, Adopt: true}},
			policy:  plan.Sync,
			want:    []string{"db A 10.0.0.5 60 ENABLE test"},
			writes:  map[string]int{"UpdateRecordRemark": 1, "UpdateZoneRecord": 1}},
		{name: "a disabled record is enabled", current: []endpoint.Record{{Name: "web", Type: "A", Value: "10.0.0.1", TTL: 60, Remark: ours(web), Status: "DISABLE"}},
			desired: []endpoint.Endpoint{ep("web", "A", 60, web, "10.0.0.1")}, policy: plan.Sync,
			want: []string{"web A 10.0.0.1 60 ENABLE test"}, writes: map[string]int{"SetZoneRecordStatus": 1}},
		{name: "dry run applies nothing and prints the plan", current: base, desired: want, policy: plan.Sync, dryRun: true,
			want:    state(base),
			writes:  map[string]int{},
			plan:    []string{"plan for zone k8s.internal", "3 changes", "CREATE web A 10.0.0.2 ttl=60 resource=svc/ns/web", "UPDATE web A 10.0.0.1 ttl=60 (was ttl=30)", "DELETE old A 10.0.0.9"},
			metrics: map[string]float64{"dry_run": 3}},
		{name: "one failing record does not block the others, and is reported",
			desired: []endpoint.Endpoint{ep("a", "A", 60, "svc/ns/a", "10.0.1.1"), ep("b", "A", 60, "svc/ns/b", "10.0.1.2", "10.0.1.3"),
				ep("c", "A", 60, "svc/ns/c", "10.0.1.4")},
			policy: plan.Sync,
			fail: func(action string, r endpoint.Record) error {
				if action == inmemory.AddZoneRecord && r.Value == "10.0.1.2" {
					return errors.New("Record.Invalid: refused")
				}
				return nil
			},
			want:    []string{"a A 10.0.1.1 60 ENABLE test", "b A 10.0.1.3 60 ENABLE test", "c A 10.0.1.4 60 ENABLE test"},
			wantErr: "1 names failed: b: AddZoneRecord: Record.Invalid: refused",
			events:  []string{"PrivateZoneSyncFailed create b A 10.0.1.2"},
			writes:  map[string]int{"AddZoneRecord": 3},
			metrics: map[string]float64{"create_error": 5}}, // the first attempt and 4 retries
		{name: "an empty source deletes nothing", current: base, policy: plan.Sync,
			want: state(base), writes: map[string]int{}, metrics: map[string]float64{"withheld": 1}},
		{name: "an unsynced source deletes nothing", current: base, desired: want, policy: plan.Sync, synced: &f,
			want:    []string{"cname CNAME x.example.com 60 ENABLE test", "old A 10.0.0.9 60 ENABLE test", "web A 10.0.0.1 60 ENABLE test", "web A 10.0.0.2 60 ENABLE test"},
			writes:  map[string]int{"AddZoneRecord": 1, "UpdateZoneRecord": 1},
			metrics: map[string]float64{"withheld": 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fx := newFixture(t, tc.current...)
			fx.src.set(tc.desired...)
			fx.p.FailWith(tc.fail)
			c := fx.controller(t, func(cfg *controller.Config) { cfg.Policy, cfg.DryRun = tc.policy, tc.dryRun })
			if tc.synced != nil {
				fx.src.synced = *tc.synced // Start succeeds, Synced does not hold
			}
			runErr := c.Run(context.Background(), true)
			switch {
			case tc.wantErr == "" && runErr != nil:
				t.Fatalf("run: %v", runErr)
			case tc.wantErr != "" && (runErr == nil || !strings.Contains(runErr.Error(), tc.wantErr)):
				t.Fatalf("run error %v, want %q", runErr, tc.wantErr)
			}
			if got := state(fx.p.Snapshot(fx.zoneID)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("zone:\n got %q\nwant %q", got, tc.want)
			}
			if got := actions(succeeded(fx.p.Writes())); tc.writes != nil && !reflect.DeepEqual(got, tc.writes) {
				t.Errorf("writes %v, want %v", got, tc.writes)
			}
			for _, s := range tc.plan {
				if !strings.Contains(fx.out.String(), s) {
					t.Errorf("plan lacks %q:\n%s", s, fx.out.String())
				}
			}
			if !tc.dryRun && fx.out.String() != "" {
				t.Errorf("plan printed without dry run:\n%s", fx.out.String())
			}
			evs := fx.events()
			for _, e := range tc.events {
				reason, sub, _ := strings.Cut(e, " ")
				if !hasEvent(evs, reason, sub) {
					t.Errorf("no event %q in %q", e, evs)
				}
			}
			m := c.Metrics()
			for k, v := range tc.metrics {
				var got float64
				switch k {
				case "conflicts":
					got = value(m.Conflicts)
				case "dry_run":
					got = 0
					for _, op := range []string{"create", "update", "delete"} {
						got += value(m.Changes.WithLabelValues(op, "dry_run"))
					}
				case "create_error":
					got = value(m.Changes.WithLabelValues("create", "error"))
				case "withheld":
					got = value(m.SkippedDelete)
				}
				if got != v && !(k == "conflicts" && got > v) { // a name re-planned reports its conflicts again
					t.Errorf("metric %s = %v, want %v", k, got, v)
				}
			}
		})
	}
}

func succeeded(calls []inmemory.Call) []inmemory.Call {
	var out []inmemory.Call
	for _, c := range calls {
		if c.Err == nil {
			out = append(out, c)
		}
	}
	return out
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, st := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last state: %s", what, d, st)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

// start runs the controller (not once) until the test ends.
func start(t *testing.T, c *controller.Controller) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, false) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
}

// A record changed, disabled or deleted behind the sync's back is
// corrected by the next periodic reconcile; records of others stay as
// they are; a reconcile without drift writes nothing.
func TestDriftCorrected(t *testing.T) {
	web := "svc/ns/web"
	fx := newFixture(t, rec("manual", "A", "192.0.2.1", 300, "by hand"))
	fx.src.set(ep("web", "A", 60, web, "10.0.0.1", "10.0.0.2"), ep("api", "A", 60, "svc/ns/api", "10.0.0.3"))
	c := fx.controller(t, func(cfg *controller.Config) { cfg.Interval = 20 * time.Millisecond })
	start(t, c)
	want := []string{"api A 10.0.0.3 60 ENABLE test", "manual A 192.0.2.1 300 ENABLE remark:by hand",
		"web A 10.0.0.1 60 ENABLE test", "web A 10.0.0.2 60 ENABLE test"}
	converged := func() (bool, string) {
		got := state(fx.p.Snapshot(fx.zoneID))
		return reflect.DeepEqual(got, want), fmt.Sprint(got)
	}
	eventually(t, 10*time.Second, "initial sync", converged)
	// No drift: reconciles list, and write nothing.
	fx.p.ResetCalls()
	eventually(t, 10*time.Second, "two reconciles", func() (bool, string) {
		n := fx.p.Count(inmemory.DescribeZoneRecords)
		return n >= 2, fmt.Sprintf("%d listings", n)
	})
	if w := fx.p.Writes(); len(w) != 0 {
		t.Fatalf("reconcile without drift wrote: %+v", w)
	}

	byValue := map[string]int64{}
	for _, r := range fx.p.Snapshot(fx.zoneID) {
		byValue[r.Value] = r.ID
	}
	tamper := []struct {
		what string
		id   int64
		mut  func(*endpoint.Record)
	}{
		{"value deleted by hand", byValue["10.0.0.1"], nil},
		{"TTL changed by hand", byValue["10.0.0.2"], func(r *endpoint.Record) { r.TTL = 600 }},
		{"disabled by hand", byValue["10.0.0.3"], func(r *endpoint.Record) { r.Status = "DISABLE" }},
		{"unowned record changed by hand", byValue["192.0.2.1"], func(r *endpoint.Record) { r.TTL = 900 }},
	}
	for _, tm := range tamper {
		if err := fx.p.Tamper(fx.zoneID, tm.id, tm.mut); err != nil {
			t.Fatalf("%s: %v", tm.what, err)
		}
	}
	want[1] = "manual A 192.0.2.1 900 ENABLE remark:by hand" // not ours: left as changed
	eventually(t, 10*time.Second, "drift corrected", converged)
	if got := value(c.Metrics().Reconciles.WithLabelValues("ok")); got < 3 {
		t.Fatalf("%v reconciles", got)
	}
}

// A change of the source (Enqueue, as the source's OnChange does) costs the
// writes of its own name and no listing of the zone.
func TestEventDrivenChange(t *testing.T) {
	fx := newFixture(t)
	fx.src.set(ep("web", "A", 60, "svc/ns/web", "10.0.0.1"))
	c := fx.controller(t, func(cfg *controller.Config) { cfg.Interval = time.Hour })
	start(t, c)
	eventually(t, 10*time.Second, "initial sync", func() (bool, string) {
		got := state(fx.p.Snapshot(fx.zoneID))
		return len(got) == 1, fmt.Sprint(got)
	})
	fx.p.ResetCalls()
	fx.src.set(ep("web", "A", 60, "svc/ns/web", "10.0.0.1"), ep("api", "A", 30, "svc/ns/api", "10.0.0.2"))
	c.Enqueue([]string{"api"})
	eventually(t, 10*time.Second, "api created", func() (bool, string) {
		got := state(fx.p.Snapshot(fx.zoneID))
		return reflect.DeepEqual(got, []string{"api A 10.0.0.2 30 ENABLE test", "web A 10.0.0.1 60 ENABLE test"}), fmt.Sprint(got)
	})
	// Deleting the resource deletes its record, still without a listing.
	fx.src.set(ep("web", "A", 60, "svc/ns/web", "10.0.0.1"))
	c.Enqueue([]string{"api"})
	eventually(t, 10*time.Second, "api deleted", func() (bool, string) {
		got := state(fx.p.Snapshot(fx.zoneID))
		return reflect.DeepEqual(got, []string{"web A 10.0.0.1 60 ENABLE test"}), fmt.Sprint(got)
	})
	if got := actions(fx.p.Calls()); !reflect.DeepEqual(got, map[string]int{"AddZoneRecord": 1, "DeleteZoneRecord": 1}) {
		t.Fatalf("writes %v", got)
	}
	if n := fx.p.Count(inmemory.DescribeZoneRecords); n != 0 {
		t.Fatalf("%d listings for an event", n)
	}
}

// A failed write is retried with backoff; the name is re-read (one listing
// of that name) before the next attempt.
func TestFailedWriteRetriedAfterReRead(t *testing.T) {
	fx := newFixture(t)
	fx.src.set(ep("web", "A", 60, "svc/ns/web", "10.0.0.1"))
	var mu sync.Mutex
	failures := 2
	fx.p.FailWith(func(action string, r endpoint.Record) error {
		mu.Lock()
		defer mu.Unlock()
		if action == inmemory.AddZoneRecord && failures > 0 {
			failures--
			return errors.New("Throttling.User: slow down")
		}
		return nil
	})
	c := fx.controller(t, nil)
	if err := c.Run(context.Background(), true); err != nil {
		t.Fatalf("run: %v", err)
	}
	if got := state(fx.p.Snapshot(fx.zoneID)); !reflect.DeepEqual(got, []string{"web A 10.0.0.1 60 ENABLE test"}) {
		t.Fatalf("zone %q", got)
	}
	reread := 0
	for _, call := range fx.p.Calls() {
		if call.Action == inmemory.DescribeZoneRecords && call.Record.Name == "web" {
			reread++
		}
	}
	if reread != 2 {
		t.Fatalf("name re-read %d times, want 2 (once per failure)", reread)
	}
}

// Finding the zone: used when it exists, created with --create-zone (bound
// to the VPC), an error otherwise; a dry run only prints the creation;
// rejected credentials are reported as such and make the sync not ready.
func TestZone(t *testing.T) {
	cases := []struct {
		name       string
		exists     bool
		create     bool
		dryRun     bool
		fail       error
		wantErr    string
		credential bool
		plan       string
		zones      int
	}{
		{name: "exists", exists: true, zones: 1},
		{name: "missing", wantErr: "zone k8s.internal not found (bound to VPC \"vpc-1\"); create it or pass --create-zone"},
		{name: "created", create: true, zones: 1},
		{name: "dry run does not create", create: true, dryRun: true, wantErr: "dry run: not created", plan: "CREATE-ZONE k8s.internal vpc=vpc-1", zones: 0},
		{name: "credentials rejected", exists: true, fail: &provider.CredentialError{AccessKeyID: "LTAI5tTestKeyXyz", Err: errors.New("InvalidAccessKeyId.NotFound")},
			wantErr: "LTAI…Xyz", credential: true, zones: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := inmemory.New()
			if tc.exists {
				if _, err := p.CreateZone(context.Background(), zone, "vpc-1", "cn-hangzhou"); err != nil {
					t.Fatal(err)
				}
			}
			if tc.fail != nil {
				p.FailWith(func(string, endpoint.Record) error { return tc.fail })
			}
			out := &syncBuf{}
			c, err := controller.New(controller.Config{Provider: p, Source: newSource(ep("web", "A", 60, "svc/ns/web", "10.0.0.1")),
				Zone: zone, VPCID: "vpc-1", Region: "cn-hangzhou", OwnerID: owner, Policy: plan.Sync, CreateZone: tc.create,
				DryRun: tc.dryRun, Logger: quietLog(), PlanOut: out})
			if err != nil {
				t.Fatal(err)
			}
			err = c.Run(context.Background(), true)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("run: %v, want %q", err, tc.wantErr)
			}
			if provider.IsCredentialError(err) != tc.credential {
				t.Fatalf("credential error %v, want %v", provider.IsCredentialError(err), tc.credential)
			}
			if tc.plan != "" && !strings.Contains(out.String(), tc.plan) {
				t.Fatalf("plan %q lacks %q", out.String(), tc.plan)
			}
			p.FailWith(nil)
			zs, err := p.ZonesWithVPCs(context.Background())
			if err != nil || len(zs) != tc.zones {
				t.Fatalf("%d zones (%v), want %d", len(zs), err, tc.zones)
			}
			if tc.create && !tc.dryRun && (c.ZoneID() != zs[0].ID || !reflect.DeepEqual(zs[0].VPCs, []string{"cn-hangzhou/vpc-1"})) {
				t.Fatalf("created zone %+v, controller uses %q", zs[0], c.ZoneID())
			}
			rr := httptest.NewRecorder()
			c.Readyz(rr, httptest.NewRequest("GET", "/readyz", nil))
			if ready := rr.Code == 200; ready != (tc.wantErr == "") {
				t.Fatalf("readyz %d %s", rr.Code, rr.Body.String())
			}
			if tc.credential && (!strings.Contains(rr.Body.String(), "LTAI…Xyz") || strings.Contains(rr.Body.String(), "LTAI5tTestKeyXyz") || value(c.Metrics().CredentialErr) != 1) {
				t.Fatalf("readyz %q does not name the key (masked) or shows it whole, or credentials_rejected unset", rr.Body.String())
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	p, src := inmemory.New(), newSource()
	cases := []struct {
		cfg  controller.Config
		want string
	}{
		{controller.Config{Provider: p, Source: src, OwnerID: "Bad Owner", Policy: plan.Sync}, "--owner-id"},
		{controller.Config{Provider: p, Source: src, OwnerID: "ok"}, "--policy is required"},
		{controller.Config{Source: src, OwnerID: "ok", Policy: plan.Sync}, "Provider and Source are required"},
	}
	for _, tc := range cases {
		if _, err := controller.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// value reads a counter or gauge.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}
