package openapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk"
	sdkerrors "github.com/aliyun/alibaba-cloud-sdk-go/sdk/errors"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/requests"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
)

const (
	keyID  = "LTAIunit"
	secret = "unit-secret"
)

// The published example of Alibaba's signature documentation, and its POST
// variant (see docs/reference: same algorithm, method POST).
func TestSignatureVector(t *testing.T) {
	params := map[string]string{
		"AccessKeyId": "testid", "Action": "DescribeRegions", "Format": "XML",
		"SignatureMethod": "HMAC-SHA1", "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
		"SignatureVersion": "1.0", "Timestamp": "2016-02-23T12:46:24Z", "Version": "2014-05-26",
	}
	for method, want := range map[string]string{"GET": "OLeaidS1JvxuMvnyHOwuJ+uX5qY=", "POST": "MxbnVAM4w6sft9xjVpe/GCKueuk="} {
		if got := openapi.Sign(openapi.StringToSign(method, params), "testsecret"); got != want {
			t.Errorf("%s: signature %s, want %s", method, got, want)
		}
	}
}

func TestPercentEncode(t *testing.T) {
	for in, want := range map[string]string{
		"a b": "a%20b", "a*b": "a%2Ab", "a~b": "a~b", "a+b": "a%2Bb", "/": "%2F", "é": "%C3%A9", "a=b&c": "a%3Db%26c",
	} {
		if got := openapi.PercentEncode(in); got != want {
			t.Errorf("PercentEncode(%q) = %q, want %q", in, got, want)
		}
	}
}

type echo struct{ Value string }

