package main

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func build(t *testing.T, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestFlags: every flag of the issue is in --help with its default, and a
// bad configuration exits 2 naming the flag.
func TestFlags(t *testing.T) {
	bin := build(t, "github.com/dnsaccel/dnsaccel/cmd/eni-agent")
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	for _, f := range []string{"--socket", "/run/dnsaccel/eni-agent.sock", "--state", "/var/lib/dnsaccel/eni.db", "--endpoint",
		"--metadata-endpoint", "http://100.100.100.200", "--region", "--vswitches", "--security-groups", "--min-idle", "--max-idle",
		"--qps", "--kubeconfig", "--node-name", "--metrics", "--health"} {
		if !strings.Contains(string(out), f) {
			t.Errorf("--help lacks %s", f)
		}
	}
	out, err = exec.Command(bin, "--min-idle", "5", "--max-idle", "2").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "--max-idle") {
		t.Fatalf("bad watermarks: %v\n%s", err, out)
	}
}
