// Package bench is the whole-system DNS cache benchmark behind `make bench`:
// node-cache against stock CoreDNS (NodeLocal DNSCache configuration),
// unbound and dnsmasq, each pinned to one core while the load generator
// runs on another, all on loopback.
package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Config controls one benchmark run.
type Config struct {
	Systems       []string      // subset of AllSystems, in run order
	Duration      time.Duration // max-QPS (unlimited dnsperf) phase
	FixedDuration time.Duration // fixed-rate dnsperf phase (CPU per answer, loss)
	FixedRate     float64       // fixed rate, queries/s
	LatDuration   time.Duration // latency phase (own generator)
	LatRate       float64       // latency phase rate, queries/s
	MissRate      float64       // miss-path rate, queries/s
	MissQueries   int           // unique names per system on the miss path

	PerfClients     int // dnsperf -c for the unlimited phase
	PerfThreads     int // dnsperf -T
	PerfOutstanding int // dnsperf -q for the unlimited phase
	// FixedOutstanding is dnsperf -q for the fixed-rate phase: enough for
	// 30k QPS up to ~6 ms latency, yet below what the server's default
	// socket buffer holds (~270 small datagrams), so dnsperf's catch-up
	// bursts cannot overflow it (with -q 2000 every peer lost queries).
	FixedOutstanding int

	ServerCPU int // core the server under test is pinned to
	LoadCPU   int // core the load generators are pinned to
	// UpstreamCPU is the core of the upstream authoritative server:
	// UpstreamOnServerCPU (default) = the server's core, -1 = unpinned. It
	// only serves misses. On the server's core, the miss-path baseline
	// (generator → upstream) crosses cores exactly as often as the cached
	// path (generator → cache → upstream), so the added latency is the
	// cache's own work rather than extra cross-core wake-ups.
	UpstreamCPU int

	NodeCache string // node-cache binary
	CoreDNS   string // stock CoreDNS binary; "" = build (cached) from the module
	RepoRoot  string // module root; "" = found from the working directory

	// Outputs; relative paths are relative to RepoRoot.
	Out  string // markdown file to update ("" = none)
	Plot string // PNG plot to write ("" = none)
	JSON string // raw results ("" = none)

	// WaitIdle is how long to wait, before each system, for the two cores
	// to be idle (other processes < 10%); Retries is how often a system is
	// measured again when other work took > 10% of the server core.
	WaitIdle time.Duration
	Retries  int

	Quick bool
	Log   io.Writer `json:"-"` // progress; nil = os.Stderr
}

// UpstreamOnServerCPU places the upstream on the core of the server under test.
const UpstreamOnServerCPU = -2

// DefaultConfig returns the full-run settings (about 35 s per system).
func DefaultConfig() Config {
	return Config{
		Systems:          append([]string(nil), AllSystems...),
		Duration:         10 * time.Second,
		FixedDuration:    8 * time.Second,
		FixedRate:        30000,
		LatDuration:      4 * time.Second,
		LatRate:          5000,
		MissRate:         500,
		MissQueries:      2000,
		PerfClients:      4,
		PerfThreads:      1,
		PerfOutstanding:  100,
		FixedOutstanding: 200,
		ServerCPU:        1,
		LoadCPU:          0,
		UpstreamCPU:      UpstreamOnServerCPU,
		NodeCache:        "bin/node-cache",
		WaitIdle:         20 * time.Second,
		Retries:          1,
	}
}

// ApplyQuick shortens every phase, for a smoke check.
func (c *Config) ApplyQuick() {
	c.Quick = true
	c.Duration = min(c.Duration, 2*time.Second)
	c.FixedDuration = min(c.FixedDuration, 2*time.Second)
	c.LatDuration = min(c.LatDuration, time.Second)
	c.MissQueries = min(c.MissQueries, 300)
	c.WaitIdle = 0
	c.Retries = 0
}

// Report is the outcome of a run.
type Report struct {
	Start    time.Time      `json:"start"`
	Elapsed  time.Duration  `json:"elapsed"`
	Machine  Machine        `json:"machine"`
	Config   Config         `json:"config"`
	Upstream string         `json:"upstream"`
	Results  []SystemResult `json:"results"`
	Warnings []string       `json:"warnings,omitempty"`
}

