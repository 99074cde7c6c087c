package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath/steer"
	"github.com/dnsaccel/dnsaccel/test/bench"
	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/notracktest"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

// The systems, all serving the same pod through the steering.
const (
	SysKernel    = "kernel"     // node-cache --kernel-cache: hot names answered at the pod's veth
	SysNodeCache = "node-cache" // node-cache --kernel-cache=false: its user-space UDP path
	SysUnbound   = "unbound"
	SysCoreDNS   = "coredns"
)

// AllSystems in their default order.
var AllSystems = []string{SysKernel, SysNodeCache, SysUnbound, SysCoreDNS}

// Config is what a run measures.
type Config struct {
	Systems          []string      `json:"systems"`
	Duration         time.Duration `json:"max_duration_ns"`   // max-QPS phase (dnsperf unthrottled)
	FixedDuration    time.Duration `json:"fixed_duration_ns"` // fixed-rate phase (node CPU, loss)
	FixedRate        float64       `json:"fixed_rate"`
	LatDuration      time.Duration `json:"lat_duration_ns"` // latency phase (own generator)
	LatRate          float64       `json:"lat_rate"`
	ClosedQueries    int           `json:"closed_queries"` // queries of each closed-loop run
	PerfClients      int           `json:"perf_clients"`   // dnsperf's sockets in the max-QPS phase
	PerfOutstanding  int           `json:"perf_outstanding"`
	Loads            []Load        `json:"loads"` // how dnsperf runs in the fixed-rate runs; the first is the headline
	FixedOutstanding int           `json:"fixed_outstanding"`
	Rounds           int           `json:"rounds"` // fixed-rate rounds, the systems taking turns
	ServerCPU        int           `json:"server_cpu"`
	LoadCPU          int           `json:"load_cpu"`
	WaitIdle         time.Duration `json:"wait_idle_ns"`
	NodeCache        string        `json:"node_cache"`
	// DNSAccounting is node-cache's --dns-accounting (its per-pod
	// accounting; on as deployed): run with false to measure its overhead.
	DNSAccounting bool   `json:"dns_accounting"`
	CoreDNS       string `json:"-"`
	Quick         bool   `json:"quick"`
	Command       string `json:"command"`
	Out           string `json:"-"`
	Plot          string `json:"-"`
	JSON          string `json:"-"`
}

// DefaultConfig is the full run, for a quiet machine; the dnsperf settings
// are dnsbench's.
func DefaultConfig() Config {
	return Config{
		Systems:          append([]string(nil), AllSystems...),
		DNSAccounting:    true,
		Duration:         10 * time.Second,
		FixedDuration:    5 * time.Second,
		FixedRate:        30000,
		LatDuration:      3 * time.Second,
		LatRate:          5000,
		ClosedQueries:    20000,
		PerfClients:      4,
		PerfOutstanding:  100,
		Loads:            []Load{{Clients: 1, Batch: true}, {Clients: 1}, {Clients: 4}},
		FixedOutstanding: 200,
		Rounds:           5,
		ServerCPU:        1,
		LoadCPU:          0,
		WaitIdle:         20 * time.Second,
		NodeCache:        "bin/node-cache",
	}
}

// ApplyQuick shortens every phase for a smoke check; flags the user set
// explicitly win.
func (c *Config) ApplyQuick(set func(string) bool) {
	c.Quick = true
	for name, d := range map[string]*time.Duration{"duration": &c.Duration, "fixed-duration": &c.FixedDuration, "lat-duration": &c.LatDuration} {
		if !set(name) {
			*d = min(*d, 2*time.Second)
		}
	}
	if !set("wait-idle") {
		c.WaitIdle = 0
	}
	if !set("rounds") {
		c.Rounds = 1
	}
}

// Result is one system's figures.
type Result struct {
	System  string `json:"system"`
	Label   string `json:"label"`
	Version string `json:"version"`
	Skipped string `json:"skipped,omitempty"`
	Err     string `json:"error,omitempty"`

	Max          bench.PerfResult `json:"max"`
	MaxServerCPU time.Duration    `json:"max_server_cpu_ns"`

	// Fixed holds every fixed-rate run: Config.Rounds rounds, each at every
	// load of Config.Loads, the systems taking turns round by round.
	Fixed []FixedRun `json:"fixed"`
	// KernelEntries is the answers in the kernel's map after warming.
	KernelEntries float64 `json:"kernel_entries"`

	// Lats are the latency runs, one per round after its fixed-rate runs;
	// Lat pools their samples.
	Lats []LatRun `json:"latency_rounds"`
	// Closed are the closed-loop runs, one per round after the latency run.
	Closed []ClosedRun     `json:"closed_loop"`
	Lat    bench.LatResult `json:"latency"`
}

