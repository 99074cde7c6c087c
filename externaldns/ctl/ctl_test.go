package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/externaldns/provider/inmemory"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

// world is a zone k8s.internal (records of two owners and of nobody), an
// empty zone other.internal, and a cluster with Services in shop.
type world struct {
	p      *inmemory.Provider
	zoneID string
	kube   []runtime.Object
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ctx := context.Background()
	p := inmemory.New()
	clock := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	p.SetNow(func() time.Time { clock = clock.Add(time.Minute); return clock })
	zid, err := p.CreateZone(ctx, "k8s.internal", "vpc-1", "cn-hangzhou")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateZone(ctx, "other.internal", "", ""); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		owner string
		rec   endpoint.Record
	}{
		{"prod", endpoint.Record{Name: "web.shop", Type: "A", Value: "10.96.0.10", TTL: 60, Remark: registry.Remark("prod", "svc/shop/web")}},
		{"prod", endpoint.Record{Name: "api.shop", Type: "A", Value: "10.96.0.11", TTL: 30, Remark: registry.Remark("prod", "svc/shop/api")}},
		{"prod", endpoint.Record{Name: "old.shop", Type: "A", Value: "10.96.0.12", TTL: 60, Remark: registry.Remark("prod", "svc/shop/old")}},
		{"prod", endpoint.Record{Name: "job.batch", Type: "AAAA", Value: "fd00::5", TTL: 60, Remark: registry.Remark("prod", "pod/batch/job")}},
		{"dev", endpoint.Record{Name: "web.dev", Type: "A", Value: "10.96.1.1", TTL: 60, Remark: registry.Remark("dev", "svc/dev/web")}},
		{"", endpoint.Record{Name: "manual", Type: "A", Value: "192.0.2.1", TTL: 300, Remark: "by hand"}},
	} {
		if _, err := p.Create(ctx, zid, r.owner, r.rec, false); err != nil {
			t.Fatal(err)
		}
	}
	svc := func(ns, name, ip string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip}}}
	}
	job := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "batch", Name: "job", Annotations: map[string]string{"dnsaccel.io/pvtz-publish": "true"}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "fd00::5", PodIPs: []corev1.PodIP{{IP: "fd00::5"}}}}
	kube := []runtime.Object{svc("shop", "web", "10.96.0.10"), svc("shop", "api", "10.96.0.11"), svc("shop", "new", "10.96.0.13"),
		svc("dev", "web", "10.96.1.1"), job}
	return &world{p: p, zoneID: zid, kube: kube}
}

func (w *world) run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	d := deps{
		api: func(cfg provider.Config) (API, error) {
			if cfg.Endpoint == "bad" {
				return nil, errors.New("endpoint \"bad\": want http(s)://HOST[:PORT]")
			}
			return w.p, nil
		},
		kube: func(kubeconfig string) (kubernetes.Interface, error) {
			if kubeconfig == "missing" {
				return nil, errors.New("kubeconfig: stat missing: no such file or directory")
			}
			return fake.NewSimpleClientset(w.kube...), nil
		},
	}
	var out, errOut bytes.Buffer
	code := run(context.Background(), d, args, &out, &errOut)
	return out.String(), errOut.String(), code
}

func lines(s ...string) string { return strings.Join(s, "\n") + "\n" }

