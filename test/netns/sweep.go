package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/internal/owner"
)

// Check reports whether pods can be created here: root, network namespace
// support and iproute2. The error wraps ErrUnavailable.
func Check() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: netns pods need root (CAP_NET_ADMIN and CAP_SYS_ADMIN); run the tests as root, e.g. `sudo -E go test ./test/...`", ErrUnavailable)
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("%w: no network namespace support (/proc/self/ns/net: %v)", ErrUnavailable, err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("%w: iproute2 is not installed (`apt-get install iproute2`): %v", ErrUnavailable, err)
	}
	return nil
}

// Require skips the test (fails it when CI=true) if Check fails.
func Require(t testing.TB) {
	t.Helper()
	if err := Check(); err != nil {
		cluster.SkipOrFail(t, "%v", err)
	}
}

var sweepOnceVal sync.Once

// sweepOnce runs Sweep the first time a process creates a pod.
func sweepOnce() {
	sweepOnceVal.Do(func() {
		if err := Sweep(); err != nil {
			fmt.Fprintf(os.Stderr, "dnsaccel/test/netns: sweeping leftovers: %v\n", err)
		}
	})
}

// Sweep removes namespaces, host veths, /etc/netns directories and state
// files left behind by test binaries that died before cleaning up (crash,
// timeout, SIGKILL). Pods of test binaries that are still running are kept.
// New calls it once per process.
func Sweep() error {
	names := map[string]bool{}
	for _, pat := range []string{
		filepath.Join(stateDir, NamePrefix+"*"),
		filepath.Join(netnsRunDir, NamePrefix+"*"),
		filepath.Join(netnsEtcDir, NamePrefix+"*"),
	} {
		m, _ := filepath.Glob(pat)
		for _, p := range m {
			names[filepath.Base(p)] = true
		}
	}
	links, err := linkList()
	if err != nil {
		return err
	}
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, VethPrefix) {
			names[NamePrefix+strings.TrimPrefix(n, VethPrefix)] = true
		}
	}
	var errs []error
	for name := range names {
		if owner.Alive(filepath.Join(stateDir, name)) {
			continue
		}
		id := strings.TrimPrefix(name, NamePrefix)
		for _, f := range []func() error{
			func() error { return killNetnsProcesses(name) },
			func() error { return delLinkIfExists(VethPrefix + id) },
			func() error { return deleteNetns(name) },
			func() error { return os.RemoveAll(filepath.Join(netnsEtcDir, name)) },
			func() error { return rmIfExists(filepath.Join(stateDir, name)) },
		} {
			if err := f(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// linkList lists the host's links. A dump interrupted by concurrent changes
// (other tests adding veths) is retried; the partial result of the last try
// is still usable for sweeping.
func linkList() ([]netlink.Link, error) {
	for i := 0; ; i++ {
		links, err := netlink.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return links, err
		}
		if i == 10 {
			return links, nil
		}
	}
}
