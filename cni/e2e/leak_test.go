package e2e

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/cnitest"
)

// An STS credential for the leak test: none of it may show anywhere.
const (
	leakKeyID  = "STS.NEniLeakTestKeyId42"
	leakSecret = "EniLeakTestSecret0815"
	leakToken  = "CAISeniLeak+Test/Token=="
)

var signedParam = regexp.MustCompile(`(?i)(Signature|SecurityToken|AccessKeyId|AccessKeySecret)(=|%3D|%253D)([^\[&"\s]|$)`)

func assertNoCredentials(t *testing.T, where, text string) {
	t.Helper()
	for _, s := range []string{leakKeyID, leakSecret, leakToken, url.QueryEscape(leakToken), url.QueryEscape(url.QueryEscape(leakToken))} {
		if i := strings.Index(text, s); i >= 0 {
			t.Errorf("%s shows %q: …%s…", where, s, text[max(0, i-200):min(len(text), i+100)])
		}
	}
	if m := signedParam.FindStringIndex(text); m != nil {
		t.Errorf("%s shows a signed parameter: …%s…", where, text[max(0, m[0]-200):min(len(text), m[1]+100)])
	}
}

// eni-agent with an STS credential against an ECS API that drops
// connections (transport errors carry the signed URL: AccessKeyId,
// Signature, SecurityToken), loses answers and throttles, then with a
// wrong secret (SignatureDoesNotMatch carries the string to sign): no log
// line or metric shows any part of the credential or the signature (issue
// #21 item 3). No API server: the agent runs without --kubeconfig.
func TestNoCredentialsInLogsMetricsOrEvents(t *testing.T) {
	if err := cnitest.Check(); err != nil {
		cluster.SkipOrFail(t, "%v", err)
	}
	metrics := freePort(t)
	sts := []string{"ALIBABA_CLOUD_ACCESS_KEY_ID=" + leakKeyID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET=" + leakSecret, "ALIBABA_CLOUD_SECURITY_TOKEN=" + leakToken}
	e, err := cnitest.Start(cnitest.Options{Dir: t.TempDir(), BinDir: binDir, MinIdle: 2, MaxIdle: 4, Net: "10.211",
		AgentArgs: []string{"--metrics", metrics}, AgentEnv: sts,
		API: openapi.Config{
			Credentials: []openapi.Credential{{AccessKeyID: leakKeyID, AccessKeySecret: leakSecret, SecurityToken: leakToken}},
			// Nine drops: the first refill's create fails after all its
			// attempts (logged, and in the pool's status); then it works,
			// with lost answers and throttling on the way.
			Faults: []openapi.FaultRule{
				{Action: "CreateNetworkInterface", Fault: openapi.FaultDropBefore, Times: 9},
				{Action: "AssignPrivateIpAddresses", Fault: openapi.FaultDropAfter, Times: 2},
				{Action: "DescribeNetworkInterfaces", Fault: openapi.FaultError, Code: "Throttling.User", Times: 2},
			}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	var body string
	eventually(t, 90*time.Second, "the pool filled after the faults", func() (bool, string) {
		code, b, err := httpGet("http://" + metrics + "/metrics")
		body = b
		return err == nil && code == 200 && strings.Contains(b, "dnsaccel_eni_pool_ready 1") &&
			strings.Contains(b, `dnsaccel_eni_api_calls_total{action="CreateNetworkInterface",code="error"}`) &&
			strings.Contains(e.AgentLog(), "CreateNetworkInterface to 127.0.0.1"), tailLines(e.AgentLog(), 5)
	})

	// A wrong secret: the agent cannot start (SignatureDoesNotMatch); run
	// on its own (no socket to wait for), its output kept.
	e.StopAgent()
	bad := exec.CommandContext(ctx, filepath.Join(binDir, "eni-agent"), "--endpoint", e.Emu.URL, "--metadata-endpoint", e.Emu.URL,
		"--socket", filepath.Join(e.Opt.Dir, "bad.sock"), "--state", filepath.Join(e.Opt.Dir, "bad.db"))
	bad.Env = append(os.Environ(), "ALIBABA_CLOUD_ACCESS_KEY_ID="+leakKeyID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET=wrong-secret", "ALIBABA_CLOUD_SECURITY_TOKEN="+leakToken)
	out, err := bad.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "SignatureDoesNotMatch") {
		t.Fatalf("agent with a wrong secret: %v\n%s", err, out)
	}

	logs, _ := filepath.Glob(filepath.Join(e.Opt.Dir, "agent-*.log"))
	texts := map[string]string{"metrics": body, "wrong-secret output": string(out)}
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		texts[filepath.Base(l)] = string(b)
	}
	for where, text := range texts {
		assertNoCredentials(t, where, text)
	}
	if len(logs) != 1 || !strings.Contains(texts["agent-1.log"], "CreateNetworkInterface to 127.0.0.1") {
		t.Fatalf("logs %v: the transport error was not logged, the test saw no URL-carrying error", logs)
	}
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last state: %s", what, d, state)
		}
		time.Sleep(100 * time.Millisecond) // polling interval, not synchronisation
	}
}
