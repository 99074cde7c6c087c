package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Exported helpers for the other whole-system benchmarks under test/bench
// (autopathbench, ...), so that every benchmark starts, pins and stops its
// processes and writes docs/benchmarks.md the same way. They wrap the
// helpers the cache benchmark uses, without changing them.

// Procs tracks long-running child processes so that every one of them can be
// stopped on any exit path. The zero value is ready to use.
type Procs struct{ set procSet }

// Proc is a long-running child process started by Procs.Start.
type Proc struct{ p *proc }

// Start launches argv (pinned with taskset to cpu when cpu >= 0) in its own
// process group (killed with the harness: Pdeathsig), with env appended to
// the harness's environment and stdout and stderr going to logPath.
func (ps *Procs) Start(name string, cpu int, env []string, logPath string, argv ...string) (*Proc, error) {
	p, err := ps.set.start(name, cpu, env, logPath, argv...)
	if err != nil {
		return nil, err
	}
	return &Proc{p: p}, nil
}

// StopAll stops every process started, most recent first.
func (ps *Procs) StopAll() { ps.set.stopAll() }

// Pid is the process id (of taskset's exec'd program when pinned).
func (p *Proc) Pid() int { return p.p.pid() }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool { return p.p.exited() }

// Stop terminates the process group (SIGTERM, SIGKILL after 3 s) and waits
// for the process to exit. Safe to call more than once.
func (p *Proc) Stop() { p.p.stop() }

// ExitError describes how an exited process ended, with the tail of its log.
func (p *Proc) ExitError() error {
	return fmt.Errorf("%s exited: %v\n%s", p.p.name, p.p.waitErr, p.p.logTail())
}

// LogTail returns the last lines of the process's log.
func (p *Proc) LogTail() string { return p.p.logTail() }

// RSS is the process's resident set size (VmRSS) in bytes, 0 if unknown.
func (p *Proc) RSS() int64 { return procStatusBytes(p.p.pid(), "VmRSS:") }

// RSSPeak is the process's peak resident set size (VmHWM) in bytes.
func (p *Proc) RSSPeak() int64 { return rssPeak(p.p.pid()) }

// Ports hands out loopback ports free for both UDP and TCP, never the same
// one twice. The zero value is ready to use.
type Ports struct{ a portAlloc }

// Get returns a free port.
func (pa *Ports) Get() (int, error) { return pa.a.get() }

// OnlineCPUs returns the CPUs this process may run on.
func OnlineCPUs() []int { return onlineCPUs() }

// PinSelf pins every thread of this process (and the children it starts
// later) to cpu, and returns a function that restores the previous affinity.
func PinSelf(cpu int) (restore func(), err error) {
	var m cpuMask
	m.set(cpu)
	old, err := pinSelf(m)
	if err != nil {
		return func() {}, err
	}
	return func() { _, _ = pinSelf(old) }, nil
}

// FindRepoRoot walks up from the working directory to the module root.
func FindRepoRoot() (string, error) { return findRepoRoot() }

// MachineInfo describes the host, for the Machine table of a section.
func MachineInfo(ctx context.Context) Machine { return machineInfo(ctx) }

// LookPath finds an executable in $PATH or the sbin directories.
func LookPath(name string) (string, error) { return lookPath(name) }

// WriteJSON writes v as indented JSON to path, creating its directory: the
// machine-readable copy of a benchmark's results.
func WriteJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// PerfOpts are the options of a dnsperf run (RunDNSPerf), PerfResult its
// parsed summary.
type (
	PerfOpts   = perfOpts
	PerfResult = perfResult
)

// RunDNSPerf runs dnsperf pinned to cpu (taskset) against server:o.Port, its
// command line prefixed by wrap (e.g. `ip netns exec NAME`, to run it in a
// pod), and returns its summary, its own user and system CPU time (from
// wait4's rusage: the utime and stime /proc/PID/stat shows) and its output.
func RunDNSPerf(ctx context.Context, cpu int, wrap []string, server string, o PerfOpts) (r PerfResult, user, sys time.Duration, out string, err error) {
	r, u, out, err := RunDNSPerfUsage(ctx, cpu, wrap, server, o)
	return r, u.User, u.Sys, out, err
}

// PerfUsage is what dnsperf itself used, from wait4's rusage.
type PerfUsage struct {
	User time.Duration `json:"user_ns"`
	Sys  time.Duration `json:"sys_ns"`
	// Voluntary and Involuntary count its context switches: a thread
	// going to sleep, and one preempted.
	Voluntary   int64 `json:"voluntary_switches"`
	Involuntary int64 `json:"involuntary_switches"`
}

