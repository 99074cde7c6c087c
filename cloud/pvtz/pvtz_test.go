package pvtz_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sdkerrors "github.com/aliyun/alibaba-cloud-sdk-go/sdk/errors"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/requests"
	sdkpvtz "github.com/aliyun/alibaba-cloud-sdk-go/services/pvtz"
	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz"
)

const (
	keyID  = "LTAItestkeyid"
	secret = "test-secret"
)

type env struct {
	srv    *openapi.Server
	store  *pvtz.Store
	http   *httptest.Server
	client *sdkpvtz.Client
}

func start(t *testing.T, cfg openapi.Config) *env {
	t.Helper()
	cfg.Credentials = append(cfg.Credentials, openapi.Credential{AccessKeyID: keyID, AccessKeySecret: secret})
	srv := openapi.New(cfg)
	st := pvtz.NewStore()
	if err := pvtz.Register(srv, st); err != nil {
		t.Fatal(err)
	}
	if err := srv.Load(); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() { hs.Close(); srv.Close() })
	return &env{srv: srv, store: st, http: hs, client: newClient(t, hs.URL, keyID, secret)}
}

func newClient(t *testing.T, endpoint, id, sec string) *sdkpvtz.Client {
	t.Helper()
	c, err := sdkpvtz.NewClientWithAccessKey("cn-hangzhou", id, sec)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(endpoint)
	c.Domain = u.Host
	return c
}

func code(err error) string {
	var se *sdkerrors.ServerError
	if errors.As(err, &se) {
		return se.ErrorCode()
	}
	return ""
}

func addZone(t *testing.T, c *sdkpvtz.Client, name string) string {
	t.Helper()
	req := sdkpvtz.CreateAddZoneRequest()
	req.ZoneName = name
	resp, err := c.AddZone(req)
	if err != nil {
		t.Fatalf("AddZone: %v", err)
	}
	if !resp.Success || resp.ZoneId == "" || resp.RequestId == "" {
		t.Fatalf("AddZone response %+v", resp)
	}
	return resp.ZoneId
}

func addRecord(c *sdkpvtz.Client, zone, rr, typ, value string, ttl int) (int64, error) {
	req := sdkpvtz.CreateAddZoneRecordRequest()
	req.ZoneId, req.Rr, req.Type, req.Value = zone, rr, typ, value
	if ttl != 0 {
		req.Ttl = requests.NewInteger(ttl)
	}
	resp, err := c.AddZoneRecord(req)
	if err != nil {
		return 0, err
	}
	return resp.RecordId, nil
}