// ClosedRun is one round's closed-loop run: queries one after the other
// from one blocking socket, as a pod's resolver asks them.
type ClosedRun struct {
	Round int                    `json:"round"`
	Res   bench.ClosedLoopResult `json:"result"`
	// NodeCPU is the machine's busy time during the run (bench.BusySince).
	NodeCPU time.Duration `json:"node_cpu_ns"`
}

// NodeCPUPerAns is the machine's busy time minus the client thread's user
// time, per answer, µs: the same measure as the fixed-rate runs'.
func (c ClosedRun) NodeCPUPerAns() float64 { return perAnswer(c.NodeCPU-c.Res.User, c.Res.Answers) }

// ClosedNodeCPUPerAns is the median over the rounds of the closed-loop
// node CPU per answer.
func (r Result) ClosedNodeCPUPerAns() float64 {
	var v []float64
	for _, c := range r.Closed {
		v = append(v, c.NodeCPUPerAns())
	}
	return median(v)
}

// LatRun is one round's latency run.
type LatRun struct {
	Round int             `json:"round"`
	Lat   bench.LatResult `json:"latency"`
}

// P99 is the median of the rounds' p99 latencies, with the lowest and
// highest: a round on this VM that the host disturbed moves its own p99
// by tens of µs, and the median leaves it out.
func (r Result) P99() (med, lo, hi time.Duration) {
	var v []float64
	for _, l := range r.Lats {
		v = append(v, float64(l.Lat.P99))
	}
	m, l, h, _ := spreadOf(v)
	return time.Duration(m), time.Duration(l), time.Duration(h)
}

// FixedRun is one fixed-rate dnsperf run against a freshly started and
// warmed system.
type FixedRun struct {
	Round int              `json:"round"`
	Load  Load             `json:"load"`
	Perf  bench.PerfResult `json:"perf"`
	Wall  time.Duration    `json:"wall_ns"`
	// NodeCPU is the whole machine's busy time during the run: every CPU,
	// every state but idle and iowait (bench.BusySince).
	NodeCPU time.Duration `json:"node_cpu_ns"`
	// NodeCPUTicks is the same from the tick-sampled states of /proc/stat,
	// for comparison (bench.TickBusySince).
	NodeCPUTicks time.Duration `json:"node_cpu_ticks_ns"`
	// PerfUser and PerfSys are dnsperf's own user and system time.
	PerfUser time.Duration `json:"dnsperf_user_ns"`
	PerfSys  time.Duration `json:"dnsperf_sys_ns"`
	// PerfSwitches are dnsperf's context switches, voluntary and not.
	PerfSwitches int64 `json:"dnsperf_switches"`
	// ServerCPU is the server process's utime+stime, all threads.
	ServerCPU time.Duration `json:"server_cpu_ns"`
	// Background is how many cores the machine kept busy in the second
	// before the run, with the server idle: other people's work.
	Background float64 `json:"background_cores"`
	// KernelHits are the answers node-cache's kernel program gave.
	KernelHits float64 `json:"kernel_hits"`
}

// OK reports whether the system produced figures.
func (r Result) OK() bool { return r.Skipped == "" && r.Err == "" }

func perAnswer(d time.Duration, answers int) float64 {
	if answers <= 0 {
		return 0
	}
	return float64(d) / float64(time.Microsecond) / float64(answers)
}

// NodeCPUPerAns is node CPU per answered query, µs: all CPU time of the
// machine during the run minus dnsperf's user time.
func (f FixedRun) NodeCPUPerAns() float64 { return perAnswer(f.NodeCPU-f.PerfUser, f.Perf.NoError) }

// PerfSysPerAns is dnsperf's system time per answer, µs (the pod's
// syscalls; part of node CPU).
func (f FixedRun) PerfSysPerAns() float64 { return perAnswer(f.PerfSys, f.Perf.NoError) }

// SwitchesPerAns is dnsperf's context switches per answer.
func (f FixedRun) SwitchesPerAns() float64 {
	if f.Perf.NoError <= 0 {
		return 0
	}
	return float64(f.PerfSwitches) / float64(f.Perf.NoError)
}

// ServerPerAns is the server process's CPU per answer, µs.
func (f FixedRun) ServerPerAns() float64 { return perAnswer(f.ServerCPU, f.Perf.NoError) }

// BackgroundPerAns is what the background load measured before the run
// would add to NodeCPUPerAns, µs.
func (f FixedRun) BackgroundPerAns() float64 {
	return perAnswer(time.Duration(f.Background*float64(f.Wall)), f.Perf.NoError)
}

// Load is how dnsperf runs in a fixed-rate run.
type Load struct {
	Clients int `json:"clients"` // its sockets, -c
	// Batch runs it as SCHED_BATCH (chrt -b 0), so that its receiving
	// thread, woken by an answer, does not preempt its sending thread.
	Batch bool `json:"batch"`
}

func (l Load) String() string {
	if l.Batch {
		return fmt.Sprintf("-c %d, SCHED_BATCH", l.Clients)
	}
	return fmt.Sprintf("-c %d", l.Clients)
}

