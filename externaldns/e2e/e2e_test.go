package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz/pvtztest"
	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

func owned(r endpoint.Record) bool {
	o, _, ok := registry.Parse(r.Remark)
	return ok && o == "e2e"
}

// Services (ClusterIP, headless with EndpointSlices and hostnames,
// LoadBalancer, annotated) and an opted-in Pod are created, changed and
// deleted; the zone follows; unowned records stay as they are; pvtzctl
// shows it all.
func TestServicesAndPodsConverge(t *testing.T) {
	f := newFixture(t, openapi.Config{})
	ctx := context.Background()
	// Records that are not ours: one elsewhere, one CNAME where a Service wants its name.
	if _, err := f.p.Create(ctx, f.zid, "x", endpoint.Record{Name: "manual", Type: "A", Value: "192.0.2.1", TTL: 300, Remark: "by hand"}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := f.p.Create(ctx, f.zid, "x", endpoint.Record{Name: "taken." + f.ns, Type: "CNAME", Value: "elsewhere.example.com", TTL: 300}, false); err != nil {
		t.Fatal(err)
	}

	web := f.service("web", nil)
	f.service("db", func(s *corev1.Service) { s.Spec.ClusterIP = corev1.ClusterIPNone })
	f.slice("db", "db-1", ep{"10.244.0.10", "db-0", true}, ep{"10.244.0.11", "db-1", true}, ep{"10.244.0.12", "", false})
	lb := f.service("lb", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer })
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.7"}}
	if _, err := f.c.Client.CoreV1().Services(f.ns).UpdateStatus(ctx, lb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	api := f.service("api", func(s *corev1.Service) {
		s.Annotations = map[string]string{"external-dns.alpha.kubernetes.io/hostname": "api." + f.zone + ",api2." + f.zone + ".", "external-dns.kubernetes.io/ttl": "30"}
	})
	f.service("hidden", func(s *corev1.Service) { s.Annotations = map[string]string{"dnsaccel.io/pvtz-ignore": "true"} })
	taken := f.service("taken", nil)
	f.pod("worker", "10.244.1.5", map[string]string{"dnsaccel.io/pvtz-publish": "true"})
	f.pod("quiet", "10.244.1.6", nil)

	metrics, health := freeAddr(t), freeAddr(t)
	args := f.syncArgs("--policy", "sync", "--interval", "1h", "--qps", "100")
	args = append(args, "--metrics", metrics, "--health", health)
	sync := f.start("pvtz-sync", f.env(pvtztest.AccessKeyID, pvtztest.AccessKeySecret), args...)

	ns := f.ns
	want := map[string]string{
		"web." + ns + " A":     web.Spec.ClusterIP + "/60",
		"db." + ns + " A":      "10.244.0.10/60,10.244.0.11/60",
		"db-0.db." + ns + " A": "10.244.0.10/60",
		"db-1.db." + ns + " A": "10.244.0.11/60",
		"lb." + ns + " A":      "198.51.100.7/60",
		"api A":                api.Spec.ClusterIP + "/30",
		"api2 A":               api.Spec.ClusterIP + "/30",
		"worker." + ns + " A":  "10.244.1.5/60",
	}
	converge := func(what string, want map[string]string) {
		t.Helper()
		eventually(t, 30*time.Second, what, func() (bool, string) {
			got := summary(f.records(), owned)
			return reflect.DeepEqual(got, want), fmt.Sprintf("%v\nstderr: %s", got, tail(sync.stderr.String()))
		})
	}
	converge("initial sync", want)
	eventually(t, 10*time.Second, "ready", func() (bool, string) {
		code, body := httpGet("http://" + health + "/readyz")
		return code == 200, body
	})
	// Unowned records untouched; the Service wanting a taken name gets an Event.
	all := summary(f.records(), func(r endpoint.Record) bool { return !owned(r) })
	if all["manual A"] != "192.0.2.1/300" || all["taken."+ns+" CNAME"] != "elsewhere.example.com/300" || len(all) != 2 {
		t.Fatalf("unowned records: %v", all)
	}
	eventually(t, 20*time.Second, "conflict event", func() (bool, string) {
		evs, err := f.c.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Name == taken.Name && e.Reason == "PrivateZoneRecordConflict" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events", len(evs.Items))
	})

	// pvtzctl records / owners / diff / changelog.
	out, errOut, code := f.ctl("records", f.zone, "--owner", "e2e", "-o", "json")
	var rows []struct{ Name, Type, Value, Owner, Resource string }
	if code != 0 || json.Unmarshal([]byte(out), &rows) != nil || len(rows) != 9 {
		t.Fatalf("pvtzctl records: code %d, %d rows, %s %s", code, len(rows), out, errOut)
	}
	out, _, code = f.ctl("records", f.zone, "--owner", "-")
	if code != 0 || !strings.Contains(out, "manual") || strings.Contains(out, "web."+ns) {
		t.Fatalf("pvtzctl records --owner -: %d\n%s", code, out)
	}
	out, _, code = f.ctl("owners", f.zone)
	if code != 0 || !strings.Contains(out, "e2e") || !strings.Contains(out, "(none)") {
		t.Fatalf("pvtzctl owners: %d\n%s", code, out)
	}
	diffArgs := []string{"diff", f.zone, "--kubeconfig", f.c.Kubeconfig, "--owner-id", "e2e", "--namespace", ns}
	out, errOut, code = f.ctl(diffArgs...)
	// The conflict is reported (and is drift that cannot be repaired).
	if code != 1 || !strings.Contains(out, "conflict") || !strings.Contains(out, "taken."+ns) {
		t.Fatalf("pvtzctl diff with a conflict: %d\n%s%s", code, out, errOut)
	}
	if err := f.c.Client.CoreV1().Services(ns).Delete(ctx, "taken", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = f.ctl(diffArgs...)
	if code != 0 {
		t.Fatalf("pvtzctl diff when converged: %d\n%s%s", code, out, errOut)
	}
	if _, errOut, code = f.ctl(append(diffArgs, "--endpoint", "http://127.0.0.1:1")...); code != 2 {
		t.Fatalf("pvtzctl diff against nothing: %d %s", code, errOut)
	}
	out, _, code = f.ctl("changelog", f.zone, "--limit", "5")
	if code != 0 || strings.Count(out, "\n") != 6 {
		t.Fatalf("pvtzctl changelog: %d\n%s", code, out)
	}

	// One Service's change costs calls for its own records only: no listing.
	before := f.emu.Server.Stats()
	f.slice("db", "db-1", ep{"10.244.0.10", "db-0", true}, ep{"10.244.0.11", "db-1", true}, ep{"10.244.0.12", "", true})
	want["db."+ns+" A"] = "10.244.0.10/60,10.244.0.11/60,10.244.0.12/60"
	converge("endpoint became ready", want)
	after := f.emu.Server.Stats()
	if w, r := after.Writes-before.Writes, after.ByAction["DescribeZoneRecords"]-before.ByAction["DescribeZoneRecords"]; w != 1 || r > 1+1 {
		// r: our own polling lists too; the sync itself lists nothing.
		t.Fatalf("one endpoint change cost %d writes", w)
	}

	// TTL annotation change → UpdateZoneRecord; delete Service and Pod → records gone.
	api, _ = f.c.Client.CoreV1().Services(ns).Get(ctx, "api", metav1.GetOptions{})
	api.Annotations["external-dns.kubernetes.io/ttl"] = "2m"
	if _, err := f.c.Client.CoreV1().Services(ns).Update(ctx, api, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want["api A"], want["api2 A"] = api.Spec.ClusterIP+"/120", api.Spec.ClusterIP+"/120"
	converge("ttl change", want)
	if err := f.c.Client.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := f.c.Client.CoreV1().Pods(ns).Delete(ctx, "worker", *metav1.NewDeleteOptions(0)); err != nil {
		t.Fatal(err)
	}
	delete(want, "web."+ns+" A")
	delete(want, "worker."+ns+" A")
	converge("deletes", want)

	// Graceful shutdown.
	_ = sync.cmd.Process.Signal(syncTERM)
	if code := sync.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("pvtz-sync exit %d after SIGTERM\n%s", code, sync.stderr.String())
	}
	if code, body := httpGet("http://" + metrics + "/metrics"); code != 0 {
		t.Fatalf("metrics still served after shutdown: %d %s", code, body[:min(len(body), 100)])
	}
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-8):], "\n")
}

