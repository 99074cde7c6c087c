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

// headline is the load whose figures the targets judge.
func (rep *Report) headline() Load { return rep.Config.Loads[0] }

// roundRatios is the kernel path's figure over unbound's in every round
// that has both (a round measures the two back to back).
func (rep *Report) roundRatios(figure func(r Result, round int) (float64, bool)) []float64 {
	k, ok1 := rep.get(SysKernel)
	u, ok2 := rep.get(SysUnbound)
	if !ok1 || !ok2 {
		return nil
	}
	var v []float64
	for round := range rep.Config.Rounds {
		kv, ok1 := figure(k, round)
		uv, ok2 := figure(u, round)
		if ok1 && ok2 && uv > 0 {
			v = append(v, kv/uv)
		}
	}
	return v
}

// ratio is the kernel path's node CPU per answer over unbound's with a
// load: the median of the rounds' ratios, with the lowest and highest.
func (rep *Report) ratio(load Load) (med, lo, hi float64, rounds int) {
	return spreadOf(rep.roundRatios(func(r Result, round int) (float64, bool) {
		f, ok := r.run(round, load)
		return f.NodeCPUPerAns(), ok
	}))
}

// closedRatio is ratio for the closed-loop runs.
func (rep *Report) closedRatio() (med, lo, hi float64, rounds int) {
	return spreadOf(rep.roundRatios(func(r Result, round int) (float64, bool) {
		for _, c := range r.Closed {
			if c.Round == round {
				return c.NodeCPUPerAns(), true
			}
		}
		return 0, false
	}))
}

// ratioTarget judges a ratio to unbound; km and um are the two medians.
func ratioTarget(what string, med, lo, hi float64, rounds int, km, um float64) target {
	if rounds == 0 {
		return target{what, "—", "not measured (no unbound result)"}
	}
	val := fmt.Sprintf("%.2f× (%.1f vs %.1f µs)", med, km, um)
	if rounds > 1 {
		val = fmt.Sprintf("%.2f×, median of %d rounds (%.2f–%.2f); medians %.1f vs %.1f µs", med, rounds, lo, hi, km, um)
	}
	return target{what, val, verdict(med <= targetNodeRatio)}
}

// targets evaluates issue 6's targets for the kernel path.
func (rep *Report) targets() []target {
	k, ok := rep.get(SysKernel)
	if !ok {
		return []target{{"kernel path", "—", "not measured"}}
	}
	var ts []target
	u, _ := rep.get(SysUnbound)
	for i, c := range rep.Config.Loads {
		what := fmt.Sprintf("node CPU per answer ≤ %.1f× unbound's, dnsperf %s", targetNodeRatio, c)
		if i > 0 {
			what += " (for comparison)"
		}
		med, lo, hi, rounds := rep.ratio(c)
		ts = append(ts, ratioTarget(what, med, lo, hi, rounds, k.NodeCPUPerAns(c), u.NodeCPUPerAns(c)))
	}
	if med, lo, hi, rounds := rep.closedRatio(); rounds > 0 {
		ts = append(ts, ratioTarget(fmt.Sprintf("node CPU per answer ≤ %.1f× unbound's, closed loop (for comparison)", targetNodeRatio),
			med, lo, hi, rounds, k.ClosedNodeCPUPerAns(), u.ClosedNodeCPUPerAns()))
	}
	c := rep.headline()
	srv := k.Median(c, FixedRun.ServerPerAns)
	ts = append(ts,
		target{fmt.Sprintf("node-cache's process CPU per answer ≤ %.0f µs", targetServerUS), fmt.Sprintf("%.2f µs", srv), verdict(srv <= targetServerUS)},
		rep.p99Target(k))
	all := totals(k.Fixed)
	v := verdict(all.Lost+k.Lat.Lost == 0 && all.MinQPS >= 0.95*rep.Config.FixedRate)
	val := fmt.Sprintf("%d of %d at %s QPS (%d runs), %d of %d in the latency runs", all.Lost, all.Sent, kqps(rep.Config.FixedRate), len(k.Fixed), k.Lat.Lost, k.Lat.Sent)
	if all.MinQPS < 0.95*rep.Config.FixedRate {
		val += fmt.Sprintf(" (a run reached only %.0f QPS)", all.MinQPS)
	}
	return append(ts, target{"0 lost", val, v})
}

