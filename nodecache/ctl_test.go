package nodecache

import (
	"bytes"
	"context"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/nodecache/ctl"
	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

// TestDnsaccelctlGolden: bin/node-cache on loopback (no steering, no API
// server: clients are their addresses), a known set of queries, and
// dnsaccelctl's tables compared with testdata/*.golden; exit codes.
func TestDnsaccelctlGolden(t *testing.T) {
	zone := dnstest.NewZone(t)
	zone.Add(t, "a.golden.test. 60 IN A 10.31.1.1", "b.golden.test. 60 IN A 10.31.1.2")
	listen, observe := freeAddr(t), freeAddr(t)
	startNodeCache(t, "node-cache", "--steer=false", "--listen", listen, "--upstream", zone.Addr, "--metrics", freeAddr(t),
		"--observe", observe, "--node-name", "golden-node")
	askFrom := func(src, name string, n int) {
		t.Helper()
		for range n {
			c := &dns.Client{Timeout: 2 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(src)}}}
			m := new(dns.Msg)
			m.SetQuestion(name, dns.TypeA)
			if _, _, err := c.Exchange(m, listen); err != nil {
				t.Fatalf("%s from %s: %v", name, src, err)
			}
		}
	}
	askFrom("127.0.0.1", "a.golden.test.", 5)    // 1 upstream, 4 cache
	askFrom("127.0.0.1", "nope.golden.test.", 2) // NXDOMAIN: 1 upstream, 1 cache
	askFrom("127.0.31.2", "b.golden.test.", 3)   // another client: 1 upstream, 2 cache
	askFrom("127.0.31.2", "a.golden.test.", 1)   // cache
	run := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := ctl.Main(context.Background(), append(args, "--endpoint", "http://"+observe), &out, &errb)
		return out.String(), errb.String(), code
	}
	mask, blanks := regexp.MustCompile(`[0-9.]+(µs|ms)`), regexp.MustCompile(` +`)
	// Each query is counted right after its reply left.
	waitFor(t, "11 queries counted", func() bool {
		out, _, _ := run("top", "namespaces", "--interval", "0", "-o", "json")
		return strings.Contains(out, `"queries": 11`)
	})
	for _, tc := range []struct{ name, golden string }{
		{"top pods", "ctl-top-pods"},
		{"top names", "ctl-top-names"},
		{"top namespaces", "ctl-top-namespaces"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, code := run(append(strings.Fields(tc.name), "--interval", "0")...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			// Latencies vary, and with them the column widths: masked,
			// blanks collapsed.
			golden(t, tc.golden, blanks.ReplaceAllString(mask.ReplaceAllString(out, "T"), " "))
		})
	}
	t.Run("steering off", func(t *testing.T) {
		out, _, code := run("steering")
		if code != 0 || !strings.Contains(out, "golden-node  off") {
			t.Errorf("exit %d:\n%s", code, out)
		}
	})
	t.Run("cache", func(t *testing.T) {
		out, _, code := run("cache")
		if code != 0 || !strings.Contains(out, "a.golden.test.(6)") {
			t.Errorf("exit %d:\n%s", code, out)
		}
	})
	t.Run("query log needs the pod index", func(t *testing.T) {
		_, stderr, code := run("log", "--pod", "default/x")
		if code != 2 || !strings.Contains(stderr, "Kubernetes mode") {
			t.Errorf("exit %d: %s", code, stderr)
		}
	})
	t.Run("exit codes", func(t *testing.T) {
		for _, args := range [][]string{{"top"}, {"bogus"}, {"top", "pods", "-o", "xml"}} {
			if _, _, code := run(args...); code != 2 {
				t.Errorf("%v: exit %d, want 2", args, code)
			}
		}
		var out, errb bytes.Buffer
		if code := ctl.Main(context.Background(), []string{"top", "pods", "--endpoint", "http://" + freeAddr(t), "--timeout", "2s"}, &out, &errb); code != 2 {
			t.Errorf("unreachable node-cache: exit %d, want 2", code)
		}
		if code := ctl.Main(context.Background(), []string{"--help"}, &out, &errb); code != 0 {
			t.Errorf("--help: exit %d", code)
		}
	})
}
