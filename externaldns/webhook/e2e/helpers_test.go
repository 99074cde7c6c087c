package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/test/cluster"
)

var (
	binDir         string
	externalDNS    string // path, "" when unavailable
	externalDNSErr error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pvtz-webhook-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binDir = dir
	root, err := cluster.RepoRoot()
	if err == nil {
		cmd := exec.Command("go", "build", "-o", dir, "./cmd/pvtz-webhook", "./cmd/pvtz-sync", "./cmd/pvtzctl", "./cmd/cloud-emulator")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, berr := cmd.CombinedOutput(); berr != nil {
			err = fmt.Errorf("go build: %v\n%s", berr, out)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	externalDNS, externalDNSErr = externalDNSPath(ctx)
	cancel()
	code := cluster.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// needExternalDNS skips the test when ExternalDNS could not be built (or
// fails it in CI).
func needExternalDNS(t *testing.T) {
	t.Helper()
	if externalDNSErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("external-dns %s unavailable: %v", ExternalDNSVersion, externalDNSErr)
		}
		t.Skipf("external-dns %s unavailable: %v", ExternalDNSVersion, externalDNSErr)
	}
}

const (
	emuKeyID  = "LTAIwebhooke2e"
	emuSecret = "webhook-e2e-secret"
	vpc       = "vpc-e2e"
)

// proc is a running binary.
type proc struct {
	name   string
	cmd    *exec.Cmd
	out    *syncBuf // stdout + stderr
	done   chan struct{}
	t      *testing.T
	killed bool
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func start(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	path := bin
	if !filepath.IsAbs(bin) {
		path = filepath.Join(binDir, bin)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "ALIBABA_CLOUD_ECS_METADATA_DISABLED=true"}, env...)
	p := &proc{name: filepath.Base(bin), cmd: cmd, out: &syncBuf{}, done: make(chan struct{}), t: t}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s output (tail):\n%s", p.name, tailOf(p.out.String(), 40))
		}
	})
	return p
}

// stop sends SIGTERM, then SIGKILL after 5 s, and waits.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.stop()
		p.t.Fatalf("%s did not exit within %v; output:\n%s", p.name, d, tailOf(p.out.String(), 40))
	}
	return p.cmd.ProcessState.ExitCode()
}

func tailOf(s string, n int) string { return lastLines(s, n) }

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// emulator is a running bin/cloud-emulator.
type emulator struct {
	url string
	p   *proc
}

// startEmulator runs bin/cloud-emulator with extra flags (faults) and
// returns its URL from the "listening" line.
func startEmulator(t *testing.T, extra ...string) *emulator {
	t.Helper()
	args := append([]string{"--listen", "127.0.0.1:0", "--access-key-id", emuKeyID, "--access-key-secret", emuSecret, "--log-format", "json"}, extra...)
	p := start(t, "cloud-emulator", nil, args...)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(p.out.String()))
		for sc.Scan() {
			var l struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "listening" && l.Addr != "" {
				return &emulator{url: "http://" + l.Addr, p: p}
			}
		}
		if p.exited() {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling the log, not synchronisation
	}
	t.Fatalf("cloud-emulator did not report its address:\n%s", p.out.String())
	return nil
}

type emuStats struct {
	Total, Reads, Writes, Errors, Throttled, Faults int
	ByAction                                        map[string]int `json:"by_action"`
}

