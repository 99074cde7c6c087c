package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "coredns")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// TestBinary checks the interface others rely on: the plugin list, and that
// a stock Corefile (file + cache + forward) runs unchanged beside nodecache.
func TestBinary(t *testing.T) {
	bin := build(t)
	out, err := exec.Command(bin, "-plugins").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"errors", "log", "debug", "health", "ready", "prometheus", "reload", "bind", "acl", "any",
		"cache", "forward", "kubernetes", "k8s_external", "file", "hosts", "template", "rewrite", "loop", "loadbalance",
		"autopath", "whoami", "metadata", "nodecache", "k8s_autopath"} {
		if !strings.Contains(string(out)+"\n", "dns."+p+"\n") {
			t.Errorf("-plugins does not list dns.%s", p)
		}
	}

	dir := t.TempDir()
	zone := filepath.Join(dir, "db.example")
	os.WriteFile(zone, []byte("$ORIGIN example.test.\n@ 300 IN SOA ns admin 1 3600 600 86400 30\n@ 300 IN NS ns\nns 300 IN A 192.0.2.1\nwww 300 IN A 192.0.2.80\n"), 0o644)
	authAddr, err1 := dnstest.FreeAddr()
	frontAddr, err2 := dnstest.FreeAddr()
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	_, authPort, _ := strings.Cut(authAddr, ":")
	_, frontPort, _ := strings.Cut(frontAddr, ":")
	corefile := filepath.Join(dir, "Corefile")
	os.WriteFile(corefile, []byte(fmt.Sprintf(`example.test.:%s {
    bind 127.0.0.1
    file %s
}
example.test.:%s {
    bind 127.0.0.1
    cache 30
    forward . %s
}
cached.:%s {
    bind 127.0.0.1
    rewrite name suffix .cached. .example.test. answer auto
    nodecache %s
}
`, authPort, zone, frontPort, authAddr, frontPort, authAddr)), 0o644)
	cmd := exec.Command(bin, "-conf", corefile)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	ask := func(addr, name string) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		r, _, err := (&dns.Client{Timeout: time.Second}).Exchange(m, addr)
		return r, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if r, err := ask(authAddr, "www.example.test."); err == nil && len(r.Answer) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("coredns not answering:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A stock cache + forward block.
	if r, err := ask(frontAddr, "www.example.test."); err != nil || len(r.Answer) != 1 {
		t.Fatalf("stock cache+forward: %v %v", err, r)
	}
	// rewrite runs before nodecache: the answer is rewritten back, and the
	// fast path stays out of the way (rewrite is not transparent).
	for i := 0; i < 3; i++ {
		r, err := ask(frontAddr, "www.cached.")
		if err != nil || len(r.Answer) != 1 || r.Answer[0].Header().Name != "www.cached." {
			t.Fatalf("nodecache behind rewrite, round %d: %v %v\n%s", i, err, r, logs.String())
		}
	}
}
