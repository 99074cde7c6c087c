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

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/test/cluster"
)

func TestMain(m *testing.M) { cluster.Main(m) }

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

// TestServerSideDryRun applies the base and every overlay to the API server
// with server-side dry-run: schema, defaulting, admission and validation
// (Service IPs, priority classes, RBAC escalation checks) all run.
func TestServerSideDryRun(t *testing.T) {
	c := cluster.Shared(t)
	// The ACK overlay's kube-dns address is in ACK's service range; give
	// the API server that range too (ServiceCIDR, GA since 1.33).
	ctx := context.Background()
	_, err := c.Client.NetworkingV1().ServiceCIDRs().Create(ctx, &networkingv1.ServiceCIDR{
		ObjectMeta: metav1.ObjectMeta{Name: "ack-services"},
		Spec:       networkingv1.ServiceCIDRSpec{CIDRs: []string{"172.21.0.0/20"}},
	}, metav1.CreateOptions{})
	if err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("ServiceCIDR for the ACK overlay: %v", err)
	}
	for _, dir := range kustomizations(t) {
		t.Run(dir, func(t *testing.T) {
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