func (e *emulator) stats(t *testing.T) emuStats {
	t.Helper()
	resp, err := http.Get(e.url + "/_emulator/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s emuStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// fixture: an API server namespace per role, an emulator, the zone, an
// admin provider (the test's own eyes on the zone).
type fixture struct {
	t        *testing.T
	c        *cluster.Cluster
	nsED     string // ExternalDNS's Services
	nsSync   string // pvtz-sync's Services
	emu      *emulator
	admin    *provider.Provider
	zone     string
	zid      string
	whAddr   string
	whHealth string
}

func newFixture(t *testing.T, emuFlags ...string) *fixture {
	t.Helper()
	needExternalDNS(t)
	c := cluster.Shared(t)
	f := &fixture{t: t, c: c, nsED: c.CreateNamespace(t, "xdns-"), nsSync: c.CreateNamespace(t, "psync-")}
	f.emu = startEmulator(t, emuFlags...)
	p, err := provider.New(provider.Config{Endpoint: f.emu.url, Credential: credentials.NewStaticAKCredentialsProvider(emuKeyID, emuSecret),
		BaseBackoff: 5 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, MaxAttempts: 60,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	f.admin = p
	f.zone = f.nsED + ".internal"
	if f.zid, err = p.CreateZone(context.Background(), f.zone, vpc, "cn-hangzhou"); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) env() []string {
	return []string{"ALIBABA_CLOUD_ACCESS_KEY_ID=" + emuKeyID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET=" + emuSecret}
}

// webhook starts bin/pvtz-webhook and waits until it is ready.
func (f *fixture) webhook(extra ...string) *proc {
	f.t.Helper()
	f.whAddr, f.whHealth = freeAddr(f.t), freeAddr(f.t)
	args := append([]string{"--zone", f.zone, "--vpc-id", vpc, "--endpoint", f.emu.url, "--listen", f.whAddr, "--health", f.whHealth,
		"--log-format", "json"}, extra...)
	p := start(f.t, "pvtz-webhook", f.env(), args...)
	f.eventually(20*time.Second, "pvtz-webhook ready", func() (bool, string) {
		code, body := httpGet("http://" + f.whHealth + "/readyz")
		return code == 200, body
	})
	return p
}

// externalDNS starts ExternalDNS against the webhook.
func (f *fixture) externalDNS(extra ...string) *proc {
	f.t.Helper()
	args := append([]string{"--source=service", "--provider=webhook", "--webhook-provider-url=http://" + f.whAddr,
		"--registry=txt", "--txt-owner-id=e2e", "--namespace=" + f.nsED, "--kubeconfig=" + f.c.Kubeconfig,
		"--metrics-address=" + freeAddr(f.t), "--log-level=debug", "--interval=1s"}, extra...)
	return start(f.t, externalDNS, nil, args...)
}

// syncProc starts the real pvtz-sync for nsSync, owner id sync1.
func (f *fixture) pvtzSync() *proc {
	f.t.Helper()
	return start(f.t, "pvtz-sync", f.env(), "--kubeconfig", f.c.Kubeconfig, "--zone", f.zone, "--vpc-id", vpc, "--endpoint", f.emu.url,
		"--namespace", f.nsSync, "--owner-id", "sync1", "--policy", "sync", "--source", "service", "--interval", "2s",
		"--metrics", "", "--health", "", "--log-format", "json")
}

func (f *fixture) ctl(args ...string) (string, int) {
	f.t.Helper()
	p := start(f.t, "pvtzctl", f.env(), append([]string{"--endpoint", f.emu.url}, args...)...)
	code := p.wait(60 * time.Second)
	return p.out.String(), code
}

func (f *fixture) records() []endpoint.Record {
	f.t.Helper()
	recs, err := f.admin.Records(context.Background(), f.zid, "")
	if err != nil {
		f.t.Fatal(err)
	}
	return recs
}

// state is "name type" -> sorted "value/ttl/status/remark".
func state(recs []endpoint.Record, pred func(endpoint.Record) bool) map[string]string {
	by := map[string][]string{}
	for _, r := range recs {
		if pred != nil && !pred(r) {
			continue
		}
		v := r.Value
		if r.Type == "MX" {
			v = fmt.Sprintf("%d %s", r.Priority, v)
		}
		by[r.Name+" "+r.Type] = append(by[r.Name+" "+r.Type], fmt.Sprintf("%s/%d/%s/%s", v, r.TTL, r.Status, r.Remark))
	}
	out := map[string]string{}
	for k, v := range by {
		sort.Strings(v)
		out[k] = strings.Join(v, ",")
	}
	return out
}

func (f *fixture) eventually(d time.Duration, what string, cond func() (bool, string)) {
	f.t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("%s: not within %v; last state: %s", what, d, last)
		}
		time.Sleep(100 * time.Millisecond) // polling interval, not synchronisation
	}
}

func httpGet(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// service creates a Service in ns.
func (f *fixture) service(ns, name string, ann map[string]string, mutate func(*corev1.Service)) *corev1.Service {
	f.t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: ann},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
	if mutate != nil {
		mutate(svc)
	}
	out, err := f.c.Client.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

func (f *fixture) deleteService(ns, name string) {
	f.t.Helper()
	if err := f.c.Client.CoreV1().Services(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

const hostAnn = "external-dns.kubernetes.io/hostname"
const internalAnn = "external-dns.kubernetes.io/internal-hostname"
