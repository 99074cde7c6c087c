package steertest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// PrivateBPFFS mounts a bpf file system of this process's own at a new
// directory <TempDir>/<prefix><pid>-<tag>-<random>, for the pins of the
// eBPF programs a benchmark attaches (node-cache --bpffs). unmount removes
// it, and with it every pin. The name lets SweepBPFFS find it when this
// process was killed before unmounting; tag (without "-") says what else the
// process left, such as an address.
func PrivateBPFFS(prefix, tag string) (dir string, unmount func(), err error) {
	if strings.Contains(tag, "-") {
		return "", nil, fmt.Errorf("bpffs tag %q: no '-' allowed", tag)
	}
	dir, err = os.MkdirTemp("", fmt.Sprintf("%s%d-%s-", prefix, os.Getpid(), tag))
	if err != nil {
		return "", nil, err
	}
	if err := unix.Mount("bpffs", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		return "", nil, fmt.Errorf("mounting a bpf file system at %s: %w", dir, err)
	}
	return dir, func() { unix.Unmount(dir, unix.MNT_DETACH); os.Remove(dir) }, nil
}

// SweepBPFFS unmounts the PrivateBPFFS mounts (with this prefix) of
// processes that no longer run, and calls gone with the tag of each, to
// remove what else they left.
func SweepBPFFS(prefix string, gone func(tag string)) {
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != "bpf" || filepath.Dir(f[1]) != filepath.Clean(os.TempDir()) {
			continue
		}
		rest, ok := strings.CutPrefix(filepath.Base(f[1]), prefix)
		if !ok {
			continue
		}
		pid, rest, _ := strings.Cut(rest, "-")
		tag, _, _ := strings.Cut(rest, "-")
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue // its owner runs
		}
		if unix.Unmount(f[1], unix.MNT_DETACH) == nil {
			os.Remove(f[1])
		}
		if gone != nil {
			gone(tag)
		}
	}
}
