package alicloud_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"
	sdkerrors "github.com/aliyun/alibaba-cloud-sdk-go/sdk/errors"
	"github.com/aliyun/alibaba-cloud-sdk-go/services/pvtz"

	"github.com/dnsaccel/dnsaccel/alicloud"
	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz/pvtztest"
)

// An STS credential: every part of it must stay out of error text.
const (
	stsKeyID  = "STS.NKeyIdOfTheTest1234"
	stsSecret = "StsSecretOfTheTest5678"
	stsToken  = "CAIS+sts/Token==OfThe&Test9"
)

var secrets = []string{stsKeyID, stsSecret, stsToken, url.QueryEscape(stsToken), "Signature=", "SecurityToken=", "AccessKeyId="}

func assertClean(t *testing.T, what string, err error) {
	t.Helper()
	var texts []string
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		texts = append(texts, e.Error())
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, k := range u.Unwrap() {
				walk(k)
			}
		}
	}
	walk(err)
	for _, s := range texts {
		for _, leak := range secrets {
			if strings.Contains(s, leak) {
				t.Errorf("%s: error text shows %q: %s", what, leak, s)
			}
		}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		t.Errorf("%s: a *url.Error is still reachable: %v", what, ue.URL)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		code   string
		status int
		want   alicloud.Kind
	}{
		{"Throttling.User", 400, alicloud.KindThrottled},
		{"Throttling", 503, alicloud.KindThrottled},
		{"ServiceUnavailable", 503, alicloud.KindUnavailable},
		{"InternalError", 500, alicloud.KindUnavailable},
		{"Some.New.Code", 502, alicloud.KindUnavailable},
		{"System.Busy", 400, alicloud.KindBusy},
		{"Operation.Conflict", 400, alicloud.KindBusy},
		{"SignatureNonceUsed", 400, alicloud.KindBusy},
		{"InvalidEniId.NotFound", 404, alicloud.KindNotFound},
		{"Zone.Invalid.Id", 400, alicloud.KindNotFound},
		{"Record.NotExists", 400, alicloud.KindNotFound},
		{"InvalidParameter", 400, alicloud.KindInvalidParameter},
		{"InvalidParameter.PageSize", 400, alicloud.KindInvalidParameter},
		{"MissingParameter", 400, alicloud.KindInvalidParameter},
		{"Record.Invalid.Conflict", 400, alicloud.KindConflict},
		{"IdempotentParameterMismatch", 400, alicloud.KindConflict},
		{"ZoneVpc.Zone.Repeated", 400, alicloud.KindConflict},
		{"InvalidAccessKeyId.NotFound", 404, alicloud.KindCredential},
		{"SignatureDoesNotMatch", 400, alicloud.KindCredential},
		{"InvalidSecurityToken.Expired", 400, alicloud.KindCredential},
		{"Forbidden.RAM", 403, alicloud.KindForbidden},
		{"NoPermission", 403, alicloud.KindForbidden},
		{"InvalidAction.NotFound", 404, alicloud.KindOther},
		{"InvalidVSwitchId.IpNotEnough", 400, alicloud.KindOther},
	} {
		if got := alicloud.Classify(tc.code, tc.status); got != tc.want {
			t.Errorf("Classify(%s, %d) = %v, want %v", tc.code, tc.status, got, tc.want)
		}
		retry := tc.want == alicloud.KindThrottled || tc.want == alicloud.KindUnavailable || tc.want == alicloud.KindBusy
		if got := alicloud.IsRetryable(&alicloud.Error{Code: tc.code, HTTPStatus: tc.status}); got != retry {
			t.Errorf("IsRetryable(%s) = %v", tc.code, got)
		}
	}
	// Transport errors without an *Error around them.
	reset := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	for _, err := range []error{reset, fmt.Errorf("x: %w", reset), &url.Error{Op: "Get", URL: "http://h/", Err: errors.New("EOF")}} {
		if k := alicloud.KindOf(err); k != alicloud.KindTransport {
			t.Errorf("KindOf(%v) = %v", err, k)
		}
	}
	if alicloud.KindOf(errors.New("boom")) != alicloud.KindOther || alicloud.KindOf(nil) != alicloud.KindUnknown {
		t.Error("KindOf of a plain error or nil")
	}
}

// signedURL is a request URL as the SDK sends it: signed in the query.
func signedURL() string {
	q := url.Values{"AccessKeyId": {stsKeyID}, "Action": {"DescribeZones"}, "Signature": {"c2lnbmF0dXJl+/="},
		"SecurityToken": {stsToken}, "SignatureNonce": {"n1"}}
	return "http://127.0.0.1:1/?" + q.Encode()
}