func newServer(t *testing.T, cfg openapi.Config) (*openapi.Server, *httptest.Server) {
	t.Helper()
	cfg.Credentials = append(cfg.Credentials, openapi.Credential{AccessKeyID: keyID, AccessKeySecret: secret},
		openapi.Credential{AccessKeyID: "STS.unit", AccessKeySecret: "sts-secret", SecurityToken: "tok"})
	s := openapi.New(cfg)
	err := s.Register(&openapi.Product{Name: "unit", Version: "2020-01-01", Domain: "unit.aliyuncs.com", Actions: map[string]openapi.Action{
		"Echo": {Handler: func(_ context.Context, r *openapi.Request) (any, error) {
			v, err := r.Required("Value")
			if err != nil {
				return nil, err
			}
			return struct {
				Value string `json:"Value" xml:"Value"`
				Items struct {
					Item []echo `json:"Item" xml:"Item"`
				} `json:"Items" xml:"Items"`
			}{Value: v}, nil
		}},
		"Boom": {Handler: func(context.Context, *openapi.Request) (any, error) { panic("boom") }},
	}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(func() { hs.Close(); s.Close() })
	return s, hs
}

// sdkCall signs with the real SDK (signature v1, the SDK's own nonce and
// timestamp) and sends through rt when given.
func sdkCall(t *testing.T, endpoint, id, sec, action string, params map[string]string, rt http.RoundTripper) (string, error) {
	t.Helper()
	c, err := sdk.NewClientWithAccessKey("cn-hangzhou", id, sec)
	if err != nil {
		t.Fatal(err)
	}
	if rt != nil {
		c.SetTransport(rt)
	}
	u, _ := url.Parse(endpoint)
	req := requests.NewCommonRequest()
	req.Method = "POST"
	req.Scheme = "http"
	req.Domain = u.Host
	req.Version = "2020-01-01"
	req.ApiName = action
	req.Product = "unit"
	for k, v := range params {
		req.QueryParams[k] = v
	}
	resp, err := c.ProcessCommonRequest(req)
	if err != nil {
		return "", err
	}
	return resp.GetHttpContentString(), nil
}

func errCode(err error) string {
	var se *sdkerrors.ServerError
	if errors.As(err, &se) {
		return se.ErrorCode()
	}
	return ""
}

type rtFunc func(*http.Request) (*http.Response, error)

func (f rtFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestSDKSignedRequests(t *testing.T) {
	_, hs := newServer(t, openapi.Config{})
	body, err := sdkCall(t, hs.URL, keyID, secret, "Echo", map[string]string{"Value": "a b*c~d/é&="}, nil)
	if err != nil {
		t.Fatalf("signed call: %v", err)
	}
	var out struct{ RequestId, Value string }
	if err := json.Unmarshal([]byte(body), &out); err != nil || out.Value != "a b*c~d/é&=" || out.RequestId == "" {
		t.Fatalf("body %s: %v", body, err)
	}
	if !strings.HasPrefix(body, `{"RequestId":`) {
		t.Fatalf("RequestId not first: %s", body)
	}

	// Tampered after signing: the value changed on the wire.
	tamper := rtFunc(func(r *http.Request) (*http.Response, error) {
		q := r.URL.Query()
		q.Set("Value", "evil")
		r.URL.RawQuery = q.Encode()
		return http.DefaultTransport.RoundTrip(r)
	})
	if _, err := sdkCall(t, hs.URL, keyID, secret, "Echo", map[string]string{"Value": "good"}, tamper); errCode(err) != "SignatureDoesNotMatch" {
		t.Fatalf("tampered: %v", err)
	}
	// Replayed: the same signed request twice.
	replay := rtFunc(func(r *http.Request) (*http.Response, error) {
		r2 := r.Clone(r.Context())
		if r.GetBody != nil {
			r2.Body, _ = r.GetBody()
		}
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err != nil {
			return nil, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return http.DefaultTransport.RoundTrip(r2)
	})
	if _, err := sdkCall(t, hs.URL, keyID, secret, "Echo", map[string]string{"Value": "x"}, replay); errCode(err) != "SignatureNonceUsed" {
		t.Fatalf("replay: %v", err)
	}
	if _, err := sdkCall(t, hs.URL, "nobody", secret, "Echo", map[string]string{"Value": "x"}, nil); errCode(err) != "InvalidAccessKeyId.NotFound" {
		t.Fatalf("unknown key: %v", err)
	}
	if _, err := sdkCall(t, hs.URL, keyID, secret, "Nope", nil, nil); errCode(err) != "InvalidAction.NotFound" {
		t.Fatalf("unknown action: %v", err)
	}
	if _, err := sdkCall(t, hs.URL, keyID, secret, "Echo", nil, nil); errCode(err) != "MissingParameter" {
		t.Fatalf("missing parameter: %v", err)
	}
	if _, err := sdkCall(t, hs.URL, keyID, secret, "Boom", nil, nil); errCode(err) != "InternalError" {
		t.Fatalf("panicking handler: %v", err)
	}
	// STS: a key with a token needs the token.
	if _, err := sdkCall(t, hs.URL, "STS.unit", "sts-secret", "Echo", map[string]string{"Value": "x"}, nil); errCode(err) != "MissingSecurityToken" {
		t.Fatalf("STS without token: %v", err)
	}
}

// rawCall sends a hand-signed request (GET or POST form) and decodes the answer.
func rawCall(t *testing.T, base, method string, params map[string]string, sign bool) (int, map[string]any, string) {
	t.Helper()
	if sign {
		openapi.SignParams(method, params, secret)
	}
	var resp *http.Response
	var err error
	if method == "GET" {
		resp, err = http.Get(base + "/?" + openapi.EncodeParams(params))
	} else {
		resp, err = http.Post(base+"/", "application/x-www-form-urlencoded", strings.NewReader(openapi.EncodeParams(params)))
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return resp.StatusCode, m, string(b)
}

func baseParams(action string) map[string]string {
	return map[string]string{
		"Action": action, "Version": "2020-01-01", "Format": "JSON", "AccessKeyId": keyID,
		"SignatureMethod": "HMAC-SHA1", "SignatureVersion": "1.0", "SignatureNonce": time.Now().Format(time.RFC3339Nano),
		"Timestamp": time.Now().UTC().Format("2006-01-02T15:04:05Z"), "Value": "v",
	}
}

func TestRawRequests(t *testing.T) {
	_, hs := newServer(t, openapi.Config{})
	for _, m := range []string{"GET", "POST"} {
		if st, body, raw := rawCall(t, hs.URL, m, baseParams("Echo"), true); st != 200 || body["Value"] != "v" {
			t.Fatalf("%s: %d %s", m, st, raw)
		}
	}
	p := baseParams("Echo")
	p["Timestamp"] = time.Now().Add(-20 * time.Minute).UTC().Format("2006-01-02T15:04:05Z")
	if st, body, _ := rawCall(t, hs.URL, "GET", p, true); st != 400 || body["Code"] != "InvalidTimeStamp.Expired" {
		t.Fatalf("old timestamp: %d %v", st, body)
	}
	p = baseParams("Echo")
	p["Timestamp"] = "yesterday"
	if _, body, _ := rawCall(t, hs.URL, "GET", p, true); body["Code"] != "InvalidTimeStamp.Format" {
		t.Fatalf("bad timestamp: %v", body)
	}
	p = baseParams("Echo")
	delete(p, "SignatureNonce")
	if st, body, _ := rawCall(t, hs.URL, "GET", p, true); st != 400 || body["Code"] != "MissingParameter" {
		t.Fatalf("no nonce: %d %v", st, body)
	}
	// A GET signature does not verify as POST.
	p = baseParams("Echo")
	openapi.SignParams("GET", p, secret)
	if _, body, _ := rawCall(t, hs.URL, "POST", p, false); body["Code"] != "SignatureDoesNotMatch" {
		t.Fatalf("method swap: %v", body)
	}
	// Error shape: RequestId, HostId, Code, Message, Recommend.
	p = baseParams("Nope")
	st, body, _ := rawCall(t, hs.URL, "GET", p, true)
	for _, k := range []string{"RequestId", "HostId", "Code", "Message", "Recommend"} {
		if s, _ := body[k].(string); s == "" {
			t.Fatalf("error field %s missing: %v", k, body)
		}
	}
	if st != 404 {
		t.Fatalf("unknown action status %d", st)
	}
	// XML.
	p = baseParams("Echo")
	p["Format"] = "XML"
	if _, _, raw := rawCall(t, hs.URL, "GET", p, true); !strings.Contains(raw, "<EchoResponse><RequestId>") || !strings.Contains(raw, "<Value>v</Value>") {
		t.Fatalf("xml: %s", raw)
	}
	p = baseParams("Echo")
	p["Format"] = "XML"
	p["AccessKeyId"] = "nobody"
	if st, _, raw := rawCall(t, hs.URL, "GET", p, true); st != 404 || !strings.Contains(raw, "<Error><RequestId>") || !strings.Contains(raw, "<Code>InvalidAccessKeyId.NotFound</Code>") {
		t.Fatalf("xml error: %d %s", st, raw)
	}
}

func TestLatencyAndLog(t *testing.T) {
	s, hs := newServer(t, openapi.Config{Latency: 50 * time.Millisecond})
	t0 := time.Now()
	if st, _, raw := rawCall(t, hs.URL, "GET", baseParams("Echo"), true); st != 200 {
		t.Fatal(raw)
	}
	if d := time.Since(t0); d < 50*time.Millisecond {
		t.Fatalf("answered in %v with 50ms latency", d)
	}
	ents, next := s.Log(0)
	if len(ents) != 1 || next != 1 || ents[0].Action != "Echo" || ents[0].Status != 200 || ents[0].DurationMS < 50 {
		t.Fatalf("log %+v next %d", ents, next)
	}
	if ents, _ := s.Log(next); len(ents) != 0 {
		t.Fatalf("since %d: %v", next, ents)
	}
}

func FuzzParseParams(f *testing.F) {
	f.Add("Action=Echo&Value=a%20b", "application/x-www-form-urlencoded", []byte("X=1&Y=%zz"))
	f.Add("a=1&a=2&%3D=%26", "", []byte{})
	f.Add("%", "application/x-www-form-urlencoded; charset=utf-8", []byte("Value=é&;=;"))
	f.Add("Signature=abc&SignatureType=", "text/plain", []byte("Action=Echo"))
	f.Fuzz(func(t *testing.T, q, ct string, body []byte) {
		params, err := openapi.ParseParams(q, ct, body)
		if err != nil {
			return
		}
		sts := openapi.StringToSign("POST", params)
		if !strings.HasPrefix(sts, "POST&%2F&") {
			t.Fatalf("string to sign %q", sts)
		}
		// Signing then verifying our own encoding round-trips.
		openapi.SignParams("POST", params, "k")
		back, err := openapi.ParseParams(openapi.EncodeParams(params), "", nil)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if openapi.StringToSign("POST", back) != openapi.StringToSign("POST", params) {
			t.Fatalf("string to sign changed after round trip: %v vs %v", back, params)
		}
	})
}

// FuzzServeRPC throws arbitrary queries and bodies at the HTTP handler: it
// must answer (never panic) with a well-formed error or success.
func FuzzServeRPC(f *testing.F) {
	f.Add("GET", "Action=Echo&Version=2020-01-01", "")
	f.Add("POST", "", "Action=Echo&Version=2020-01-01&AccessKeyId=LTAIunit&Signature=x&SignatureNonce=1&Timestamp=2020-01-01T00:00:00Z")
	f.Add("POST", "Format=XML&Action=%ZZ", "%%%")
	f.Add("PUT", "Action=Echo", "")
	s := openapi.New(openapi.Config{Credentials: []openapi.Credential{{AccessKeyID: keyID, AccessKeySecret: secret}}})
	_ = s.Register(&openapi.Product{Name: "unit", Version: "2020-01-01", Actions: map[string]openapi.Action{
		"Echo": {Handler: func(context.Context, *openapi.Request) (any, error) { return struct{}{}, nil }},
	}})
	defer s.Close()
	f.Fuzz(func(t *testing.T, method, query, body string) {
		if method != "GET" && method != "POST" && method != "PUT" {
			method = "GET"
		}
		r := httptest.NewRequest(method, "http://127.0.0.1/", strings.NewReader(body))
		r.URL.RawQuery = query
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code == 200 {
			return
		}
		var e struct{ Code, RequestId string }
		if strings.Contains(w.Header().Get("Content-Type"), "json") {
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code == "" || e.RequestId == "" {
				t.Fatalf("status %d body %q: %v", w.Code, w.Body.String(), err)
			}
		}
	})
}

func TestParseFaultRule(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want openapi.FaultRule
		bad  bool
	}{
		{in: "AddZone=drop-after", want: openapi.FaultRule{Action: "AddZone", Fault: openapi.FaultDropAfter, Times: 1}},
		{in: "BindZoneVpc=error:Forbidden.RAM*3", want: openapi.FaultRule{Action: "BindZoneVpc", Fault: openapi.FaultError, Code: "Forbidden.RAM", HTTPStatus: 403, Message: "Injected fault Forbidden.RAM.", Times: 3}},
		{in: "X=error:Zone.Invalid:400*2", want: openapi.FaultRule{Action: "X", Fault: openapi.FaultError, Code: "Zone.Invalid", HTTPStatus: 400, Message: "Injected fault Zone.Invalid.", Times: 2}},
		{in: "X=error", bad: true},
		{in: "X=boom", bad: true},
		{in: "X=drop-after*0", bad: true},
		{in: "drop-after", bad: true},
	} {
		got, err := openapi.ParseFaultRule(tc.in)
		if (err != nil) != tc.bad || !tc.bad && got != tc.want {
			t.Errorf("%s: %+v %v", tc.in, got, err)
		}
	}
}
