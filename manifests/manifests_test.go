// Package manifests holds dnsaccel's kustomize base and overlays; its tests
// apply them to a real API server.
package manifests

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

func TestMain(m *testing.M) {
	code := cluster.Run(m)
	steertest.RemoveBinaries()
	os.Exit(code)
}

// kustomizations lists every directory holding a kustomization.yaml.
func kustomizations(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(".", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "kustomization.yaml" {
			dirs = append(dirs, filepath.Dir(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 3 {
		t.Fatalf("found %d kustomizations: %v", len(dirs), dirs)
	}
	return dirs
}

func kubectl(t *testing.T, c *cluster.Cluster, args ...string) (string, error) {
	t.Helper()
	bin, err := cluster.BinaryPath("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

// serviceRanges are the Service ranges of the clusters overlays are made
// for, where it is not the test API server's: a server-side dry run checks
// a Service's clusterIP against the server's primary range only.
var serviceRanges = map[string]string{
	filepath.Join("overlays", "ack"):      "172.21.0.0/20", // ACK's default
	filepath.Join("overlays", "realnode"): "10.230.0.0/20", // test/realnode's
}

// TestServerSideDryRun applies the base and every overlay to the API server
// with server-side dry-run: schema, defaulting, admission and validation
// (Service IPs, priority classes, RBAC escalation checks) all run.
func TestServerSideDryRun(t *testing.T) {
	shared := cluster.Shared(t)
	for _, dir := range kustomizations(t) {
		t.Run(dir, func(t *testing.T) {
			c := shared
			if cidr, ok := serviceRanges[dir]; ok {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				var err error
				if c, err = cluster.Start(ctx, cluster.WithServiceCIDR(cidr)); err != nil {
					cluster.SkipOrFail(t, "API server with Service range %s: %v", cidr, err)
				}
				defer c.Stop()
			}
			out, err := kubectl(t, c, "apply", "--dry-run=server", "-k", dir)
			if err != nil {
				t.Fatalf("kubectl apply --dry-run=server -k %s: %v\n%s", dir, err, out)
			}
			if !strings.Contains(out, "(server dry run)") {
				t.Fatalf("no server dry run in the output:\n%s", out)
			}
		})
	}
}