// p99Target judges the median of the rounds' p99 latencies; the pooled
// samples' p99 is shown beside it.
func (rep *Report) p99Target(k Result) target {
	med, lo, hi := k.P99()
	val := fmt.Sprintf("%s µs (p50 %s µs)", us(med), us(k.Lat.P50))
	if len(k.Lats) > 1 {
		val = fmt.Sprintf("%s µs, median of %d rounds (%s–%s); all rounds' samples pooled: p50 %s, p99 %s µs", us(med), len(k.Lats), us(lo), us(hi), us(k.Lat.P50), us(k.Lat.P99))
	}
	return target{fmt.Sprintf("p99 latency ≤ %s µs", us(targetP99)), val, verdict(len(k.Lats) > 0 && med <= targetP99)}
}

// warn notes what makes figures doubtful.
func (rep *Report) warn() {
	for _, r := range rep.Results {
		if !r.OK() {
			continue
		}
		for _, f := range r.Fixed {
			run := fmt.Sprintf("%s, round %d, %s", r.System, f.Round+1, f.Load)
			if f.Background > 0.1 {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: the machine was %.0f%% of a core busy with other work just before the run (≈ %.1f µs per answer of background in node CPU): figures are disturbed",
					run, 100*f.Background, f.BackgroundPerAns()))
			}
			if f.Perf.QPS < 0.95*rep.Config.FixedRate {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: the fixed-rate run reached only %.0f of %.0f QPS", run, f.Perf.QPS, rep.Config.FixedRate))
			}
			if f.Perf.NoError < f.Perf.Completed {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: %d of %d answers were not NOERROR", run, f.Perf.Completed-f.Perf.NoError, f.Perf.Completed))
			}
		}
		if t := totals(r.runs(rep.headline())); r.System == SysKernel && t.KernelShare() < 0.99 {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: the kernel gave only %.1f%% of the answers", r.System, 100*t.KernelShare()))
		}
	}
}

// spread is a figure's median over the runs with a load, with the lowest
// and highest when there is more than one run.
func (r Result) spread(load Load, figure func(FixedRun) float64, format string) string {
	return formatSpread(r.values(load, figure), format)
}

// formatSpread is the median of v, and the lowest and highest when there
// is more than one value ("—" for none).
func formatSpread(v []float64, format string) string {
	med, lo, hi, n := spreadOf(v)
	if n == 0 {
		return "—"
	}
	out := fmt.Sprintf(format, med)
	if n > 1 {
		out += fmt.Sprintf(" ("+format+"–"+format+")", lo, hi)
	}
	return out
}

// columns are the results table's figures for one system, in order.
func (rep *Report) columns(r Result) []string {
	cfg := rep.Config
	c := rep.headline()
	var cols []string
	for _, n := range cfg.Loads {
		cols = append(cols, r.spread(n, FixedRun.NodeCPUPerAns, "%.1f"))
	}
	cols = append(cols, r.closedColumn())
	t, all := totals(r.runs(c)), totals(r.Fixed)
	return append(cols,
		r.spread(c, FixedRun.PerfSysPerAns, "%.1f"),
		r.spread(c, FixedRun.ServerPerAns, "%.2f"),
		fmt.Sprintf("%.1f%%", 100*t.KernelShare()),
		fmt.Sprintf("%d of %d", all.Lost, all.Sent),
		us(t.AvgLat)+" µs",
		fmt.Sprintf("%.0f", r.MaxQPS()),
		fmt.Sprintf("%.0f%%", 100*r.MaxServerCPU.Seconds()/max(r.Max.RunTime.Seconds(), 1e-9)),
		rep.latColumn(r),
		fmt.Sprintf("%d of %d", r.Lat.Lost, r.Lat.Sent),
		fmt.Sprintf("%.1f", all.MaxBackgroundPerAns))
}

