package agent

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"

	"github.com/dnsaccel/dnsaccel/cloud/ecs"
	"github.com/dnsaccel/dnsaccel/cloud/ecs/ecstest"
	"github.com/dnsaccel/dnsaccel/cloud/openapi"
)

// A failed request's error names the action and the host, never the
// signed URL (AccessKeyId, Signature, SecurityToken): the error ends up in
// logs, Events and CNI error messages.
func TestTransportErrorHidesSignedURL(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: connection refused
	e, err := NewECS("cn-hangzhou", "http://"+addr, credentials.NewStsTokenCredential("LTAIsecretid", "secret", "sts-token-value"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.AssignIPs(context.Background(), "eni-1", 1, "tok")
	if err == nil {
		t.Fatal("assign against a closed port succeeded")
	}
	for _, leak := range []string{"Signature", "LTAIsecretid", "sts-token-value", "SignatureNonce"} {
		if strings.Contains(err.Error(), leak) {
			t.Errorf("error shows %q: %v", leak, err)
		}
	}
	if !strings.Contains(err.Error(), "AssignPrivateIpAddresses") || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("error lacks the action, host or cause: %v", err)
	}
	if !retryable(err) {
		t.Errorf("connection refused not retryable: %v", err)
	}
}

// An API answer that quotes the request — SignatureDoesNotMatch carries the
// server's string to sign, i.e. the AccessKeyId and the STS SecurityToken —
// is redacted too; connections dropped mid-call through Limited as well.
func TestAPIErrorsHideCredentials(t *testing.T) {
	const keyID, secret, token = "STS.NAgentKeyId0042", "agent-secret", "CAISagent+token/value=="
	emu := ecstest.Start(t, openapi.Config{Credentials: []openapi.Credential{{AccessKeyID: keyID, AccessKeySecret: secret, SecurityToken: token}},
		Faults: []openapi.FaultRule{{Action: "DescribeVSwitches", Fault: openapi.FaultDropBefore, Times: 2}}}, ecs.DefaultConfig())
	leaks := []string{keyID, token, url.QueryEscape(token), url.QueryEscape(url.QueryEscape(token)), secret}
	check := func(what string, err error) {
		t.Helper()
		for e := err; e != nil; e = errors.Unwrap(e) {
			for _, leak := range leaks {
				if strings.Contains(e.Error(), leak) {
					t.Errorf("%s: error shows %q: %v", what, leak, e)
				}
			}
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			t.Errorf("%s: *url.Error reachable", what)
		}
	}
	bad, err := NewECS("cn-hangzhou", emu.URL, credentials.NewStsTokenCredential(keyID, "wrong", token))
	if err != nil {
		t.Fatal(err)
	}
	_, err = bad.DescribeENIs(context.Background(), "", "x")
	if cloudCode(err) != "SignatureDoesNotMatch" {
		t.Fatalf("wrong secret: %v", err)
	}
	check("SignatureDoesNotMatch", err)
	good, err := NewECS("cn-hangzhou", emu.URL, credentials.NewStsTokenCredential(keyID, secret, token))
	if err != nil {
		t.Fatal(err)
	}
	l := NewLimited(good, 0, nil)
	l.Attempts = 2
	_, err = l.DescribeVSwitches(context.Background(), []string{"vsw-1"})
	if err == nil || !retryable(err) {
		t.Fatalf("two drops with two attempts: %v", err)
	}
	check("dropped connection", err)
}
