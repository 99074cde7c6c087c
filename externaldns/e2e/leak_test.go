package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
)

// An STS credential for the leak test: none of it may show anywhere.
const (
	leakKeyID  = "STS.NLeakTestKeyId4711"
	leakSecret = "LeakTestSecret0815"
	leakToken  = "CAISleak+Test/Token=="
)

// signedParam matches a signature or credential parameter with a value
// that is not the redaction marker, in any encoding the SDK produces.
var signedParam = regexp.MustCompile(`(?i)(Signature|SecurityToken|AccessKeyId|AccessKeySecret)(=|%3D|%253D)([^\[&"\s]|$)`)

func assertNoCredentials(t *testing.T, where, text string) {
	t.Helper()
	for _, s := range []string{leakKeyID, leakSecret, leakToken, url.QueryEscape(leakToken), url.QueryEscape(url.QueryEscape(leakToken))} {
		if strings.Contains(text, s) {
			i := strings.Index(text, s)
			t.Errorf("%s shows %q: …%s…", where, s, text[max(0, i-200):min(len(text), i+100)])
		}
	}
	if m := signedParam.FindStringIndex(text); m != nil {
		t.Errorf("%s shows a signed parameter: …%s…", where, text[max(0, m[0]-200):min(len(text), m[1]+100)])
	}
}

// pvtz-sync with an STS credential against an API that drops connections
// (transport errors carry the signed URL: AccessKeyId, Signature,
// SecurityToken) and with a wrong secret (SignatureDoesNotMatch carries
// the string to sign): no log line, metric or Kubernetes Event shows any
// part of the credential or the signature (issue #21 item 3).
func TestNoCredentialsInLogsMetricsOrEvents(t *testing.T) {
	f := newFixture(t, openapi.Config{Credentials: []openapi.Credential{{AccessKeyID: leakKeyID, AccessKeySecret: leakSecret, SecurityToken: leakToken}}})
	web := f.service("web", nil)
	env := append(f.env(leakKeyID, leakSecret), "ALIBABA_CLOUD_SECURITY_TOKEN="+leakToken)
	// Nine dropped connections: the first AddZoneRecord fails after all its
	// attempts (an error logged and shown in an Event), the requeue lands.
	if err := f.emu.Server.AddFaultRules(openapi.FaultRule{Action: "AddZoneRecord", Fault: openapi.FaultDropBefore, Times: 9}); err != nil {
		t.Fatal(err)
	}
	metrics := freeAddr(t)
	args := append(f.syncArgs("--policy", "sync", "--interval", "1h"), "--metrics", metrics)
	p := f.start("pvtz-sync", env, args...)
	ctx := context.Background()
	eventually(t, 90*time.Second, "the record after the faults, and a failure Event", func() (bool, string) {
		var got []string
		for _, r := range f.records() {
			got = append(got, r.Name+" "+r.Value)
		}
		evs, err := f.c.Client.CoreV1().Events(f.ns).List(ctx, metav1.ListOptions{})
		failed := 0
		if err == nil {
			for _, e := range evs.Items {
				if e.Reason == "PrivateZoneSyncFailed" {
					failed++
				}
			}
		}
		ok := strings.Contains(strings.Join(got, ","), "web."+f.ns+" "+web.Spec.ClusterIP) && failed > 0
		return ok, fmt.Sprintf("records %v, %d failure events\nstderr: %s", got, failed, tail(p.stderr.String()))
	})
	code, body := httpGet("http://" + metrics + "/metrics")
	if code != 200 || !strings.Contains(body, `code="network"`) {
		t.Fatalf("metrics %d (want network errors counted):\n%s", code, body)
	}
	evs, err := f.c.Client.CoreV1().Events(f.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	evJSON, _ := json.Marshal(evs.Items)
	if !strings.Contains(string(evJSON), "AddZoneRecord") {
		t.Errorf("no Event names the failed call: %s", evJSON)
	}
	if !strings.Contains(p.stderr.String(), "AddZoneRecord to 127.0.0.1") {
		t.Errorf("the transport error is not logged:\n%s", p.stderr.String())
	}

	// A wrong secret: SignatureDoesNotMatch, whose message holds the
	// server's string to sign.
	bad := f.start("pvtz-sync", append(f.env(leakKeyID, "wrong-secret"), "ALIBABA_CLOUD_SECURITY_TOKEN="+leakToken), f.syncArgs("--policy", "sync", "--once")...)
	if c := bad.wait(t, 60*time.Second); c != 2 || !strings.Contains(bad.stderr.String(), "SignatureDoesNotMatch") {
		t.Fatalf("wrong secret: exit %d\n%s", c, bad.stderr.String())
	}

	for where, text := range map[string]string{
		"pvtz-sync stderr": p.stderr.String(), "pvtz-sync stdout": p.stdout.String(), "metrics": body, "events": string(evJSON),
		"wrong-secret stderr": bad.stderr.String(), "wrong-secret stdout": bad.stdout.String(),
	} {
		assertNoCredentials(t, where, text)
	}
}
