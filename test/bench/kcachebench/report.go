package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dnsaccel/dnsaccel/test/bench"
)

// Section markers in docs/benchmarks.md.
const (
	SectionStart = "<!-- bench:kcache:start -->"
	SectionEnd   = "<!-- bench:kcache:end -->"
)

// Targets of issue 6.
const (
	targetNodeRatio = 0.4 // kernel path node CPU per answer / unbound's
	targetServerUS  = 1.0 // node-cache's process CPU per answer on the kernel path
	targetP99       = 30 * time.Microsecond
)

func us(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/float64(time.Microsecond)) }

func kqps(v float64) string { return fmt.Sprintf("%.1fk", v/1000) }

func (rep *Report) get(system string) (Result, bool) {
	for _, r := range rep.Results {
		if r.System == system && r.OK() {
			return r, true
		}
	}
	return Result{}, false
}

// Failed reports whether a system could not be measured.
func (rep *Report) Failed() bool {
	for _, r := range rep.Results {
		if r.Err != "" {
			return true
		}
	}
	return false
}

type target struct{ what, value, verdict string }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// targets evaluates issue 6's targets for the kernel path.
func (rep *Report) targets() []target {
	k, ok := rep.get(SysKernel)
	if !ok {
		return []target{{"kernel path", "—", "not measured"}}
	}
	var ts []target
	what := fmt.Sprintf("node CPU per answer ≤ %.1f× unbound's", targetNodeRatio)
	if u, ok := rep.get(SysUnbound); ok && u.NodeCPUPerAns() > 0 {
		r := k.NodeCPUPerAns() / u.NodeCPUPerAns()
		ts = append(ts, target{what, fmt.Sprintf("%.2f× (%.1f vs %.1f µs)", r, k.NodeCPUPerAns(), u.NodeCPUPerAns()), verdict(r <= targetNodeRatio)})
	} else {
		ts = append(ts, target{what, "—", "not measured (no unbound result)"})
	}
	ts = append(ts,
		target{fmt.Sprintf("node-cache's process CPU per answer ≤ %.0f µs", targetServerUS), fmt.Sprintf("%.2f µs", k.ServerPerAns()), verdict(k.ServerPerAns() <= targetServerUS)},
		target{fmt.Sprintf("p99 latency ≤ %s µs", us(targetP99)), fmt.Sprintf("%s µs (p50 %s µs)", us(k.Lat.P99), us(k.Lat.P50)), verdict(k.Lat.P99 <= targetP99)})
	lost := k.Fixed.Lost + k.Lat.Lost
	v := verdict(lost == 0 && k.Fixed.QPS >= 0.95*rep.Config.FixedRate)
	val := fmt.Sprintf("%d of %d at %s QPS, %d of %d in the latency run", k.Fixed.Lost, k.Fixed.Sent, kqps(rep.Config.FixedRate), k.Lat.Lost, k.Lat.Sent)
	if k.Fixed.QPS < 0.95*rep.Config.FixedRate {
		val += fmt.Sprintf(" (rate reached only %.0f QPS)", k.Fixed.QPS)
	}
	return append(ts, target{"0 lost", val, v})
}

// warn notes what makes figures doubtful.
func (rep *Report) warn() {
	for _, r := range rep.Results {
		if !r.OK() {
			continue
		}
		if r.Background > 0.1 {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: the machine was %.0f%% of a core busy with other work just before the run (≈ %.1f µs per answer of background in node CPU): figures are disturbed",
				r.System, 100*r.Background, r.BackgroundPerAns()))
		}
		if r.Fixed.QPS < 0.95*rep.Config.FixedRate {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: the fixed-rate run reached only %.0f of %.0f QPS", r.System, r.Fixed.QPS, rep.Config.FixedRate))
		}
		if r.Fixed.NoError < r.Fixed.Completed {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: %d of %d answers in the fixed-rate run were not NOERROR", r.System, r.Fixed.Completed-r.Fixed.NoError, r.Fixed.Completed))
		}
		if r.System == SysKernel && r.KernelShare() < 0.99 {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: the kernel gave only %.1f%% of the answers", r.System, 100*r.KernelShare()))
		}
	}
}