// Commands, filters and output formats against the in-memory provider.
func TestCommands(t *testing.T) {
	cases := []struct {
		name string
		args []string
		code int
		out  string   // exact stdout ("" = not checked)
		has  []string // substrings of stdout
		not  []string // not in stdout
	}{
		{name: "zones", args: []string{"zones"}, out: lines(
			"ZONE-ID    NAME            RECORDS  VPCS",
			"zone-1001  k8s.internal    6        cn-hangzhou/vpc-1",
			"zone-1002  other.internal  0        ")},
		{name: "records of one owner, namespace and type", args: []string{"records", "k8s.internal", "--owner", "prod", "--namespace", "shop", "--type", "a"},
			out: lines(
				"NAME      TYPE  VALUE       TTL  STATUS  OWNER  RESOURCE      ID",
				"api.shop  A     10.96.0.11  30   ENABLE  prod   svc/shop/api  1004",
				"old.shop  A     10.96.0.12  60   ENABLE  prod   svc/shop/old  1005",
				"web.shop  A     10.96.0.10  60   ENABLE  prod   svc/shop/web  1003")},
		{name: "records without an owner", args: []string{"records", "k8s.internal", "--owner", "-"},
			out: lines(
				"NAME    TYPE  VALUE      TTL  STATUS  OWNER  RESOURCE  ID",
				"manual  A     192.0.2.1  300  ENABLE  -      -         1008")},
		{name: "records by zone id", args: []string{"records", "zone-1001", "--type", "AAAA"}, has: []string{"job.batch  AAAA  fd00::5"}, not: []string{"web.shop"}},
		{name: "records of an empty zone", args: []string{"records", "other.internal"}, out: lines("NAME  TYPE  VALUE  TTL  STATUS  OWNER  RESOURCE  ID")},
		{name: "owners", args: []string{"owners", "k8s.internal"}, out: lines(
			"OWNER   RECORDS  NAMESPACES",
			"(none)  1        -",
			"dev     1        dev",
			"prod    4        batch,shop")},
		{name: "changelog, newest first, limited", args: []string{"changelog", "k8s.internal", "--limit", "2"}, out: lines(
			"TIME                  ACTION  OBJECT  ENTITY   CONTENT                     BY",
			"2026-12-01T10:06:00Z  ADD     RECORD  manual   manual A 192.0.2.1 ttl=300  inmemory",
			"2026-12-01T10:05:00Z  ADD     RECORD  web.dev  web.dev A 10.96.1.1 ttl=60  inmemory")},
		{name: "diff: creates, updates, deletes pending", args: []string{"diff", "k8s.internal", "--kubeconfig", "kc", "--owner-id", "prod"}, code: 1,
			out: lines(
				"OP        NAME      TYPE  VALUE       TTL  RESOURCE      NOTE",
				"update    api.shop  A     10.96.0.11  60   svc/shop/api  ttl 30 -> 60",
				"create    new.shop  A     10.96.0.13  60   svc/shop/new  -",
				"delete    old.shop  A     10.96.0.12  60   svc/shop/old  -",
				"conflict  web.dev   A     10.96.1.1   0    svc/dev/web   record id 1007 is owned by \"dev\"")},
		{name: "diff of one namespace, another owner", args: []string{"diff", "k8s.internal", "--kubeconfig", "kc", "--owner-id", "dev", "--namespace", "dev"},
			out: lines("OP  NAME  TYPE  VALUE  TTL  RESOURCE  NOTE")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			out, errOut, code := w.run(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %s\nstdout:\n%s", code, tc.code, errOut, out)
			}
			if tc.out != "" && out != tc.out {
				t.Errorf("stdout:\n%s\nwant:\n%s", out, tc.out)
			}
			for _, s := range tc.has {
				if !strings.Contains(out, s) {
					t.Errorf("stdout lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tc.not {
				if strings.Contains(out, s) {
					t.Errorf("stdout has %q:\n%s", s, out)
				}
			}
		})
	}
}

// JSON and YAML carry the same rows as the table, machine-readable.
func TestStructuredOutput(t *testing.T) {
	w := newWorld(t)
	want := []recordRow{
		{Name: "web.dev", Type: "A", Value: "10.96.1.1", TTL: 60, Status: "ENABLE", Owner: "dev", Resource: "svc/dev/web", Remark: registry.Remark("dev", "svc/dev/web"), ID: 1007},
	}
	for _, format := range []string{"json", "yaml"} {
		out, errOut, code := w.run(t, "records", "k8s.internal", "--owner", "dev", "-o", format)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", format, code, errOut)
		}
		var got []recordRow
		var err error
		if format == "json" {
			err = json.Unmarshal([]byte(out), &got)
		} else {
			err = yaml.Unmarshal([]byte(out), &got)
		}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: %v\n got %+v\nwant %+v\n%s", format, err, got, want, out)
		}
	}
	out, _, code := w.run(t, "diff", "k8s.internal", "--kubeconfig", "kc", "--owner-id", "prod", "--namespace", "shop", "-o", "json")
	var rows []diffRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil || code != 1 {
		t.Fatalf("diff json: exit %d, %v\n%s", code, err, out)
	}
	ops := map[string]int{}
	for _, r := range rows {
		ops[r.Op]++
	}
	// Only shop's objects are wanted: the pod's record in batch would go too.
	if !reflect.DeepEqual(ops, map[string]int{"create": 1, "update": 1, "delete": 2}) {
		t.Fatalf("diff rows %+v", rows)
	}
	out, _, code = w.run(t, "zones", "-o", "json")
	var zones []zoneRow
	if err := json.Unmarshal([]byte(out), &zones); err != nil || code != 0 || len(zones) != 2 || zones[0].VPCs[0] != "cn-hangzhou/vpc-1" {
		t.Fatalf("zones json: exit %d, %v\n%s", code, err, out)
	}
}

