package e2e

import (
	"bufio"
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
)

// ExternalDNSVersion is the release the e2e test runs; it must match the
// requirement in test/tools/externaldns/go.mod.
const ExternalDNSVersion = "v0.22.0"

// envExternalDNS names an external-dns binary to use instead of the cached
// build.
const envExternalDNS = "DNSACCEL_EXTERNAL_DNS"

// externalDNSPath returns <cache>/bin/external-dns-<version>, building
// sigs.k8s.io/external-dns with the test/tools/externaldns module when it
// is missing: under a file lock (parallel test packages build it once),
// into a temporary file renamed into place.
func externalDNSPath(ctx context.Context) (string, error) {
	if p := os.Getenv(envExternalDNS); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s: %w", envExternalDNS, err)
		}
		return p, nil
	}
	cache, err := cluster.CacheDir()
	if err != nil {
		return "", err
	}
	dst := filepath.Join(cache, "bin", "external-dns-"+ExternalDNSVersion)
	if executable(dst) {
		return dst, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	unlock, err := lockFile(ctx, dst+".lock")
	if err != nil {
		return "", fmt.Errorf("waiting for the build lock of %s: %w", dst, err)
	}
	defer unlock()
	if executable(dst) {
		return dst, nil
	}
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(root, "test", "tools", "externaldns")
	mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return "", err
	}
	if !bytes.Contains(mod, []byte("sigs.k8s.io/external-dns "+ExternalDNSVersion)) {
		return "", fmt.Errorf("%s/go.mod does not require sigs.k8s.io/external-dns %s: update ExternalDNSVersion", dir, ExternalDNSVersion)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("%s is not built and no go toolchain is in $PATH to build it", dst)
	}
	if stale, _ := filepath.Glob(dst + ".tmp-*"); len(stale) > 0 {
		for _, f := range stale {
			os.Remove(f)
		}
	}
	tmp := fmt.Sprintf("%s.tmp-%d", dst, os.Getpid())
	defer os.Remove(tmp)
	start := time.Now()
	fmt.Fprintf(os.Stderr, "externaldns/webhook/e2e: building external-dns %s into %s (minutes on a cold Go cache)...\n", ExternalDNSVersion, dst)
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags", "-s -w -X sigs.k8s.io/external-dns/pkg/apis/externaldns.Version="+ExternalDNSVersion,
		"-o", tmp, "sigs.k8s.io/external-dns")
	cmd.Dir = dir
	// -mod=readonly: never let GOFLAGS=-mod=mod rewrite the tools go.mod.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS="+strings.TrimSpace(os.Getenv("GOFLAGS")+" -mod=readonly"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	waitc := make(chan error, 1)
	go func() { waitc <- cmd.Wait() }()
	select {
	case err = <-waitc:
	case <-ctx.Done():
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-waitc
		err = ctx.Err()
	}
	if err != nil {
		return "", fmt.Errorf("building external-dns %s (go build in %s): %v; output tail:\n%s", ExternalDNSVersion, dir, err, lastLines(out.String(), 30))
	}
	if err := os.Rename(tmp, dst); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "externaldns/webhook/e2e: built external-dns in %s\n", time.Since(start).Round(time.Second))
	return dst, nil
}

func executable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 && st.Size() > 0
}

func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
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

func lastLines(s string, n int) string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
