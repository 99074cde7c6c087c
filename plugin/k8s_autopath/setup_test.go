package k8sautopath

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/coredns/caddy"
)

func TestParse(t *testing.T) {
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(rc, []byte("nameserver 192.0.2.53\nsearch Corp.Example ec2.internal\noptions ndots:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		input   string
		wantErr string // substring; "" = valid
		want    Config
	}{
		{input: "k8s_autopath", want: Config{Zone: "cluster.local.", Search: []string{"corp.example.", "ec2.internal."}}},
		{input: "k8s_autopath Cluster.Example", want: Config{Zone: "cluster.example.", Search: []string{"corp.example.", "ec2.internal."}}},
		{input: "k8s_autopath {\n kubeconfig /k\n node n1\n search a.example b.example.\n}",
			want: Config{Zone: "cluster.local.", Kubeconfig: "/k", Node: "n1", Search: []string{"a.example.", "b.example."}}},
		{input: "k8s_autopath {\n search\n}", want: Config{Zone: "cluster.local.", Search: []string{}}},
		{input: "k8s_autopath a b", wantErr: "Wrong argument count"},
		{input: "k8s_autopath .", wantErr: "root"},
		{input: "k8s_autopath {\n kubeconfig\n}", wantErr: "kubeconfig needs one FILE"},
		{input: "k8s_autopath {\n node a b\n}", wantErr: "node needs one NAME"},
		{input: "k8s_autopath {\n search bad..name\n}", wantErr: "not a domain name"},
		{input: "k8s_autopath {\n pods verified\n}", wantErr: `unknown option "pods"`},
		{input: "k8s_autopath\nk8s_autopath", wantErr: "once per server block"},
	}
	for _, tc := range tests {
		t.Run(tc.input, func(t *testing.T) {
			c := caddy.NewTestController("dns", tc.input)
			got, err := parseWith(c, rc)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if got.Zone != tc.want.Zone || got.Kubeconfig != tc.want.Kubeconfig || got.Node != tc.want.Node ||
				!slices.Equal(got.Search, tc.want.Search) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseMissingResolvConf(t *testing.T) {
	c := caddy.NewTestController("dns", "k8s_autopath")
	got, err := parseWith(c, filepath.Join(t.TempDir(), "absent"))
	if err != nil || len(got.Search) != 0 {
		t.Fatalf("got %+v, %v; want no extra search domains and no error", got, err)
	}
}
