// Command demo-cache is `make demo-cache`: on one machine, without a cluster, it
// starts an authoritative upstream (bin/coredns serving a generated zone)
// and bin/node-cache in front of it on loopback, then shows with dig and a
// real DNS client what the cache does. It stops everything and exits 0, or
// exits 1 naming the step that did not behave.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

// Addresses on loopback, chosen free at start: CoreDNS binds with
// SO_REUSEPORT, so a fixed port could silently be shared with some other
// server already there.
var upstreamAddr, cacheAddr, upMetrics, cacheMetrics, cacheHealth string

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		os.Exit(1)
	}
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
}

func start(name, logPath string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &proc{name: name, cmd: cmd, log: logPath}, nil
}

func (p *proc) stop() {
	if p == nil || p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return strings.Join(lines, "\n")
}

// waitDNS polls until addr answers a query for name.
func waitDNS(p *proc, addr, name string) error {
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeSOA)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if p.cmd.ProcessState != nil {
			break
		}
		if _, _, err := c.Exchange(m, addr); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer on %s; its log:\n%s", p.name, addr, p.tail())
}

func run() error {
	for _, p := range []*string{&upstreamAddr, &cacheAddr, &upMetrics, &cacheMetrics, &cacheHealth} {
		a, err := dnstest.FreeAddr()
		if err != nil {
			return err
		}
		*p = a
	}
	dir, err := os.MkdirTemp("", "dnsaccel-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, b := range []string{"bin/coredns", "bin/node-cache"} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s missing: run make build first", b)
		}
	}
	if _, err := exec.LookPath("dig"); err != nil {
		return fmt.Errorf("dig not found: apt-get install dnsutils")
	}

	// The upstream: an authoritative zone of 1,000 names, plus a zone whose
	// every answer is delayed 300 ms, so concurrent misses overlap.
	zone := filepath.Join(dir, "db.demo")
	var z strings.Builder
	z.WriteString("$ORIGIN demo.\n$TTL 2\n@ IN SOA ns.demo. admin.demo. 1 3600 600 86400 5\n@ IN NS ns.demo.\nns IN A 127.0.0.1\n")
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&z, "host%d IN A 10.0.%d.%d\n", i, i/250, i%250+1)
	}
	if err := os.WriteFile(zone, []byte(z.String()), 0o644); err != nil {
		return err
	}
	corefile := filepath.Join(dir, "Corefile")
	_, upPort, _ := net.SplitHostPort(upstreamAddr)
	cf := fmt.Sprintf(`demo.:%[3]s {
    bind 127.0.0.1
    prometheus %[1]s
    file %[2]s
}
slow.test.:%[3]s {
    bind 127.0.0.1
    prometheus %[1]s
    erratic {
        delay 1 300ms
    }
}
`, upMetrics, zone, upPort)
	if err := os.WriteFile(corefile, []byte(cf), 0o644); err != nil {
		return err
	}

	fmt.Println("== dnsaccel node cache demo ==")
	up, err := start("upstream (bin/coredns)", filepath.Join(dir, "upstream.log"), "bin/coredns", "-conf", corefile)
	if err != nil {
		return err
	}
	defer up.stop()
	if err := waitDNS(up, upstreamAddr, "demo."); err != nil {
		return err
	}
	fmt.Printf("upstream   bin/coredns on %s: zone demo. (1,000 names, TTL 2 s), zone slow.test. (300 ms per answer)\n", upstreamAddr)

	nc, err := start("bin/node-cache", filepath.Join(dir, "node-cache.log"), "bin/node-cache",
		"--listen", cacheAddr, "--upstream", upstreamAddr, "--metrics", cacheMetrics, "--health", cacheHealth)
	if err != nil {
		return err
	}
	defer nc.stop()
	if err := waitDNS(nc, cacheAddr, "demo."); err != nil {
		return err
	}
	fmt.Printf("node-cache bin/node-cache --listen %s --upstream %s\n\n", cacheAddr, upstreamAddr)

	// 1. Miss, then hit.
	miss, ans, err := dig("host7.demo", "A")
	if err != nil {
		return err
	}
	hit, ans2, err := dig("host7.demo", "A")
	if err != nil {
		return err
	}
	if ans != "10.0.0.8" || ans2 != ans {
		return fmt.Errorf("host7.demo: want 10.0.0.8 twice, got %q then %q", ans, ans2)
	}
	fmt.Printf("1. dig host7.demo            miss: %-6s  hit: %-6s  -> %s (the second answer came from the cache)\n", miss, hit, ans)
	missT, err := timed("host9.demo.")
	if err != nil {
		return err
	}
	hitT := time.Duration(1 << 62)
	for i := 0; i < 20; i++ {
		d, err := timed("host9.demo.")
		if err != nil {
			return err
		}
		hitT = min(hitT, d)
	}
	fmt.Printf("   plain client host9.demo   miss: %v  hit: %v (best of 20, the UDP fast path)\n", missT.Round(time.Microsecond), hitT.Round(time.Microsecond))

	// 2. 100 concurrent identical misses, one upstream query.
	before, err := upstreamQueries("slow.test.")
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := new(dns.Msg)
			m.SetQuestion("burst.slow.test.", dns.TypeA)
			r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, cacheAddr)
			if err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	after, err := upstreamQueries("slow.test.")
	if err != nil {
		return err
	}
	fmt.Printf("2. 100 concurrent misses for burst.slow.test: %d answered, %d upstream quer%s\n", ok, int(after-before), plural(int(after-before)))
	if ok != 100 || after-before != 1 {
		return fmt.Errorf("coalescing: want 100 answers from 1 upstream query")
	}

	// 3. Stale answers while the upstream is down.
	if _, _, err := dig("host42.demo", "A"); err != nil {
		return err
	}
	up.stop()
	fmt.Printf("3. upstream stopped; waiting for host42.demo's entry to expire (5 s minimum TTL)...\n")
	time.Sleep(6 * time.Second)
	d, stale, err := dig("host42.demo", "A")
	if err != nil {
		return err
	}
	ttl, _ := digTTL("host42.demo")
	fmt.Printf("   dig host42.demo           %s -> %s, TTL %s (a stale answer, served while no upstream answers)\n", d, stale, ttl)
	if stale != "10.0.0.43" {
		return fmt.Errorf("serve_stale: want 10.0.0.43, got %q", stale)
	}
	_, missing, _ := digStatus("host43.demo")
	fmt.Printf("   dig host43.demo           %s (never cached, no upstream)\n", missing)

	// 4. What the cache counted.
	m, err := scrape("http://" + cacheMetrics + "/metrics")
	if err != nil {
		return err
	}
	fmt.Printf("4. node-cache metrics: %s fast-path hits, %s chain hits, %s misses, %s coalesced, %s served stale\n",
		sum(m, "coredns_nodecache_fastpath_hits_total"), sum(m, "coredns_nodecache_hits_total"),
		sum(m, "coredns_nodecache_misses_total"), sum(m, "coredns_nodecache_coalesced_total"),
		sum(m, "coredns_nodecache_served_stale_total"))

	nc.stop()
	fmt.Println("\nstopped node-cache and the upstream: demo OK")
	return nil
}