// RunDNSPerfUsage is RunDNSPerf with dnsperf's context switches as well.
func RunDNSPerfUsage(ctx context.Context, cpu int, wrap []string, server string, o PerfOpts) (PerfResult, PerfUsage, string, error) {
	r, st, out, err := runDNSPerfAt(ctx, cpu, wrap, server, o)
	var u PerfUsage
	if st != nil {
		u.User, u.Sys = st.UserTime(), st.SystemTime()
		if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
			u.Voluntary, u.Involuntary = ru.Nvcsw, ru.Nivcsw
		}
	}
	return r, u, out, err
}

// LatResult is what RunLatGen measured.
type LatResult = latResult

// RunLatGen sends total queries to addr (IPv4 "IP:PORT") at a fixed rate
// from nsock connected UDP sockets and measures every answer's latency: the
// cache benchmark's open-loop generator. Its sockets are created by the
// calling goroutine, so inside netns.Pod.Do they belong to the pod.
func RunLatGen(ctx context.Context, addr string, queries [][]byte, total int, rate float64, nsock int, timeout time.Duration) (LatResult, error) {
	return runLatGen(ctx, addr, queries, total, rate, nsock, timeout)
}

// ClosedLoopResult is what RunClosedLoop measured.
type ClosedLoopResult = closedLoopResult

// RunClosedLoop asks total queries one after the other from one blocking
// socket on the calling goroutine's OS thread, as a pod's stub resolver
// does (see runClosedLoop); inside netns.Pod.Do its socket belongs to the
// pod.
func RunClosedLoop(ctx context.Context, addr string, queries [][]byte, total int, timeout time.Duration) (ClosedLoopResult, error) {
	return runClosedLoop(ctx, addr, queries, total, timeout)
}

// MergeLat pools runs of the same kind: their samples, counts and rates.
func MergeLat(rs ...LatResult) LatResult { return mergeLat(rs...) }

// RunLatSerial measures latency one query at a time from a blocking socket
// on the calling goroutine's OS thread (see runLatSerial); inside
// netns.Pod.Do its socket belongs to the pod.
func RunLatSerial(ctx context.Context, addr string, queries [][]byte, total int, rate float64, timeout time.Duration) (LatResult, error) {
	return runLatSerial(ctx, addr, queries, total, rate, timeout)
}

// CachedNames are the names of the cache benchmark's working set: the A
// records of the upstream's zone (Peers.StartUpstream).
func CachedNames() []string { return cachedNameList() }

// WritePerfData writes names as a dnsperf data file of A queries.
func WritePerfData(path string, names []string) error { return writePerfData(path, names) }

// PackQueries packs one A query per name, for RunLatGen.
func PackQueries(names []string) ([][]byte, error) { return packQueries(names) }

// CPUTime is utime+stime of every thread, live and exited, of pid.
func CPUTime(pid int) (time.Duration, error) { return cpuTime(pid) }

// MachineSample is a reading of the whole machine's CPU time (SampleMachine).
type MachineSample struct{ s machineSample }

// SampleMachine reads the machine's CPU time from /proc/stat.
func SampleMachine() (MachineSample, error) {
	s, err := sampleMachine()
	return MachineSample{s}, err
}

// BusySince is the CPU time the whole machine spent since prev in every
// state but idle and iowait: online CPUs × the time elapsed, minus idle and
// iowait time. With NO_HZ idle and iowait are measured at idle entry and
// exit, while the other states (user, system, softirq, ...) are sampled at
// timer ticks on kernels without VIRT_CPU_ACCOUNTING or IRQ_TIME_ACCOUNTING
// (such as this Debian VM's), which misses or over-charges short bursts.
func (s MachineSample) BusySince(prev MachineSample) time.Duration {
	return time.Duration(s.s.cpus)*(s.s.at-prev.s.at) - (s.s.idle - prev.s.idle)
}

// TickBusySince is the same from the tick-sampled states: user, nice,
// system, irq, softirq, steal (guest time is part of user and nice).
func (s MachineSample) TickBusySince(prev MachineSample) time.Duration {
	return s.s.ticks - prev.s.ticks
}

// WaitIdle waits up to maxWait for cpus to be idle (below 10% busy over 1 s)
// and returns the last busy share (0..1); with maxWait 0 it returns 0 at once.
func WaitIdle(ctx context.Context, cpus []int, maxWait time.Duration) float64 {
	return waitIdle(ctx, cpus, maxWait)
}

