package e2e

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

// mine: records ExternalDNS wrote through the webhook (Remark not a
// pvtz-sync marker, not the hand-made one).
func mine(r endpoint.Record) bool {
	_, _, ok := registry.Parse(r.Remark)
	return !ok && r.Remark != "by hand"
}

func txt(ns, svc string) string {
	return `"heritage=external-dns,external-dns/owner=e2e,external-dns/resource=service/` + ns + "/" + svc + `"`
}

// ExternalDNS v0.22 (--provider=webhook --registry=txt) publishes annotated
// Services through bin/pvtz-webhook into the zone, beside a running
// pvtz-sync and a hand-made record: each owner's records stay its own;
// an idle ExternalDNS cycle writes nothing and lists nothing; --policy sync
// deletes, upsert-only does not; pvtzctl diff still finds pvtz-sync's part
// of the zone clean.
func TestExternalDNSPublishesServices(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.admin.Create(ctx, f.zid, "x", endpoint.Record{Name: "manual", Type: "A", Value: "192.0.2.1", TTL: 300, Remark: "by hand"}, false); err != nil {
		t.Fatal(err)
	}
	legacy := f.service(f.nsSync, "legacy", nil, nil)
	f.pvtzSync()
	syncName := "legacy." + f.nsSync
	syncWant := legacy.Spec.ClusterIP + "/60/ENABLE/" + registry.Remark("sync1", "svc/"+f.nsSync+"/legacy")
	f.eventually(30*time.Second, "pvtz-sync publishes its Service", func() (bool, string) {
		s := state(f.records(), nil)
		return s[syncName+" A"] == syncWant, fmt.Sprint(s)
	})

	f.webhook("--qps", "50")
	ns, z := f.nsED, f.zone
	web := f.service(ns, "web", map[string]string{internalAnn: "web." + z}, nil)
	lb := f.service(ns, "lb", map[string]string{hostAnn: "lb." + z, "external-dns.kubernetes.io/ttl": "120"},
		func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer })
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.7"}}
	if _, err := f.c.Client.CoreV1().Services(ns).UpdateStatus(ctx, lb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	multi := f.service(ns, "multi", map[string]string{internalAnn: "m1." + z + ",m2." + z, "external-dns.kubernetes.io/webhook-pvtz-remark": "team-a"}, nil)
	off := f.service(ns, "off", map[string]string{internalAnn: "off." + z, "external-dns.kubernetes.io/webhook-pvtz-status": "disable"}, nil)
	f.service(ns, "clash", map[string]string{internalAnn: syncName + "." + z}, nil) // pvtz-sync's name

	ed := f.externalDNS("--policy=sync")
	want := map[string]string{
		"web A":     web.Spec.ClusterIP + "/60/ENABLE/external-dns",
		"a-web TXT": txt(ns, "web") + "/60/ENABLE/external-dns",
		"lb A":      "198.51.100.7/120/ENABLE/external-dns",
		"a-lb TXT":  txt(ns, "lb") + "/60/ENABLE/external-dns",
		"m1 A":      multi.Spec.ClusterIP + "/60/ENABLE/team-a",
		"a-m1 TXT":  txt(ns, "multi") + "/60/ENABLE/team-a",
		"m2 A":      multi.Spec.ClusterIP + "/60/ENABLE/team-a",
		"a-m2 TXT":  txt(ns, "multi") + "/60/ENABLE/team-a",
		"off A":     off.Spec.ClusterIP + "/60/DISABLE/external-dns",
		"a-off TXT": txt(ns, "off") + "/60/DISABLE/external-dns",
	}
	converge := func(what string, want map[string]string) {
		t.Helper()
		f.eventually(60*time.Second, what, func() (bool, string) {
			got := state(f.records(), mine)
			return reflect.DeepEqual(got, want), fmt.Sprintf("%v\nwebhook/external-dns output tail:\n%s", got, tailOf(ed.out.String(), 10))
		})
	}
	converge("ExternalDNS publishes the Services", want)
	others := func() {
		t.Helper()
		s := state(f.records(), func(r endpoint.Record) bool { return !mine(r) })
		if want := map[string]string{"manual A": "192.0.2.1/300/ENABLE/by hand", syncName + " A": syncWant}; !reflect.DeepEqual(s, want) {
			t.Fatalf("records of other owners changed: %v", s)
		}
	}
	others()

	// Idle cycles: ExternalDNS reads every second; the webhook answers from
	// its cache after one change-log read; nothing is written.
	s0 := f.emu.stats(t)
	f.eventually(20*time.Second, "three idle ExternalDNS cycles", func() (bool, string) {
		s := f.emu.stats(t)
		return s.ByAction["DescribeChangeLogs"]-s0.ByAction["DescribeChangeLogs"] >= 3, fmt.Sprint(s.ByAction)
	})
	s1 := f.emu.stats(t)
	// pvtz-sync's own periodic reconcile lists the zone (DescribeZoneRecords)
	// but writes nothing either.
	if s1.Writes != s0.Writes {
		t.Fatalf("idle cycles wrote %d times (%v -> %v)", s1.Writes-s0.Writes, s0.ByAction, s1.ByAction)
	}
	t.Logf("idle: %d DescribeChangeLogs, %d DescribeZoneRecords (pvtz-sync's reconciles), 0 writes",
		s1.ByAction["DescribeChangeLogs"]-s0.ByAction["DescribeChangeLogs"], s1.ByAction["DescribeZoneRecords"]-s0.ByAction["DescribeZoneRecords"])

	// pvtzctl: pvtz-sync's part is clean; ExternalDNS's records show as
	// unowned (to pvtz-sync).
	out, code := f.ctl("diff", f.zone, "--kubeconfig", f.c.Kubeconfig, "--owner-id", "sync1", "--namespace", f.nsSync, "--vpc-id", vpc)
	if code != 0 {
		t.Fatalf("pvtzctl diff: exit %d\n%s", code, out)
	}
	out, code = f.ctl("records", f.zone, "--owner", "-", "--vpc-id", vpc)
	if code != 0 || !strings.Contains(out, "a-web") || strings.Contains(out, syncName) {
		t.Fatalf("pvtzctl records --owner -: exit %d\n%s", code, out)
	}

	// Changes: a TTL annotation, a deleted Service (sync deletes).
	lb, _ = f.c.Client.CoreV1().Services(ns).Get(ctx, "lb", metav1.GetOptions{})
	lb.Annotations["external-dns.kubernetes.io/ttl"] = "300"
	if _, err := f.c.Client.CoreV1().Services(ns).Update(ctx, lb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.deleteService(ns, "web")
	want["lb A"] = "198.51.100.7/300/ENABLE/external-dns"
	delete(want, "web A")
	delete(want, "a-web TXT")
	converge("TTL change and delete under --policy sync", want)
	others()
	if ed.exited() {
		t.Fatalf("external-dns exited:\n%s", tailOf(ed.out.String(), 20))
	}

	// upsert-only: a deleted Service keeps its records; new ones still come.
	ed.stop()
	ed = f.externalDNS("--policy=upsert-only")
	f.deleteService(ns, "lb")
	late := f.service(ns, "late", map[string]string{internalAnn: "late." + z}, nil)
	want["late A"] = late.Spec.ClusterIP + "/60/ENABLE/external-dns"
	want["a-late TXT"] = txt(ns, "late") + "/60/ENABLE/external-dns"
	converge("upsert-only creates and keeps", want)
	s2 := f.emu.stats(t)
	f.eventually(20*time.Second, "three more cycles", func() (bool, string) {
		s := f.emu.stats(t)
		return s.ByAction["DescribeChangeLogs"]-s2.ByAction["DescribeChangeLogs"] >= 3, ""
	})
	if got := state(f.records(), mine); !reflect.DeepEqual(got, want) {
		t.Fatalf("upsert-only deleted or changed records: %v", got)
	}
	others()
	if ed.exited() {
		t.Fatalf("external-dns exited:\n%s", tailOf(ed.out.String(), 20))
	}
}

// --once runs one cycle and exits 0. ExternalDNS's --dry-run is not told
// to webhook providers (v0.22 posts its changes all the same: shown here),
// so a dry run needs pvtz-webhook --dry-run, which writes nothing.
func TestExternalDNSOnceAndDryRun(t *testing.T) {
	f := newFixture(t)
	ns, z := f.nsED, f.zone
	f.webhook()
	one := f.service(ns, "one", map[string]string{internalAnn: "one." + z}, nil)
	ed := f.externalDNS("--policy=sync", "--once")
	if code := ed.wait(60 * time.Second); code != 0 {
		t.Fatalf("external-dns --once: exit %d\n%s", code, tailOf(ed.out.String(), 20))
	}
	want := map[string]string{"one A": one.Spec.ClusterIP + "/60/ENABLE/external-dns", "a-one TXT": txt(ns, "one") + "/60/ENABLE/external-dns"}
	if got := state(f.records(), mine); !reflect.DeepEqual(got, want) {
		t.Fatalf("after --once: %v", got)
	}

	f.service(ns, "two", map[string]string{internalAnn: "two." + z}, nil)
	f.webhook("--dry-run")
	w0 := f.emu.stats(t).Writes
	ed = f.externalDNS("--policy=sync", "--once", "--dry-run")
	if code := ed.wait(60 * time.Second); code != 0 {
		t.Fatalf("external-dns --once --dry-run: exit %d\n%s", code, tailOf(ed.out.String(), 20))
	}
	if w := f.emu.stats(t).Writes - w0; w != 0 {
		t.Fatalf("dry run wrote %d times", w)
	}
	if got := state(f.records(), mine); !reflect.DeepEqual(got, want) {
		t.Fatalf("after the dry run: %v", got)
	}

	// The same with a webhook that is not in dry-run: ExternalDNS's own
	// --dry-run does not keep it from writing.
	f.webhook()
	ed = f.externalDNS("--policy=sync", "--once", "--dry-run")
	if code := ed.wait(60 * time.Second); code != 0 {
		t.Fatalf("external-dns --once --dry-run: exit %d", code)
	}
	if w := f.emu.stats(t).Writes - w0; w == 0 {
		t.Fatalf("ExternalDNS --dry-run alone made no write: has ExternalDNS started telling webhooks? Update the docs (operations.md, README)")
	} else {
		t.Logf("ExternalDNS %s --dry-run alone still posted its changes: %d writes (pvtz-webhook --dry-run is what keeps a dry run dry)", ExternalDNSVersion, w)
	}
}

// Under the emulator's throttling and 5xx/dropped-connection faults (before
// and after a change lands), ExternalDNS + pvtz-webhook converge: every
// record exactly once, its TXT ownership record once, foreign records
// untouched, and ExternalDNS never exits (the webhook answers 5xx, which
// ExternalDNS treats as soft errors).
func TestExternalDNSConvergesUnderFaults(t *testing.T) {
	f := newFixture(t, "--throttle-qps", "30", "--throttle-rate", "0.15", "--fault-rate", "0.1")
	ctx := context.Background()
	syncRemark := registry.Remark("sync1", "svc/other/x")
	if _, err := f.admin.Create(ctx, f.zid, "sync1", endpoint.Record{Name: "x.other", Type: "A", Value: "10.77.0.1", TTL: 60, Remark: syncRemark}, false); err != nil {
		t.Fatal(err)
	}
	// The set-up goes through the same faults: a create whose answer was
	// dropped has landed, and the provider's retry then finds the record
	// there, not ours (its remark is "by hand").
	if _, err := f.admin.Create(ctx, f.zid, "x", endpoint.Record{Name: "manual", Type: "A", Value: "192.0.2.1", TTL: 300, Remark: "by hand"}, false); err != nil && !strings.Contains(err.Error(), "exists and is not owned") {
		t.Fatal(err)
	}
	f.webhook("--qps", "25")
	ns, z := f.nsED, f.zone
	const n = 25
	want := map[string]string{}
	for i := range n {
		name := fmt.Sprintf("s%d", i)
		svc := f.service(ns, name, map[string]string{internalAnn: name + "." + z}, nil)
		want[name+" A"] = svc.Spec.ClusterIP + "/60/ENABLE/external-dns"
		want["a-"+name+" TXT"] = txt(ns, name) + "/60/ENABLE/external-dns"
	}
	ed := f.externalDNS("--policy=sync")
	check := func(what string) {
		t.Helper()
		f.eventually(120*time.Second, what, func() (bool, string) {
			recs, err := f.admin.Records(ctx, f.zid, "")
			if err != nil {
				return false, err.Error()
			}
			got := state(recs, mine)
			return reflect.DeepEqual(got, want), fmt.Sprintf("%d of %d sets", len(got), len(want))
		})
		seen := map[string]int{}
		for _, r := range f.records() {
			seen[r.Name+" "+r.Type+" "+r.Value]++
		}
		for k, c := range seen {
			if c != 1 {
				t.Errorf("%s: %d records", k, c)
			}
		}
		other := state(f.records(), func(r endpoint.Record) bool { return !mine(r) })
		if !reflect.DeepEqual(other, map[string]string{"x.other A": "10.77.0.1/60/ENABLE/" + syncRemark, "manual A": "192.0.2.1/300/ENABLE/by hand"}) {
			t.Fatalf("foreign records touched: %v", other)
		}
		if ed.exited() {
			t.Fatalf("external-dns exited:\n%s", tailOf(ed.out.String(), 30))
		}
	}
	check("converged under faults")
	for i := range 5 {
		name := fmt.Sprintf("s%d", i)
		f.deleteService(ns, name)
		delete(want, name+" A")
		delete(want, "a-"+name+" TXT")
	}
	check("deletes converged under faults")
	st := f.emu.stats(t)
	if st.Throttled == 0 || st.Faults == 0 {
		t.Fatalf("faults not exercised: %+v", st)
	}
	t.Logf("emulator: %d requests, %d throttled, %d faults, %d writes", st.Total, st.Throttled, st.Faults, st.Writes)
}
