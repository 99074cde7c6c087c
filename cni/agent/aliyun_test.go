package agent

import (
	"context"
	"net"
	"strings"
	"testing"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"
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
