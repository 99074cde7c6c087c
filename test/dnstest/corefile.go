package dnstest

import (
	"fmt"
	"net"
	"testing"

	"github.com/coredns/caddy"
)

// StartCorefile runs CoreDNS in-process with the Corefile format, whose
// %[1]s is a free port on 127.0.0.1 and %[2]s... are args, and stops it at
// the end of the test. The caller's package imports the plugins the
// Corefile uses. Returns 127.0.0.1:PORT.
func StartCorefile(t testing.TB, format string, args ...any) string {
	t.Helper()
	addr, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	corefile := fmt.Sprintf(format, append([]any{port}, args...)...)
	inst, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: "Corefile", ServerTypeName: "dns"})
	if err != nil {
		t.Fatalf("start CoreDNS:\n%s\n%v", corefile, err)
	}
	t.Cleanup(func() {
		inst.Stop()
		inst.ShutdownCallbacks()
	})
	return addr
}
