package nodecache

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/dnstest"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

func TestResolvConfUpstreams(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("# c\nsearch a.b\nnameserver 192.0.2.1\nnameserver fd00::53\nnameserver bogus\noptions ndots:5\n"), 0o644)
	got, err := ResolvConfUpstreams(p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "192.0.2.1:53,[fd00::53]:53" {
		t.Fatalf("got %v", got)
	}
}

func TestGeneratedCorefile(t *testing.T) {
	c := Config{Listen: []string{"127.0.0.1:53", "169.254.20.10:53", "127.0.0.1:5301"}, Upstreams: []string{"127.0.0.1:5300"}, Metrics: ":9253"}
	cf := c.Corefile()
	for _, want := range []string{".:53 {\n    bind 127.0.0.1 169.254.20.10\n", ".:5301 {\n    bind 127.0.0.1\n", "nodecache 127.0.0.1:5300 {", "prometheus :9253"} {
		if !strings.Contains(cf, want) {
			t.Errorf("generated Corefile lacks %q:\n%s", want, cf)
		}
	}
}

// TestBinary runs the real bin/node-cache against a real upstream: answers,
// health, readiness, metrics, and a clean exit on SIGTERM.
func TestBinary(t *testing.T) {
	bin := buildBinary(t)
	upAddr := startUpstream(t)
	listen, metrics, health := freeAddr(t), freeAddr(t), freeAddr(t)

	var logs bytes.Buffer
	cmd := command(bin, "--listen", listen, "--upstream", upAddr, "--metrics", metrics, "--health", health)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
	})

	waitFor(t, "ready", func() bool { return httpGet(health, "/ready") == 200 })
	for _, p := range []string{"/healthz", "/readyz", "/health", "/ready"} {
		if code := httpGet(health, p); code != 200 {
			t.Fatalf("%s: %d", p, code)
		}
	}
	for i := 0; i < 3; i++ {
		m := new(dns.Msg)
		m.SetQuestion("www.example.test.", dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, listen)
		if err != nil || len(r.Answer) != 1 {
			t.Fatalf("query %d: %v %v\n%s", i, err, r, logs.String())
		}
	}
	// The fast path counts a miss in CoreDNS's own metrics just after its
	// reply has left: on a busy machine the scrape can come first.
	names := []string{"coredns_nodecache_misses_total", "coredns_nodecache_upstream_requests_total", "coredns_dns_requests_total"}
	var body string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		body = httpBody(t, metrics, "/metrics")
		if !slices.ContainsFunc(names, func(n string) bool { return !strings.Contains(body, n) }) || time.Now().After(deadline) {
			break
		}
	}
	for _, name := range names {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no exit 10 s after SIGTERM\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `"msg":"shutting down"`) {
		t.Errorf("no structured shutdown log:\n%s", logs.String())
	}
}

func TestBinaryRejectsBadFlags(t *testing.T) {
	bin := buildBinary(t)
	out, err := command(bin, "--listen", "127.0.0.1:53", "--upstream", "127.0.0.1:53").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "itself") {
		t.Fatalf("want exit 2 naming the loop, got %v: %s", err, out)
	}
	out, _ = command(bin, "--help").CombinedOutput()
	for _, f := range []string{"--listen", "--upstream", "--conf", "--metrics", "--health", "--resolv-conf",
		"--kubeconfig", "--node-name", "--cluster-domain", "--cluster-upstream", "--print-config", "--cache-max-bytes"} {
		if !strings.Contains(string(out), f) {
			t.Errorf("--help does not explain %s", f)
		}
	}
}

// command runs bin/node-cache outside any cluster it might find around it:
// a test run inside a pod must not switch the binary to Kubernetes mode.
func command(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBERNETES_SERVICE_") && !strings.HasPrefix(kv, "NODE_NAME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// buildBinary builds bin/node-cache once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "node-cache-test-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "node-cache")
		if out, err := exec.Command("go", "build", "-o", binPath, "../cmd/node-cache").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	// node-cache sets net.ipv4.tcp_migrate_req (and leaves it set, for its
	// successors); the tests leave the machine as they found it.
	migrateReq, migrateErr := os.ReadFile(tcpMigrateReq)
	code := cluster.Run(m) // the Kubernetes-mode tests share one API server
	if migrateErr == nil {
		os.WriteFile(tcpMigrateReq, migrateReq, 0o644)
	}
	steertest.RemoveBinaries()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

func startUpstream(t *testing.T) string {
	t.Helper()
	return dnstest.NewServer(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A 192.0.2.9")
		m.Answer = append(m.Answer, rr)
		w.WriteMsg(m)
	})).Addr
}

func freeAddr(t *testing.T) string {
	t.Helper()
	a, err := dnstest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func httpGet(addr, path string) int {
	c := &http.Client{Timeout: time.Second}
	resp, err := c.Get(fmt.Sprintf("http://%s%s", addr, path))
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func httpBody(t *testing.T, addr, path string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(fmt.Sprintf("http://%s%s", addr, path))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