// SystemResult holds the figures of one system.
type SystemResult struct {
	Name    string `json:"name"`
	Label   string `json:"label"`
	Version string `json:"version"`
	Skipped string `json:"skipped,omitempty"`
	Err     string `json:"error,omitempty"`

	Max     perfResult    `json:"max"`
	MaxCPU  time.Duration `json:"max_cpu"`
	MaxUtil float64       `json:"max_util"` // server CPU / wall time in the max phase

	Fixed       perfResult    `json:"fixed"`
	FixedCPU    time.Duration `json:"fixed_cpu"`
	CPUPerAns   float64       `json:"cpu_us_per_answer"`
	UpstreamCPU time.Duration `json:"upstream_cpu_fixed"` // upstream CPU during the fixed phase (≈0 if all hits)
	// OtherLoad is the share of the server core's time spent on anything
	// but the server (other processes, interrupts) during the max-QPS or
	// the fixed-rate phase, whichever is higher: how clean the measurement was.
	OtherLoad float64 `json:"other_load_server_core"`

	Lat  latResult `json:"latency"`
	Miss latResult `json:"miss"`
	// Direct is the miss-path baseline, straight to the upstream, measured
	// in blocks interleaved with Miss.
	Direct latResult `json:"direct_miss"`

	RSS int64 `json:"rss_peak_bytes"`
}

// OK reports whether the system produced figures.
func (r SystemResult) OK() bool { return r.Skipped == "" && r.Err == "" }

// FixedRateReached reports whether dnsperf achieved (95% of) the fixed rate.
func (r SystemResult) FixedRateReached(rate float64) bool { return r.Fixed.QPS >= 0.95*rate }

// CapacityQPS estimates answers per second of server CPU in the max phase;
// unlike the achieved QPS it does not depend on the load generator keeping up.
func (r SystemResult) CapacityQPS() float64 {
	if r.MaxCPU <= 0 {
		return 0
	}
	return float64(r.Max.NoError) / r.MaxCPU.Seconds()
}

