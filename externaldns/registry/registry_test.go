package registry

import (
	"strings"
	"testing"
)

func TestRemarkRoundTrip(t *testing.T) {
	tests := []struct{ owner, resource string }{
		{"c1", "svc/default/web"},
		{"cluster-a", "pod/kube-system/coredns-7d8f9-abcde"},
		{"abcdefghijklmnop", "svc/" + strings.Repeat("n", 63) + "/" + strings.Repeat("x", 63)},
	}
	for _, tc := range tests {
		r := Remark(tc.owner, tc.resource)
		if len(r) > MaxRemark {
			t.Fatalf("%q: %d characters", r, len(r))
		}
		o, res, ok := Parse(r)
		if !ok || o != tc.owner || !SameResource(tc.owner, res, tc.resource) {
			t.Fatalf("Parse(%q) = %q %q %v", r, o, res, ok)
		}
		if SameResource(tc.owner, res, tc.resource+"x") {
			t.Fatalf("%q matches another resource", res)
		}
	}
	if Namespace("svc/default/web") != "default" {
		t.Fatal("namespace")
	}
}

func TestParseRejects(t *testing.T) {
	for _, r := range []string{"", "managed by hand", "ed;o=;r=svc/a/b", "ed;o=UPPER;r=x", "ed;o=a", "heritage=external-dns,external-dns/owner=a"} {
		if _, _, ok := Parse(r); ok {
			t.Errorf("Parse(%q) accepted", r)
		}
	}
}

func TestValidateOwnerID(t *testing.T) {
	for id, ok := range map[string]bool{"a": true, "cluster-1": true, "": false, "-a": false, "A": false, "abcdefghijklmnopq": false, "a;b": false} {
		if err := ValidateOwnerID(id); (err == nil) != ok {
			t.Errorf("ValidateOwnerID(%q) = %v", id, err)
		}
	}
}
