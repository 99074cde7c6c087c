package datapath

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// DetectCgroup2 returns the mount point of the cgroup v2 hierarchy:
// /sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid ones.
func DetectCgroup2() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("cgroup v2: reading mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var found []string
	for sc.Scan() {
		// id parent major:minor root mountpoint opts... - fstype source superopts
		line := sc.Text()
		i := strings.Index(line, " - ")
		if i < 0 {
			continue
		}
		fields, post := strings.Fields(line[:i]), strings.Fields(line[i+3:])
		if len(fields) >= 5 && len(post) >= 1 && post[0] == "cgroup2" {
			found = append(found, unescapeMount(fields[4]))
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("cgroup v2: reading mounts: %w", err)
	}
	if len(found) == 0 {
		return "", errors.New("cgroup v2: no cgroup2 file system is mounted (steering attaches to the cgroup v2 root; mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`, or give --cgroup)")
	}
	for _, p := range found {
		if p == "/sys/fs/cgroup" || p == "/sys/fs/cgroup/unified" {
			return p, nil
		}
	}
	return found[0], nil
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// Check reports, with an error naming it, the first missing prerequisite
// for steering: cgroup v2 at cgroup, permission to use BPF, and a kernel
// with cgroup sock_addr programs and bpf links (Linux 5.8+, for the
// getpeername hooks).
func Check(cgroup string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroup, &st); err != nil {
		return fmt.Errorf("cgroup v2 at %s: %w", cgroup, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("cgroup v2: %s is not a cgroup v2 mount (a v1 hierarchy or another file system); give the cgroup2 mount with --cgroup", cgroup)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return fmt.Errorf("BPF permission: creating a map was refused (needs CAP_BPF and CAP_NET_ADMIN, or root): %w", err)
		}
		return fmt.Errorf("BPF: creating a map: %w", err)
	}
	m.Close()
	if err := features.HaveProgramType(ebpf.CGroupSockAddr); err != nil {
		return fmt.Errorf("kernel feature missing: cgroup sock_addr programs (Linux 4.17+): %w", err)
	}
	var un unix.Utsname
	if err := unix.Uname(&un); err == nil {
		rel := unix.ByteSliceToString(un.Release[:])
		var major, minor int
		if _, err := fmt.Sscanf(rel, "%d.%d", &major, &minor); err == nil && (major < 5 || major == 5 && minor < 8) {
			return fmt.Errorf("old kernel: steering needs Linux 5.8+ (getpeername hooks, cgroup bpf links); this is %s", rel)
		}
	}
	return nil
}

// EnsureBPFFS makes sure path is a bpf file system, mounting one on it if it
// is not (the directory must exist). It reports whether it mounted.
func EnsureBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("bpf file system at %s: %w", path, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return false, nil
	}
	if err := unix.Mount("bpffs", path, "bpf", 0, "mode=0700"); err != nil {
		return false, fmt.Errorf("bpf file system: %s is not one and mounting one there failed: %w", path, err)
	}
	return true, nil
}

// Cgroup2Dir returns dir, or dir/unified when dir is not a cgroup v2 mount
// but dir/unified is: the host's /sys/fs/cgroup of a hybrid layout (v1
// controllers, v2 at unified), as a DaemonSet mounts it from the host.
func Cgroup2Dir(dir string) string {
	if isCgroup2(dir) {
		return dir
	}
	if u := filepath.Join(dir, "unified"); isCgroup2(u) {
		return u
	}
	return dir
}

func isCgroup2(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}
