package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/dnsaccel/dnsaccel/test/internal/spawn"
)

// KubeVersion is the Kubernetes release whose kube-apiserver (and kubectl)
// the harness runs. It must match the k8s.io/kubernetes requirement in
// test/tools/kube/go.mod; the build refuses to run if they disagree.
const KubeVersion = "v1.36.3"

// ModulePath is the main module of the repository; RepoRoot looks for its go.mod.
const ModulePath = "github.com/dnsaccel/dnsaccel"

// Environment variables understood by the package.
const (
	// EnvCache overrides the cache directory (default $XDG_CACHE_HOME/dnsaccel
	// or $HOME/.cache/dnsaccel).
	EnvCache = "DNSACCEL_CACHE"
	// EnvKubeAPIServer points at a kube-apiserver binary to use instead of the
	// cached build (it should be KubeVersion).
	EnvKubeAPIServer = "DNSACCEL_KUBE_APISERVER"
	// EnvEtcd points at the etcd binary (default: etcd from $PATH, then /usr/bin/etcd).
	EnvEtcd = "DNSACCEL_ETCD"
	// EnvRepoRoot overrides repository root detection.
	EnvRepoRoot = "DNSACCEL_REPO_ROOT"
	// EnvKeep keeps the cluster data directory (logs, etcd data) after Stop.
	EnvKeep = "DNSACCEL_CLUSTER_KEEP"
)

// CacheDir returns the harness cache directory: $DNSACCEL_CACHE if set, else
// $XDG_CACHE_HOME/dnsaccel, else $HOME/.cache/dnsaccel.
func CacheDir() (string, error) {
	if d := os.Getenv(EnvCache); d != "" {
		return filepath.Abs(d)
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "dnsaccel"), nil
	}
	home := os.Getenv("HOME")
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("cannot determine cache directory: set %s: %w", EnvCache, err)
		}
		home = h
	}
	return filepath.Join(home, ".cache", "dnsaccel"), nil
}

// BinaryPath returns where the cached binary name (e.g. "kube-apiserver" or
// "kubectl") of KubeVersion lives: <cache>/bin/<name>-<KubeVersion>.
func BinaryPath(name string) (string, error) {
	c, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(c, "bin", name+"-"+KubeVersion), nil
}

// RepoRoot returns the root of the github.com/dnsaccel/dnsaccel checkout. It
// walks up from the working directory (the package directory under go test)
// and, failing that, from this source file's directory.
func RepoRoot() (string, error) {
	if d := os.Getenv(EnvRepoRoot); d != "" {
		if isRepoRoot(d) {
			return filepath.Abs(d)
		}
		return "", fmt.Errorf("%s=%s does not contain the go.mod of %s", EnvRepoRoot, d, ModulePath)
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, s := range starts {
		for d := s; ; d = filepath.Dir(d) {
			if isRepoRoot(d) {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("cannot find the repository root (go.mod of module %s) above %v; set %s", ModulePath, starts, EnvRepoRoot)
}

func isRepoRoot(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == ModulePath {
			return true
		}
	}
	return false
}

// toolsDir returns test/tools/kube and checks that its go.mod requires
// k8s.io/kubernetes at KubeVersion.
func toolsDir() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "test", "tools", "kube")
	v, err := toolsKubeVersion(filepath.Join(dir, "go.mod"))
	if err != nil {
		return "", err
	}
	if v != KubeVersion {
		return "", fmt.Errorf("%s requires k8s.io/kubernetes %s but cluster.KubeVersion is %s: update the constant in test/cluster/binaries.go", filepath.Join(dir, "go.mod"), v, KubeVersion)
	}
	return dir, nil
}

func toolsKubeVersion(gomod string) (string, error) {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && f[0] == "require" {
			f = f[1:]
		}
		if len(f) >= 2 && f[0] == "k8s.io/kubernetes" {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%s does not require k8s.io/kubernetes", gomod)
}

// KubeAPIServerPath returns the kube-apiserver binary to run, building it
// into the cache first if it is not there yet (see EnsureBinary).
func KubeAPIServerPath(ctx context.Context) (string, error) {
	if p := os.Getenv(EnvKubeAPIServer); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s: %w", EnvKubeAPIServer, err)
		}
		return p, nil
	}
	return EnsureBinary(ctx, "kube-apiserver")
}