// Flag is the load as -loads spells it: 1/batch, 4.
func (l Load) Flag() string {
	if l.Batch {
		return fmt.Sprintf("%d/batch", l.Clients)
	}
	return strconv.Itoa(l.Clients)
}

// ParseLoads parses -loads: comma-separated N or N/batch.
func ParseLoads(s string) ([]Load, error) {
	var out []Load
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		n, batch := strings.CutSuffix(f, "/batch")
		c, err := strconv.Atoi(n)
		if err != nil || c < 1 {
			return nil, fmt.Errorf("load %q: want a socket count, optionally followed by /batch (4, 1/batch)", f)
		}
		out = append(out, Load{Clients: c, Batch: batch})
	}
	return out, nil
}

// FlagLoads spells loads as -loads takes them.
func FlagLoads(loads []Load) string {
	s := make([]string, len(loads))
	for i, l := range loads {
		s[i] = l.Flag()
	}
	return strings.Join(s, ",")
}

// runs are the fixed-rate runs with the given load.
func (r Result) runs(load Load) []FixedRun {
	var out []FixedRun
	for _, f := range r.Fixed {
		if f.Load == load {
			out = append(out, f)
		}
	}
	return out
}

// run is the fixed-rate run of one round and load.
func (r Result) run(round int, load Load) (FixedRun, bool) {
	for _, f := range r.Fixed {
		if f.Round == round && f.Load == load {
			return f, true
		}
	}
	return FixedRun{}, false
}

// Median is the median of figure over the runs with the given load (0
// without runs): the rounds are minutes apart, and this VM's speed
// drifts by more than the differences measured.
func (r Result) Median(load Load, figure func(FixedRun) float64) float64 {
	return median(r.values(load, figure))
}

// values is figure for each run with the load.
func (r Result) values(load Load, figure func(FixedRun) float64) []float64 {
	var v []float64
	for _, f := range r.runs(load) {
		v = append(v, figure(f))
	}
	return v
}

// spreadOf is the median, lowest and highest of v, and how many values
// there are (all 0 for none).
func spreadOf(v []float64) (med, lo, hi float64, n int) {
	if len(v) == 0 {
		return 0, 0, 0, 0
	}
	return median(v), slices.Min(v), slices.Max(v), len(v)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if n := len(v); n%2 == 0 {
		return (v[n/2-1] + v[n/2]) / 2
	}
	return v[len(v)/2]
}

// NodeCPUPerAns is the median node CPU per answer with the given load.
func (r Result) NodeCPUPerAns(load Load) float64 {
	return r.Median(load, FixedRun.NodeCPUPerAns)
}

// totals takes runs together: queries sent, lost and answered, kernel
// answers, the mean of dnsperf's average latencies, the slowest run's rate
// and the most background per answer.
func totals(runs []FixedRun) (t FixedTotals) {
	t.MinQPS = -1
	for i, f := range runs {
		t.Sent += f.Perf.Sent
		t.Lost += f.Perf.Lost
		t.NoError += f.Perf.NoError
		t.KernelHits += f.KernelHits
		t.AvgLat += (f.Perf.AvgLat - t.AvgLat) / time.Duration(i+1)
		if t.MinQPS < 0 || f.Perf.QPS < t.MinQPS {
			t.MinQPS = f.Perf.QPS
		}
		t.MaxBackgroundPerAns = max(t.MaxBackgroundPerAns, f.BackgroundPerAns())
	}
	return t
}

// FixedTotals are fixed-rate runs taken together (totals).
type FixedTotals struct {
	Sent, Lost, NoError int
	KernelHits          float64
	AvgLat              time.Duration // mean of the runs' dnsperf averages
	MinQPS              float64
	MaxBackgroundPerAns float64 // µs
}

// KernelShare is the share of the answers the kernel gave.
func (t FixedTotals) KernelShare() float64 {
	if t.NoError == 0 {
		return 0
	}
	return t.KernelHits / float64(t.NoError)
}

// MaxQPS is the answered QPS of the max-QPS phase.
func (r Result) MaxQPS() float64 {
	if r.Max.RunTime <= 0 {
		return 0
	}
	return float64(r.Max.NoError) / r.Max.RunTime.Seconds()
}