// EnsureStockCoreDNS builds stock CoreDNS at the version go.mod pins into
// StockCoreDNSPath, unless it is there already, and returns its path.
func EnsureStockCoreDNS(ctx context.Context, root string, logf func(string, ...any)) (string, error) {
	return ensureStockCoreDNS(ctx, root, logf)
}

// WaitReady polls addr (UDP) until it answers the first cached name
// positively, failing early if p exits.
func WaitReady(ctx context.Context, p *Proc, addr string) error { return waitReady(ctx, p.p, addr) }

// Peers starts the cache benchmark's peers (stock CoreDNS, unbound,
// dnsmasq) and its upstream for another benchmark, configured as dnsbench
// runs them, but answering on an address of the caller's choice.
type Peers struct{ e env }

// NewPeers keeps configs and logs in dir, starts processes with procs
// (pinned to serverCPU) and takes ports from ports; coreDNS is the stock
// CoreDNS binary (EnsureStockCoreDNS).
func NewPeers(dir string, procs *Procs, ports *Ports, coreDNS string, serverCPU int) *Peers {
	return &Peers{e: env{dir: dir, serverCPU: serverCPU, procs: &procs.set, ports: &ports.a, coredns: coreDNS}}
}

// StartUpstream starts the authoritative upstream (stock CoreDNS, zone
// bench.test with CachedNames) on 127.0.0.1 pinned to cpu, waits until it
// answers and returns its address.
func (ps *Peers) StartUpstream(ctx context.Context, cpu int) (string, error) {
	port, err := ps.e.ports.get()
	if err != nil {
		return "", err
	}
	up, err := startUpstream(&ps.e, port, cpu)
	if err != nil {
		return "", err
	}
	ps.e.upstreamPort = port
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if err := waitReady(ctx, up, addr); err != nil {
		return "", fmt.Errorf("upstream: %w", err)
	}
	return addr, nil
}

// Start starts the peer name ("coredns", "unbound", "dnsmasq") answering
// on ip:port, forwarding to the upstream; it does not wait (WaitReady).
func (ps *Peers) Start(name string, ip netip.Addr, port int) (*Proc, error) {
	s, ok := lookupSystem(name)
	if !ok || s.name == "node-cache" {
		return nil, fmt.Errorf("unknown peer %q", name)
	}
	if why := s.check(&ps.e); why != "" {
		return nil, errors.New(why)
	}
	e := ps.e
	e.bind = ip.String()
	p, err := s.start(&e, port)
	if err != nil {
		return nil, err
	}
	return &Proc{p: p}, nil
}

// Describe returns the peer's label, version and configuration notes.
func (ps *Peers) Describe(ctx context.Context, name string) (label, version, notes string) {
	s, ok := lookupSystem(name)
	if !ok {
		return name, "", ""
	}
	return s.label, s.version(ctx, &ps.e), s.notes
}

// Bar is one bar of a WriteBarChart panel.
type Bar struct {
	Label, Text string
	Value       float64
	Ours        bool // the project's colour; peers are grey
	Hatch       bool // striped: a figure limited by something else
}

// Panel is a titled horizontal bar chart with a dashed marker at Mark
// (none if 0). The font has upper-case letters, digits and punctuation.
type Panel struct {
	Title     string
	Bars      []Bar
	Mark      float64
	MarkLabel string
}

// WriteBarChart renders the panels one below the other into a PNG, with
// the cache benchmark's plot style.
func WriteBarChart(path, title string, panels []Panel) error {
	const w, panelH = 1100, 250
	c := newCanvas(w, len(panels)*panelH+60)
	c.text(20, 14, title, 2, colInk)
	for i, pn := range panels {
		bars := make([]bar, len(pn.Bars))
		for j, b := range pn.Bars {
			bars[j] = bar{label: b.Label, value: b.Value, text: b.Text, col: colPeer, hatch: b.Hatch}
			if b.Ours {
				bars[j].col = colOurs
			}
		}
		c.hbars(20, 50+i*panelH, w-40, panelH-20, pn.Title, bars, pn.Mark, pn.MarkLabel)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return c.savePNG(path)
}

// CommandPath resolves a path given on a benchmark's command line (such as
// bin/node-cache): as given when absolute or present relative to the
// working directory, else relative to the module root.
func CommandPath(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return RepoPath(p)
}

// FlagSet reports whether the command-line flag name was given explicitly
// (so a -quick default must not override it).
func FlagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}