// closedColumn is the closed-loop node CPU per answer: median (lowest–
// highest), and the queries lost.
func (r Result) closedColumn() string {
	var v []float64
	lost := 0
	for _, c := range r.Closed {
		v = append(v, c.NodeCPUPerAns())
		lost += c.Res.Lost
	}
	out := formatSpread(v, "%.1f")
	if lost > 0 {
		out += fmt.Sprintf(", %d lost", lost)
	}
	return out
}

// latColumn is the p99 median of the rounds and the pooled percentiles.
func (rep *Report) latColumn(r Result) string {
	med, lo, hi := r.P99()
	if len(r.Lats) <= 1 {
		return fmt.Sprintf("%s µs; %s / %s µs", us(med), us(r.Lat.P50), us(r.Lat.P99))
	}
	return fmt.Sprintf("%s (%s–%s) µs; %s / %s µs", us(med), us(lo), us(hi), us(r.Lat.P50), us(r.Lat.P99))
}

// headers name the columns.
func (rep *Report) headers() []string {
	cfg := rep.Config
	fixed := kqps(cfg.FixedRate)
	var h []string
	for _, n := range cfg.Loads {
		h = append(h, fmt.Sprintf("Node CPU µs / answer @%s, %s", fixed, n))
	}
	h = append(h, "Node CPU µs / answer, closed loop")
	c := rep.headline()
	return append(h, fmt.Sprintf("of which dnsperf system time (%s)", c), fmt.Sprintf("Server CPU µs / answer (%s)", c),
		"Kernel answers", fmt.Sprintf("Lost @%s, all runs", fixed), fmt.Sprintf("Avg latency @%s (dnsperf, %s)", fixed, c),
		"Max QPS", "Server CPU at max", fmt.Sprintf("p99 @%s, median of rounds (lowest–highest); pooled p50 / p99", kqps(cfg.LatRate)), "Lost (latency runs)", "Background µs / answer, worst run")
}

