package plan

import (
	"reflect"
	"testing"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

const me = "c1"

func ep(name, typ, res string, ttl int, targets ...string) endpoint.Endpoint {
	return endpoint.Endpoint{Name: name, Type: typ, Targets: targets, TTL: ttl, Resource: res}
}

func rec(id int64, name, typ, value string, ttl int, remark string) endpoint.Record {
	return endpoint.Record{ID: id, Name: name, Type: typ, Value: value, TTL: ttl, Status: "ENABLE", Remark: remark}
}

func ours(res string) string { return registry.Remark(me, res) }

func ops(r Result) []string {
	var out []string
	for _, c := range r.Changes {
		out = append(out, string(c.Op)+" "+c.Record.Name+" "+c.Record.Type+" "+c.Record.Value)
	}
	return out
}

func TestCalculate(t *testing.T) {
	web := "svc/default/web"
	tests := []struct {
		name      string
		policy    Policy
		noDeletes bool
		desired   []endpoint.Endpoint
		current   []endpoint.Record
		want      []string
		conflicts int
	}{
		{name: "create", policy: Sync,
			desired: []endpoint.Endpoint{ep("web.default", "A", web, 60, "10.0.0.1", "10.0.0.2")},
			want:    []string{"create web.default A 10.0.0.1", "create web.default A 10.0.0.2"}},
		{name: "no drift, no change", policy: Sync,
			desired: []endpoint.Endpoint{ep("web.default", "A", web, 60, "10.0.0.1")},
			current: []endpoint.Record{rec(1, "web.default", "A", "10.0.0.1", 60, ours(web))}},
		{name: "value changed", policy: Sync,
			desired: []endpoint.Endpoint{ep("web.default", "A", web, 60, "10.0.0.2")},
			current: []endpoint.Record{rec(1, "web.default", "A", "10.0.0.1", 60, ours(web))},
			want:    []string{"delete web.default A 10.0.0.1", "create web.default A 10.0.0.2"}},
		{name: "value changed, upsert-only keeps the old", policy: UpsertOnly,
			desired: []endpoint.Endpoint{ep("web.default", "A", web, 60, "10.0.0.2")},
			current: []endpoint.Record{rec(1, "web.default", "A", "10.0.0.1", 60, ours(web))},
			want:    []string{"create web.default A 10.0.0.2"}},
		{name: "ttl changed", policy: Sync,
			desired: []endpoint.Endpoint{ep("web.default", "A", web, 30, "10.0.0.1")},
			current: []endpoint.Record{rec(1, "web.default", "A", "10.0.0.1", 60, ours(web))},
			want:    []string{"update web.default A 10.0.0.1"}},
		{name: "ttl changed, create-only", policy: CreateOnly,
			desired: []endpoint.Endpoint{ep("web.default", "A", web, 30, "10.0.0.1")},
			current: []endpoint.Record{rec(1, "web.default", "A", "10.0.0.1", 60, ours(web))}},
		{name: "disabled by hand", policy: Sync,
			desired: []endpoint.Endpoint{ep("web.default", "A", web, 60, "10.0.0.1")},
			current: []endpoint.Record{{ID: 1, Name: "web.default", Type: "A", Value: "10.0.0.1", TTL: 60, Status: "DISABLE", Remark: ours(web)}},
			want:    []string{"enable web.default A 10.0.0.1"}},
		{name: "gone", policy: Sync,
			current: []endpoint.Record{rec(1, "web.default", "A", "10.0.0.1", 60, ours(web))},
			want:    []string{"delete web.default A 10.0.0.1"}},
		{name: "gone but deletes not allowed", policy: Sync, noDeletes: true,
			current: []endpoint.Record{rec(1, "web.default", "A", "10.0.0.1", 60, ours(web))}},
		{name: "unowned records are never touched", policy: Sync,
			current: []endpoint.Record{rec(1, "db", "A", "10.0.0.9", 60, ""), rec(2, "x", "A", "10.0.0.8", 60, registry.Remark("other", web))}},
		{name: "identical unowned record: conflict", policy: Sync,
			desired: []endpoint.Endpoint{ep("web.default", "A", web, 60, "10.0.0.1")},
			current: []endpoint.Record{rec(1, "web.default", "A", "10.0.0.1", 60, "hand-made")}, conflicts: 1},
		{name: "identical unowned record: adopt when asked", policy: Sync,
			desired: []endpoint.Endpoint{{Name: "web.default", Type: "A", Targets: []string{"10.0.0.1"}, TTL: 60, Resource: web, Adopt: true}},
			current: []endpoint.Record{rec(1, "web.default", "A", "10.0.0.1", 60, "hand-made")},
			want:    []string{"adopt web.default A 10.0.0.1"}},
		{name: "another owner's record is not adopted", policy: Sync,
			desired: []endpoint.Endpoint{{Name: "web.default", Type: "A", Targets: []string{"10.0.0.1"}, TTL: 60, Resource: web, Adopt: true}},
			current: []endpoint.Record{rec(1, "web.default", "A", "10.0.0.1", 60, registry.Remark("other", web))}, conflicts: 1},
		{name: "unowned CNAME blocks A", policy: Sync,
			desired: []endpoint.Endpoint{ep("web.default", "A", web, 60, "10.0.0.1")},
			current: []endpoint.Record{rec(1, "web.default", "CNAME", "elsewhere.example.com", 60, "")}, conflicts: 1},
		{name: "our CNAME replaced by A: delete first", policy: Sync,
			desired: []endpoint.Endpoint{ep("web.default", "A", web, 60, "10.0.0.1")},
			current: []endpoint.Record{rec(1, "web.default", "CNAME", "lb.example.com", 60, ours(web))},
			want:    []string{"delete web.default CNAME lb.example.com", "create web.default A 10.0.0.1"}},
		{name: "CNAME and A wanted: CNAME dropped", policy: Sync,
			desired: []endpoint.Endpoint{ep("web.default", "A", web, 60, "10.0.0.1"), ep("web.default", "CNAME", "svc/default/lb", 60, "lb.example.com")},
			want:    []string{"create web.default A 10.0.0.1"}, conflicts: 1},
		{name: "two services, one name: values merged", policy: Sync,
			desired: []endpoint.Endpoint{ep("shared", "A", "svc/a/x", 60, "10.0.0.1"), ep("shared", "A", "svc/b/y", 60, "10.0.0.2", "10.0.0.1")},
			want:    []string{"create shared A 10.0.0.1", "create shared A 10.0.0.2"}},
		{name: "resource changed: remark updated", policy: Sync,
			desired: []endpoint.Endpoint{ep("web.default", "A", "svc/default/web2", 60, "10.0.0.1")},
			current: []endpoint.Record{rec(1, "web.default", "A", "10.0.0.1", 60, ours(web))},
			want:    []string{"remark web.default A 10.0.0.1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Calculate(Input{OwnerID: me, Policy: tc.policy, Desired: tc.desired, Current: tc.current, AllowDeletes: !tc.noDeletes})
			if got := ops(r); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("changes %q, want %q", got, tc.want)
			}
			if len(r.Conflicts) != tc.conflicts {
				t.Fatalf("conflicts %v, want %d", r.Conflicts, tc.conflicts)
			}
		})
	}
}

func TestCreateCarriesOwner(t *testing.T) {
	r := Calculate(Input{OwnerID: me, Policy: Sync, Desired: []endpoint.Endpoint{ep("a", "AAAA", "pod/ns/p", 5, "2001:db8::1")}})
	if len(r.Changes) != 1 {
		t.Fatal(r.Changes)
	}
	c := r.Changes[0]
	if o, res, ok := registry.Parse(c.Record.Remark); !ok || o != me || res != "pod/ns/p" || c.Record.TTL != 5 {
		t.Fatalf("create %+v", c)
	}
}

func TestParsePolicy(t *testing.T) {
	for _, p := range []string{"sync", "upsert-only", "create-only"} {
		if _, err := ParsePolicy(p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ParsePolicy(""); err == nil {
		t.Fatal("empty policy accepted")
	}
}
