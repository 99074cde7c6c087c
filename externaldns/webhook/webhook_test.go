package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz/pvtztest"
	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/plan"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

const zone = "wh.internal"

// fixture: the emulator, a zone, the webhook over the real provider and
// SDK, served over loopback HTTP, and a second provider (the "admin", or
// pvtz-sync) writing beside it.
type fixture struct {
	t     *testing.T
	e     *pvtztest.Emulator
	admin *provider.Provider
	s     *Server
	m     *Metrics
	url   string
	zid   string
}

func newProvider(t *testing.T, e *pvtztest.Emulator, mod func(*provider.Config)) *provider.Provider {
	t.Helper()
	cfg := provider.Config{Endpoint: e.URL, Credential: credentials.NewStaticAKCredentialsProvider(pvtztest.AccessKeyID, pvtztest.AccessKeySecret),
		BaseBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, MaxAttempts: 40, Timeout: 3 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if mod != nil {
		mod(&cfg)
	}
	p, err := provider.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newFixture(t *testing.T, mod func(*Config), pmod func(*provider.Config)) *fixture {
	t.Helper()
	e := pvtztest.Start(t, openapi.Config{})
	admin := newProvider(t, e, nil)
	zid, err := admin.CreateZone(context.Background(), zone, "vpc-wh", "cn-hangzhou")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics()
	p := newProvider(t, e, func(c *provider.Config) {
		c.Observe = m.Observe
		if pmod != nil {
			pmod(c)
		}
	})
	cfg := Config{Provider: p, Zones: []string{zone}, VPCID: "vpc-wh", Metrics: m, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return &fixture{t: t, e: e, admin: admin, s: s, m: m, url: hs.URL, zid: zid}
}

func (f *fixture) do(method, path string, body any, contentType string) (int, http.Header, []byte) {
	f.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			f.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, f.url+path, rd)
	req.Header.Set("Accept", MediaType)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func (f *fixture) records() []*Endpoint {
	f.t.Helper()
	code, h, b := f.do("GET", "/records", nil, "")
	if code != 200 || h.Get("Content-Type") != MediaType {
		f.t.Fatalf("GET /records: %d %q %s", code, h.Get("Content-Type"), b)
	}
	var eps []*Endpoint
	if err := json.Unmarshal(b, &eps); err != nil {
		f.t.Fatal(err)
	}
	return eps
}

func (f *fixture) apply(ch Changes) int {
	f.t.Helper()
	code, _, b := f.do("POST", "/records", ch, MediaType)
	if code != 204 && code != 500 {
		f.t.Fatalf("POST /records: %d %s", code, b)
	}
	return code
}

func (f *fixture) adjust(eps []*Endpoint) []*Endpoint {
	f.t.Helper()
	code, h, b := f.do("POST", "/adjustendpoints", eps, MediaType)
	if code != 200 || h.Get("Content-Type") != MediaType {
		f.t.Fatalf("POST /adjustendpoints: %d %s", code, b)
	}
	var out []*Endpoint
	if err := json.Unmarshal(b, &out); err != nil {
		f.t.Fatal(err)
	}
	return out
}

func (f *fixture) zoneRecords() []endpoint.Record {
	f.t.Helper()
	recs, err := f.admin.Records(context.Background(), f.zid, "")
	if err != nil {
		f.t.Fatal(err)
	}
	return recs
}

func counter(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}

func byKey(eps []*Endpoint) map[string]*Endpoint {
	out := map[string]*Endpoint{}
	for _, e := range eps {
		out[e.DNSName+" "+e.RecordType] = e
	}
	return out
}

func TestNegotiate(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Zones = []string{"WH.internal.", "b.internal"} }, nil)
	code, h, b := f.do("GET", "/", nil, "")
	if code != 200 || h.Get("Content-Type") != MediaType || h.Get("Vary") != "Content-Type" {
		t.Fatalf("GET /: %d %v", code, h)
	}
	if strings.TrimSpace(string(b)) != `{"include":["b.internal","wh.internal"]}` {
		t.Fatalf("domain filter: %s", b)
	}
	// b.internal does not exist: the records call fails with a 5xx (a soft
	// error to ExternalDNS), and readiness says why.
	if code, _, b := f.do("GET", "/records", nil, ""); code != 500 || !strings.Contains(string(b), "b.internal") {
		t.Fatalf("GET /records with a missing zone: %d %s", code, b)
	}
	if ok, why := f.s.Ready(); ok || !strings.Contains(why, "b.internal") {
		t.Fatalf("ready %v %q", ok, why)
	}
}

// Every supported type, TTLs, several targets, status and remark go in
// through POST /records and come back from GET /records exactly as
// AdjustEndpoints canonicalised them: ExternalDNS's planner sees no
// difference, so a second cycle plans nothing.
func TestRoundTripLossless(t *testing.T) {
	f := newFixture(t, nil, nil)
	registryTXT := `"heritage=external-dns,external-dns/owner=e2e,external-dns/resource=service/ns/web"`
	in := []*Endpoint{
		{DNSName: "Web.WH.internal.", RecordType: "A", Targets: []string{"10.0.0.2", "10.0.0.1", "10.0.0.1"}, RecordTTL: 300,
			Labels: map[string]string{"resource": "service/ns/web"}},
		{DNSName: "v6.wh.internal", RecordType: "AAAA", Targets: []string{"2001:DB8::0:1"}},
		{DNSName: "alias.wh.internal", RecordType: "CNAME", Targets: []string{"Web.WH.internal."}, RecordTTL: 1},
		{DNSName: "a-web.wh.internal", RecordType: "TXT", Targets: []string{registryTXT}},
		{DNSName: "spf.wh.internal", RecordType: "TXT", Targets: []string{`"v=spf1 -all"`, "plain text"}},
		{DNSName: "wh.internal", RecordType: "MX", Targets: []string{"10 mail.wh.internal", "20 mail2.wh.internal."}, RecordTTL: 3600},
		{DNSName: "_http._tcp.web.wh.internal", RecordType: "SRV", Targets: []string{"0 50 80 web.wh.internal.", "0 50 8080 web.wh.internal"}},
		{DNSName: "off.wh.internal", RecordType: "A", Targets: []string{"10.0.0.9"},
			ProviderSpecific: []Property{{Name: PropStatus, Value: "disable"}, {Name: PropRemark, Value: "team-x"}, {Name: "aws/weight", Value: "1"}}},
		{DNSName: "*.apps.wh.internal", RecordType: "A", Targets: []string{"10.0.1.1"}, SetIdentifier: "blue"},
	}
	adjusted := f.adjust(in)
	if len(adjusted) != len(in) {
		t.Fatalf("adjust dropped endpoints: %d of %d", len(adjusted), len(in))
	}
	if code := f.apply(Changes{Create: adjusted}); code != 204 {
		t.Fatalf("apply: %d", code)
	}
	got := byKey(f.records())
	for _, want := range adjusted {
		k := want.DNSName + " " + want.RecordType
		g := got[k]
		if g == nil {
			t.Errorf("%s missing from GET /records", k)
			continue
		}
		w := *want
		w.Labels = nil // labels are the registry's, not the zone's
		if w.RecordTTL == 0 {
			w.RecordTTL = 60 // the default written
		}
		if !reflect.DeepEqual(g, &w) {
			gj, _ := json.Marshal(g)
			wj, _ := json.Marshal(&w)
			t.Errorf("%s:\n got  %s\n want %s", k, gj, wj)
		}
	}
	if len(got) != len(adjusted) {
		t.Errorf("GET /records has %d endpoints, want %d", len(got), len(adjusted))
	}
	// What the zone holds.
	zr := map[string][]string{}
	for _, r := range f.zoneRecords() {
		zr[r.Name+" "+r.Type] = append(zr[r.Name+" "+r.Type], fmt.Sprintf("%s/%d/%d/%s/%s", r.Value, r.TTL, r.Priority, r.Status, r.Remark))
	}
	for k := range zr {
		sort.Strings(zr[k])
	}
	wantZone := map[string][]string{
		"web A":              {"10.0.0.1/300/0/ENABLE/external-dns", "10.0.0.2/300/0/ENABLE/external-dns"},
		"@ MX":               {"mail.wh.internal/3600/10/ENABLE/external-dns", "mail2.wh.internal/3600/20/ENABLE/external-dns"},
		"alias CNAME":        {"web.wh.internal/5/0/ENABLE/external-dns"},
		"spf TXT":            {"plain text/60/0/ENABLE/external-dns", "v=spf1 -all/60/0/ENABLE/external-dns"},
		"off A":              {"10.0.0.9/60/0/DISABLE/team-x"},
		"*.apps A":           {"10.0.1.1/60/0/ENABLE/external-dns"},
		"v6 AAAA":            {"2001:db8::1/60/0/ENABLE/external-dns"},
		"a-web TXT":          {registryTXT + "/60/0/ENABLE/external-dns"},
		"_http._tcp.web SRV": {"0 50 80 web.wh.internal./60/0/ENABLE/external-dns", "0 50 8080 web.wh.internal/60/0/ENABLE/external-dns"},
	}
	if !reflect.DeepEqual(zr, wantZone) {
		t.Errorf("zone:\n got  %v\n want %v", zr, wantZone)
	}
	// Canonical is a fixed point: adjusting what GET returns changes nothing.
	again := f.records()
	if re := f.adjust(again); !reflect.DeepEqual(re, again) {
		t.Errorf("AdjustEndpoints(GET /records) differs from GET /records")
	}
	// A second apply of the same creates writes nothing.
	w0 := f.e.Writes()
	f.apply(Changes{Create: adjusted})
	if w := f.e.Writes() - w0; w != 0 {
		t.Errorf("repeated creates made %d writes", w)
	}
	// The TXT registry record as the real service returns it (outer quotes
	// stripped) still reads back quoted.
	if r := toTarget(endpoint.Record{Type: "TXT", Value: strings.Trim(registryTXT, `"`)}); r != registryTXT {
		t.Errorf("unquoted registry TXT reads back as %s", r)
	}
}

func TestAdjustDropsWhatCannotBeHeld(t *testing.T) {
	f := newFixture(t, nil, nil)
	out := f.adjust([]*Endpoint{
		{DNSName: "ns.wh.internal", RecordType: "NS", Targets: []string{"a.example.com"}},
		{DNSName: "bad.wh.internal", RecordType: "A", Targets: []string{"not-an-ip", "2001:db8::1"}},
		{DNSName: "mixed.wh.internal", RecordType: "A", Targets: []string{"bogus", "10.1.1.1"}, RecordTTL: 999999},
		{DNSName: "mx.wh.internal", RecordType: "MX", Targets: []string{"100 mail.example.com", "mail.example.com"}},
		{DNSName: "forge.wh.internal", RecordType: "A", Targets: []string{"10.1.1.2"},
			ProviderSpecific: []Property{{Name: PropRemark, Value: registry.Remark("sync1", "svc/ns/x")}, {Name: PropStatus, Value: "paused"}}},
		{DNSName: "dflt.wh.internal", RecordType: "A", Targets: []string{"10.1.1.3"}, ProviderSpecific: []Property{{Name: PropRemark, Value: "external-dns"}}},
	})
	got, _ := json.Marshal(out)
	want := `[{"dnsName":"mixed.wh.internal","targets":["10.1.1.1"],"recordType":"A","recordTTL":86400,"providerSpecific":[{"name":"webhook/pvtz-status","value":"ENABLE"}]},` +
		`{"dnsName":"forge.wh.internal","targets":["10.1.1.2"],"recordType":"A","providerSpecific":[{"name":"webhook/pvtz-status","value":"ENABLE"}]},` +
		`{"dnsName":"dflt.wh.internal","targets":["10.1.1.3"],"recordType":"A","providerSpecific":[{"name":"webhook/pvtz-status","value":"ENABLE"}]}]`
	if string(got) != want {
		t.Fatalf("adjust:\n got  %s\n want %s", got, want)
	}
}

// Updates converge a set (targets, TTL, status, remark); deletes remove the
// listed values; records of other names are untouched.
func TestUpdateAndDelete(t *testing.T) {
	f := newFixture(t, nil, nil)
	ctx := context.Background()
	if _, err := f.admin.Create(ctx, f.zid, "x", endpoint.Record{Name: "manual", Type: "A", Value: "192.0.2.1", TTL: 300, Remark: "by hand"}, false); err != nil {
		t.Fatal(err)
	}
	web := &Endpoint{DNSName: "web.wh.internal", RecordType: "A", Targets: []string{"10.0.0.1", "10.0.0.2"}}
	f.apply(Changes{Create: f.adjust([]*Endpoint{web})})
	old := byKey(f.records())["web.wh.internal A"]
	// Someone disables one value by hand: GET reports DISABLE, ExternalDNS
	// plans an update back to ENABLE with the new targets and TTL.
	for _, r := range f.zoneRecords() {
		if r.Value == "10.0.0.1" {
			if err := f.admin.SetStatus(ctx, r.ID, "DISABLE"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if g := byKey(f.records())["web.wh.internal A"]; g.ProviderSpecific[0].Value != StatusDisable {
		t.Fatalf("hand-disabled value not reported: %+v", g)
	}
	upd := f.adjust([]*Endpoint{{DNSName: "web.wh.internal", RecordType: "A", Targets: []string{"10.0.0.1", "10.0.0.3"}, RecordTTL: 120,
		ProviderSpecific: []Property{{Name: PropRemark, Value: "shop"}}}})
	if code := f.apply(Changes{UpdateOld: []*Endpoint{old}, UpdateNew: upd}); code != 204 {
		t.Fatalf("update: %d", code)
	}
	g := byKey(f.records())["web.wh.internal A"]
	want := &Endpoint{DNSName: "web.wh.internal", RecordType: "A", Targets: []string{"10.0.0.1", "10.0.0.3"}, RecordTTL: 120,
		ProviderSpecific: []Property{{Name: PropStatus, Value: StatusEnable}, {Name: PropRemark, Value: "shop"}}}
	if !reflect.DeepEqual(g, want) {
		t.Fatalf("after update: %+v", g)
	}
	if code := f.apply(Changes{Delete: []*Endpoint{g}}); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	recs := f.zoneRecords()
	if len(recs) != 1 || recs[0].Name != "manual" || recs[0].Remark != "by hand" || recs[0].TTL != 300 {
		t.Fatalf("zone after delete: %+v", recs)
	}
}

// The ownership rule: pvtz-sync's records (Remark marker) are never
// touched by anything ExternalDNS asks, nor joined by values of ExternalDNS;
// the webhook's records are unowned to pvtz-sync's planner, which leaves
// them alone.
func TestOwnershipCoexists(t *testing.T) {
	f := newFixture(t, nil, nil)
	ctx := context.Background()
	syncRemark := registry.Remark("sync1", "svc/shop/api")
	for _, v := range []string{"10.9.0.1", "10.9.0.2"} {
		if _, err := f.admin.Create(ctx, f.zid, "sync1", endpoint.Record{Name: "api.shop", Type: "A", Value: v, TTL: 60, Remark: syncRemark}, false); err != nil {
			t.Fatal(err)
		}
	}
	before := f.zoneRecords()
	cur := byKey(f.records())["api.shop.wh.internal A"]
	if cur == nil || len(cur.Targets) != 2 {
		t.Fatalf("pvtz-sync's records not listed: %+v", cur)
	}
	if rm, _ := cur.Prop(PropRemark); rm != syncRemark {
		t.Fatalf("pvtz-sync's remark not shown: %+v", cur)
	}
	// What a noop registry (no ownership) or a buggy plan could send.
	f.apply(Changes{
		Delete:    []*Endpoint{cur},
		UpdateOld: []*Endpoint{cur},
		UpdateNew: f.adjust([]*Endpoint{{DNSName: "api.shop.wh.internal", RecordType: "A", Targets: []string{"10.9.0.9"}, RecordTTL: 5}}),
		Create: f.adjust([]*Endpoint{{DNSName: "api.shop.wh.internal", RecordType: "A", Targets: []string{"10.9.0.3"}},
			{DNSName: "api.shop.wh.internal", RecordType: "TXT", Targets: []string{"hello"}}}),
	})
	if after := f.zoneRecords(); !reflect.DeepEqual(after, before) {
		t.Fatalf("pvtz-sync's records changed:\n before %+v\n after  %+v", before, after)
	}
	for _, c := range []string{"delete", "update", "create"} {
		if n := counter(f.m.ForeignSkipped.WithLabelValues(c)); n < 1 {
			t.Errorf("foreign_skipped_total{change=%q} = %v", c, n)
		}
	}
	// The other way: records the webhook wrote (and its TXT registry
	// records) are unowned to pvtz-sync; its planner, wanting the same name,
	// reports a conflict and plans no write on them.
	f.apply(Changes{Create: f.adjust([]*Endpoint{
		{DNSName: "web.shop.wh.internal", RecordType: "A", Targets: []string{"10.8.0.1"}},
		{DNSName: "a-web.shop.wh.internal", RecordType: "TXT", Targets: []string{`"heritage=external-dns,external-dns/owner=e2e"`}},
	})})
	recs := f.zoneRecords()
	res := plan.Calculate(plan.Input{OwnerID: "sync1", Policy: "sync", AllowDeletes: true, Current: recs,
		Desired: []endpoint.Endpoint{{Name: "web.shop", Type: "A", Targets: []string{"10.8.0.1"}, TTL: 60, Resource: "svc/shop/web"},
			{Name: "api.shop", Type: "A", Targets: []string{"10.9.0.1", "10.9.0.2"}, TTL: 60, Resource: "svc/shop/api"}}})
	if len(res.Changes) != 0 {
		t.Errorf("pvtz-sync would write: %v", res.Changes)
	}
	if len(res.Conflicts) == 0 {
		t.Errorf("pvtz-sync's planner reports no conflict for web.shop")
	}
	for _, r := range recs {
		if _, _, ok := registry.Parse(r.Remark); ok != (r.Name == "api.shop") {
			t.Errorf("record %s %s remark %q: pvtz-sync marker %v", r.Name, r.Type, r.Remark, ok)
		}
	}
}

// An idle resync (GET /records with no change in the zone) costs one API
// read and no write; a change by anyone else is seen at the next one.
func TestIdleResyncCost(t *testing.T) {
	f := newFixture(t, nil, nil)
	var eps []*Endpoint
	for i := range 150 {
		eps = append(eps, &Endpoint{DNSName: fmt.Sprintf("s%d.wh.internal", i), RecordType: "A", Targets: []string{fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)}})
	}
	f.apply(Changes{Create: f.adjust(eps)})
	f.records()
	st0 := f.e.Server.Stats()
	for range 5 {
		if n := len(f.records()); n != 150 {
			t.Fatalf("%d endpoints", n)
		}
	}
	st1 := f.e.Server.Stats()
	if d := st1.Total - st0.Total; d != 5 || st1.Writes != st0.Writes || st1.ByAction["DescribeChangeLogs"]-st0.ByAction["DescribeChangeLogs"] != 5 {
		t.Fatalf("5 idle resyncs cost %d calls (%v -> %v)", d, st0.ByAction, st1.ByAction)
	}
	// The apply that follows a GET reuses the cache: creates cost their
	// writes plus two reads (the change log before and after).
	f.apply(Changes{Create: f.adjust([]*Endpoint{{DNSName: "new.wh.internal", RecordType: "A", Targets: []string{"10.2.0.1"}}})})
	st2 := f.e.Server.Stats()
	if st2.Writes-st1.Writes != 1 || st2.Reads-st1.Reads != 2 {
		t.Fatalf("one create: %d writes, %d reads", st2.Writes-st1.Writes, st2.Reads-st1.Reads)
	}
	// ...and our own writes do not force a listing.
	f.records()
	if st3 := f.e.Server.Stats(); st3.ByAction["DescribeZoneRecords"] != st2.ByAction["DescribeZoneRecords"] {
		t.Fatalf("GET after our own write listed the zone")
	}
	// Someone else changes a TTL: the next GET lists the zone and shows it.
	recs, _ := f.admin.Records(context.Background(), f.zid, "s7")
	recs[0].TTL = 600
	if err := f.admin.Update(context.Background(), recs[0]); err != nil {
		t.Fatal(err)
	}
	if g := byKey(f.records())["s7.wh.internal A"]; g.RecordTTL != 600 {
		t.Fatalf("foreign change not seen: %+v", g)
	}
}

// An ApplyChanges of many writes runs at the configured rate (the token
// bucket of the provider), not slower and not over it: the server's
// throttle at the same rate never answers Throttling.User.
func TestApplyWithinRate(t *testing.T) {
	const qps, n = 40, 120
	f := newFixture(t, func(c *Config) { c.Workers = 16; c.ApplyTimeout = time.Minute },
		func(c *provider.Config) { c.QPS, c.Burst = qps, 4 })
	f.e.Server.SetFaults(qps, 0, 0)
	var eps []*Endpoint
	for i := range n {
		eps = append(eps, &Endpoint{DNSName: fmt.Sprintf("r%d.wh.internal", i), RecordType: "A", Targets: []string{fmt.Sprintf("10.3.0.%d", i+1)}})
	}
	adj := f.adjust(eps)
	f.records()
	start := time.Now()
	if code := f.apply(Changes{Create: adj}); code != 204 {
		t.Fatalf("apply: %d", code)
	}
	took := time.Since(start)
	bound := time.Duration(float64(n-4) / qps * float64(time.Second))
	if took < bound*9/10 || took > bound*11/10+500*time.Millisecond {
		t.Fatalf("%d writes at %d/s took %v, the rate bound is %v", n, qps, took, bound)
	}
	if st := f.e.Server.Stats(); st.Throttled != 0 {
		t.Fatalf("%d throttled", st.Throttled)
	}
	t.Logf("%d creates at --qps %d: %v (bound %v)", n, qps, took.Round(time.Millisecond), bound)
}

// A POST /records that cannot finish within --apply-timeout answers 500
// (a soft error: ExternalDNS retries) and the next cycles finish the work.
func TestApplyTimeout(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.ApplyTimeout = 300 * time.Millisecond; c.Workers = 2 },
		func(c *provider.Config) { c.QPS, c.Burst = 20, 1 })
	var eps []*Endpoint
	for i := range 20 {
		eps = append(eps, &Endpoint{DNSName: fmt.Sprintf("t%d.wh.internal", i), RecordType: "A", Targets: []string{"10.4.0.1"}})
	}
	adj := f.adjust(eps)
	if code := f.apply(Changes{Create: adj}); code != 500 {
		t.Fatalf("first apply: %d, want 500", code)
	}
	for i := 0; ; i++ {
		// As ExternalDNS: read, plan what is missing, apply.
		have := byKey(f.records())
		var missing []*Endpoint
		for _, e := range adj {
			if have[e.DNSName+" A"] == nil {
				missing = append(missing, e)
			}
		}
		if len(missing) == 0 {
			break
		}
		if i > 10 {
			t.Fatalf("not converged after %d cycles", i)
		}
		f.apply(Changes{Create: missing})
	}
	if n := len(f.zoneRecords()); n != 20 {
		t.Fatalf("%d records", n)
	}
}

func TestDryRunWritesNothing(t *testing.T) {
	f := newFixture(t, nil, func(c *provider.Config) { c.DryRun = true; c.DryRunOut = func(string, string) {} })
	w0 := f.e.Writes()
	code := f.apply(Changes{Create: f.adjust([]*Endpoint{{DNSName: "d.wh.internal", RecordType: "A", Targets: []string{"10.5.0.1"}}})})
	if code != 204 || f.e.Writes() != w0 || len(f.records()) != 0 {
		t.Fatalf("dry run: %d, %d writes", code, f.e.Writes()-w0)
	}
}

func TestBadRequests(t *testing.T) {
	f := newFixture(t, nil, nil)
	for _, tc := range []struct {
		path, body, ct string
		want           int
	}{
		{"/records", `{"create":[{"dnsName":"x.wh.internal"}]}`, MediaType, 400},
		{"/records", `{"create":`, MediaType, 400},
		{"/records", `{} {}`, MediaType, 400},
		{"/records", `{}`, "application/external.dns.webhook+json;version=2", 400},
		{"/records", `{}`, "text/plain", 400},
		{"/records", `{}`, "application/json", 204},
		{"/adjustendpoints", `[null,{"dnsName":"","recordType":"A"}]`, MediaType, 400},
		{"/adjustendpoints", `[null]`, "", 200},
	} {
		req, _ := http.NewRequest("POST", f.url+tc.path, strings.NewReader(tc.body))
		if tc.ct != "" {
			req.Header.Set("Content-Type", tc.ct)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("POST %s %s (%s): %d, want %d", tc.path, tc.body, tc.ct, resp.StatusCode, tc.want)
		}
	}
	if code, _, _ := f.do("PUT", "/records", nil, ""); code != http.StatusMethodNotAllowed {
		t.Errorf("PUT /records: %d", code)
	}
}

// Under throttling and 5xx faults (before and after the change lands),
// ExternalDNS-like cycles converge to exactly the wanted records: no
// duplicate, nothing else touched.
func TestFaultsConverge(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.ApplyTimeout = 20 * time.Second },
		func(c *provider.Config) { c.QPS, c.Burst = 45, 5 })
	ctx := context.Background()
	if _, err := f.admin.Create(ctx, f.zid, "sync1", endpoint.Record{Name: "kept", Type: "A", Value: "10.6.0.1", TTL: 60, Remark: registry.Remark("sync1", "svc/a/b")}, false); err != nil {
		t.Fatal(err)
	}
	f.e.Server.SetFaults(50, 0.1, 0.2)
	var eps []*Endpoint
	for i := range 60 {
		eps = append(eps, &Endpoint{DNSName: fmt.Sprintf("f%d.wh.internal", i), RecordType: "A", Targets: []string{"10.6.1.1", "10.6.1.2"}},
			&Endpoint{DNSName: fmt.Sprintf("a-f%d.wh.internal", i), RecordType: "TXT", Targets: []string{`"heritage=external-dns,external-dns/owner=x"`}})
	}
	adj := f.adjust(eps)
	var mu sync.Mutex
	for cycle := 0; ; cycle++ {
		code, _, body := f.do("GET", "/records", nil, "")
		if code != 200 {
			continue // a 5xx: ExternalDNS retries next cycle
		}
		var cur []*Endpoint
		json.Unmarshal(body, &cur)
		have := byKey(cur)
		var missing []*Endpoint
		for _, e := range adj {
			if g := have[e.DNSName+" "+e.RecordType]; g == nil || !reflect.DeepEqual(g.Targets, e.Targets) {
				missing = append(missing, e)
			}
		}
		if len(missing) == 0 {
			break
		}
		if cycle > 30 {
			t.Fatalf("not converged after %d cycles: %d missing", cycle, len(missing))
		}
		mu.Lock()
		f.apply(Changes{Create: missing})
		mu.Unlock()
	}
	f.e.Server.SetFaults(0, 0, 0)
	seen := map[string]int{}
	for _, r := range f.zoneRecords() {
		seen[r.Name+" "+r.Type+" "+r.Value]++
		if r.Name == "kept" && r.Remark != registry.Remark("sync1", "svc/a/b") {
			t.Errorf("pvtz-sync's record touched: %+v", r)
		}
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s: %d records", k, n)
		}
	}
	if len(seen) != 60*3+1 {
		t.Errorf("%d distinct records, want %d", len(seen), 60*3+1)
	}
	st := f.e.Server.Stats()
	if st.Throttled == 0 || st.Faults == 0 {
		t.Errorf("faults not exercised: %+v", st)
	}
}