// WriteTable prints the results.
func (rep *Report) WriteTable(w io.Writer) {
	cfg := rep.Config
	fmt.Fprintf(w, "\nIn-kernel DNS answers, from a pod through the steering; server on cpu %d, dnsperf on cpu %d; medians of %d rounds (lowest–highest)\n", cfg.ServerCPU, cfg.LoadCPU, cfg.Rounds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "system\t%s\t\n", strings.Join(rep.headers(), "\t"))
	for _, r := range rep.Results {
		if !r.OK() {
			fmt.Fprintf(tw, "%s\tFAILED\t\n", r.System)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t\n", r.System, strings.Join(rep.columns(r), "\t"))
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
	p("Flags: `-systems`, `-rounds`, `-loads`, `-duration`, `-fixed-duration`, `-fixed-rate`, `-quick`, `-out`, `-json`; `-h` lists the rest. ")
	p("Everything it creates (the pod namespace, the cache's address on `lo`, the eBPF programs and their pins, processes) is removed at the end, also on failure or interrupt; a run after a killed one removes what that one left. This run took %s.\n\n", rep.Elapsed)

	p("### What is measured\n\n")
	p("A pod (a network namespace with a veth to the host, `test/netns`) queries the cluster DNS VIP; the eBPF steering rewrites the VIP to the cache's link-local address on `lo` at the pod's sockets, so every system serves the same pod over the same veth. ")
	p("dnsperf runs **inside the pod** (`ip netns exec`), pinned to cpu %d; the server under test is pinned to cpu %d. The working set is %d distinct names, warmed from the pod before every phase (for the kernel path: asked until all %d are in the kernel's map, `dnsaccel_nodecache_kernel_cache_entries`; node-cache offers an answer to the kernel once its cache has answered it twice).\n\n",
		cfg.LoadCPU, cfg.ServerCPU, len(bench.CachedNames()), len(bench.CachedNames()))
	p("| Figure | How |\n|---|---|\n")
	p("| **Node CPU µs per answer** at %s QPS | dnsperf `-Q %.0f -q %d` for %s, once with each load (%s); the targets judge `%s`. All CPU time of the machine during the run — both cores, every state but idle and iowait — **minus dnsperf's own user time** (its utime, from `wait4`'s rusage when it exits), divided by NOERROR answers. So every piece of kernel work counts wherever the kernel accounts it: the pod's syscalls (dnsperf's system time, shown separately), veth, softirq, the tc program, the server. The machine's busy time is taken as CPUs × elapsed time minus the idle and iowait time of `/proc/stat` (exact with NO_HZ: measured at idle entry and exit), not as the sum of its user/system/softirq columns, which this kernel (`CONFIG_TICK_CPU_ACCOUNTING`, no `IRQ_TIME_ACCOUNTING`) samples at timer ticks: in 2 s runs that sum was off by up to half, once below dnsperf's own user time. dnsperf's user/system split is tick-sampled too (its total is exact), which makes the subtraction noisier in short runs. |\n",
		fixed, cfg.FixedRate, cfg.FixedOutstanding, cfg.FixedDuration, loadList(cfg.Loads), rep.headline())
	p("| Rounds | the fixed-rate runs come in %d rounds, each system started afresh and warmed for each: every round measures every system in turn, starting one system later than the round before, the kernel path and unbound always one right after the other, and the figures are medians over the rounds. The ratio to unbound is the median of the rounds' own ratios, so each compares runs that ran back to back: identical runs on this VM differed by up to 40%% from one minute to the next (dnsperf's system time per answer was 10.8–15.1 µs in three full runs of the kernel path on 2026-12-03, one system after another). |\n", cfg.Rounds)
	p("| Loads | how dnsperf runs: its socket count (`-c`) and its scheduling class. dnsperf has a sending and a receiving thread; both share the load core. Two things in it cost node CPU that no resolver in a pod spends, and they weigh most where the server costs least. (1) On the kernel path the answer arrives during `sendto` itself, so the receiving thread is woken and, under the default scheduling, preempts the sending one for about half of the answers: two more context switches each. A pod's resolver (glibc: send, then poll the same socket) finds the answer already queued and does not sleep at all. Running dnsperf as `SCHED_BATCH` (`chrt --batch 0`) turns off that wake-up preemption, and nothing else. (2) The receiving thread tries every socket in turn for each read, so with `-c 4` every wake-up adds up to four failing `recvfrom` calls, about 0.9 µs each here (a bare syscall costs 0.93 µs on this VM, ten times a bare-metal one); a resolver uses one socket per lookup, as dnsperf does by default. The headline load is therefore one socket, `SCHED_BATCH`; the others show each effect (%s). |\n", rep.switchSummary())
	p("| Closed loop | node CPU per answer measured the same way while the harness asks %d queries from the pod one after the other, each as soon as the last is answered, from one blocking socket on one thread (`bench.RunClosedLoop`): what a pod's stub resolver does, lookup after lookup; the client thread's own user time (`getrusage(RUSAGE_THREAD)`) is taken out, as dnsperf's is, though that split is tick-sampled and a thread that spends most of its time in the kernel gets almost all its ticks there, so the client's own Go code (about 1 µs a query) mostly stays in. Its rate is whatever the system allows, so it is not a fixed-rate figure; it shows what one lookup costs the node when nothing is batched: on the kernel path the answer is queued during `send` and the `recv` that follows does not sleep, while a user-space server is woken for the query and wakes the client for the answer. |\n", cfg.ClosedQueries)
	p("| Server µs per answer | the server process's utime+stime (`/proc/PID/stat`, all threads) over the same run ÷ answers. |\n")
	p("| Kernel answers | node-cache's `coredns_nodecache_offload_hits_total` over the same run ÷ answers. |\n")
	p("| Max QPS | dnsperf unthrottled (`-c %d -q %d`) for %s: answered (NOERROR) queries per second. dnsperf has one core, the same the pod's kernel work lands on, so this is bound by the load core for the fastest systems; *server CPU* shows how busy the server was. |\n",
		cfg.PerfClients, cfg.PerfOutstanding, cfg.Duration)
	p("| p50 / p99, lost | Debian's dnsperf 2.10 has no latency histogram, so the harness's serial generator (`test/bench/latgen.go`, `runLatSerial`) runs inside the pod (`netns.Pod.Do`) at %.0f QPS for %s in every round, after the fixed-rate runs: one blocking UDP socket on one OS thread, each query sent at its slot (spinning the last µs to it) and timed from when it is sent, or from its slot when the previous reply came after that slot, so a slow reply's wait counts while the generator's own wake-up does not; lost = no answer within 1 s. Earlier runs used the open-loop generator with 4 sockets, whose readers wait in Go's netpoller: its samples held that wake-up too (p99 83–119 µs for the kernel path). The p99 judged is the median of the rounds' p99s: on this VM a round the host disturbs has a p99 tens of µs higher while its p50 doubles too (three full runs on 2026-12-04, with the same code and one latency run each, gave the kernel path p50 / p99 of 7 / 20, 12 / 43 and 12 / 61 µs), and the pooled samples' p50 / p99 are shown beside it. *Lost* and *avg latency @%s* are dnsperf's in the fixed-rate runs. |\n",
		cfg.LatRate, cfg.LatDuration, fixed)
	p("| Background | the machine's busy time in the second before each fixed-rate run (server idle), as µs per answer over the run: other work on the machine, included in node CPU; the table shows the worst run. |\n\n")

	p("### Setup\n\n")
	p("- Upstream: %s.\n", rep.Upstream)
	for _, n := range rep.Notes {
		p("- %s.\n", n)
	}
	p("- Peers (unbound, CoreDNS) listen on LOCAL:53 themselves; the bench steers the VIP to them with the steering package's API (`steer.Attach`, `SetTable`, a `Beat` every quarter of the 1 s heartbeat timeout), the same programs and table node-cache installs, so no node-cache process is running (and counted in node CPU) while a peer is measured.\n\n")

	p("### Machine\n\n| | |\n|---|---|\n")
	p("| Date | %s |\n| CPU | %s, %d CPUs |\n| Kernel | %s |\n| OS | %s |\n| Go | %s |\n| Load average at start | %.2f |\n| Load generator | %s |\n\n",
		date, m.CPUModel, m.CPUs, m.Kernel, m.OS, m.Go, m.Load1, strings.Join(m.Tools, ", "))

	p("### Results\n\n")
	p("Medians over the %d rounds, lowest–highest in brackets.\n\n", cfg.Rounds)
	h := rep.headers()
	p("| System | Version | %s |\n", strings.Join(h, " | "))
	p("|---|---|%s\n", strings.Repeat("--:|", len(h)))
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
			p("| %s | failed: %s |%s\n", name, strings.ReplaceAll(strings.SplitN(why, "\n", 2)[0], "|", "\\|"), strings.Repeat("|", len(h)))
			continue
		}
		p("| %s | %s | %s |\n", name, r.Version, strings.Join(rep.columns(r), " | "))
	}
	p("\n### Every fixed-rate run\n\n")
	p("In the order run. µs per answer, except dnsperf's context switches (voluntary and preempted, from its rusage) per answer.\n\n")
	p("| Round | System | dnsperf | Node CPU | dnsperf system | Server | dnsperf switches | Background | QPS | Lost |\n|--:|---|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, f := range rep.runOrder() {
		p("| %d | %s | %s | %.1f | %.1f | %.2f | %.2f | %.1f | %.0f | %d |\n", f.Round+1, f.system, f.Load, f.NodeCPUPerAns(), f.PerfSysPerAns(), f.ServerPerAns(), f.SwitchesPerAns(), f.BackgroundPerAns(), f.Perf.QPS, f.Perf.Lost)
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
		c := rep.headline()
		nc, sc := r.NodeCPUPerAns(c), r.Median(c, FixedRun.ServerPerAns)
		node = append(node, bench.Bar{Label: lbl, Value: nc, Text: fmt.Sprintf("%.1f US", nc), Ours: ours})
		srv = append(srv, bench.Bar{Label: lbl, Value: sc, Text: fmt.Sprintf("%.2f US", sc), Ours: ours})
		med, _, _ := r.P99()
		p99 = append(p99, bench.Bar{Label: lbl, Value: float64(med) / 1e3, Text: us(med) + " US", Ours: ours})
		qps = append(qps, bench.Bar{Label: lbl, Value: r.MaxQPS(), Text: fmt.Sprintf("%.0fK", r.MaxQPS()/1000), Ours: ours})
	}
	nodeMark := 0.0
	if u, ok := rep.get(SysUnbound); ok {
		nodeMark = targetNodeRatio * u.NodeCPUPerAns(rep.headline())
	}
	fixed := strings.ToUpper(kqps(rep.Config.FixedRate))
	return bench.WriteBarChart(path, fmt.Sprintf("IN-KERNEL DNS ANSWERS - %s - FROM A POD THROUGH THE STEERING", rep.Start.Format("2006-01-02")), []bench.Panel{
		{Title: fmt.Sprintf("NODE CPU US PER ANSWER AT %s QPS, DNSPERF %s, ALL CPUS MINUS DNSPERF USER TIME (LOWER IS BETTER)", fixed, plotLoad(rep.headline())), Bars: node, Mark: nodeMark, MarkLabel: "TARGET 0.4X UNBOUND"},
		{Title: fmt.Sprintf("SERVER PROCESS CPU US PER ANSWER AT %s QPS, DNSPERF %s (LOWER IS BETTER)", fixed, plotLoad(rep.headline())), Bars: srv, Mark: targetServerUS, MarkLabel: "TARGET 1 US"},
		{Title: fmt.Sprintf("P99 LATENCY FROM THE POD AT %.0f QPS, MEDIAN OF ROUNDS (LOWER IS BETTER)", rep.Config.LatRate), Bars: p99, Mark: float64(targetP99) / 1e3, MarkLabel: "TARGET 30 US"},
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

// orderedRun is a fixed-rate run with its system, for the per-run table.
type orderedRun struct {
	FixedRun
	system string
}

// runOrder lists every fixed-rate run in the order it ran: by round, then
// by the round's order (roundOrder), then by load.
func (rep *Report) runOrder() []orderedRun {
	var systems []string
	for _, r := range rep.Results {
		systems = append(systems, r.System)
	}
	var out []orderedRun
	for round := range rep.Config.Rounds {
		for _, i := range roundOrder(systems, round) {
			r := rep.Results[i]
			for _, l := range rep.Config.Loads {
				if f, ok := r.run(round, l); ok {
					out = append(out, orderedRun{f, r.System})
				}
			}
		}
	}
	return out
}

// switchSummary gives dnsperf's context switches per answer, medians for
// every load, for the kernel path and unbound.
func (rep *Report) switchSummary() string {
	var parts []string
	for _, sys := range []string{SysKernel, SysUnbound} {
		r, ok := rep.get(sys)
		if !ok {
			continue
		}
		var per []string
		for _, c := range rep.Config.Loads {
			per = append(per, fmt.Sprintf("%.2f at %s", r.Median(c, FixedRun.SwitchesPerAns), c))
		}
		parts = append(parts, fmt.Sprintf("%s %s", r.Label, strings.Join(per, ", ")))
	}
	if len(parts) == 0 {
		return "no switch counts in this run"
	}
	return "dnsperf's context switches per answer in this run: " + strings.Join(parts, "; ")
}

// loadList spells the loads for the text: `-c 1, SCHED_BATCH`, `-c 4`.
func loadList(loads []Load) string {
	s := make([]string, len(loads))
	for i, l := range loads {
		s[i] = "`" + l.String() + "`"
	}
	return strings.Join(s, ", ")
}

// plotLoad spells a load in the plot's font (capitals, no underscore).
func plotLoad(l Load) string {
	return strings.ToUpper(strings.ReplaceAll(l.String(), "_", " "))
}
