package e2e

import (
	"bytes"
	"context"
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
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz/pvtztest"
	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/test/cluster"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pvtz-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binDir = dir
	root, err := repoRoot()
	if err == nil {
		cmd := exec.Command("go", "build", "-o", dir, "./cmd/pvtz-sync", "./cmd/pvtzctl")
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
	code := cluster.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

func repoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", fmt.Errorf("go.mod not found above the working directory")
		}
		d = p
	}
}

// fixture: an emulator, a zone, a namespace, an SDK provider.
type fixture struct {
	t    *testing.T
	c    *cluster.Cluster
	ns   string
	emu  *pvtztest.Emulator
	p    *provider.Provider
	zone string
	zid  string
}

func newFixture(t *testing.T, cfg openapi.Config) *fixture {
	t.Helper()
	c := cluster.Shared(t)
	ns := c.CreateNamespace(t, "pvtz-")
	emu := pvtztest.Start(t, cfg)
	p, err := provider.New(provider.Config{Endpoint: emu.URL,
		Credential:  credentials.NewStaticAKCredentialsProvider(pvtztest.AccessKeyID, pvtztest.AccessKeySecret),
		BaseBackoff: 5 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, MaxAttempts: 50,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	zone := ns + ".internal"
	zid, err := p.CreateZone(context.Background(), zone, "vpc-test", "cn-hangzhou")
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, c: c, ns: ns, emu: emu, p: p, zone: zone, zid: zid}
}

// proc is a running binary.
type proc struct {
	cmd    *exec.Cmd
	stdout *syncBuf
	stderr *syncBuf
	done   chan struct{}
	err    error
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func (f *fixture) env(keyID, secret string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + f.t.TempDir(),
		"ALIBABA_CLOUD_ACCESS_KEY_ID=" + keyID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET=" + secret,
		"ALIBABA_CLOUD_ECS_METADATA_DISABLED=true"}
	return env
}

// syncArgs are the flags every run shares.
func (f *fixture) syncArgs(extra ...string) []string {
	return append([]string{"--kubeconfig", f.c.Kubeconfig, "--zone", f.zone, "--vpc-id", "vpc-test", "--endpoint", f.emu.URL,
		"--namespace", f.ns, "--owner-id", "e2e", "--metrics", "", "--health", ""}, extra...)
}

func (f *fixture) start(bin string, env []string, args ...string) *proc {
	f.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, bin), args...)
	cmd.Env = env
	p := &proc{cmd: cmd, stdout: &syncBuf{}, stderr: &syncBuf{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	f.t.Cleanup(func() { p.kill(); <-p.done })
	return p
}

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// wait returns the exit code (or fails after d).
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.kill()
		t.Fatalf("%s did not exit within %v; stderr:\n%s", p.cmd.Path, d, p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ctl runs pvtzctl and returns stdout, stderr and the exit code.
func (f *fixture) ctl(args ...string) (string, string, int) {
	f.t.Helper()
	p := f.start("pvtzctl", f.env(pvtztest.AccessKeyID, pvtztest.AccessKeySecret), append([]string{"--endpoint", f.emu.URL}, args...)...)
	code := p.wait(f.t, 60*time.Second)
	return p.stdout.String(), p.stderr.String(), code
}

// zoneState is name/type → sorted values.
func (f *fixture) records() []endpoint.Record {
	f.t.Helper()
	recs, err := f.p.Records(context.Background(), f.zid, "")
	if err != nil {
		f.t.Fatal(err)
	}
	return recs
}

func summary(recs []endpoint.Record, pred func(endpoint.Record) bool) map[string]string {
	by := map[string][]string{}
	for _, r := range recs {
		if pred != nil && !pred(r) {
			continue
		}
		k := r.Name + " " + r.Type
		by[k] = append(by[k], fmt.Sprintf("%s/%d", r.Value, r.TTL))
	}
	out := map[string]string{}
	for k, v := range by {
		sort.Strings(v)
		out[k] = strings.Join(v, ",")
	}
	return out
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last state: %s", what, d, last)
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not synchronisation
	}
}

func (f *fixture) service(name string, mutate func(*corev1.Service)) *corev1.Service {
	f.t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
	if mutate != nil {
		mutate(svc)
	}
	out, err := f.c.Client.CoreV1().Services(f.ns).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

type ep struct {
	ip       string
	hostname string
	ready    bool
}

func (f *fixture) slice(svc, name string, eps ...ep) {
	f.t.Helper()
	es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: name,
		Labels: map[string]string{discoveryv1.LabelServiceName: svc}}, AddressType: discoveryv1.AddressTypeIPv4}
	for _, e := range eps {
		ready := e.ready
		x := discoveryv1.Endpoint{Addresses: []string{e.ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
		if e.hostname != "" {
			h := e.hostname
			x.Hostname = &h
		}
		es.Endpoints = append(es.Endpoints, x)
	}
	cli := f.c.Client.DiscoveryV1().EndpointSlices(f.ns)
	old, err := cli.Get(context.Background(), name, metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = old.ResourceVersion
		_, err = cli.Update(context.Background(), es, metav1.UpdateOptions{})
	} else {
		_, err = cli.Create(context.Background(), es, metav1.CreateOptions{})
	}
	if err != nil {
		f.t.Fatal(err)
	}
}

// pod creates a running pod with annotations.
func (f *fixture) pod(name, ip string, ann map[string]string) {
	f.t.Helper()
	ctx := context.Background()
	if _, err := cluster.CreatePod(ctx, f.c.Client, cluster.PodOptions{Namespace: f.ns, Name: name, PodIPs: []string{ip}}); err != nil {
		f.t.Fatal(err)
	}
	p, err := f.c.Client.CoreV1().Pods(f.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	p.Annotations = ann
	if _, err := f.c.Client.CoreV1().Pods(f.ns).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
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

const syncTERM = syscall.SIGTERM