// A reconcile that finds no drift writes nothing and lists the zone only;
// --dry-run makes no write at all and prints the plan; an empty source
// never deletes.
func TestDryRunAndNoDriftAndEmptySource(t *testing.T) {
	f := newFixture(t, openapi.Config{})
	for i := range 5 {
		f.service(fmt.Sprintf("s%d", i), nil)
	}
	env := f.env(pvtztest.AccessKeyID, pvtztest.AccessKeySecret)
	// Dry run first: nothing in the zone yet, the plan shows 5 creates.
	w0 := f.emu.Writes()
	_, seq0 := f.emu.Server.Log(0) // the fixture's own zone set-up comes before
	dry := f.start("pvtz-sync", env, f.syncArgs("--policy", "sync", "--dry-run", "--once")...)
	if code := dry.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("dry run exit %d\n%s", code, dry.stderr.String())
	}
	if w := f.emu.Writes() - w0; w != 0 {
		t.Fatalf("dry run made %d writes", w)
	}
	if n := strings.Count(dry.stdout.String(), "CREATE "); n != 5 {
		t.Fatalf("dry-run plan has %d creates:\n%s", n, dry.stdout.String())
	}
	// The request log proves it: no entry with write=true.
	ents, _ := f.emu.Server.Log(seq0)
	for _, e := range ents {
		if e.Write {
			t.Fatalf("write in the request log during dry run: %+v", e)
		}
	}

	once := f.start("pvtz-sync", env, f.syncArgs("--policy", "sync", "--once")...)
	if code := once.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("once exit %d\n%s", code, once.stderr.String())
	}
	if n := len(summary(f.records(), owned)); n != 5 {
		t.Fatalf("%d names after --once", n)
	}
	// No drift: a second run lists one page and writes nothing.
	before := f.emu.Server.Stats()
	again := f.start("pvtz-sync", env, f.syncArgs("--policy", "sync", "--once")...)
	if code := again.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("second once exit %d\n%s", code, again.stderr.String())
	}
	after := f.emu.Server.Stats()
	if after.Writes != before.Writes || after.ByAction["DescribeZoneRecords"]-before.ByAction["DescribeZoneRecords"] != 1 {
		t.Fatalf("reconcile without drift: %d writes, %d listings", after.Writes-before.Writes, after.ByAction["DescribeZoneRecords"]-before.ByAction["DescribeZoneRecords"])
	}
	// Empty source (a namespace with nothing): no deletes.
	empty := f.c.CreateNamespace(t, "pvtz-empty-")
	args := f.syncArgs("--policy", "sync", "--once")
	for i, a := range args {
		if a == "--namespace" {
			args[i+1] = empty
		}
	}
	e := f.start("pvtz-sync", env, args...)
	if code := e.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("empty-source exit %d\n%s", code, e.stderr.String())
	}
	if n := len(summary(f.records(), owned)); n != 5 || f.emu.Writes() != after.Writes {
		t.Fatalf("empty source deleted records: %d names left", n)
	}
	if !strings.Contains(e.stderr.String(), "deletes withheld") {
		t.Fatalf("no warning about withheld deletes:\n%s", e.stderr.String())
	}
}

