package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/bench"
)

var httpc = &http.Client{Timeout: 5 * time.Second}

// httpGet returns the status and body of a GET.
func httpGet(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := httpc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// metrics is one scrape of a Prometheus text endpoint: every series of a
// metric name summed (labels are not told apart).
type metrics map[string]float64

func scrape(ctx context.Context, addr string) (metrics, error) {
	code, body, err := httpGet(ctx, "http://"+addr+"/metrics")
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: HTTP %d", addr, code)
	}
	m := parseMetrics(body)
	if len(m) == 0 {
		return nil, fmt.Errorf("GET %s/metrics: no samples", addr)
	}
	return m, nil
}

// parseMetrics reads the Prometheus text format.
func parseMetrics(body string) metrics {
	m := metrics{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.IndexAny(l, "{ ")
		if i < 0 {
			continue
		}
		name, rest := l[:i], l[i:]
		if rest[0] == '{' {
			rest = rest[strings.LastIndexByte(rest, '}')+1:]
		}
		f := strings.Fields(rest) // value [timestamp]
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			m[name] += v
		}
	}
	return m
}

// pollUntil calls cond every interval until it returns true, an error, p
// exits or timeout passes.
func pollUntil(ctx context.Context, p *bench.Proc, timeout, interval time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if p != nil && p.Exited() {
			return fmt.Errorf("waiting for %s: %w", what, p.ExitError())
		}
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			if last != nil {
				return fmt.Errorf("%s: not after %s: %w", what, timeout, last)
			}
			return fmt.Errorf("%s: not after %s", what, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// ask sends one query over UDP.
func ask(ctx context.Context, server, name string, qtype uint16) (*dns.Msg, error) {
	c := &dns.Client{Net: "udp", Timeout: time.Second}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := c.ExchangeContext(ctx, m, server)
	return r, err
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
