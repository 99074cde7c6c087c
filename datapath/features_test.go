package datapath

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckNamesCgroupV2(t *testing.T) {
	err := Check(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "cgroup v2") {
		t.Fatalf("Check on a plain directory: %v, want an error naming cgroup v2", err)
	}
}

// TestHybridCgroup2: a --cgroup that is the v1 side of a hybrid layout
// (here /sys/fs/cgroup, a tmpfs, with v2 at unified) resolves to the v2 mount.
func TestHybridCgroup2(t *testing.T) {
	v2, err := DetectCgroup2()
	if err != nil {
		t.Skipf("no cgroup v2 mount: %v", err)
	}
	if filepath.Base(v2) != "unified" {
		t.Skipf("not a hybrid layout (cgroup v2 at %s)", v2)
	}
	parent := filepath.Dir(v2)
	if got := Cgroup2Dir(parent); got != v2 {
		t.Fatalf("Cgroup2Dir(%s) = %s, want %s", parent, got, v2)
	}
	if got := Cgroup2Dir(v2); got != v2 {
		t.Fatalf("Cgroup2Dir(%s) = %s", v2, got)
	}
	if got := Cgroup2Dir(t.TempDir()); isCgroup2(got) {
		t.Fatalf("a plain directory resolved to cgroup v2 %s", got)
	}
}