func TestRedact(t *testing.T) {
	op := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	ue := &url.Error{Op: "Get", URL: signedURL(), Err: op}
	nested := &url.Error{Op: "Post", URL: signedURL(), Err: &url.Error{Op: "Get", URL: signedURL(), Err: context.DeadlineExceeded}}
	sdkWrapped := sdkerrors.NewClientError("SDK.TimeoutError", "timed out", ue) // no Unwrap: only its text
	for name, err := range map[string]error{
		"url.Error":            ue,
		"wrapped":              fmt.Errorf("describe zones: %w", ue),
		"wrapped twice":        fmt.Errorf("sync: %w", fmt.Errorf("describe zones: %w", ue)),
		"joined":               errors.Join(errors.New("first"), ue),
		"url.Error in another": nested,
		"sdk client error":     sdkWrapped,
		"plain text":           errors.New("GET " + signedURL() + " failed"),
		"string to sign": errors.New("SignatureDoesNotMatch: server string to sign is:GET&%2F&AccessKeyId%3D" + stsKeyID +
			"%26Action%3DDescribeZones%26SecurityToken%3D" + url.QueryEscape(url.QueryEscape(stsToken))),
		"encoded params": errors.New("AccessKeyId%3D" + stsKeyID + "%26SecurityToken%3D" + url.QueryEscape(stsToken)),
	} {
		r := alicloud.Redact(err)
		assertClean(t, name, r)
		if !strings.Contains(r.Error(), alicloud.Redacted) {
			t.Errorf("%s: nothing marked redacted: %s", name, r)
		}
	}
	// The causes stay reachable.
	r := alicloud.Redact(fmt.Errorf("x: %w", ue))
	var oe *net.OpError
	if !errors.As(r, &oe) || !errors.Is(r, syscall.ECONNREFUSED) || !strings.Contains(r.Error(), "127.0.0.1:1") {
		t.Errorf("cause lost: %v", r)
	}
	if !errors.Is(alicloud.Redact(nested), context.DeadlineExceeded) {
		t.Error("nested: deadline lost")
	}
	// Nothing to redact: the same error.
	plain := fmt.Errorf("x: %w", op)
	if alicloud.Redact(plain) != plain {
		t.Error("a clean error was replaced")
	}
	// FromSDK: an *Error with the host and the cause, never the URL.
	e := alicloud.FromSDK("pvtz", "DescribeZones", "", fmt.Errorf("wrapped: %w", ue))
	var ae *alicloud.Error
	if !errors.As(e, &ae) || ae.Kind != alicloud.KindTransport || ae.Host != "127.0.0.1:1" || !errors.Is(e, syscall.ECONNREFUSED) {
		t.Errorf("FromSDK: %#v", e)
	}
	assertClean(t, "FromSDK", e)
	if m := alicloud.MaskKeyID(stsKeyID); strings.Contains(m, stsKeyID) || !strings.HasPrefix(m, "STS.") {
		t.Errorf("MaskKeyID: %q", m)
	}
}