func TestZoneLifecycleWithSDK(t *testing.T) {
	e := start(t, openapi.Config{})
	zid := addZone(t, e.client, "svc.example.internal")

	bind := sdkpvtz.CreateBindZoneVpcRequest()
	bind.ZoneId = zid
	bind.Vpcs = &[]sdkpvtz.BindZoneVpcVpcs{{RegionId: "cn-hangzhou", VpcId: "vpc-1"}}
	if _, err := e.client.BindZoneVpc(bind); err != nil {
		t.Fatalf("BindZoneVpc: %v", err)
	}
	info := sdkpvtz.CreateDescribeZoneInfoRequest()
	info.ZoneId = zid
	ir, err := e.client.DescribeZoneInfo(info)
	if err != nil {
		t.Fatalf("DescribeZoneInfo: %v", err)
	}
	if ir.ZoneName != "svc.example.internal" || len(ir.BindVpcs.Vpc) != 1 || ir.BindVpcs.Vpc[0].VpcId != "vpc-1" {
		t.Fatalf("DescribeZoneInfo = %+v", ir)
	}
	tree, err := e.client.DescribeZoneVpcTree(sdkpvtz.CreateDescribeZoneVpcTreeRequest())
	if err != nil || len(tree.Zones.Zone) != 1 || tree.Zones.Zone[0].Vpcs.Vpc[0].RegionId != "cn-hangzhou" {
		t.Fatalf("DescribeZoneVpcTree = %+v, %v", tree, err)
	}
	dz := sdkpvtz.CreateDescribeZonesRequest()
	dz.QueryVpcId = "vpc-1"
	zs, err := e.client.DescribeZones(dz)
	if err != nil || zs.TotalItems != 1 || zs.Zones.Zone[0].ZoneId != zid {
		t.Fatalf("DescribeZones = %+v, %v", zs, err)
	}
	dz.QueryVpcId = "vpc-2"
	if zs, err := e.client.DescribeZones(dz); err != nil || zs.TotalItems != 0 {
		t.Fatalf("DescribeZones other vpc = %+v, %v", zs, err)
	}
	// Same zone name in the same VPC twice is refused.
	zid2 := addZone(t, e.client, "svc.example.internal")
	bind.ZoneId = zid2
	if _, err := e.client.BindZoneVpc(bind); code(err) != "ZoneVpc.Zone.Repeated" {
		t.Fatalf("second bind: %v", err)
	}
	del := sdkpvtz.CreateDeleteZoneRequest()
	del.ZoneId = zid
	if _, err := e.client.DeleteZone(del); code(err) != "Zone.VpcExists" {
		t.Fatalf("DeleteZone bound: %v", err)
	}
	// A fresh request: the SDK keeps a reused request's old parameters.
	unbind := sdkpvtz.CreateBindZoneVpcRequest()
	unbind.ZoneId = zid
	if _, err := e.client.BindZoneVpc(unbind); err != nil {
		t.Fatalf("unbind: %v", err)
	}
	if _, err := e.client.DeleteZone(del); err != nil {
		t.Fatalf("DeleteZone: %v", err)
	}
	info.ZoneId = zid
	if _, err := e.client.DescribeZoneInfo(info); code(err) != "Zone.Invalid.Id" {
		t.Fatalf("deleted zone: %v", err)
	}
}