// Wrong credentials: a clear error naming the key id, no crash loop (the
// process stays up, not ready, retrying slowly); with --once, exit 2.
func TestWrongCredentials(t *testing.T) {
	f := newFixture(t, openapi.Config{})
	env := f.env("LTAIwrongkey123", "nope")
	health := freeAddr(t)
	p := f.start("pvtz-sync", env, append(f.syncArgs("--policy", "sync", "--interval", "1s"), "--health", health)...)
	eventually(t, 20*time.Second, "three attempts", func() (bool, string) {
		ents, _ := f.emu.Server.Log(0)
		n := 0
		for _, e := range ents {
			if e.AccessKeyID == "LTAIwrongkey123" {
				n++
			}
		}
		return n >= 3, fmt.Sprintf("%d attempts", n)
	})
	if p.exited() {
		t.Fatalf("pvtz-sync exited on wrong credentials:\n%s", p.stderr.String())
	}
	// The key id is named masked (LTAI…123): enough to tell keys apart,
	// never the id itself (issue #21).
	if s := p.stderr.String(); !strings.Contains(s, "LTAI…123") || strings.Contains(s, "LTAIwrongkey123") || !strings.Contains(s, "InvalidAccessKeyId.NotFound") || strings.Contains(s, "nope") {
		t.Fatalf("error does not name the key id masked (or leaks the id or the secret):\n%s", s)
	}
	if code, body := httpGet("http://" + health + "/readyz"); code != 503 || !strings.Contains(body, "LTAI…123") || strings.Contains(body, "LTAIwrongkey123") {
		t.Fatalf("readyz %d %s", code, body)
	}
	// Slow retries: attempts are spaced (1s, 2s, ...), not a tight loop.
	ents, _ := f.emu.Server.Log(0)
	var times []time.Time
	for _, e := range ents {
		if e.AccessKeyID == "LTAIwrongkey123" {
			times = append(times, e.Time)
		}
	}
	if d := times[2].Sub(times[1]); d < 900*time.Millisecond {
		t.Fatalf("retries %v apart", d)
	}
	once := f.start("pvtz-sync", env, f.syncArgs("--policy", "sync", "--once")...)
	if code := once.wait(t, 30*time.Second); code != 2 || !strings.Contains(once.stderr.String(), "LTAI…123") {
		t.Fatalf("--once with wrong credentials: exit %d\n%s", code, once.stderr.String())
	}
}