func newClient(t *testing.T, endpoint string, cfg alicloud.Config, cred any) *alicloud.Client[*pvtz.Client] {
	t.Helper()
	host, _, err := alicloud.EndpointHost(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	c, err := alicloud.NewClient(alicloud.ClientConfig{Config: cfg, Endpoint: endpoint, ReadTimeout: 3 * time.Second},
		func(sc *sdk.Config) (*pvtz.Client, error) {
			c, err := pvtz.NewClientWithOptions("cn-hangzhou", sc, cred)
			if err == nil {
				c.Domain = host
			}
			return c, err
		})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Retries with the real SDK against the emulator: dropped connections and
// 503s are retried (a fresh nonce and signature each time), an invalid
// parameter and a rejected credential are not; AddZone with a ClientToken
// whose answers are lost makes one zone; every error is redacted.
func TestRetriesWithSDK(t *testing.T) {
	e := pvtztest.Start(t, openapi.Config{Credentials: []openapi.Credential{{AccessKeyID: stsKeyID, AccessKeySecret: stsSecret, SecurityToken: stsToken}}})
	var mu sync.Mutex
	var seen []alicloud.Attempt
	cfg := alicloud.Config{Product: "pvtz", Retry: alicloud.Retry{Attempts: 5, Base: time.Millisecond, Max: 5 * time.Millisecond},
		Observe: func(a alicloud.Attempt) { mu.Lock(); seen = append(seen, a); mu.Unlock() }}
	c := newClient(t, e.URL, cfg, credentials.NewStsTokenCredential(stsKeyID, stsSecret, stsToken))
	attempts := func() []alicloud.Attempt { mu.Lock(); defer mu.Unlock(); out := seen; seen = nil; return out }
	ctx := context.Background()
	describe := func() error {
		req := pvtz.CreateDescribeZonesRequest()
		req.Scheme = c.Scheme()
		return c.Call(ctx, "DescribeZones", false, func(cl *pvtz.Client) error { _, err := cl.DescribeZones(req); return err })
	}

	if err := e.Server.AddFaultRules(openapi.FaultRule{Action: "DescribeZones", Fault: openapi.FaultDropBefore, Times: 2},
		openapi.FaultRule{Action: "DescribeZones", Fault: openapi.Fault503Before}); err != nil {
		t.Fatal(err)
	}
	if err := describe(); err != nil {
		t.Fatalf("describe through faults: %v", err)
	}
	a := attempts()
	if len(a) != 4 || a[0].Kind != alicloud.KindTransport || !a[0].Retry || a[2].Code != "ServiceUnavailable" || a[3].Err != nil {
		t.Fatalf("attempts: %+v", a)
	}
	assertClean(t, "dropped connection", a[0].Err)

	// Out of attempts: the last error, redacted.
	if err := e.Server.AddFaultRules(openapi.FaultRule{Action: "DescribeZones", Fault: openapi.FaultDropBefore, Times: 5}); err != nil {
		t.Fatal(err)
	}
	err := describe()
	if !alicloud.IsTransport(err) || len(attempts()) != 5 {
		t.Fatalf("after 5 drops: %v", err)
	}
	assertClean(t, "out of attempts", err)

	// Not retried: an invalid parameter.
	req := pvtz.CreateDescribeZonesRequest()
	req.Scheme = c.Scheme()
	req.PageSize = "1000"
	err = c.Call(ctx, "DescribeZones", false, func(cl *pvtz.Client) error { _, err := cl.DescribeZones(req); return err })
	if !alicloud.IsInvalidParameter(err) || len(attempts()) != 1 {
		t.Fatalf("invalid parameter: %v", err)
	}

	// AddZone with a ClientToken, two answers lost after the zone was made.
	if err := e.Server.AddFaultRules(openapi.FaultRule{Action: "AddZone", Fault: openapi.FaultDropAfter, Times: 2}); err != nil {
		t.Fatal(err)
	}
	add := pvtz.CreateAddZoneRequest()
	add.Scheme = c.Scheme()
	add.ZoneName, add.ClientToken = "core.internal", alicloud.NewClientToken()
	var resp *pvtz.AddZoneResponse
	if err := c.Call(ctx, "AddZone", true, func(cl *pvtz.Client) (err error) { resp, err = cl.AddZone(add); return }); err != nil {
		t.Fatal(err)
	}
	if n := len(attempts()); n != 3 {
		t.Fatalf("AddZone attempts %d", n)
	}
	if zs := e.Store; zs != nil {
		snap, _ := zs.Snapshot()
		if strings.Count(string(snap), `"ZoneName":"core.internal"`) != 1 || !strings.Contains(string(snap), resp.ZoneId) {
			t.Fatalf("zones: %s", snap)
		}
	}

	// A wrong secret: SignatureDoesNotMatch, whose message holds the string
	// to sign (the key id and the token): not retried, redacted.
	bad := newClient(t, e.URL, cfg, credentials.NewStsTokenCredential(stsKeyID, "wrong", stsToken))
	err = bad.Call(ctx, "DescribeZones", false, func(cl *pvtz.Client) error { _, err := cl.DescribeZones(req); return err })
	if !alicloud.IsCredential(err) || alicloud.Code(err) != "SignatureDoesNotMatch" || len(attempts()) != 1 {
		t.Fatalf("wrong secret: %v", err)
	}
	assertClean(t, "SignatureDoesNotMatch", err)

	// Nothing listening: connection refused, retried, redacted, the host named.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	gone := newClient(t, "http://"+addr, cfg, credentials.NewStsTokenCredential(stsKeyID, stsSecret, stsToken))
	err = gone.Call(ctx, "DescribeZones", false, func(cl *pvtz.Client) error { _, err := cl.DescribeZones(pvtz.CreateDescribeZonesRequest()); return err })
	if !alicloud.IsTransport(err) || !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), addr) || len(attempts()) != 5 {
		t.Fatalf("refused: %v", err)
	}
	assertClean(t, "refused", err)
}

// A shared write bucket holds back every write action; reads pass.
func TestRateLimits(t *testing.T) {
	in := alicloud.NewInvoker(alicloud.Config{Writes: alicloud.Limit{QPS: 4, Burst: 1}})
	ctx := context.Background()
	ok := func(context.Context) error { return nil }
	t0 := time.Now()
	for _, a := range []string{"AddZone", "AddZoneRecord", "DeleteZoneRecord"} {
		if err := in.Do(ctx, a, true, ok); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(t0); d < 450*time.Millisecond {
		t.Fatalf("3 writes at 4/s (burst 1) took %s", d)
	}
	t1 := time.Now()
	for range 20 {
		_ = in.Do(ctx, "DescribeZones", false, ok)
	}
	if d := time.Since(t1); d > 200*time.Millisecond {
		t.Fatalf("reads waited %s", d)
	}
	// A cancelled wait ends the call with the context's error.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := in.Do(cctx, "AddZone", true, ok); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}