// Run executes the benchmark. It stops every process it started and removes
// its temp dir before returning, also when ctx is cancelled.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	logw := cfg.Log
	if logw == nil {
		logw = os.Stderr
	}
	logf := func(format string, a ...any) { fmt.Fprintf(logw, "dnsbench: "+format+"\n", a...) }
	rep = &Report{Start: time.Now(), Config: cfg}
	defer func() { rep.Elapsed = time.Since(rep.Start).Round(time.Second) }()

	if cfg.RepoRoot == "" {
		if cfg.RepoRoot, err = findRepoRoot(); err != nil {
			return rep, err
		}
		rep.Config.RepoRoot = cfg.RepoRoot
	}
	for _, p := range []*string{&cfg.Out, &cfg.Plot, &cfg.JSON} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(cfg.RepoRoot, *p)
		}
	}
	rep.Config = cfg
	for _, n := range cfg.Systems {
		if _, ok := lookupSystem(n); !ok {
			return rep, fmt.Errorf("unknown system %q (known: %s)", n, strings.Join(AllSystems, ","))
		}
	}
	for _, tool := range []string{"dnsperf", "taskset"} {
		if _, err := lookPath(tool); err != nil {
			return rep, fmt.Errorf("%s is required: %w (apt-get install -y dnsperf util-linux)", tool, err)
		}
	}
	cpus := onlineCPUs()
	if !contains(cpus, cfg.ServerCPU) || !contains(cpus, cfg.LoadCPU) || cfg.ServerCPU == cfg.LoadCPU {
		return rep, fmt.Errorf("need two distinct usable CPUs (server %d, load %d); usable: %v", cfg.ServerCPU, cfg.LoadCPU, cpus)
	}
	rep.Machine = machineInfo(ctx)

	// Build (or reuse) stock CoreDNS before pinning ourselves, so the build
	// can use every core.
	if cfg.CoreDNS == "" {
		if cfg.CoreDNS, err = ensureStockCoreDNS(ctx, cfg.RepoRoot, logf); err != nil {
			return rep, err
		}
	}
	nodeCache := cfg.NodeCache
	if nodeCache != "" && !filepath.IsAbs(nodeCache) {
		if _, err := os.Stat(nodeCache); err != nil {
			nodeCache = filepath.Join(cfg.RepoRoot, nodeCache)
		}
	}

	// The harness (our own latency generator) runs on the load core too.
	var loadMask cpuMask
	loadMask.set(cfg.LoadCPU)
	oldMask, err := pinSelf(loadMask)
	if err != nil {
		return rep, err
	}
	defer func() { _, _ = pinSelf(oldMask) }() // best effort restore

	dir, err := os.MkdirTemp("", "dnsbench-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(dir)
	ps := &procSet{}
	defer ps.stopAll()
	e := &env{dir: dir, serverCPU: cfg.ServerCPU, procs: ps, ports: &portAlloc{}, coredns: cfg.CoreDNS,
		nodeCache: nodeCache, nodeCacheShown: cfg.NodeCache}

	// Upstream authoritative server.
	if e.upstreamPort, err = e.ports.get(); err != nil {
		return rep, err
	}
	if cfg.UpstreamCPU == UpstreamOnServerCPU {
		cfg.UpstreamCPU = cfg.ServerCPU
		rep.Config.UpstreamCPU = cfg.ServerCPU
	}
	up, err := startUpstream(e, e.upstreamPort, cfg.UpstreamCPU)
	if err != nil {
		return rep, err
	}
	upAddr := fmt.Sprintf("127.0.0.1:%d", e.upstreamPort)
	if err := waitReady(ctx, up, upAddr); err != nil {
		return rep, fmt.Errorf("upstream: %w", err)
	}
	rep.Upstream = fmt.Sprintf("stock CoreDNS `file` plugin, zone `%s` (%d A records + `*.miss` wildcard), ", zoneName, cachedNames)
	switch cfg.UpstreamCPU {
	case cfg.ServerCPU:
		rep.Upstream += fmt.Sprintf("pinned to cpu %d, the server's core (idle while answers come from the cache; "+
			"this way \"upstream alone\" crosses cores as often as the path through the cache)", cfg.UpstreamCPU)
	case -1:
		rep.Upstream += "not pinned"
	default:
		rep.Upstream += fmt.Sprintf("pinned to cpu %d", cfg.UpstreamCPU)
	}

	dataFile := filepath.Join(dir, "cached.txt")
	if err := writePerfData(dataFile, cachedNameList()); err != nil {
		return rep, err
	}
	cachedQ, err := packQueries(cachedNameList())
	if err != nil {
		return rep, err
	}
	nonceB := make([]byte, 4)
	_, _ = rand.Read(nonceB)
	nonce := hex.EncodeToString(nonceB)

	for _, name := range cfg.Systems {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		sys, _ := lookupSystem(name)
		res := SystemResult{Name: sys.name, Label: sys.label}
		if why := sys.check(e); why != "" {
			res.Skipped = why
			logf("%s: skipped: %s", name, why)
			rep.Results = append(rep.Results, res)
			continue
		}
		res.Version = sys.version(ctx, e)
		best := res
		for attempt := 0; ; attempt++ {
			if busy := waitIdle(ctx, []int{cfg.ServerCPU, cfg.LoadCPU}, cfg.WaitIdle); busy > idleBusy {
				logf("warning: cores %d,%d still %.0f%% busy with other work after waiting %s", cfg.ServerCPU, cfg.LoadCPU, 100*busy, cfg.WaitIdle)
			}
			r := res
			logf("%s (%s): starting on cpu %d", name, r.Version, cfg.ServerCPU)
			err := benchSystem(ctx, cfg, e, sys, &r, up, upAddr, dataFile, cachedQ, fmt.Sprintf("%s-%s-%d", nonce, sys.name, attempt), logf)
			if err != nil {
				if ctx.Err() != nil {
					return rep, ctx.Err()
				}
				r.Err = err.Error()
				logf("%s: FAILED: %v", name, err)
			}
			if attempt == 0 || (r.OK() && (!best.OK() || r.OtherLoad < best.OtherLoad)) {
				best = r
			}
			if attempt >= cfg.Retries || !r.OK() || r.OtherLoad <= disturbed {
				break
			}
			logf("%s: %.0f%% of the server core went to other work during the measurement; repeating", name, 100*r.OtherLoad)
		}
		rep.Results = append(rep.Results, best)
	}
	for _, r := range rep.Results {
		if r.OK() && r.OtherLoad > disturbed {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: %.0f%% of the server core went to other work during the measurement: figures are disturbed",
				r.Name, 100*r.OtherLoad))
		}
		if r.OK() && !r.FixedRateReached(cfg.FixedRate) {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: the fixed-rate phase reached only %.0f of %.0f QPS",
				r.Name, r.Fixed.QPS, cfg.FixedRate))
		}
		if r.OK() && r.Fixed.Sent > 0 && r.Fixed.NoError < r.Fixed.Completed {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: %d of %d responses in the fixed-rate phase were not NOERROR",
				r.Name, r.Fixed.Completed-r.Fixed.NoError, r.Fixed.Completed))
		}
	}
	return rep, nil
}