// Errors: exit 2 with a message on stderr, nothing on stdout.
func TestErrors(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		fail   inmemory.FailFunc
		code   int
		stderr string
	}{
		{name: "no command", args: nil, code: 2, stderr: "Usage: pvtzctl COMMAND"},
		{name: "help", args: []string{"--help"}, code: 0, stderr: "Usage: pvtzctl COMMAND"},
		{name: "unknown flag", args: []string{"zones", "--bogus"}, code: 2, stderr: "pvtzctl: unknown flag: --bogus"},
		{name: "unknown command", args: []string{"bogus"}, code: 2, stderr: `pvtzctl: unknown command "bogus" (zones, records, diff, owners, changelog)`},
		{name: "bad output format", args: []string{"zones", "-o", "xml"}, code: 2, stderr: `pvtzctl: -o "xml": want table, json or yaml`},
		{name: "zone missing", args: []string{"records"}, code: 2, stderr: "pvtzctl: records: ZONE is required"},
		{name: "zone not found", args: []string{"owners", "nope.internal"}, code: 2, stderr: "pvtzctl: zone nope.internal not found"},
		{name: "bad endpoint", args: []string{"zones", "--endpoint", "bad"}, code: 2, stderr: `pvtzctl: endpoint "bad"`},
		{name: "listing fails", args: []string{"records", "k8s.internal"}, code: 2, stderr: "pvtzctl: DescribeZoneRecords: Throttling.User",
			fail: func(action string, _ endpoint.Record) error {
				if action == inmemory.DescribeZoneRecords {
					return errors.New("Throttling.User: slow down")
				}
				return nil
			}},
		{name: "credentials rejected", args: []string{"zones"}, code: 2, stderr: "rejected the credentials of access key id",
			fail: func(string, endpoint.Record) error {
				return &provider.CredentialError{AccessKeyID: "LTAIkey", Err: errors.New("InvalidAccessKeyId.NotFound")}
			}},
		{name: "changelog fails", args: []string{"changelog", "k8s.internal"}, code: 2, stderr: "DescribeChangeLogs: System.Busy",
			fail: func(action string, _ endpoint.Record) error {
				if action == inmemory.DescribeChangeLogs {
					return errors.New("System.Busy")
				}
				return nil
			}},
		{name: "diff with a bad owner id", args: []string{"diff", "k8s.internal", "--owner-id", "Not Valid"}, code: 2, stderr: "pvtzctl: --owner-id: owner id \"Not Valid\""},
		{name: "diff without a cluster", args: []string{"diff", "k8s.internal", "--kubeconfig", "missing"}, code: 2, stderr: "pvtzctl: kubeconfig: stat missing"},
		{name: "diff with a bad template", args: []string{"diff", "k8s.internal", "--kubeconfig", "kc", "--fqdn-template", "{{.Nope"}, code: 2, stderr: "pvtzctl: fqdn template"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			w.p.FailWith(tc.fail)
			out, errOut, code := w.run(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d, %q", code, errOut, tc.code, tc.stderr)
			}
			if out != "" {
				t.Fatalf("stdout on error: %q", out)
			}
		})
	}
}