func TestRecordsWithSDK(t *testing.T) {
	e := start(t, openapi.Config{})
	zid := addZone(t, e.client, "example.internal")
	id, err := addRecord(e.client, zid, "web", "A", "10.0.0.1", 30)
	if err != nil {
		t.Fatalf("AddZoneRecord: %v", err)
	}
	tests := []struct {
		name, rr, typ, value string
		ttl                  int
		code                 string
	}{
		{"duplicate", "web", "A", "10.0.0.1", 30, "Record.Invalid.Conflict"},
		{"cname beside A", "web", "CNAME", "other.example.com", 0, "Record.Invalid.Conflict"},
		{"ttl too low", "x", "A", "10.0.0.2", 4, "Record.Invalid.Ttl"},
		{"ttl too high", "x", "A", "10.0.0.2", 86401, "Record.Invalid.Ttl"},
		{"bad type", "x", "NS", "ns.example.com", 0, "Record.Invalid.Type"},
		{"bad A", "x", "A", "2001:db8::1", 0, "Record.Invalid.Value"},
		{"bad AAAA", "x", "AAAA", "10.0.0.1", 0, "Record.Invalid.Value"},
		{"bad rr", "x y", "A", "10.0.0.1", 0, "Record.Invalid.Rr"},
		{"bad zone", "x", "A", "10.0.0.1", 0, "Zone.Invalid.Id"},
		{"ok second value", "web", "A", "10.0.0.2", 30, ""},
		{"ok AAAA", "web", "AAAA", "2001:db8::1", 86400, ""},
		{"ok TXT", "t", "TXT", "heritage=external-dns,external-dns/owner=x", 5, ""},
		{"ok SRV", "_http._tcp", "SRV", "0 50 80 web.example.internal", 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			z := zid
			if tc.code == "Zone.Invalid.Id" {
				z = "nonexistent"
			}
			_, err := addRecord(e.client, z, tc.rr, tc.typ, tc.value, tc.ttl)
			if got := code(err); got != tc.code {
				t.Fatalf("code %q (err %v), want %q", got, err, tc.code)
			}
			if tc.code != "" {
				var se *sdkerrors.ServerError
				errors.As(err, &se)
				if se.HttpStatus() != 400 || se.RequestId() == "" || se.HostId() == "" || se.Message() == "" {
					t.Fatalf("error shape: status %d request %q host %q message %q", se.HttpStatus(), se.RequestId(), se.HostId(), se.Message())
				}
			}
		})
	}
	// MX needs a priority.
	mx := sdkpvtz.CreateAddZoneRecordRequest()
	mx.ZoneId, mx.Rr, mx.Type, mx.Value = zid, "@", "MX", "mail.example.internal"
	if _, err := e.client.AddZoneRecord(mx); code(err) != "MissingParameter" {
		t.Fatalf("MX without priority: %v", err)
	}
	mx.Priority = requests.NewInteger(10)
	if _, err := e.client.AddZoneRecord(mx); err != nil {
		t.Fatalf("MX: %v", err)
	}

	up := sdkpvtz.CreateUpdateZoneRecordRequest()
	up.RecordId, up.Rr, up.Type, up.Value, up.Ttl = requests.NewInteger64(id), "web", "A", "10.0.0.3", requests.NewInteger(120)
	if _, err := e.client.UpdateZoneRecord(up); err != nil {
		t.Fatalf("UpdateZoneRecord: %v", err)
	}
	up.Value = "10.0.0.2" // would duplicate the second value
	if _, err := e.client.UpdateZoneRecord(up); code(err) != "Record.Invalid.Conflict" {
		t.Fatalf("UpdateZoneRecord to a duplicate: %v", err)
	}
	rm := sdkpvtz.CreateUpdateRecordRemarkRequest()
	rm.RecordId, rm.Remark = requests.NewInteger64(id), "ed;o=a;r=svc/default/web"
	if _, err := e.client.UpdateRecordRemark(rm); err != nil {
		t.Fatalf("UpdateRecordRemark: %v", err)
	}
	rm.Remark = strings.Repeat("x", 51)
	if _, err := e.client.UpdateRecordRemark(rm); code(err) != "Record.Invalid.Remark" {
		t.Fatalf("long remark: %v", err)
	}
	st := sdkpvtz.CreateSetZoneRecordStatusRequest()
	st.RecordId, st.Status = requests.NewInteger64(id), "DISABLE"
	if r, err := e.client.SetZoneRecordStatus(st); err != nil || r.Status != "DISABLE" {
		t.Fatalf("SetZoneRecordStatus: %+v %v", r, err)
	}

	list := sdkpvtz.CreateDescribeZoneRecordsRequest()
	list.ZoneId, list.Keyword = zid, "web"
	lr, err := e.client.DescribeZoneRecords(list)
	if err != nil {
		t.Fatalf("DescribeZoneRecords: %v", err)
	}
	if lr.TotalItems != 3 {
		t.Fatalf("EXACT web: %d records, want 3: %+v", lr.TotalItems, lr.Records.Record)
	}
	var first sdkpvtz.Record
	for _, r := range lr.Records.Record {
		if r.RecordId == id {
			first = r
		}
	}
	if first.Value != "10.0.0.3" || first.Ttl != 120 || first.Status != "DISABLE" || first.Remark != "ed;o=a;r=svc/default/web" || first.ZoneId != zid {
		t.Fatalf("record after updates: %+v", first)
	}
	list.Keyword, list.SearchMode = "we", "LIKE" // Rr or Value: also the SRV's target
	if lr, err := e.client.DescribeZoneRecords(list); err != nil || lr.TotalItems != 4 {
		t.Fatalf("LIKE we: %+v %v", lr, err)
	}
	list.SearchMode = "EXACT"
	if lr, err := e.client.DescribeZoneRecords(list); err != nil || lr.TotalItems != 0 {
		t.Fatalf("EXACT we: %+v %v", lr, err)
	}

	d := sdkpvtz.CreateDeleteZoneRecordRequest()
	d.RecordId = requests.NewInteger64(id)
	if _, err := e.client.DeleteZoneRecord(d); err != nil {
		t.Fatalf("DeleteZoneRecord: %v", err)
	}
	if _, err := e.client.DeleteZoneRecord(d); code(err) != "Record.Invalid.Id" {
		t.Fatalf("DeleteZoneRecord twice: %v", err)
	}

	cl := sdkpvtz.CreateDescribeChangeLogsRequest()
	cl.ZoneId, cl.EntityType = zid, "PV_RECORD"
	cr, err := e.client.DescribeChangeLogs(cl)
	if err != nil {
		t.Fatalf("DescribeChangeLogs: %v", err)
	}
	if cr.TotalItems < 8 || cr.ChangeLogs.ChangeLog[0].OperAction != "DEL" {
		t.Fatalf("change logs: %d, first %+v", cr.TotalItems, cr.ChangeLogs.ChangeLog)
	}
}