func benchSystem(ctx context.Context, cfg Config, e *env, sys *system, res *SystemResult, up *proc,
	upAddr, dataFile string, cachedQ [][]byte, missTag string, logf func(string, ...any)) error {
	port, err := e.ports.get()
	if err != nil {
		return err
	}
	p, err := sys.start(e, port)
	if err != nil {
		return err
	}
	defer p.stop()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := waitReady(ctx, p, addr); err != nil {
		return err
	}
	alive := func(phase string) error {
		if p.exited() {
			return fmt.Errorf("%s exited during %s: %v\n%s", sys.name, phase, p.waitErr, p.logTail())
		}
		return nil
	}
	warm := func() error {
		// The cache may expire entries between phases (CoreDNS caps
		// success TTLs at 30 s), so every cached phase starts warm.
		var last latResult
		for range 3 {
			r, err := runLatGen(ctx, addr, cachedQ, len(cachedQ), 5000, 4, time.Second)
			last = r
			if err == nil && r.Answers == len(cachedQ) {
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		return fmt.Errorf("warming the cache: %d of %d names answered (%d bad)", last.Answers, len(cachedQ), last.Bad)
	}

	// 1. Maximum cached QPS: dnsperf unlimited.
	if err := warm(); err != nil {
		return err
	}
	logf("%s: max cached QPS, dnsperf unlimited for %s", sys.name, cfg.Duration)
	c0, err := cpuTime(p.pid())
	if err != nil {
		return err
	}
	b0, _ := coreBusy(cfg.ServerCPU)
	t0 := time.Now()
	res.Max, _, err = runDNSPerf(ctx, cfg.LoadCPU, perfOpts{Port: port, DataFile: dataFile, Duration: cfg.Duration,
		Clients: cfg.PerfClients, Threads: cfg.PerfThreads, Outstand: cfg.PerfOutstanding, Timeout: time.Second})
	if err != nil {
		return err
	}
	wall := time.Since(t0)
	c1, err := cpuTime(p.pid())
	if err != nil {
		return alive("max QPS")
	}
	b1, _ := coreBusy(cfg.ServerCPU)
	res.MaxCPU = c1 - c0
	res.MaxUtil = res.MaxCPU.Seconds() / wall.Seconds()
	res.OtherLoad = max(0, (b1-b0-res.MaxCPU).Seconds()/wall.Seconds())
	if err := alive("max QPS"); err != nil {
		return err
	}

	// 2. CPU per cached answer and loss at a fixed rate.
	if err := warm(); err != nil {
		return err
	}
	logf("%s: fixed %.0f qps for %s (CPU per answer, loss)", sys.name, cfg.FixedRate, cfg.FixedDuration)
	c0, _ = cpuTime(p.pid())
	u0, _ := cpuTime(up.pid())
	b0, _ = coreBusy(cfg.ServerCPU)
	t0 = time.Now()
	res.Fixed, _, err = runDNSPerf(ctx, cfg.LoadCPU, perfOpts{Port: port, DataFile: dataFile, Duration: cfg.FixedDuration,
		Clients: cfg.PerfClients, Threads: cfg.PerfThreads, Outstand: cfg.FixedOutstanding, MaxQPS: cfg.FixedRate, Timeout: time.Second})
	if err != nil {
		return err
	}
	c1, err = cpuTime(p.pid())
	if err != nil {
		return alive("fixed rate")
	}
	u1, _ := cpuTime(up.pid())
	b1, _ = coreBusy(cfg.ServerCPU)
	res.FixedCPU = c1 - c0
	res.OtherLoad = max(res.OtherLoad, (b1-b0-res.FixedCPU).Seconds()/time.Since(t0).Seconds())
	res.UpstreamCPU = u1 - u0
	if res.Fixed.NoError > 0 {
		res.CPUPerAns = float64(res.FixedCPU.Microseconds()) / float64(res.Fixed.NoError)
	}
	if err := alive("fixed rate"); err != nil {
		return err
	}

	// 3. Latency percentiles of cached answers (own rate-paced generator).
	if err := warm(); err != nil {
		return err
	}
	n := int(cfg.LatRate * cfg.LatDuration.Seconds())
	logf("%s: cached latency, %d queries at %.0f qps", sys.name, n, cfg.LatRate)
	if res.Lat, err = runLatGen(ctx, addr, cachedQ, n, cfg.LatRate, 4, time.Second); err != nil {
		return err
	}

	// 4. Miss path: never-seen names at a low rate, through the cache and
	// straight to the upstream, in interleaved blocks so that both see the
	// same machine state.
	const blocks = 4
	per := max(1, cfg.MissQueries/blocks)
	logf("%s: miss path, %d unique names at %.0f qps, and as many straight to the upstream", sys.name, per*blocks, cfg.MissRate)
	var miss, direct []latResult
	for b := range blocks {
		for _, via := range []string{"direct", "cache"} {
			q, err := packQueries(missNameList(per, fmt.Sprintf("%s-%s-%d", missTag, via, b)))
			if err != nil {
				return err
			}
			target := addr
			if via == "direct" {
				target = upAddr
			}
			r, err := runLatGen(ctx, target, q, per, cfg.MissRate, 1, 2*time.Second)
			if err != nil {
				return fmt.Errorf("miss path (%s): %w", via, err)
			}
			if via == "direct" {
				direct = append(direct, r)
			} else {
				miss = append(miss, r)
			}
		}
	}
	res.Miss, res.Direct = mergeLat(miss...), mergeLat(direct...)
	if err := alive("miss path"); err != nil {
		return err
	}
	res.RSS = rssPeak(p.pid())
	return nil
}

const (
	idleBusy  = 0.10 // cores count as idle below this busy share
	disturbed = 0.10 // a measurement is disturbed above this share of other work on the server core
)

// waitIdle waits up to maxWait until cpus are idle (sampled over 1 s) and
// returns the last busy share (0..1); with maxWait 0 it does not sample.
func waitIdle(ctx context.Context, cpus []int, maxWait time.Duration) float64 {
	if maxWait <= 0 {
		return 0
	}
	deadline := time.Now().Add(maxWait)
	busy := 1.0
	for ctx.Err() == nil {
		var b0 time.Duration
		for _, c := range cpus {
			v, _ := coreBusy(c)
			b0 += v
		}
		t0 := time.Now()
		select {
		case <-ctx.Done():
			return busy
		case <-time.After(time.Second):
		}
		var b1 time.Duration
		for _, c := range cpus {
			v, _ := coreBusy(c)
			b1 += v
		}
		busy = (b1 - b0).Seconds() / time.Since(t0).Seconds() / float64(len(cpus))
		if busy < idleBusy || time.Now().After(deadline) {
			break
		}
	}
	return busy
}

// waitReady polls addr until it answers name0 positively.
func waitReady(ctx context.Context, p *proc, addr string) error {
	c := &dns.Client{Net: "udp", Timeout: 300 * time.Millisecond}
	m := new(dns.Msg)
	m.SetQuestion("name0."+zoneName, dns.TypeA)
	deadline := time.Now().Add(20 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited at startup: %v\n%s", p.name, p.waitErr, p.logTail())
		}
		r, _, err := c.ExchangeContext(ctx, m, addr)
		if err == nil && r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("rcode %s, %d answers", dns.RcodeToString[r.Rcode], len(r.Answer))
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not answering on %s: %v\n%s", p.name, addr, last, p.logTail())
}

func writePerfData(path string, names []string) error {
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n + " A\n")
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func contains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// findRepoRoot walks up from the working directory to the module root.
func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/dnsaccel/dnsaccel\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the github.com/dnsaccel/dnsaccel module root above the working directory")
		}
		dir = parent
	}
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// StockCoreDNSPath is where the stock CoreDNS build is cached:
// $DNSACCEL_CACHE/bin (the Makefile's cache dir), by default
// ~/.cache/dnsaccel/bin.
func StockCoreDNSPath() string {
	dir := os.Getenv("DNSACCEL_CACHE")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		dir = filepath.Join(home, ".cache", "dnsaccel")
	}
	return filepath.Join(dir, "bin", "coredns-stock")
}

