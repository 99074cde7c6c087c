package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz/pvtztest"
	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

func newProvider(t *testing.T, e *pvtztest.Emulator, mod func(*Config)) *Provider {
	t.Helper()
	cfg := Config{Endpoint: e.URL, Credential: credentials.NewStaticAKCredentialsProvider(pvtztest.AccessKeyID, pvtztest.AccessKeySecret),
		BaseBackoff: 5 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, MaxAttempts: 30, Timeout: 3 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestZoneAndRecords(t *testing.T) {
	e := pvtztest.Start(t, openapi.Config{})
	p := newProvider(t, e, nil)
	ctx := context.Background()
	if id, err := p.FindZone(ctx, "k8s.internal", ""); err != nil || id != "" {
		t.Fatalf("FindZone before: %q %v", id, err)
	}
	zid, err := p.CreateZone(ctx, "k8s.internal", "vpc-1", "cn-hangzhou")
	if err != nil {
		t.Fatal(err)
	}
	if id, err := p.FindZone(ctx, "k8s.internal.", "vpc-1"); err != nil || id != zid {
		t.Fatalf("FindZone: %q %v", id, err)
	}
	if id, _ := p.FindZone(ctx, "k8s.internal", "vpc-2"); id != "" {
		t.Fatalf("FindZone other vpc: %q", id)
	}
	// 250 records: three pages of 100.
	for i := range 250 {
		r := endpoint.Record{Name: fmt.Sprintf("h%d", i), Type: "A", Value: fmt.Sprintf("10.0.%d.%d", i/256, i%256), TTL: 60, Remark: registry.Remark("c1", "svc/ns/x")}
		if _, err := p.Create(ctx, zid, "c1", r, false); err != nil {
			t.Fatal(err)
		}
	}
	before := e.Server.Stats()
	recs, err := p.Records(ctx, zid, "")
	if err != nil || len(recs) != 250 {
		t.Fatalf("Records: %d %v", len(recs), err)
	}
	if d := e.Server.Stats().ByAction["DescribeZoneRecords"] - before.ByAction["DescribeZoneRecords"]; d != 3 {
		t.Fatalf("listing 250 records took %d calls, want 3", d)
	}
	one, err := p.Records(ctx, zid, "h7")
	if err != nil || len(one) != 1 || one[0].Value != "10.0.0.7" {
		t.Fatalf("Records h7: %+v %v", one, err)
	}
	one[0].TTL = 300
	if err := p.Update(ctx, one[0]); err != nil {
		t.Fatal(err)
	}
	if err := p.Delete(ctx, one[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := p.Delete(ctx, one[0].ID); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	logs, err := p.ChangeLogs(ctx, zid, 5)
	if err != nil || len(logs) != 5 || logs[0].Action != "DEL" {
		t.Fatalf("ChangeLogs: %+v %v", logs, err)
	}
}

func TestCreateConflictResolution(t *testing.T) {
	e := pvtztest.Start(t, openapi.Config{})
	p := newProvider(t, e, nil)
	ctx := context.Background()
	zid, _ := p.CreateZone(ctx, "c.internal", "", "")
	mine := endpoint.Record{Name: "a", Type: "A", Value: "10.0.0.1", TTL: 60, Remark: registry.Remark("c1", "svc/ns/a")}
	id, err := p.Create(ctx, zid, "c1", mine, false)
	if err != nil {
		t.Fatal(err)
	}
	// Same create again (a retry after a lost answer): adopted, same id.
	if id2, err := p.Create(ctx, zid, "c1", mine, false); err != nil || id2 != id {
		t.Fatalf("repeat create: %d %v (first %d)", id2, err, id)
	}
	// Someone else's record: a conflict, untouched.
	theirs := endpoint.Record{Name: "b", Type: "A", Value: "10.0.0.2", TTL: 60, Remark: "by hand"}
	if _, err := p.Create(ctx, zid, "other", theirs, false); err != nil {
		t.Fatal(err)
	}
	want := endpoint.Record{Name: "b", Type: "A", Value: "10.0.0.2", TTL: 60, Remark: registry.Remark("c1", "svc/ns/b")}
	if _, err := p.Create(ctx, zid, "c1", want, false); !errors.Is(err, ErrConflict) {
		t.Fatalf("create over unowned: %v", err)
	}
	recs, _ := p.Records(ctx, zid, "b")
	if len(recs) != 1 || recs[0].Remark != "by hand" {
		t.Fatalf("unowned record changed: %+v", recs)
	}
	// Adoption when asked.
	if _, err := p.Create(ctx, zid, "c1", want, true); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	recs, _ = p.Records(ctx, zid, "b")
	if len(recs) != 1 || recs[0].Remark != want.Remark {
		t.Fatalf("adopted record: %+v", recs)
	}
}

// Under throttling and faults (503s and dropped connections, before and
// after the change is applied), every create lands exactly once.
func TestFaultsConverge(t *testing.T) {
	e := pvtztest.Start(t, openapi.Config{})
	var mu sync.Mutex
	codes := map[string]int{}
	p := newProvider(t, e, func(c *Config) {
		c.Observe = func(_ string, _ bool, code string, _ bool) { mu.Lock(); codes[code]++; mu.Unlock() }
		c.QPS, c.Burst = 45, 10 // the client-side bucket near the server's 50: throttling still happens (faults, bursts)
	})
	ctx := context.Background()
	zid, _ := p.CreateZone(ctx, "f.internal", "", "")
	e.Server.SetFaults(50, 0.3, 0.1)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 200; i += 4 {
				r := endpoint.Record{Name: fmt.Sprintf("n%d", i), Type: "A", Value: "10.9.0.1", TTL: 60, Remark: registry.Remark("c1", "svc/ns/x")}
				if _, err := p.Create(ctx, zid, "c1", r, false); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e.Server.SetFaults(0, 0, 0)
	recs, err := p.Records(ctx, zid, "")
	if err != nil || len(recs) != 200 {
		t.Fatalf("records %d, %v", len(recs), err)
	}
	mu.Lock()
	defer mu.Unlock()
	if codes["Throttling.User"] == 0 || codes["ServiceUnavailable"] == 0 || codes["network"] == 0 || codes["Record.Invalid.Conflict"] == 0 {
		t.Fatalf("faults not exercised: %v", codes)
	}
}

func TestDryRunWritesNothing(t *testing.T) {
	e := pvtztest.Start(t, openapi.Config{})
	real := newProvider(t, e, nil)
	ctx := context.Background()
	zid, _ := real.CreateZone(ctx, "d.internal", "", "")
	id, _ := real.Create(ctx, zid, "c1", endpoint.Record{Name: "a", Type: "A", Value: "10.0.0.1", TTL: 60}, false)
	var skipped []string
	p := newProvider(t, e, func(c *Config) { c.DryRun = true; c.DryRunOut = func(op, d string) { skipped = append(skipped, op) } })
	w0 := e.Writes()
	p.Create(ctx, zid, "c1", endpoint.Record{Name: "b", Type: "A", Value: "10.0.0.2", TTL: 60}, false)
	p.Update(ctx, endpoint.Record{ID: id, Name: "a", Type: "A", Value: "10.0.0.1", TTL: 5})
	p.UpdateRemark(ctx, id, "x")
	p.SetStatus(ctx, id, "DISABLE")
	p.Delete(ctx, id)
	p.CreateZone(ctx, "e.internal", "", "")
	if w := e.Writes() - w0; w != 0 || len(skipped) != 6 {
		t.Fatalf("dry run: %d writes, skipped %v", w, skipped)
	}
}

func TestCredentialErrorNamesKey(t *testing.T) {
	e := pvtztest.Start(t, openapi.Config{})
	p := newProvider(t, e, func(c *Config) {
		c.Credential = credentials.NewStaticAKCredentialsProvider("LTAIwrongkey", "nope")
	})
	_, err := p.Zones(context.Background(), "", "")
	var ce *CredentialError
	if !errors.As(err, &ce) || ce.AccessKeyID != "LTAIwrongkey" {
		t.Fatalf("error %v", err)
	}
	if got := e.Server.Stats().Total; got != 1 {
		t.Fatalf("a rejected credential was retried: %d calls", got)
	}
}

// zonesNamed counts the zones named name, bound or not.
func zonesNamed(t *testing.T, p *Provider, name string) []Zone {
	t.Helper()
	zs, err := p.ZonesWithVPCs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []Zone
	for _, z := range zs {
		if z.Name == name {
			out = append(out, z)
		}
	}
	return out
}

// Zone creation is idempotent (issue #21 item 2): a bind that fails
// (missing permission, several times, then granted) and AddZone answers
// lost after the zone was made leave exactly one zone, bound to the VPC,
// however often the controller's resolve loop (FindZone by VPC, then
// CreateZone) runs.
func TestCreateZoneIdempotent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		rules []openapi.FaultRule
	}{
		{"bind forbidden three times", []openapi.FaultRule{{Action: "BindZoneVpc", Fault: openapi.FaultError, Code: "Forbidden.RAM", Times: 3}}},
		{"add answer dropped", []openapi.FaultRule{{Action: "AddZone", Fault: openapi.FaultDropAfter, Times: 2}}},
		{"add answer dropped beyond the retries, then bind fails", []openapi.FaultRule{
			{Action: "AddZone", Fault: openapi.FaultDropAfter, Times: 3},
			{Action: "BindZoneVpc", Fault: openapi.FaultError, Code: "ZoneVpc.NotExists.VpcId", Times: 2}}},
		{"bind answer dropped", []openapi.FaultRule{{Action: "BindZoneVpc", Fault: openapi.FaultDropAfter, Times: 1}, {Action: "BindZoneVpc", Fault: openapi.Fault503Before, Times: 5}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := pvtztest.Start(t, openapi.Config{})
			p := newProvider(t, e, func(c *Config) { c.MaxAttempts = 2 })
			if err := e.Server.AddFaultRules(tc.rules...); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			var id string
			for try := 0; ; try++ {
				if try == 10 {
					t.Fatalf("no zone after %d resolves", try)
				}
				found, err := p.FindZone(ctx, "idem.internal", "vpc-1")
				if err != nil {
					t.Fatal(err)
				}
				if found != "" {
					id = found
					break
				}
				if _, err := p.CreateZone(ctx, "idem.internal", "vpc-1", "cn-hangzhou"); err != nil {
					t.Logf("resolve %d: %v", try, err)
				}
			}
			zs := zonesNamed(t, p, "idem.internal")
			if len(zs) != 1 || zs[0].ID != id || len(zs[0].VPCs) != 1 || zs[0].VPCs[0] != "cn-hangzhou/vpc-1" {
				t.Fatalf("want exactly one zone, bound to vpc-1: %+v", zs)
			}
			// A new process (no token, no memory) adopts nothing more and
			// adds nothing.
			p2 := newProvider(t, e, nil)
			if id2, err := p2.CreateZone(ctx, "idem.internal", "vpc-1", "cn-hangzhou"); err != nil || id2 != id {
				t.Fatalf("second process: %q %v (want %s)", id2, err, id)
			}
			if zs := zonesNamed(t, p, "idem.internal"); len(zs) != 1 {
				t.Fatalf("zones after a second process: %+v", zs)
			}
		})
	}
}

// A zone of ours left unbound by an earlier process (it stopped after
// AddZone) is adopted by the next; someone else's unbound zone of the same
// name is not.
func TestCreateZoneAdoptsOnlyOurs(t *testing.T) {
	e := pvtztest.Start(t, openapi.Config{})
	p := newProvider(t, e, nil)
	ctx := context.Background()
	theirs, err := p.CreateZone(ctx, "adopt.internal", "", "")
	if err != nil {
		t.Fatal(err)
	}
	// An earlier process's zone: marked, unbound (its bind was forbidden).
	if err := e.Server.AddFaultRules(openapi.FaultRule{Action: "BindZoneVpc", Fault: openapi.FaultError, Code: "Forbidden.RAM", Times: 8}); err != nil {
		t.Fatal(err)
	}
	ours, err := newProvider(t, e, nil).CreateZone(ctx, "adopt.internal", "vpc-9", "cn-hangzhou")
	if err == nil || ours == "" || ours == theirs {
		t.Fatalf("forbidden bind: %q %v", ours, err)
	}
	e.Server.ClearFaultRules()
	got, err := newProvider(t, e, nil).CreateZone(ctx, "adopt.internal", "vpc-9", "cn-hangzhou")
	if err != nil || got != ours {
		t.Fatalf("adopt: %q %v (want %s, not %s)", got, err, ours, theirs)
	}
	if zs := zonesNamed(t, p, "adopt.internal"); len(zs) != 2 {
		t.Fatalf("zones: %+v", zs)
	}
}

// Errors never show the credential (issue #21 item 3): a transport error
// (its *url.Error holds the signed URL: AccessKeyId, Signature,
// SecurityToken) and SignatureDoesNotMatch (the string to sign) are
// redacted; a credential error names the key id masked.
func TestErrorsHideCredentials(t *testing.T) {
	const keyID, secret, token = "STS.NProviderKeyId0042", "provider-secret", "CAISprov+token/value=="
	e := pvtztest.Start(t, openapi.Config{Credentials: []openapi.Credential{{AccessKeyID: keyID, AccessKeySecret: secret, SecurityToken: token}}})
	leaks := []string{keyID, secret, token, url.QueryEscape(token), url.QueryEscape(url.QueryEscape(token)), "Signature="}
	check := func(what string, err error) {
		t.Helper()
		for x := err; x != nil; x = errors.Unwrap(x) {
			for _, leak := range leaks {
				if strings.Contains(x.Error(), leak) {
					t.Errorf("%s: error shows %q: %v", what, leak, x)
				}
			}
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			t.Errorf("%s: *url.Error reachable", what)
		}
	}
	p := newProvider(t, e, func(c *Config) {
		c.Credential = credentials.NewStaticSTSCredentialsProvider(keyID, secret, token)
		c.MaxAttempts = 2
	})
	if err := e.Server.AddFaultRules(openapi.FaultRule{Action: "DescribeZones", Fault: openapi.FaultDropBefore, Times: 2}); err != nil {
		t.Fatal(err)
	}
	_, err := p.Zones(context.Background(), "", "")
	if err == nil || !strings.Contains(err.Error(), "DescribeZones") {
		t.Fatalf("two drops, two attempts: %v", err)
	}
	check("dropped connection", err)
	bad := newProvider(t, e, func(c *Config) { c.Credential = credentials.NewStaticSTSCredentialsProvider(keyID, "wrong", token) })
	_, err = bad.Zones(context.Background(), "", "")
	if !IsCredentialError(err) || Code(err) != "SignatureDoesNotMatch" || !strings.Contains(err.Error(), "STS.…042") {
		t.Fatalf("wrong secret: %v", err)
	}
	check("SignatureDoesNotMatch", err)
}
