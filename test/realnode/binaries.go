package realnode

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/internal/spawn"
)

// ContainerdVersion is the containerd release the node runs, built from its
// Go module (static, CGO_ENABLED=0) into the cache.
const ContainerdVersion = "v2.4.2"

// ContainerdCommands are the commands of github.com/containerd/containerd/v2
// the node needs.
var ContainerdCommands = []string{"containerd", "containerd-shim-runc-v2", "ctr"}

// ContainerdDir is <cache>/containerd-<ContainerdVersion>/bin, holding
// ContainerdCommands once EnsureContainerd has run.
func ContainerdDir() (string, error) {
	c, err := cluster.CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(c, "containerd-"+ContainerdVersion, "bin"), nil
}

func containerdComplete(dir string) bool {
	for _, c := range ContainerdCommands {
		if !isExecutable(filepath.Join(dir, c)) {
			return false
		}
	}
	return true
}

// EnsureContainerd returns ContainerdDir, building containerd,
// containerd-shim-runc-v2 and ctr first if they are not cached (`go
// install ...@ContainerdVersion` into a temporary directory under a file
// lock, renamed into place: parallel callers build once). The build takes
// about 1.5 minutes on 2 idle cores.
func EnsureContainerd(ctx context.Context) (string, error) {
	dst, err := ContainerdDir()
	if err != nil {
		return "", err
	}
	if containerdComplete(dst) {
		return dst, nil
	}
	parent := filepath.Dir(dst)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", err
	}
	unlock, err := lockFile(ctx, parent+".lock")
	if err != nil {
		return "", fmt.Errorf("waiting for the build lock of %s: %w", parent, err)
	}
	defer unlock()
	if containerdComplete(dst) {
		return dst, nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("%w: containerd is not built (%s) and no go toolchain is in $PATH", cluster.ErrUnavailable, dst)
	}
	tmp, err := os.MkdirTemp(parent, "bin.tmp-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	args := []string{"install", "-trimpath"}
	for _, c := range ContainerdCommands {
		args = append(args, "github.com/containerd/containerd/v2/cmd/"+c+"@"+ContainerdVersion)
	}
	fmt.Fprintf(os.Stderr, "dnsaccel/test/realnode: building containerd %s into %s (about 1.5 minutes)...\n", ContainerdVersion, dst)
	t0 := time.Now()
	cmd := exec.Command(goBin, args...)
	cmd.Dir = tmp // outside any module: `go install pkg@version` resolves it alone
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=", "GOBIN="+tmp)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := spawn.Start(cmd); err != nil {
		return "", err
	}
	waitc := make(chan error, 1)
	go func() { waitc <- cmd.Wait() }()
	select {
	case err = <-waitc:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-waitc
		err = ctx.Err()
	}
	if err != nil {
		return "", fmt.Errorf("building containerd %s: %v\n%s", ContainerdVersion, err, tail(out.String(), 30))
	}
	if !containerdComplete(tmp) {
		return "", fmt.Errorf("building containerd %s: go install left no binaries in %s", ContainerdVersion, tmp)
	}
	_ = os.RemoveAll(dst) // an incomplete earlier copy
	if err := os.Rename(tmp, dst); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "dnsaccel/test/realnode: built containerd in %s\n", time.Since(t0).Round(time.Second))
	return dst, nil
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 && st.Size() > 0
}

// lockFile takes an exclusive flock on path, polling until ctx is done.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
