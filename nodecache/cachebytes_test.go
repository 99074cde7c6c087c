package nodecache

import (
	"bytes"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

// TestCacheMaxBytesFlag: --cache-max-bytes becomes every generated block's
// max_bytes, is checked at start with an error naming it, and is shown in
// --help.
func TestCacheMaxBytesFlag(t *testing.T) {
	base := []string{"--listen", "127.0.0.1:5301", "--upstream", "127.0.0.1:5300", "--steer=false"}
	tests := []struct {
		name string
		args []string
		want string // in the Corefile; "" = exit 2
		err  string // in stderr, with exit 2
	}{
		{"default", nil, "max_bytes 64M", ""},
		{"mebibytes", []string{"--cache-max-bytes", "16M"}, "max_bytes 16M", ""},
		{"plain bytes", []string{"--cache-max-bytes", "100000"}, "max_bytes 100000", ""},
		{"kibibytes in bytes", []string{"--cache-max-bytes", "2097152"}, "max_bytes 2M", ""},
		{"lower case", []string{"--cache-max-bytes=1g"}, "max_bytes 1G", ""},
		{"zero", []string{"--cache-max-bytes", "0"}, "", "--cache-max-bytes"},
		{"unit", []string{"--cache-max-bytes", "64MB"}, "", "--cache-max-bytes"},
		{"word", []string{"--cache-max-bytes", "lots"}, "", "--cache-max-bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := printConfig(t, append(append([]string{}, base...), tc.args...)...)
			if tc.want == "" {
				if code != 2 || !strings.Contains(errOut, tc.err) {
					t.Fatalf("exit %d, stderr %q; want exit 2 naming %s", code, errOut, tc.err)
				}
				return
			}
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if n := strings.Count(out, "        "+tc.want+"\n"); n != 1 {
				t.Fatalf("%q in %d blocks, want the one:\n%s", tc.want, n, out)
			}
		})
	}
	help, _ := command(buildBinary(t), "--help").CombinedOutput()
	if !strings.Contains(string(help), "--cache-max-bytes SIZE") || !strings.Contains(string(help), "(default 64M)") {
		t.Errorf("--help does not explain --cache-max-bytes:\n%s", help)
	}
}

// TestBinaryCacheMaxBytes runs bin/node-cache with a small
// --cache-max-bytes and asks for many big answers over TCP: the bytes its
// cache holds stay within it.
func TestBinaryCacheMaxBytes(t *testing.T) {
	const budget = 512 << 10
	up := dnstest.NewServer(t, dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for i := 0; i < 200; i++ { // 200 records of 255 bytes: 51 KB
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 3600},
				Txt: []string{fmt.Sprintf("%03d%s", i, strings.Repeat("x", 251))}})
		}
		w.WriteMsg(m)
	}))
	listen, metrics, health := freeAddr(t), freeAddr(t), freeAddr(t)
	var logs bytes.Buffer
	cmd := command(buildBinary(t), "--listen", listen, "--upstream", up.Addr, "--metrics", metrics, "--health", health,
		"--steer=false", "--cache-max-bytes", "512K")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	waitFor(t, "ready", func() bool { return httpGet(health, "/ready") == 200 })

	for i := range 60 { // 3 MB of answers
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("big%d.example.test.", i), dns.TypeTXT)
		r, _, err := (&dns.Client{Net: "tcp", Timeout: 5 * time.Second}).Exchange(m, listen)
		if err != nil || len(r.Answer) != 200 {
			t.Fatalf("query %d: %v %v\n%s", i, err, r, logs.String())
		}
	}
	m, err := dnstest.ParseMetrics(strings.NewReader(httpBody(t, metrics, "/metrics")))
	if err != nil {
		t.Fatal(err)
	}
	got, ok := m["coredns_nodecache_bytes"]
	if !ok {
		t.Fatal("/metrics lacks coredns_nodecache_bytes")
	}
	if got > budget || got < budget/2 {
		t.Fatalf("coredns_nodecache_bytes %v after 3 MB of answers, want about --cache-max-bytes (%d) and not over", got, budget)
	}
	if m.Sum("coredns_nodecache_evictions_total", `reason="bytes"`) == 0 {
		t.Error("no evictions_total with reason bytes")
	}
}