// timed is one query from a plain client, as a pod's resolver sends it (no
// EDNS cookie, unlike dig), and its round-trip time.
func timed(name string) (time.Duration, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, rtt, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, cacheAddr)
	if err != nil {
		return 0, fmt.Errorf("query %s: %w", name, err)
	}
	if len(r.Answer) == 0 {
		return 0, fmt.Errorf("query %s: no answer (%s)", name, dns.RcodeToString[r.Rcode])
	}
	return rtt, nil
}

var msecRe = regexp.MustCompile(`Query time: (\d+) msec`)

// dig runs the real dig against the cache and returns the query time and
// the first answer.
func dig(name, qtype string) (string, string, error) {
	host, port, _ := net.SplitHostPort(cacheAddr)
	out, err := exec.Command("dig", "@"+host, "-p", port, "+tries=1", "+time=3", name, qtype).CombinedOutput()
	if err != nil {
		return "", "", fmt.Errorf("dig %s: %v\n%s", name, err, out)
	}
	ms := "?"
	if m := msecRe.FindSubmatch(out); m != nil {
		ms = string(m[1]) + " ms"
	}
	short, err := exec.Command("dig", "@"+host, "-p", port, "+short", "+tries=1", "+time=3", name, qtype).Output()
	if err != nil {
		return "", "", fmt.Errorf("dig +short %s: %v", name, err)
	}
	return ms, strings.TrimSpace(string(short)), nil
}

func digTTL(name string) (string, error) {
	host, port, _ := net.SplitHostPort(cacheAddr)
	out, err := exec.Command("dig", "@"+host, "-p", port, "+noall", "+answer", "+tries=1", name).Output()
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		return "", fmt.Errorf("no answer")
	}
	return f[1], nil
}

var statusRe = regexp.MustCompile(`status: ([A-Z]+)`)

func digStatus(name string) (string, string, error) {
	host, port, _ := net.SplitHostPort(cacheAddr)
	out, _ := exec.Command("dig", "@"+host, "-p", port, "+tries=1", "+time=6", name).CombinedOutput()
	if m := statusRe.FindSubmatch(out); m != nil {
		return "", string(m[1]), nil
	}
	return "", "no answer", nil
}

func plural(n int) string {
	if n == 1 {
		return "y"
	}
	return "ies"
}

// upstreamQueries reads the upstream's request counter for a zone.
func upstreamQueries(zone string) (float64, error) {
	m, err := scrape("http://" + upMetrics + "/metrics")
	if err != nil {
		return 0, err
	}
	total := 0.0
	for k, v := range m {
		if strings.HasPrefix(k, "coredns_dns_requests_total{") && strings.Contains(k, `zone="`+zone+`"`) {
			total += v
		}
	}
	return total, nil
}

func scrape(url string) (dnstest.Metrics, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("metrics %s: %w", url, err)
	}
	defer resp.Body.Close()
	return dnstest.ParseMetrics(resp.Body)
}

func sum(m dnstest.Metrics, name string) string {
	return strconv.FormatFloat(m.Sum(name, ""), 'f', 0, 64)
}
