package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// conflistFromManifest is the conflist the eni-cni ConfigMap ships.
func conflistFromManifest(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("../../manifests/base/eni-cni/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct{ Data map[string]string }
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	c, ok := cm.Data["10-dnsaccel.conflist"]
	if !ok {
		t.Fatalf("the ConfigMap has no 10-dnsaccel.conflist: %v", cm.Data)
	}
	return []byte(c)
}

// TestInstall: `eni-cni install` (the DaemonSet's init container) copies
// itself into the bin directory and writes the manifests' conflist; a bad
// conflist is refused, naming the key, and nothing is written.
func TestInstall(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "eni-cni")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/dnsaccel/dnsaccel/cmd/eni-cni").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	binDir, confDir, src := filepath.Join(dir, "opt-cni-bin"), filepath.Join(dir, "net.d"), filepath.Join(dir, "cm")
	for _, d := range []string{binDir, confDir, src} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conflist := conflistFromManifest(t)
	os.WriteFile(filepath.Join(src, "10-dnsaccel.conflist"), conflist, 0o644)
	out, err := exec.Command(bin, "install", "--bin-dir", binDir, "--conf-dir", confDir, "--conflist", filepath.Join(src, "10-dnsaccel.conflist")).CombinedOutput()
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	want, _ := os.ReadFile(bin)
	got, err := os.ReadFile(filepath.Join(binDir, "eni-cni"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("installed binary differs from eni-cni (%v)", err)
	}
	if fi, _ := os.Stat(filepath.Join(binDir, "eni-cni")); fi.Mode().Perm() != 0o755 {
		t.Fatalf("installed binary mode %v, want 0755", fi.Mode())
	}
	if c, _ := os.ReadFile(filepath.Join(confDir, "10-dnsaccel.conflist")); !bytes.Equal(c, conflist) {
		t.Fatalf("conflist not installed:\n%s", c)
	}
	// The installed binary works.
	cmd := exec.Command(filepath.Join(binDir, "eni-cni"))
	cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION")
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.1.0"}`)
	if v, err := cmd.Output(); err != nil || !strings.Contains(string(v), `"1.1.0"`) {
		t.Fatalf("installed eni-cni VERSION: %v %s", err, v)
	}

	// A bad conflist: refused, nothing written.
	bad := strings.Replace(string(conflist), `"veth"`, `"bridge"`, 1)
	if bad == string(conflist) {
		t.Fatal(`the manifest's conflist has no "veth" mode to break`)
	}
	os.WriteFile(filepath.Join(src, "99-bad.conflist"), []byte(bad), 0o644)
	out, err = exec.Command(bin, "install", "--bin-dir", binDir, "--conf-dir", confDir, "--conflist", filepath.Join(src, "99-bad.conflist")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `"mode"`) {
		t.Fatalf("bad mode installed or not named: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(confDir, "99-bad.conflist")); !os.IsNotExist(err) {
		t.Fatalf("a bad conflist was written: %v", err)
	}
	if ents, _ := os.ReadDir(binDir); len(ents) != 1 {
		t.Fatalf("bin dir holds %d files, want only eni-cni (temporary files left?)", len(ents))
	}
}
