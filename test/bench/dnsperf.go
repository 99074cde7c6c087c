package bench

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// perfResult is the parsed summary of one dnsperf run.
type perfResult struct {
	Sent      int           `json:"sent"`
	Completed int           `json:"completed"`
	Lost      int           `json:"lost"`
	NoError   int           `json:"noerror"`
	QPS       float64       `json:"qps"`
	AvgLat    time.Duration `json:"avg_latency"`
	RunTime   time.Duration `json:"run_time"`
}

// LossPct is the share of sent queries that got no response.
func (r perfResult) LossPct() float64 {
	if r.Sent == 0 {
		return 0
	}
	return 100 * float64(r.Lost) / float64(r.Sent)
}

type perfOpts struct {
	Port     int
	DataFile string
	Duration time.Duration
	Clients  int     // -c
	Threads  int     // -T
	Outstand int     // -q
	MaxQPS   float64 // -Q, 0 = unlimited
	Timeout  time.Duration
}

var (
	rePerfInt = regexp.MustCompile(`(?m)^\s*(Queries sent|Queries completed|Queries lost):\s+(\d+)`)
	rePerfF   = regexp.MustCompile(`(?m)^\s*(Queries per second|Average Latency \(s\)|Run time \(s\)):\s+([0-9.eE+-]+)`)
	rePerfRC  = regexp.MustCompile(`(?m)^\s*Response codes:\s+(.*)$`)
	reNoErr   = regexp.MustCompile(`NOERROR (\d+)`)
)

// runDNSPerf runs dnsperf pinned to cpu against 127.0.0.1 and parses its
// summary.
func runDNSPerf(ctx context.Context, cpu int, o perfOpts) (perfResult, string, error) {
	r, _, out, err := runDNSPerfAt(ctx, cpu, nil, "127.0.0.1", o)
	return r, out, err
}

// runDNSPerfAt runs dnsperf pinned to cpu against server, its command line
// prefixed by wrap (such as `ip netns exec NAME`), and parses its summary; it
// also returns how dnsperf ended (its CPU times).
func runDNSPerfAt(ctx context.Context, cpu int, wrap []string, server string, o perfOpts) (perfResult, *os.ProcessState, string, error) {
	args := append(slices.Clone(wrap), "dnsperf", "-s", server, "-p", strconv.Itoa(o.Port), "-d", o.DataFile,
		"-l", fmtSecs(o.Duration), "-c", strconv.Itoa(max(1, o.Clients)), "-T", strconv.Itoa(max(1, o.Threads)),
		"-q", strconv.Itoa(max(1, o.Outstand)), "-t", fmtSecs(o.Timeout))
	if o.MaxQPS > 0 {
		args = append(args, "-Q", strconv.Itoa(int(o.MaxQPS)))
	}
	out, st, err := runCmdState(ctx, cpu, args...)
	if err != nil {
		return perfResult{}, st, out, err
	}
	r, err := parseDNSPerf(out)
	return r, st, out, err
}

func fmtSecs(d time.Duration) string {
	s := strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "" || s == "0" {
		s = "1"
	}
	return s
}

func parseDNSPerf(out string) (perfResult, error) {
	var r perfResult
	ints := rePerfInt.FindAllStringSubmatch(out, -1)
	if len(ints) < 3 {
		return r, fmt.Errorf("cannot parse dnsperf output:\n%s", out)
	}
	for _, m := range ints {
		v, _ := strconv.Atoi(m[2])
		switch m[1] {
		case "Queries sent":
			r.Sent = v
		case "Queries completed":
			r.Completed = v
		case "Queries lost":
			r.Lost = v
		}
	}
	for _, m := range rePerfF.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[1] {
		case "Queries per second":
			r.QPS = v
		case "Average Latency (s)":
			r.AvgLat = time.Duration(v * float64(time.Second))
		case "Run time (s)":
			r.RunTime = time.Duration(v * float64(time.Second))
		}
	}
	if m := rePerfRC.FindStringSubmatch(out); m != nil {
		if n := reNoErr.FindStringSubmatch(m[1]); n != nil {
			r.NoError, _ = strconv.Atoi(n[1])
		}
	}
	return r, nil
}