func TestPaging(t *testing.T) {
	e := start(t, openapi.Config{})
	zid := addZone(t, e.client, "page.internal")
	const n = 250
	for i := range n {
		if _, err := addRecord(e.client, zid, fmt.Sprintf("h%03d", i), "A", fmt.Sprintf("10.1.%d.%d", i/256, i%256), 0); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for page := 1; ; page++ {
		req := sdkpvtz.CreateDescribeZoneRecordsRequest()
		req.ZoneId, req.PageNumber, req.PageSize = zid, requests.NewInteger(page), requests.NewInteger(100)
		resp, err := e.client.DescribeZoneRecords(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.TotalItems != n || resp.TotalPages != 3 || resp.PageNumber != page || resp.PageSize != 100 {
			t.Fatalf("page %d header: %+v", page, resp)
		}
		for _, r := range resp.Records.Record {
			if seen[r.Rr] {
				t.Fatalf("%s seen twice", r.Rr)
			}
			seen[r.Rr] = true
		}
		if page >= resp.TotalPages {
			if len(resp.Records.Record) != 50 {
				t.Fatalf("last page has %d records", len(resp.Records.Record))
			}
			break
		}
	}
	if len(seen) != n {
		t.Fatalf("paged %d records, want %d", len(seen), n)
	}
	// Default page size 20; page past the end is empty; size > 100 refused.
	req := sdkpvtz.CreateDescribeZoneRecordsRequest()
	req.ZoneId = zid
	if r, err := e.client.DescribeZoneRecords(req); err != nil || len(r.Records.Record) != 20 || r.PageSize != 20 {
		t.Fatalf("default page: %v %v", len(r.Records.Record), err)
	}
	req.PageNumber = requests.NewInteger(99)
	if r, err := e.client.DescribeZoneRecords(req); err != nil || len(r.Records.Record) != 0 {
		t.Fatalf("page 99: %v", err)
	}
	req.PageSize = requests.NewInteger(101)
	if _, err := e.client.DescribeZoneRecords(req); code(err) != "InvalidParameter" {
		t.Fatalf("page size 101: %v", err)
	}
}

func TestCredentialErrors(t *testing.T) {
	e := start(t, openapi.Config{})
	bad := newClient(t, e.http.URL, "LTAIunknown", secret)
	if _, err := bad.DescribeZones(sdkpvtz.CreateDescribeZonesRequest()); code(err) != "InvalidAccessKeyId.NotFound" {
		t.Fatalf("unknown key: %v", err)
	}
	wrong := newClient(t, e.http.URL, keyID, "wrong-secret")
	_, err := wrong.DescribeZones(sdkpvtz.CreateDescribeZonesRequest())
	if code(err) != "SignatureDoesNotMatch" {
		t.Fatalf("wrong secret: %v", err)
	}
	if !strings.Contains(err.Error(), "server string to sign is:") {
		t.Fatalf("no string to sign in %v", err)
	}
}

func TestThrottlingAndFaults(t *testing.T) {
	e := start(t, openapi.Config{ThrottleQPS: 2})
	var throttled int
	for range 10 {
		_, err := e.client.DescribeZones(sdkpvtz.CreateDescribeZonesRequest())
		if c := code(err); c == "Throttling.User" {
			var se *sdkerrors.ServerError
			errors.As(err, &se)
			if se.HttpStatus() != 400 {
				t.Fatalf("throttling status %d", se.HttpStatus())
			}
			throttled++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if throttled < 5 {
		t.Fatalf("%d of 10 throttled at 2 QPS", throttled)
	}
	// Another action has its own bucket.
	if _, err := e.client.DescribeZoneVpcTree(sdkpvtz.CreateDescribeZoneVpcTreeRequest()); err != nil {
		t.Fatalf("other action: %v", err)
	}
	if st := e.srv.Stats(); st.Throttled != throttled {
		t.Fatalf("stats throttled %d, want %d", st.Throttled, throttled)
	}

	f := start(t, openapi.Config{FaultRate: 1})
	f.client.SetReadTimeout(5 * time.Second)
	var unavailable, dropped int
	for range 20 {
		_, err := f.client.DescribeZones(sdkpvtz.CreateDescribeZonesRequest())
		switch c := code(err); {
		case c == "ServiceUnavailable":
			unavailable++
		case err != nil && c == "":
			dropped++
		default:
			t.Fatalf("fault rate 1: %v", err)
		}
	}
	if unavailable == 0 || dropped == 0 {
		t.Fatalf("503s %d, drops %d", unavailable, dropped)
	}
}

func TestStatePersists(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state.json")
	e := start(t, openapi.Config{StateFile: file})
	zid := addZone(t, e.client, "keep.internal")
	if _, err := addRecord(e.client, zid, "a", "A", "10.0.0.1", 0); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	e2 := start(t, openapi.Config{StateFile: file})
	req := sdkpvtz.CreateDescribeZoneRecordsRequest()
	req.ZoneId = zid
	r, err := e2.client.DescribeZoneRecords(req)
	if err != nil || r.TotalItems != 1 || r.Records.Record[0].Value != "10.0.0.1" {
		t.Fatalf("after restart: %+v %v", r, err)
	}
	// Record ids keep growing after a restart.
	id, err := addRecord(e2.client, zid, "b", "A", "10.0.0.2", 0)
	if err != nil || id <= r.Records.Record[0].RecordId {
		t.Fatalf("new id %d after %d: %v", id, r.Records.Record[0].RecordId, err)
	}
}

func TestRequestLogHasNoSecrets(t *testing.T) {
	e := start(t, openapi.Config{})
	addZone(t, e.client, "log.internal")
	resp, err := http.Get(e.http.URL + "/_emulator/requests")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if strings.Contains(string(b), secret) || strings.Contains(string(b), "Signature\"") {
		t.Fatalf("secret material in log: %s", b)
	}
	var ent openapi.Entry
	if err := json.Unmarshal([]byte(strings.SplitN(string(b), "\n", 2)[0]), &ent); err != nil {
		t.Fatal(err)
	}
	if ent.Action != "AddZone" || !ent.Write || ent.AccessKeyID != keyID || ent.Params["ZoneName"] != "log.internal" || ent.Status != 200 {
		t.Fatalf("entry %+v", ent)
	}
}

func TestXMLFormat(t *testing.T) {
	e := start(t, openapi.Config{})
	zid := addZone(t, e.client, "xml.internal")
	if _, err := addRecord(e.client, zid, "a", "A", "10.0.0.1", 0); err != nil {
		t.Fatal(err)
	}
	req := sdkpvtz.CreateDescribeZoneRecordsRequest()
	req.ZoneId = zid
	req.AcceptFormat = "XML"
	// The SDK only decodes JSON; read the raw XML body.
	resp := sdkpvtz.CreateDescribeZoneRecordsResponse()
	err := e.client.DoAction(req, resp)
	body := resp.GetHttpContentString()
	if !strings.Contains(body, "<DescribeZoneRecordsResponse><RequestId>") || !strings.Contains(body, "<Records><Record><RecordId>") || !strings.Contains(body, "<Value>10.0.0.1</Value>") {
		t.Fatalf("XML body %q (err %v)", body, err)
	}
	req.ZoneId = "nope"
	resp = sdkpvtz.CreateDescribeZoneRecordsResponse()
	_ = e.client.DoAction(req, resp)
	if body := resp.GetHttpContentString(); !strings.Contains(body, "<Error><RequestId>") || !strings.Contains(body, "<Code>Zone.Invalid.Id</Code>") {
		t.Fatalf("XML error %q", body)
	}
}

func TestDNS(t *testing.T) {
	e := start(t, openapi.Config{})
	d, err := e.store.ListenDNS("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	zid := addZone(t, e.client, "dns.internal")
	for _, v := range []string{"10.0.0.1", "10.0.0.2"} {
		if _, err := addRecord(e.client, zid, "web", "A", v, 30); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := addRecord(e.client, zid, "alias", "CNAME", "web.dns.internal", 0); err != nil {
		t.Fatal(err)
	}
	q := func(name string, qt uint16) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qt)
		r, err := dns.Exchange(m, d.Addr())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := q("web.dns.internal.", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 || !r.Authoritative {
		t.Fatalf("web A: %v", r)
	}
	if r := q("alias.dns.internal.", dns.TypeA); len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != dns.TypeCNAME {
		t.Fatalf("alias: %v", r)
	}
	if r := q("none.dns.internal.", dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("none: %v", r)
	}
	if r := q("web.dns.internal.", dns.TypeAAAA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Fatalf("NODATA: %v", r)
	}
	if r := q("example.com.", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Fatalf("outside: %v", r)
	}
}

// AddZone with a ClientToken: a repeat answers with the zone the first
// call made (a retry after a lost answer adds nothing); the same token for
// another name is IdempotentParameterMismatch. UpdateZoneRemark sets the
// Remark DescribeZones shows.
func TestAddZoneClientTokenAndRemark(t *testing.T) {
	e := start(t, openapi.Config{})
	add := func(name, tok string) (string, error) {
		req := sdkpvtz.CreateAddZoneRequest()
		req.Scheme = "HTTP"
		req.ZoneName, req.ClientToken = name, tok
		resp, err := e.client.AddZone(req)
		if err != nil {
			return "", err
		}
		return resp.ZoneId, nil
	}
	// The first answer is dropped after the zone was made.
	if err := e.srv.AddFaultRules(openapi.FaultRule{Action: "AddZone", Fault: openapi.FaultDropAfter}); err != nil {
		t.Fatal(err)
	}
	if _, err := add("tok.internal", "tok-1"); err == nil {
		t.Fatal("dropped answer came back")
	}
	id, err := add("tok.internal", "tok-1")
	if err != nil || id == "" {
		t.Fatalf("repeat: %q %v", id, err)
	}
	if _, err := add("other.internal", "tok-1"); code(err) != "IdempotentParameterMismatch" {
		t.Fatalf("token reused for another name: %v", err)
	}
	dz := sdkpvtz.CreateDescribeZonesRequest()
	dz.Scheme = "HTTP"
	dz.Keyword = "tok.internal"
	zs, err := e.client.DescribeZones(dz)
	if err != nil || len(zs.Zones.Zone) != 1 || zs.Zones.Zone[0].ZoneId != id {
		t.Fatalf("zones after a lost answer and its repeat: %+v %v", zs, err)
	}
	ur := sdkpvtz.CreateUpdateZoneRemarkRequest()
	ur.Scheme = "HTTP"
	ur.ZoneId, ur.Remark = id, "made by test"
	if _, err := e.client.UpdateZoneRemark(ur); err != nil {
		t.Fatal(err)
	}
	ur.Remark = strings.Repeat("x", 51)
	if _, err := e.client.UpdateZoneRemark(ur); code(err) != "Zone.Remark" {
		t.Fatalf("long remark: %v", err)
	}
	zs, err = e.client.DescribeZones(dz)
	if err != nil || zs.Zones.Zone[0].Remark != "made by test" {
		t.Fatalf("remark: %+v %v", zs, err)
	}
	// A scripted API error, then the action works again.
	if err := e.srv.AddFaultRules(openapi.FaultRule{Action: "BindZoneVpc", Fault: openapi.FaultError, Code: "Forbidden.RAM", Times: 2}); err != nil {
		t.Fatal(err)
	}
	b := sdkpvtz.CreateBindZoneVpcRequest()
	b.Scheme = "HTTP"
	b.ZoneId = id
	b.Vpcs = &[]sdkpvtz.BindZoneVpcVpcs{{RegionId: "cn-hangzhou", VpcId: "vpc-1"}}
	for i := range 2 {
		if _, err := e.client.BindZoneVpc(b); code(err) != "Forbidden.RAM" {
			t.Fatalf("bind %d: %v", i, err)
		}
	}
	if _, err := e.client.BindZoneVpc(b); err != nil {
		t.Fatalf("bind after the scripted faults: %v", err)
	}
}