// WriteTable prints the results.
func (rep *Report) WriteTable(w io.Writer) {
	cfg := rep.Config
	fmt.Fprintf(w, "\nIn-kernel DNS answers, from a pod through the steering; server on cpu %d, dnsperf on cpu %d\n", cfg.ServerCPU, cfg.LoadCPU)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "system\tnode CPU µs/ans@%s\tdnsperf sys µs/ans\tserver µs/ans\tkernel answers\tlost@%s\tavg lat µs@%s\tmax QPS\tserver CPU@max\tp50/p99 µs@%s\tlat lost\tbackground µs/ans\t\n",
		kqps(cfg.FixedRate), kqps(cfg.FixedRate), kqps(cfg.FixedRate), kqps(cfg.LatRate))
	for _, r := range rep.Results {
		if !r.OK() {
			fmt.Fprintf(tw, "%s\tFAILED\t\t\t\t\t\t\t\t\t\t\t\n", r.System)
			continue
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.2f\t%.1f%%\t%d of %d\t%s\t%.0f\t%.0f%%\t%s/%s\t%d\t%.1f\t\n", r.System,
			r.NodeCPUPerAns(), r.PerfSysPerAns(), r.ServerPerAns(), 100*r.KernelShare(), r.Fixed.Lost, r.Fixed.Sent, us(r.Fixed.AvgLat),
			r.MaxQPS(), 100*r.MaxServerCPU.Seconds()/max(r.Max.RunTime.Seconds(), 1e-9),
			us(r.Lat.P50), us(r.Lat.P99), r.Lat.Lost, r.BackgroundPerAns())
	}
	tw.Flush()
	for _, r := range rep.Results {
		if r.Err != "" {
			fmt.Fprintf(w, "%s failed: %s\n", r.System, r.Err)
		}
	}
	for _, t := range rep.targets() {
		fmt.Fprintf(w, "target %-45s %-55s %s\n", t.what+":", t.value, t.verdict)
	}
	for _, wn := range rep.Warnings {
		fmt.Fprintf(w, "warning: %s\n", wn)
	}
	fmt.Fprintln(w)
}

