package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz/pvtztest"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/externaldns/webhook"
)

type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// The binary: --help documents every flag; it serves the protocol on
// --listen and health/metrics on --health; SIGTERM stops it cleanly.
func TestBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "pvtz-webhook")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	help, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v", err)
	}
	for _, f := range []string{"--zone", "--vpc-id", "--region", "--endpoint", "--qps", "--workers", "--listen", "--health", "--ttl",
		"--remark", "--apply-timeout", "--full-resync", "--dry-run", "--log-level", "--log-format", "127.0.0.1:8888", ":8080"} {
		if !strings.Contains(string(help), f) {
			t.Errorf("--help does not mention %s", f)
		}
	}
	if err := exec.Command(bin).Run(); err == nil || err.(*exec.ExitError).ExitCode() != 2 {
		t.Errorf("no --zone: %v, want exit 2", err)
	}

	e := pvtztest.Start(t, openapi.Config{})
	if _, err := newAdmin(t, e).CreateZone(context.Background(), "bin.internal", "", ""); err != nil {
		t.Fatal(err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	health := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "--zone", "bin.internal", "--endpoint", e.URL, "--listen", "127.0.0.1:0", "--health", health, "--log-format", "json")
	cmd.Env = []string{"ALIBABA_CLOUD_ACCESS_KEY_ID=" + pvtztest.AccessKeyID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET=" + pvtztest.AccessKeySecret,
		"ALIBABA_CLOUD_ECS_METADATA_DISABLED=true", "HOME=" + t.TempDir()}
	out := &lockedBuf{}
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	var api string
	deadline := time.Now().Add(10 * time.Second)
	for api == "" && time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(out.String()))
		for sc.Scan() {
			var line struct{ Msg, Listen string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "starting" {
				api = line.Listen
			}
		}
		time.Sleep(20 * time.Millisecond) // polling the log
	}
	if api == "" {
		t.Fatalf("no start line:\n%s", out.String())
	}
	get := func(url string) (int, http.Header, string) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, nil, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	for time.Now().Before(deadline) {
		if code, _, _ := get("http://" + health + "/readyz"); code == 200 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, _, body := get("http://" + health + "/readyz"); code != 200 {
		t.Fatalf("readyz: %d %s\n%s", code, body, out.String())
	}
	if code, h, body := get("http://" + api + "/"); code != 200 || h.Get("Content-Type") != webhook.MediaType || !strings.Contains(body, "bin.internal") {
		t.Fatalf("GET /: %d %v %s", code, h, body)
	}
	if code, _, body := get("http://" + api + "/records"); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Fatalf("GET /records: %d %s", code, body)
	}
	if code, _, body := get("http://" + health + "/metrics"); code != 200 || !strings.Contains(body, "dnsaccel_pvtzwebhook_requests_total") {
		t.Fatalf("metrics: %d", code)
	}
	if code, _, _ := get("http://" + api + "/metrics"); code == 200 {
		t.Fatalf("metrics served on the webhook port")
	}
	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit 10 s after SIGTERM")
	}
	t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
}

func newAdmin(t *testing.T, e *pvtztest.Emulator) *provider.Provider {
	t.Helper()
	p, err := provider.New(provider.Config{Endpoint: e.URL, Credential: credentials.NewStaticAKCredentialsProvider(pvtztest.AccessKeyID, pvtztest.AccessKeySecret)})
	if err != nil {
		t.Fatal(err)
	}
	return p
}
