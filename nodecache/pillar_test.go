package nodecache

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestFillPillars fills in the node-local-dns-style Corefile the manifests
// ship, and rejects placeholders without a value or unknown to node-cache.
func TestFillPillars(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "manifests", "base", "node-cache", "configmap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		t.Fatal(err)
	}
	shipped := cm.Data["Corefile"]
	if !strings.Contains(shipped, "__PILLAR__") {
		t.Fatal("the shipped Corefile has no placeholders")
	}
	full := Config{
		Upstreams:        []string{"10.0.0.2:53", "10.0.0.3:53"},
		ClusterUpstreams: []string{"10.96.0.11:53"},
		ClusterDomain:    "cluster.local",
		Steer:            Steer{LocalIPs: []string{"169.254.20.10"}, ClusterDNS: []string{"10.96.0.10"}},
	}
	tests := []struct {
		name    string
		cfg     Config
		in      string
		want    []string // substrings of the result
		wantErr string
	}{
		{name: "shipped Corefile", cfg: full, in: shipped, want: []string{
			"cluster.local:53 {", "bind 169.254.20.10", "nodecache 10.96.0.11:53 {", "nodecache 10.0.0.2:53 10.0.0.3:53 {",
			"k8s_autopath cluster.local {",
		}},
		{name: "ports stripped where an IP is wanted", cfg: Config{Steer: Steer{LocalIPs: []string{"[fd00::10]:53"}}},
			in: "bind __PILLAR__LOCAL__DNS__", want: []string{"bind fd00::10"}},
		{name: "no value", cfg: Config{ClusterDomain: "cluster.local"}, in: shipped, wantErr: "__PILLAR__CLUSTER__DNS__ has no value: set --cluster-upstream"},
		{name: "unknown placeholder", cfg: full, in: "forward . __PILLAR__NOPE__", wantErr: "__PILLAR__NOPE__ is not a placeholder"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Conf = "Corefile"
			got, err := tc.cfg.fillPillars(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(got, "__PILLAR__") {
				t.Fatalf("placeholders left:\n%s", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in:\n%s", w, got)
				}
			}
		})
	}
}