// Markdown renders the section, markers included.
func (rep *Report) Markdown(plotRel string) string {
	cfg := rep.Config
	m := rep.Machine
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	date := rep.Start.Format("2006-01-02 15:04 MST")
	fixed := kqps(cfg.FixedRate)
	p("%s\n", SectionStart)
	p("## In-kernel DNS answers: node CPU per answer from a pod, kernel path vs user space, unbound, CoreDNS\n\n")
	p("_Generated by `test/bench/kcachebench` on %s with `%s`; do not edit by hand between the `bench:kcache` markers._\n\n", date, cfg.Command)
	if cfg.Quick {
		p("> **Quick run** (`-quick`): short phases on a busy machine; the figures are a smoke check only.\n\n")
	}
	p("### How to reproduce\n\n")
	p("```sh\nmake bench   # runs this after the other benchmarks\n# or, after `make build`:\ngo run ./test/bench/kcachebench -out docs/benchmarks.md\n```\n\n")
	p("Needs root, two CPUs, the Debian packages `dnsperf`, `unbound` and `iproute2` (`make deps`), `bin/node-cache` (`make build`); stock CoreDNS is built as for the DNS cache benchmark. ")
	p("Flags: `-systems`, `-duration`, `-fixed-duration`, `-fixed-rate`, `-quick`, `-out`, `-json`; `-h` lists the rest. ")
	p("Everything it creates (the pod namespace, the cache's address on `lo`, the eBPF programs and their pins, processes) is removed at the end, also on failure or interrupt; a run after a killed one removes what that one left. This run took %s.\n\n", rep.Elapsed)

	p("### What is measured\n\n")
	p("A pod (a network namespace with a veth to the host, `test/netns`) queries the cluster DNS VIP; the eBPF steering rewrites the VIP to the cache's link-local address on `lo` at the pod's sockets, so every system serves the same pod over the same veth. ")
	p("dnsperf runs **inside the pod** (`ip netns exec`), pinned to cpu %d; the server under test is pinned to cpu %d. The working set is %d distinct names, warmed from the pod before every phase (for the kernel path: asked until all %d are in the kernel's map, `dnsaccel_nodecache_kernel_cache_entries`; node-cache offers an answer to the kernel once its cache has answered it twice).\n\n",
		cfg.LoadCPU, cfg.ServerCPU, len(bench.CachedNames()), len(bench.CachedNames()))
	p("| Figure | How |\n|---|---|\n")
	p("| **Node CPU µs per answer** at %s QPS | dnsperf `-Q %.0f -c %d -q %d` for %s. All CPU time of the machine during the run — both cores, every state but idle and iowait — **minus dnsperf's own user time** (its utime, from `wait4`'s rusage when it exits), divided by NOERROR answers. So every piece of kernel work counts wherever the kernel accounts it: the pod's syscalls (dnsperf's system time, shown separately), veth, softirq, the tc program, the server. The machine's busy time is taken as CPUs × elapsed time minus the idle and iowait time of `/proc/stat` (exact with NO_HZ: measured at idle entry and exit), not as the sum of its user/system/softirq columns, which this kernel (`CONFIG_TICK_CPU_ACCOUNTING`, no `IRQ_TIME_ACCOUNTING`) samples at timer ticks: in 2 s runs that sum was off by up to half, once below dnsperf's own user time. dnsperf's user/system split is tick-sampled too (its total is exact), which makes the subtraction noisier in short runs. |\n",
		fixed, cfg.FixedRate, cfg.PerfClients, cfg.FixedOutstanding, cfg.FixedDuration)
	p("| Server µs per answer | the server process's utime+stime (`/proc/PID/stat`, all threads) over the same run ÷ answers. |\n")
	p("| Kernel answers | node-cache's `coredns_nodecache_offload_hits_total` over the same run ÷ answers. |\n")
	p("| Max QPS | dnsperf unthrottled (`-c %d -q %d`) for %s: answered (NOERROR) queries per second. dnsperf has one core, the same the pod's kernel work lands on, so this is bound by the load core for the fastest systems; *server CPU* shows how busy the server was. |\n",
		cfg.PerfClients, cfg.PerfOutstanding, cfg.Duration)
	p("| p50 / p99, lost | Debian's dnsperf 2.10 has no latency histogram, so the harness's serial generator (`test/bench/latgen.go`, `runLatSerial`) runs inside the pod (`netns.Pod.Do`) at %.0f QPS for %s: one blocking UDP socket on one OS thread, each query sent at its slot (spinning the last µs to it) and timed from when it is sent, or from its slot when the previous reply came after that slot, so a slow reply's wait counts while the generator's own wake-up does not; lost = no answer within 1 s. Earlier runs used the open-loop generator with 4 sockets, whose readers wait in Go's netpoller: its samples held that wake-up too (p99 83–119 µs for the kernel path). *Lost* and *avg latency @%s* are dnsperf's in the fixed-rate run. |\n",
		cfg.LatRate, cfg.LatDuration, fixed)
	p("| Background | the machine's busy time in the second before the fixed-rate run (server idle), as µs per answer over the run: other work on the machine, included in node CPU. |\n\n")

	p("### Setup\n\n")
	p("- Upstream: %s.\n", rep.Upstream)
	for _, n := range rep.Notes {
		p("- %s.\n", n)
	}
	p("- Peers (unbound, CoreDNS) listen on LOCAL:53 themselves; the bench steers the VIP to them with the datapath package's API (`datapath.Attach`, `SetTable`, a `Beat` every quarter of the 1 s heartbeat timeout), the same programs and table node-cache installs, so no node-cache process is running (and counted in node CPU) while a peer is measured.\n\n")

	p("### Machine\n\n| | |\n|---|---|\n")
	p("| Date | %s |\n| CPU | %s, %d CPUs |\n| Kernel | %s |\n| OS | %s |\n| Go | %s |\n| Load average at start | %.2f |\n| Load generator | %s |\n\n",
		date, m.CPUModel, m.CPUs, m.Kernel, m.OS, m.Go, m.Load1, strings.Join(m.Tools, ", "))

	p("### Results\n\n")
	p("| System | Version | Node CPU µs / answer @%s | of which dnsperf system time | Server CPU µs / answer | Kernel answers | Lost @%s | Avg latency @%s (dnsperf) | Max QPS | Server CPU at max | p50 / p99 @%s | Lost (latency run) | Background µs / answer |\n", fixed, fixed, fixed, kqps(cfg.LatRate))
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rep.Results {
		name := r.Label
		if r.System == SysKernel {
			name = "**" + name + "**"
		}
		if !r.OK() {
			why := r.Err
			if r.Skipped != "" {
				why = r.Skipped
			}
			p("| %s | failed: %s ||||||||||||\n", name, strings.ReplaceAll(strings.SplitN(why, "\n", 2)[0], "|", "\\|"))
			continue
		}
		p("| %s | %s | %.1f | %.1f | %.2f | %.1f%% | %d of %d | %s µs | %.0f | %.0f%% | %s / %s µs | %d of %d | %.1f |\n", name, r.Version,
			r.NodeCPUPerAns(), r.PerfSysPerAns(), r.ServerPerAns(), 100*r.KernelShare(), r.Fixed.Lost, r.Fixed.Sent, us(r.Fixed.AvgLat),
			r.MaxQPS(), 100*r.MaxServerCPU.Seconds()/max(r.Max.RunTime.Seconds(), 1e-9),
			us(r.Lat.P50), us(r.Lat.P99), r.Lat.Lost, r.Lat.Sent, r.BackgroundPerAns())
	}
	p("\n### Targets (kernel path)\n\n| Target | Measured | Verdict |\n|---|---|---|\n")
	for _, t := range rep.targets() {
		p("| %s | %s | %s |\n", t.what, t.value, t.verdict)
	}
	p("\n")
	if len(rep.Warnings) > 0 {
		p("Warnings:\n\n")
		for _, w := range rep.Warnings {
			p("- %s\n", w)
		}
		p("\n")
	}
	if plotRel != "" {
		p("### Plot\n\n![node CPU per answer, server CPU per answer, p99 latency and max QPS per system](%s)\n\n", plotRel)
	}
	p("%s\n", SectionEnd)
	return b.String()
}

