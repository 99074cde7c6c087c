package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// sharedStartTimeout bounds Shared's start-up, including a kube-apiserver
// build on a cold cache.
const sharedStartTimeout = 20 * time.Minute

var shared struct {
	mu      sync.Mutex
	enabled bool
	opts    []Option
	once    sync.Once
	c       *Cluster
	err     error
}

// Main is for TestMain of packages whose tests use Shared:
//
//	func TestMain(m *testing.M) { cluster.Main(m) }
//
// It runs the tests and stops the shared cluster (if a test started it), then
// exits with the tests' exit code.
func Main(m *testing.M, opts ...Option) {
	os.Exit(Run(m, opts...))
}

// Run is Main without os.Exit, for a TestMain that does more set-up.
func Run(m *testing.M, opts ...Option) int {
	shared.mu.Lock()
	shared.enabled = true
	shared.opts = opts
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	c := shared.c
	shared.mu.Unlock()
	if c != nil {
		if code != 0 {
			fmt.Fprintf(os.Stderr, "dnsaccel/test/cluster: tests failed; shared cluster logs:\n%s", c.LogTail(15))
		}
		c.Stop()
	}
	return code
}

// Shared returns the API server shared by all tests of the package, starting
// it on first use (so `go test -run` of unrelated tests does not pay for it).
// TestMain must call Main or Run. If a prerequisite is missing (see
// ErrUnavailable) the test is skipped, or fails when CI=true. Any other start
// failure fails the test with the cause. Tests share the server: use own
// namespaces (CreateNamespace) or unique names.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	shared.mu.Lock()
	enabled := shared.enabled
	shared.mu.Unlock()
	if !enabled {
		t.Fatal("cluster.Shared needs `func TestMain(m *testing.M) { cluster.Main(m) }` in the test package")
	}
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), sharedStartTimeout)
		defer cancel()
		t0 := time.Now()
		c, err := Start(ctx, shared.opts...)
		shared.mu.Lock()
		shared.c, shared.err = c, err
		shared.mu.Unlock()
		if err == nil {
			t.Logf("shared test cluster %s started in %s (kube-apiserver %s, data in %s)", c.URL, time.Since(t0).Round(time.Millisecond), KubeVersion, c.Dir)
		}
	})
	shared.mu.Lock()
	c, err := shared.c, shared.err
	shared.mu.Unlock()
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			SkipOrFail(t, "test cluster unavailable: %v", err)
		}
		t.Fatalf("starting the shared test cluster: %v", err)
	}
	if err := c.Check(); err != nil {
		t.Fatalf("shared test cluster is broken: %v", err)
	}
	return c
}

// InCI reports whether $CI is true (as set by CI systems). In CI missing
// prerequisites fail tests instead of skipping them.
func InCI() bool {
	v, _ := strconv.ParseBool(os.Getenv("CI"))
	return v
}

// SkipOrFail skips the test with the given reason, or fails it when CI=true
// because CI must really run every test.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("%s (CI=true: failing instead of skipping)", msg)
	}
	t.Skip(msg)
}