// The controller process is SIGKILLed mid-sync 20 times while the API
// throttles 30% of requests and fails 5% (503s and dropped connections,
// some after the change was applied); services change between kills. The
// zone converges, with no duplicate, and records of others are untouched.
func TestKilledMidSyncConverges(t *testing.T) {
	f := newFixture(t, openapi.Config{})
	ctx := context.Background()
	// Unowned records, one of them identical to what a Service wants.
	s0 := f.service("s0", nil)
	foreign := []endpoint.Record{
		{Name: "manual", Type: "A", Value: "192.0.2.1", TTL: 300, Remark: "by hand"},
		{Name: "s0." + f.ns, Type: "A", Value: s0.Spec.ClusterIP, TTL: 600, Remark: registry.Remark("other", "svc/x/y")},
	}
	for _, r := range foreign {
		if _, err := f.p.Create(ctx, f.zid, "x", r, false); err != nil {
			t.Fatal(err)
		}
	}
	foreignBefore := summary(f.records(), func(r endpoint.Record) bool { return !owned(r) })
	const n = 120
	for i := 1; i < n; i++ {
		f.service(fmt.Sprintf("s%d", i), nil)
	}
	f.emu.Server.SetFaults(0, 0.05, 0.30)
	env := f.env(pvtztest.AccessKeyID, pvtztest.AccessKeySecret)
	args := f.syncArgs("--policy", "sync", "--qps", "40", "--workers", "8", "--interval", "1h")
	wantNow := func() map[string]string {
		want := map[string]string{}
		svcs, err := f.c.Client.CoreV1().Services(f.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range svcs.Items {
			if s.Name != "s0" {
				want[s.Name+"."+f.ns+" A"] = s.Spec.ClusterIP + "/60"
			}
		}
		return want
	}
	rng := rand.New(rand.NewPCG(1, 2))
	deleted := map[int]bool{}
	for kill := range 20 {
		w0 := f.emu.Writes()
		p := f.start("pvtz-sync", env, args...)
		target := 1 + rng.IntN(8)
		eventually(t, 30*time.Second, fmt.Sprintf("kill %d: writes", kill), func() (bool, string) {
			if f.emu.Writes()-w0 >= target || p.exited() {
				return true, ""
			}
			return reflect.DeepEqual(summary(f.records(), owned), wantNow()), fmt.Sprintf("%d writes\n%s", f.emu.Writes()-w0, tail(p.stderr.String()))
		})
		p.kill()
		<-p.done
		if kill%4 == 3 { // change the cluster between kills: delete a Service, add one
			i := 1 + rng.IntN(n-1)
			if !deleted[i] {
				deleted[i] = true
				if err := f.c.Client.CoreV1().Services(f.ns).Delete(ctx, fmt.Sprintf("s%d", i), metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			f.service(fmt.Sprintf("late%d", kill), nil)
		}
	}
	converged := reflect.DeepEqual(summary(f.records(), owned), wantNow())
	t.Logf("after 20 kills: converged %v", converged)
	final := f.start("pvtz-sync", env, args...)
	want := wantNow()
	eventually(t, 60*time.Second, "convergence after 20 kills", func() (bool, string) {
		got := summary(f.records(), owned)
		return reflect.DeepEqual(got, want), fmt.Sprintf("%d of %d names\n%s", len(got), len(want), tail(final.stderr.String()))
	})
	f.emu.Server.SetFaults(0, 0, 0)
	recs := f.records()
	seen := map[string]int64{}
	for _, r := range recs {
		k := r.Name + " " + r.Type + " " + r.Value
		if id, dup := seen[k]; dup {
			t.Fatalf("duplicate record %s: ids %d and %d", k, id, r.ID)
		}
		seen[k] = r.ID
	}
	if after := summary(recs, func(r endpoint.Record) bool { return !owned(r) }); !reflect.DeepEqual(after, foreignBefore) {
		t.Fatalf("unowned records changed: %v -> %v", foreignBefore, after)
	}
	st := f.emu.Server.Stats()
	t.Logf("%d API requests, %d writes, %d throttled, %d faults, %d deleted services", st.Total, st.Writes, st.Throttled, st.Faults, len(deleted))
	if st.Throttled == 0 || st.Faults == 0 {
		t.Fatalf("faults not exercised: %+v", st)
	}
}