// plot draws node CPU, server CPU and p99 per answer, and max QPS.
func (rep *Report) plot(path string) error {
	var node, srv, p99, qps []bench.Bar
	for _, r := range rep.Results {
		if !r.OK() {
			continue
		}
		ours := r.System == SysKernel || r.System == SysNodeCache
		lbl := strings.ToUpper(r.System)
		node = append(node, bench.Bar{Label: lbl, Value: r.NodeCPUPerAns(), Text: fmt.Sprintf("%.1f US", r.NodeCPUPerAns()), Ours: ours})
		srv = append(srv, bench.Bar{Label: lbl, Value: r.ServerPerAns(), Text: fmt.Sprintf("%.2f US", r.ServerPerAns()), Ours: ours})
		p99 = append(p99, bench.Bar{Label: lbl, Value: float64(r.Lat.P99) / 1e3, Text: us(r.Lat.P99) + " US", Ours: ours})
		qps = append(qps, bench.Bar{Label: lbl, Value: r.MaxQPS(), Text: fmt.Sprintf("%.0fK", r.MaxQPS()/1000), Ours: ours})
	}
	nodeMark := 0.0
	if u, ok := rep.get(SysUnbound); ok {
		nodeMark = targetNodeRatio * u.NodeCPUPerAns()
	}
	fixed := strings.ToUpper(kqps(rep.Config.FixedRate))
	return bench.WriteBarChart(path, fmt.Sprintf("IN-KERNEL DNS ANSWERS - %s - FROM A POD THROUGH THE STEERING", rep.Start.Format("2006-01-02")), []bench.Panel{
		{Title: "NODE CPU US PER ANSWER AT " + fixed + " QPS, ALL CPUS MINUS DNSPERF USER TIME (LOWER IS BETTER)", Bars: node, Mark: nodeMark, MarkLabel: "TARGET 0.4X UNBOUND"},
		{Title: "SERVER PROCESS CPU US PER ANSWER AT " + fixed + " QPS (LOWER IS BETTER)", Bars: srv, Mark: targetServerUS, MarkLabel: "TARGET 1 US"},
		{Title: fmt.Sprintf("P99 LATENCY FROM THE POD AT %.0f QPS (LOWER IS BETTER)", rep.Config.LatRate), Bars: p99, Mark: float64(targetP99) / 1e3, MarkLabel: "TARGET 30 US"},
		{Title: "MAX ANSWERED QPS, DNSPERF UNTHROTTLED IN THE POD (HIGHER IS BETTER)", Bars: qps},
	})
}

// WriteOutputs writes the plot, the markdown section and the JSON as
// configured (relative paths against the repo root).
func (rep *Report) WriteOutputs() error {
	cfg := rep.Config
	out, plot := bench.RepoPath(cfg.Out), bench.RepoPath(cfg.Plot)
	plotRel := ""
	if plot != "" {
		if err := rep.plot(plot); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		plotRel = plot
		if out != "" {
			if rel, err := filepath.Rel(filepath.Dir(out), plot); err == nil {
				plotRel = filepath.ToSlash(rel)
			}
		}
	}
	if out != "" {
		if err := bench.UpdateSection(out, SectionStart, SectionEnd, rep.Markdown(plotRel)); err != nil {
			return err
		}
	}
	if cfg.JSON != "" {
		return bench.WriteJSON(bench.RepoPath(cfg.JSON), rep)
	}
	return nil
}