// Report is a whole run.
type Report struct {
	Config   Config        `json:"config"`
	Machine  bench.Machine `json:"machine"`
	Start    time.Time     `json:"start"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	Upstream string        `json:"upstream"`
	Notes    []string      `json:"notes"` // per system, how it is configured
	Results  []Result      `json:"results"`
	Warnings []string      `json:"warnings,omitempty"`
}

const (
	// Names of what the bench creates, so that a later run can remove what
	// a killed one left: <TempDir>/kcachebench-bpffs-<pid>-<local IP>-*
	// (the pins) and <TempDir>/kcachebench-run-<pid>-* (logs, configs).
	bpffsPrefix = "kcachebench-bpffs-"
	runPrefix   = "kcachebench-run-"
	// heartbeat is node-cache's --heartbeat-timeout, and the bench's own
	// when it steers for a peer.
	heartbeat = time.Second
)

// env is what Run sets up and tears down.
type env struct {
	cfg      Config
	dir      string
	pod      *netns.Pod
	local    netip.Addr // the cache's link-local address, on lo
	vip      netip.Addr // the cluster DNS VIP the pod queries
	bpffs    string
	procs    bench.Procs
	ports    bench.Ports
	peers    *bench.Peers
	upstream string
	nodeBin  string
	dataFile string
	queries  [][]byte
	cleanups []func()
	logf     func(string, ...any)
}

func (e *env) defer_(f func()) { e.cleanups = append(e.cleanups, f) }

func (e *env) close() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
	e.cleanups = nil
}

// Run measures every system. Everything it creates is removed before it
// returns, also on error or when ctx is cancelled.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (network namespaces, BPF)")
	}
	for _, tool := range []string{"dnsperf", "taskset", "ip"} {
		if _, err := bench.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is required: %w (apt-get install -y dnsperf util-linux iproute2)", tool, err)
		}
	}
	cpus := bench.OnlineCPUs()
	if !slices.Contains(cpus, cfg.ServerCPU) || !slices.Contains(cpus, cfg.LoadCPU) || cfg.ServerCPU == cfg.LoadCPU {
		return nil, fmt.Errorf("need two distinct usable CPUs (server %d, load %d); usable: %v", cfg.ServerCPU, cfg.LoadCPU, cpus)
	}
	for _, s := range cfg.Systems {
		if !slices.Contains(AllSystems, s) {
			return nil, fmt.Errorf("unknown system %q (known: %s)", s, strings.Join(AllSystems, ","))
		}
	}
	rep := &Report{Config: cfg, Start: time.Now(), Machine: bench.MachineInfo(ctx)}
	e := &env{cfg: cfg, logf: func(format string, a ...any) { fmt.Fprintf(os.Stderr, "kcachebench: "+format+"\n", a...) }}
	defer e.close()
	if err := e.setup(ctx); err != nil {
		return nil, err
	}
	rep.Upstream = fmt.Sprintf("stock CoreDNS `file` plugin on 127.0.0.1, pinned to cpu %d (dnsbench's: zone `bench.test.`, %d A records with TTL 3600); it only answers the first warm-up pass", cfg.ServerCPU, len(e.queries))
	for _, s := range cfg.Systems {
		res := Result{System: s}
		var notes string
		res.Label, res.Version, notes = e.describe(ctx, s)
		rep.Notes = append(rep.Notes, fmt.Sprintf("%s: %s", res.Label, notes))
		rep.Results = append(rep.Results, res)
	}
	// Each phase starts the system afresh, with the cores idle.
	phase := func(r *Result, what string, f func(*server) error) error {
		if busy := bench.WaitIdle(ctx, []int{cfg.ServerCPU, cfg.LoadCPU}, cfg.WaitIdle); busy > 0.1 {
			e.logf("warning: cores still %.0f%% busy with other work after waiting %s", 100*busy, cfg.WaitIdle)
		}
		e.logf("%s (%s): %s", r.System, r.Version, what)
		err := e.with(ctx, r, f)
		if err != nil && ctx.Err() == nil {
			r.Err = err.Error()
			e.logf("%s: FAILED: %v", r.System, err)
		}
		return ctx.Err()
	}
	// 1. Node CPU at a fixed rate: the systems take turns, round by round,
	// so that the machine's drift over minutes falls on every system alike.
	for round := range cfg.Rounds {
		for _, i := range roundOrder(cfg.Systems, round) {
			r := &rep.Results[i]
			if r.Err != "" {
				continue
			}
			if err := phase(r, fmt.Sprintf("round %d of %d, node CPU at %.0f QPS and latency", round+1, cfg.Rounds, cfg.FixedRate), func(srv *server) error {
				return e.measureRound(ctx, srv, r, round)
			}); err != nil {
				return nil, err
			}
		}
	}
	for i := range rep.Results {
		r := &rep.Results[i]
		var lats []bench.LatResult
		for _, l := range r.Lats {
			lats = append(lats, l.Lat)
		}
		r.Lat = bench.MergeLat(lats...)
	}
	// 2. Maximum QPS, once per system.
	for i := range rep.Results {
		r := &rep.Results[i]
		if r.Err != "" {
			continue
		}
		if err := phase(r, "max QPS", func(srv *server) error { return e.measureMax(ctx, srv, r) }); err != nil {
			return nil, err
		}
	}
	rep.Elapsed = time.Since(rep.Start).Round(time.Second)
	rep.warn()
	return rep, nil
}

func (e *env) setup(ctx context.Context) error {
	sweep()
	root, err := bench.FindRepoRoot()
	if err != nil {
		return err
	}
	e.nodeBin = bench.CommandPath(e.cfg.NodeCache)
	if _, err := os.Stat(e.nodeBin); err != nil {
		return fmt.Errorf("%s: %w (make build)", e.cfg.NodeCache, err)
	}
	// Stock CoreDNS (upstream and peer) is built before the harness pins
	// itself, so that a build can use every core.
	coredns := e.cfg.CoreDNS
	if coredns == "" {
		if coredns, err = bench.EnsureStockCoreDNS(ctx, root, e.logf); err != nil {
			return err
		}
	}
	// The harness (its latency generator, the peers' heartbeat) runs on the
	// load core, as dnsbench's does.
	restore, err := bench.PinSelf(e.cfg.LoadCPU)
	if err != nil {
		return err
	}
	e.defer_(restore)

	if e.dir, err = os.MkdirTemp("", fmt.Sprintf("%s%d-", runPrefix, os.Getpid())); err != nil {
		return err
	}
	e.defer_(func() { os.RemoveAll(e.dir) })
	e.local, e.vip = freeLinkLocal(), randomAddr(10, 246)
	bpffs, unmount, err := steertest.PrivateBPFFS(bpffsPrefix, e.local.String())
	if err != nil {
		return err
	}
	e.bpffs = bpffs
	e.defer_(unmount)

	pod, err := netns.New(ctx, netns.Options{NoSearch: true})
	if err != nil {
		return fmt.Errorf("pod namespace: %w", err)
	}
	e.pod = pod
	e.defer_(func() { pod.Close() })
	// Should the steering ever not apply, the pod's queries for the VIP
	// fail in the pod instead of leaving the machine.
	if err := pod.Netlink().RouteAdd(&netlink.Route{Dst: hostNet(e.vip), Type: unix.RTN_UNREACHABLE}); err != nil {
		return fmt.Errorf("pod: route to the VIP: %w", err)
	}

	e.defer_(e.procs.StopAll)
	e.peers = bench.NewPeers(e.dir, &e.procs, &e.ports, coredns, e.cfg.ServerCPU)
	if e.upstream, err = e.peers.StartUpstream(ctx, e.cfg.ServerCPU); err != nil {
		return err
	}
	names := bench.CachedNames()
	e.dataFile = filepath.Join(e.dir, "cached.txt")
	if err := bench.WritePerfData(e.dataFile, names); err != nil {
		return err
	}
	e.queries, err = bench.PackQueries(names)
	return err
}

// sweep removes what a killed earlier run left: its bpf file system (and
// the programs pinned there), the cache's address on lo, node-cache's
// NOTRACK table, its directory.
func sweep() {
	steertest.SweepBPFFS(bpffsPrefix, func(tag string) {
		if a, err := netip.ParseAddr(tag); err == nil && a.IsLinkLocalUnicast() {
			delAddr(a)
		}
	})
	notracktest.SweepNotrackTables("kcachebench")
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), runPrefix+"*"))
	for _, d := range dirs {
		pid, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), runPrefix), "-")
		if _, err := os.Stat("/proc/" + pid); err != nil {
			os.RemoveAll(d)
		}
	}
}

func (e *env) describe(ctx context.Context, s string) (label, version, notes string) {
	switch s {
	case SysKernel, SysNodeCache:
		version = "dev"
		if out, err := exec.CommandContext(ctx, e.nodeBin, "--version").Output(); err == nil {
			version = strings.TrimSpace(string(out))
		}
		if s == SysKernel {
			return "node-cache, kernel path", version, "`bin/node-cache` with its steering (`--steer=true --cluster-dns VIP --local-ip LOCAL --interface lo`) and `--kernel-cache` (the default): its tc program on the pod's host veth answers hot names"
		}
		return "node-cache, user space", version, "the same, with `--kernel-cache=false`: every query reaches node-cache's UDP socket (its fast path answers cache hits)"
	}
	label, version, notes = e.peers.Describe(ctx, s)
	return label, version, notes + "; listening on LOCAL:53, the bench itself steering the VIP there"
}

// server is a system under test, answering on local:53 with the VIP steered
// to it.
type server struct {
	proc    *bench.Proc
	metrics string // node-cache's /metrics address ("" for peers)
	stop    func()
}

// start starts system s and the steering to it.
func (e *env) start(ctx context.Context, s string) (*server, error) {
	if s == SysKernel || s == SysNodeCache {
		return e.startNodeCache(ctx, s == SysKernel)
	}
	return e.startPeer(ctx, s)
}

// startNodeCache runs node-cache as deployed: it sets up the local address,
// steers the VIP to it with its own eBPF programs and heartbeat, and (kernel)
// attaches its tc program to every veth, the pod's among them.
func (e *env) startNodeCache(ctx context.Context, kernel bool) (*server, error) {
	var port [2]int
	for i := range port {
		p, err := e.ports.Get()
		if err != nil {
			return nil, err
		}
		port[i] = p
	}
	// A NOTRACK table of its own name, never a real node-cache's.
	steer := []string{"--bpffs", e.bpffs, "--local-ip", e.local.String(), "--interface", "lo",
		"--notrack-table", notracktest.NotrackTable("kcachebench")}
	cleanup := func() {
		if out, err := exec.Command(e.nodeBin, append([]string{"--cleanup"}, steer...)...).CombinedOutput(); err != nil {
			e.logf("node-cache --cleanup: %v: %s", err, out)
		}
	}
	listen, metrics := fmt.Sprintf("127.0.0.1:%d", port[0]), fmt.Sprintf("127.0.0.1:%d", port[1])
	args := append([]string{e.nodeBin, "--steer=true", "--cluster-dns", e.vip.String(), "--heartbeat-timeout", heartbeat.String(),
		"--kernel-cache=" + strconv.FormatBool(kernel), "--listen", listen, "--upstream", e.upstream,
		"--metrics", metrics, "--health", "", "--observe", "", "--dns-accounting=" + strconv.FormatBool(e.cfg.DNSAccounting)}, steer...)
	p, err := e.procs.Start("node-cache", e.cfg.ServerCPU, nil, filepath.Join(e.dir, "node-cache.log"), args...)
	if err != nil {
		return nil, err
	}
	srv := &server{proc: p, metrics: metrics, stop: func() { p.Stop(); cleanup() }}
	if err := bench.WaitReady(ctx, p, listen); err != nil {
		srv.stop()
		return nil, err
	}
	if kernel && !strings.Contains(p.LogTail(), "kernel cache on") {
		b, _ := os.ReadFile(filepath.Join(e.dir, "node-cache.log"))
		if !strings.Contains(string(b), "kernel cache on") {
			srv.stop()
			return nil, fmt.Errorf("node-cache started without its kernel cache:\n%s", p.LogTail())
		}
	}
	return srv, nil
}

// startPeer runs a peer on local:53 and steers the VIP to it from the bench
// process, through the datapath package as node-cache does: the same cgroup
// programs, the same table (VIP:53 -> LOCAL:53, UDP and TCP), a heartbeat
// every quarter of the timeout. No node-cache process runs meanwhile, so
// none is counted in the node's CPU.
func (e *env) startPeer(ctx context.Context, name string) (_ *server, err error) {
	var undo []func()
	stop := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	if err := addAddr(e.local); err != nil {
		return nil, err
	}
	undo = append(undo, func() { delAddr(e.local) })
	p, err := e.peers.Start(name, e.local, 53)
	if err != nil {
		return nil, err
	}
	undo = append(undo, p.Stop)
	if err := bench.WaitReady(ctx, p, netip.AddrPortFrom(e.local, 53).String()); err != nil {
		return nil, err
	}
	dp, err := steer.Attach(steer.Options{BPFFS: e.bpffs, HeartbeatTimeout: heartbeat})
	if err != nil {
		return nil, fmt.Errorf("steering: %w", err)
	}
	undo = append(undo, func() {
		if err := dp.Cleanup(); err != nil {
			e.logf("steering cleanup: %v", err)
		}
	})
	var rules []steer.Rule
	for _, proto := range []steer.Proto{steer.UDP, steer.TCP} {
		rules = append(rules, steer.Rule{VIP: netip.AddrPortFrom(e.vip, 53), Proto: proto, Target: netip.AddrPortFrom(e.local, 53)})
	}
	if err := dp.SetTable(rules); err != nil {
		return nil, fmt.Errorf("steering table: %w", err)
	}
	if err := dp.Beat(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(heartbeat / 4)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if err := dp.Beat(); err != nil {
					e.logf("heartbeat: %v", err)
				}
			}
		}
	}()
	undo = append(undo, func() { close(done); wg.Wait(); dp.Stop() })
	return &server{proc: p, stop: stop}, nil
}

// roundOrder is the order in which a round measures the systems, as
// indexes into systems: each round starts one system later than the one
// before, and the kernel path and unbound, whose ratio is the target, are
// measured one right after the other (which of them first alternates), so
// that each round's ratio compares runs seconds apart.
func roundOrder(systems []string, round int) []int {
	n := len(systems)
	partner := map[string]string{SysKernel: SysUnbound, SysUnbound: SysKernel}
	index := map[string]int{}
	for i, s := range systems {
		index[s] = i
	}
	var order []int
	done := make([]bool, n)
	for k := range n {
		i := (k + round) % n
		if done[i] {
			continue
		}
		order, done[i] = append(order, i), true
		if j, ok := index[partner[systems[i]]]; ok && !done[j] {
			order, done[j] = append(order, j), true
		}
	}
	return order
}

// with starts system r.System, runs f against it and stops it.
func (e *env) with(ctx context.Context, r *Result, f func(*server) error) error {
	srv, err := e.start(ctx, r.System)
	if err != nil {
		return err
	}
	defer srv.stop()
	if err := f(srv); err != nil {
		return errors.Join(err, srv.alive())
	}
	return srv.alive()
}

// alive is the server's exit as an error, nil while it runs.
func (s *server) alive() error {
	if s.proc.Exited() {
		return fmt.Errorf("server: %v", s.proc.ExitError())
	}
	return nil
}

// perfWrap runs dnsperf inside the pod, as SCHED_BATCH when batch.
func (e *env) perfWrap(batch bool) []string {
	w := []string{"ip", "netns", "exec", e.pod.Name}
	if batch {
		w = append(w, "chrt", "--batch", "0")
	}
	return w
}

// measureRound warms the system and runs dnsperf at the fixed rate once per
// load, recording the machine's busy time around each run, then measures
// the latency from the pod.
func (e *env) measureRound(ctx context.Context, srv *server, r *Result, round int) error {
	for _, load := range e.cfg.Loads {
		if err := e.warm(ctx, srv, r); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		f := FixedRun{Round: round, Load: load}
		// The load the machine carries without us, for the record.
		b0, err := bench.SampleMachine()
		if err != nil {
			return err
		}
		t0 := time.Now()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		b1, _ := bench.SampleMachine()
		f.Background = b1.BusySince(b0).Seconds() / time.Since(t0).Seconds()

		h0 := e.kernelHits(ctx, srv)
		c0, _ := bench.CPUTime(srv.proc.Pid())
		m0, _ := bench.SampleMachine()
		t0 = time.Now()
		var u bench.PerfUsage
		f.Perf, u, _, err = bench.RunDNSPerfUsage(ctx, e.cfg.LoadCPU, e.perfWrap(load.Batch), e.vip.String(), bench.PerfOpts{Port: 53, DataFile: e.dataFile,
			Duration: e.cfg.FixedDuration, Clients: load.Clients, Outstand: e.cfg.FixedOutstanding, MaxQPS: e.cfg.FixedRate, Timeout: time.Second})
		f.Wall = time.Since(t0)
		f.PerfUser, f.PerfSys, f.PerfSwitches = u.User, u.Sys, u.Voluntary+u.Involuntary
		m1, _ := bench.SampleMachine()
		c1, _ := bench.CPUTime(srv.proc.Pid())
		if err != nil {
			return fmt.Errorf("fixed rate, %s: %w", load, err)
		}
		f.NodeCPU, f.NodeCPUTicks, f.ServerCPU = m1.BusySince(m0), m1.TickBusySince(m0), c1-c0
		f.KernelHits = e.kernelHits(ctx, srv) - h0
		e.logf("%s: %s: node CPU %.1f µs per answer, dnsperf sys %.1f, server %.2f; dnsperf switches %.2f per answer (%d voluntary, %d preempted)",
			r.System, load, f.NodeCPUPerAns(), f.PerfSysPerAns(), f.ServerPerAns(), f.SwitchesPerAns(), u.Voluntary, u.Involuntary)
		r.Fixed = append(r.Fixed, f)
		if err := srv.alive(); err != nil {
			return err
		}
	}
	if err := e.measureLatency(ctx, srv, r, round); err != nil {
		return err
	}
	return e.measureClosedLoop(ctx, srv, r, round)
}

// measureClosedLoop asks the working set from the pod one query after the
// other, each as soon as the last is answered, and records the machine's
// busy time around it.
func (e *env) measureClosedLoop(ctx context.Context, srv *server, r *Result, round int) error {
	if err := e.warm(ctx, srv, r); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	vip := netip.AddrPortFrom(e.vip, 53).String()
	c := ClosedRun{Round: round}
	m0, err := bench.SampleMachine()
	if err != nil {
		return err
	}
	if err := e.pod.Do(func() error {
		var err error
		c.Res, err = bench.RunClosedLoop(ctx, vip, e.queries, e.cfg.ClosedQueries, time.Second)
		return err
	}); err != nil {
		return fmt.Errorf("closed loop: %w", err)
	}
	m1, _ := bench.SampleMachine()
	c.NodeCPU = m1.BusySince(m0)
	e.logf("%s: closed loop, %d queries: node CPU %.1f µs per answer (client thread user %.1f, sys %.1f), %d lost",
		r.System, c.Res.Sent, c.NodeCPUPerAns(), perAnswer(c.Res.User, c.Res.Answers), perAnswer(c.Res.Sys, c.Res.Answers), c.Res.Lost)
	r.Closed = append(r.Closed, c)
	return nil
}

// measureMax measures the maximum QPS, dnsperf unthrottled.
func (e *env) measureMax(ctx context.Context, srv *server, r *Result) error {
	if err := e.warm(ctx, srv, r); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	e.logf("%s: max QPS, dnsperf unthrottled for %s", r.System, e.cfg.Duration)
	c0, _ := bench.CPUTime(srv.proc.Pid())
	var err error
	r.Max, _, _, _, err = bench.RunDNSPerf(ctx, e.cfg.LoadCPU, e.perfWrap(false), e.vip.String(), bench.PerfOpts{Port: 53, DataFile: e.dataFile,
		Duration: e.cfg.Duration, Clients: e.cfg.PerfClients, Outstand: e.cfg.PerfOutstanding, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("max QPS: %w", err)
	}
	c1, _ := bench.CPUTime(srv.proc.Pid())
	r.MaxServerCPU = c1 - c0
	return nil
}

// measureLatency measures the latency from the pod, one query at a time
// from a blocking socket.
func (e *env) measureLatency(ctx context.Context, srv *server, r *Result, round int) error {
	if err := e.warm(ctx, srv, r); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	vip := netip.AddrPortFrom(e.vip, 53).String()
	n := int(e.cfg.LatRate * e.cfg.LatDuration.Seconds())
	var lat bench.LatResult
	if err := e.pod.Do(func() error {
		var err error
		lat, err = bench.RunLatSerial(ctx, vip, e.queries, n, e.cfg.LatRate, time.Second)
		return err
	}); err != nil {
		return fmt.Errorf("latency: %w", err)
	}
	e.logf("%s: latency, %d queries at %.0f QPS: p50 %s, p99 %s, %d lost", r.System, n, e.cfg.LatRate, lat.P50, lat.P99, lat.Lost)
	r.Lats = append(r.Lats, LatRun{Round: round, Lat: lat})
	return nil
}

// warm asks every name from the pod through the steering until all are
// answered; for the kernel path until all are in the kernel's map (node-cache
// offers an entry once its cache has answered it twice, so every name is
// asked at least 3 times after the miss).
func (e *env) warm(ctx context.Context, srv *server, r *Result) error {
	vip := netip.AddrPortFrom(e.vip, 53).String()
	minPasses := 1
	if r.System == SysKernel {
		minPasses = 4
	}
	var last bench.LatResult
	for pass := 1; pass <= minPasses+4; pass++ {
		err := e.pod.Do(func() error {
			var err error
			last, err = bench.RunLatGen(ctx, vip, e.queries, len(e.queries), 5000, 4, time.Second)
			return err
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil || last.Answers != len(e.queries) || pass < minPasses {
			continue
		}
		if r.System != SysKernel {
			return nil
		}
		n, err := metric(ctx, srv.metrics, "dnsaccel_nodecache_kernel_cache_entries")
		if err != nil {
			return err
		}
		r.KernelEntries = n
		if n >= float64(len(e.queries)) {
			return nil
		}
	}
	if r.System == SysKernel && last.Answers == len(e.queries) {
		return fmt.Errorf("warming the kernel cache: %.0f of %d names in the kernel's map after %d passes", r.KernelEntries, len(e.queries), minPasses+4)
	}
	return fmt.Errorf("warming the cache from the pod: %d of %d names answered (%d bad, %d lost)", last.Answers, len(e.queries), last.Bad, last.Lost)
}

// kernelHits is node-cache's count of answers its kernel program gave (0
// for peers).
func (e *env) kernelHits(ctx context.Context, srv *server) float64 {
	if srv.metrics == "" {
		return 0
	}
	v, _ := metric(ctx, srv.metrics, "coredns_nodecache_offload_hits_total")
	return v
}

// metric sums the samples of one metric (every label set) at addr/metrics.
func metric(ctx context.Context, addr, name string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("metrics %s: HTTP %d", addr, resp.StatusCode)
	}
	total, found := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			total, found = total+v, true
		}
	}
	if !found {
		return 0, fmt.Errorf("metrics %s: no %s", addr, name)
	}
	return total, nil
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func addAddr(a netip.Addr) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: hostNet(a)}); err != nil {
		return fmt.Errorf("adding %s to lo: %w", a, err)
	}
	return nil
}

func delAddr(a netip.Addr) {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		netlink.AddrDel(lo, &netlink.Addr{IPNet: hostNet(a)})
	}
}

// randomAddr is a.b.X.Y with X.Y random (never .0 or .255 at the end).
func randomAddr(a, b byte) netip.Addr {
	for {
		var r [2]byte
		if _, err := rand.Read(r[:]); err == nil && r[1] != 0 && r[1] != 255 {
			return netip.AddrFrom4([4]byte{a, b, r[0], r[1]})
		}
	}
}

// freeLinkLocal is a 169.254.X.Y no interface holds, not node-cache's
// production default nor the cloud metadata address.
func freeLinkLocal() netip.Addr {
	used := map[netip.Addr]bool{netip.MustParseAddr("169.254.20.10"): true, netip.MustParseAddr("169.254.169.254"): true}
	if addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4); err == nil {
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				used[ip.Unmap()] = true
			}
		}
	}
	for {
		if a := randomAddr(169, 254); !used[a] {
			return a
		}
	}
}