// coreDNSModuleVersion returns the CoreDNS version go.mod pins.
func coreDNSModuleVersion(ctx context.Context, root string) (string, error) {
	cmd := exec.CommandContext(ctx, goTool(), "list", "-m", "-f", "{{.Version}}", "github.com/coredns/coredns")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list -m github.com/coredns/coredns: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// ensureStockCoreDNS builds github.com/coredns/coredns at the version go.mod
// pins into the cache dir, unless a binary of that version is already there.
func ensureStockCoreDNS(ctx context.Context, root string, logf func(string, ...any)) (string, error) {
	ver, err := coreDNSModuleVersion(ctx, root)
	if err != nil {
		return "", err
	}
	path := StockCoreDNSPath()
	want := "CoreDNS-" + strings.TrimPrefix(ver, "v")
	if out, err := exec.CommandContext(ctx, path, "-version").Output(); err == nil && firstLine(string(out)) == want {
		return path, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	logf("building stock CoreDNS %s into %s (first build of the module can take several minutes)", ver, path)
	tmp := path + ".tmp"
	// Same flags as `make build`, so the packages it compiled are reused.
	cmd := exec.CommandContext(ctx, goTool(), "build", "-trimpath", "-o", tmp, "github.com/coredns/coredns")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("go build github.com/coredns/coredns: %w\n%s", err, out)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", err
	}
	return path, nil
}

// Machine describes the host.
type Machine struct {
	Kernel   string   `json:"kernel"`
	CPUModel string   `json:"cpu_model"`
	CPUs     int      `json:"cpus"`
	MemGiB   float64  `json:"mem_gib"`
	OS       string   `json:"os"`
	Go       string   `json:"go"`
	Load1    float64  `json:"load1"`
	Tools    []string `json:"tools"`
}

func machineInfo(ctx context.Context) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.CPUModel = procField("/proc/cpuinfo", "model name", ":")
	if kb := procField("/proc/meminfo", "MemTotal", ":"); kb != "" {
		var v float64
		fmt.Sscanf(kb, "%f", &v)
		m.MemGiB = v / (1 << 20)
	}
	m.OS = strings.Trim(procField("/etc/os-release", "PRETTY_NAME", "="), `"`)
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Sscanf(string(b), "%f", &m.Load1)
	}
	if out, err := runCmd(ctx, -1, "dnsperf", "-h"); err == nil || out != "" {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "Version ") {
				m.Tools = append(m.Tools, "dnsperf "+strings.TrimPrefix(l, "Version "))
			}
		}
	}
	return m
}

// procField returns the value of the first "key<sep> value" line of a file.
func procField(path, key, sep string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), sep)
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
