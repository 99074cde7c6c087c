package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestVersion: CNI VERSION lists spec 1.1.0.
func TestVersion(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "eni-cni")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/dnsaccel/dnsaccel/cmd/eni-cni").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION")
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.1.0"}`)
	out, err := cmd.Output()
	if err != nil || !strings.Contains(string(out), `"1.1.0"`) {
		t.Fatalf("VERSION: %v %s", err, out)
	}
	// A bad mode is a configuration error (code 7) naming the key.
	cmd = exec.Command(bin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=STATUS", "CNI_PATH=/nonexistent")
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.1.0","name":"n","type":"eni-cni","mode":"bridge"}`)
	out, _ = cmd.Output()
	if !strings.Contains(string(out), `"code": 7`) || !strings.Contains(string(out), "mode") {
		t.Fatalf("bad mode: %s", out)
	}
}