// EnsureBinaries builds kube-apiserver and kubectl of KubeVersion into the
// cache unless they are already there. The Makefile calls it (through
// `go run ./test/cluster/cmd/build-kube`) so tests start with a warm cache.
func EnsureBinaries(ctx context.Context) error {
	for _, n := range []string{"kube-apiserver", "kubectl"} {
		if _, err := EnsureBinary(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// KubeBinaries are the commands of k8s.io/kubernetes the harness can build
// (test/tools/kube/tools.go pins each of them).
var KubeBinaries = []string{"kube-apiserver", "kubectl", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"}

// versionLDFlags stamps the release into a binary built from the module, as
// the Kubernetes release build does; without it the binaries report
// v0.0.0-master+$Format:%H$, which kubectl and the kubelet refuse to parse.
func versionLDFlags() string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(KubeVersion, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	var b strings.Builder
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		fmt.Fprintf(&b, " -X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s -X %s.gitTreeState=clean", pkg, KubeVersion, pkg, major, pkg, minor, pkg)
	}
	return strings.TrimSpace(b.String())
}

// EnsureBinary returns <cache>/bin/<name>-<KubeVersion>, building
// k8s.io/kubernetes/cmd/<name> with the test/tools/kube module if it is
// missing. Concurrent callers (also in other processes, e.g. parallel test
// packages) are serialised by a file lock, so the binary is built once.
// name is one of KubeBinaries.
func EnsureBinary(ctx context.Context, name string) (string, error) {
	known := false
	for _, k := range KubeBinaries {
		known = known || k == name
	}
	if !known {
		return "", fmt.Errorf("unknown binary %q (known: %s)", name, strings.Join(KubeBinaries, ", "))
	}
	dst, err := BinaryPath(name)
	if err != nil {
		return "", err
	}
	if isExecutable(dst) {
		return dst, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", fmt.Errorf("%s is not built and the cache directory is not usable (set %s?): %w", dst, EnvCache, err)
	}
	unlock, err := lockFile(ctx, dst+".lock")
	if err != nil {
		return "", fmt.Errorf("waiting for the build lock of %s: %w", dst, err)
	}
	defer unlock()
	if isExecutable(dst) { // built by someone else while we waited
		return dst, nil
	}
	dir, err := toolsDir()
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		if p := filepath.Join(os.Getenv("GOROOT"), "bin", "go"); os.Getenv("GOROOT") != "" && isExecutable(p) {
			goBin = p
		} else {
			return "", fmt.Errorf("%w: %s is not built and no go toolchain is in $PATH to build it", ErrUnavailable, dst)
		}
	}
	// Output of builds that died with their test binary.
	if stale, _ := filepath.Glob(dst + ".tmp-*"); len(stale) > 0 {
		for _, f := range stale {
			os.Remove(f)
		}
	}
	tmp := fmt.Sprintf("%s.tmp-%d", dst, os.Getpid())
	defer os.Remove(tmp)
	start := time.Now()
	fmt.Fprintf(os.Stderr, "dnsaccel/test/cluster: building %s %s into %s (takes minutes on a cold Go cache)...\n", name, KubeVersion, dst)
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags", versionLDFlags(), "-o", tmp, "k8s.io/kubernetes/cmd/"+name)
	cmd.Dir = dir
	// -mod=readonly: never let a GOFLAGS=-mod=mod from the environment
	// rewrite test/tools/kube/go.mod.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -mod=readonly"))
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// Dies with the test binary (e.g. killed by go test -timeout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := spawn.Start(cmd); err != nil {
		return "", fmt.Errorf("running go build: %w", err)
	}
	waitc := make(chan error, 1)
	go func() { waitc <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-waitc:
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-waitc
		werr = ctx.Err()
	}
	if werr != nil {
		return "", fmt.Errorf("building %s %s failed (go build in %s: %v); output tail:\n%s", name, KubeVersion, dir, werr, tail(out.String(), 30))
	}
	if err := os.Rename(tmp, dst); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "dnsaccel/test/cluster: built %s in %s\n", name, time.Since(start).Round(time.Second))
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
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	announced := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, err
		}
		if !announced {
			fmt.Fprintf(os.Stderr, "dnsaccel/test/cluster: waiting for another process building into %s\n", filepath.Dir(path))
			announced = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fileTail returns the last n lines of the file at path (reading at most the
// last 64 KiB).
func fileTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	const max = 64 << 10
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	n2, _ := f.ReadAt(buf, off)
	return tail(string(buf[:n2]), n)
}
