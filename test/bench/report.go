package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

// Section markers in docs/benchmarks.md; only the text between them is
// replaced, so other benchmark sections can live in the same file.
const (
	SectionStart = "<!-- bench:cache:start -->"
	SectionEnd   = "<!-- bench:cache:end -->"
)

func us(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/float64(time.Microsecond)) }

func addedUS(d time.Duration) string {
	return fmt.Sprintf("%+.0f", float64(d)/float64(time.Microsecond))
}

func kqps(v float64) string {
	if v >= 1000 && math.Mod(v, 1000) == 0 {
		return fmt.Sprintf("%.0fk", v/1000)
	}
	if v >= 10000 {
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.0f", v)
}

func (rep *Report) result(name string) (SystemResult, bool) {
	for _, r := range rep.Results {
		if r.Name == name && r.OK() {
			return r, true
		}
	}
	return SystemResult{}, false
}

// WriteTable prints the results as an aligned text table.
func (rep *Report) WriteTable(w io.Writer) {
	cfg := rep.Config
	fmt.Fprintf(w, "\nDNS cache benchmark, %s, server on cpu %d, load on cpu %d (%s)\n",
		rep.Start.Format("2006-01-02 15:04"), cfg.ServerCPU, cfg.LoadCPU, rep.Machine.CPUModel)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "system\tmax QPS\tloss%%\tsrv CPU%%\tans/CPU-s\tCPU µs/ans@%s\tlost@%s\tavg lat@%s µs\tp50/p99@%s µs\tmiss p50/p99 µs\tupstream µs\tmiss added µs\tRSS MiB\tother%%\t\n",
		kqps(cfg.FixedRate), kqps(cfg.FixedRate), kqps(cfg.FixedRate), kqps(cfg.LatRate))
	var notes []string
	for _, r := range rep.Results {
		switch {
		case r.Skipped != "":
			fmt.Fprintf(tw, "%s\t-\t\t\t\t\t\t\t\t\t\t\t\n", r.Name)
			notes = append(notes, fmt.Sprintf("%s skipped: %s", r.Name, r.Skipped))
			continue
		case r.Err != "":
			fmt.Fprintf(tw, "%s\tFAILED\t\t\t\t\t\t\t\t\t\t\t\n", r.Name)
			notes = append(notes, fmt.Sprintf("%s failed: %s", r.Name, r.Err))
			continue
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%.0f\t%.0f\t%.2f\t%d\t%s\t%s/%s\t%s/%s\t%s/%s\t%s/%s\t%.1f\t%.0f\t\n",
			r.Name, r.Max.QPS, r.Max.LossPct(), 100*r.MaxUtil, r.CapacityQPS(),
			r.CPUPerAns, r.Fixed.Lost, us(r.Fixed.AvgLat),
			us(r.Lat.P50), us(r.Lat.P99),
			us(r.Miss.P50), us(r.Miss.P99), us(r.Direct.P50), us(r.Direct.P99),
			addedUS(r.Miss.P50-r.Direct.P50), addedUS(r.Miss.P99-r.Direct.P99),
			float64(r.RSS)/(1<<20), 100*r.OtherLoad)
	}
	tw.Flush()
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	for _, t := range rep.targets() {
		fmt.Fprintf(w, "target %-48s %-28s %s\n", t.what+":", t.value, t.verdict)
	}
	for _, wn := range rep.Warnings {
		fmt.Fprintf(w, "warning: %s\n", wn)
	}
	fmt.Fprintln(w)
}

type target struct{ what, value, verdict string }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// targets evaluates the acceptance targets for node-cache.
func (rep *Report) targets() []target {
	nc, haveNC := rep.result("node-cache")
	cd, haveCD := rep.result("coredns")
	ub, haveUB := rep.result("unbound")
	na := func(what, why string) target { return target{what, "—", "not measured (" + why + ")"} }
	var ts []target
	fixed := kqps(rep.Config.FixedRate)
	switch {
	case !haveNC:
		ts = append(ts,
			na("CPU per cached answer ≤ 0.5× stock CoreDNS", "no node-cache result"),
			na("CPU per cached answer ≤ 1.25× unbound", "no node-cache result"),
			na("max cached QPS ≥ unbound", "no node-cache result"),
			na("0 lost at "+fixed+" QPS", "no node-cache result"),
			na("miss path ≤ 100 µs over upstream alone (p50)", "no node-cache result"))
		return ts
	}
	if haveCD {
		r := ratio(nc.CPUPerAns, cd.CPUPerAns)
		ts = append(ts, target{"CPU per cached answer ≤ 0.5× stock CoreDNS", fmt.Sprintf("%.2f×", r), verdict(r <= 0.5)})
	} else {
		ts = append(ts, na("CPU per cached answer ≤ 0.5× stock CoreDNS", "no CoreDNS result"))
	}
	if haveUB {
		r := ratio(nc.CPUPerAns, ub.CPUPerAns)
		ts = append(ts, target{"CPU per cached answer ≤ 1.25× unbound", fmt.Sprintf("%.2f×", r), verdict(r <= 1.25)})
		q := ratio(nc.Max.QPS, ub.Max.QPS)
		v := verdict(q >= 1)
		if nc.MaxUtil < 0.9 || ub.MaxUtil < 0.9 {
			v += fmt.Sprintf(" (server CPU %.0f%% vs %.0f%%: partly load-generator bound; answers per CPU-s ratio %.2f×)",
				100*nc.MaxUtil, 100*ub.MaxUtil, ratio(nc.CapacityQPS(), ub.CapacityQPS()))
		}
		ts = append(ts, target{"max cached QPS ≥ unbound", fmt.Sprintf("%.2f× (%s vs %s)", q, kqps(nc.Max.QPS), kqps(ub.Max.QPS)), v})
	} else {
		ts = append(ts, na("CPU per cached answer ≤ 1.25× unbound", "no unbound result"), na("max cached QPS ≥ unbound", "no unbound result"))
	}
	lost := target{"0 lost at " + fixed + " QPS", fmt.Sprintf("%d lost of %d", nc.Fixed.Lost, nc.Fixed.Sent),
		verdict(nc.Fixed.Lost == 0 && nc.FixedRateReached(rep.Config.FixedRate))}
	if !nc.FixedRateReached(rep.Config.FixedRate) {
		lost.value += fmt.Sprintf(" (rate reached only %.0f QPS)", nc.Fixed.QPS)
	}
	ts = append(ts, lost)
	add := nc.Miss.P50 - nc.Direct.P50
	ts = append(ts, target{"miss path ≤ 100 µs over upstream alone (p50)",
		fmt.Sprintf("%s µs (p99 %s µs)", addedUS(add), addedUS(nc.Miss.P99-nc.Direct.P99)), verdict(add <= 100*time.Microsecond)})
	return ts
}

// Markdown renders the DNS-cache section, markers included.
func (rep *Report) Markdown(plotRel string) string {
	cfg := rep.Config
	m := rep.Machine
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("%s\n", SectionStart)
	p("## DNS cache: node-cache vs stock CoreDNS, unbound, dnsmasq\n\n")
	p("_Generated by `test/bench/dnsbench` on %s; do not edit by hand between the `bench:cache` markers._\n\n", rep.Start.Format("2006-01-02 15:04 MST"))
	if cfg.Quick {
		p("> **Quick run** (`-quick`): short phases, figures are a smoke check only.\n\n")
	}

	p("### How to reproduce\n\n")
	p("```sh\nmake bench\n# or, after building bin/node-cache:\ngo run ./test/bench/dnsbench -out docs/benchmarks.md\n```\n\n")
	p("Needs the Debian packages `dnsperf`, `unbound` and `dnsmasq-base` (installed by `make deps`; `taskset` comes with `util-linux`) and at least two CPUs; all traffic stays on 127.0.0.1. ")
	p("Stock CoreDNS is built from the module version pinned in `go.mod` into `$DNSACCEL_CACHE/bin/coredns-stock` (default `~/.cache/dnsaccel`) on first use, with the flags of `make build`. ")
	p("Flags: `-systems`, `-duration`, `-quick`, `-node-cache`, `-out`; `-h` lists the rest. The whole run takes about %s.\n\n", rep.Elapsed)

	p("### Machine\n\n")
	p("| | |\n|---|---|\n")
	p("| Date | %s |\n", rep.Start.Format("2006-01-02 15:04 MST"))
	p("| CPU | %s, %d CPUs |\n", m.CPUModel, m.CPUs)
	p("| Memory | %.0f GiB |\n", m.MemGiB)
	p("| Kernel | %s |\n", m.Kernel)
	p("| OS | %s |\n", m.OS)
	p("| Go | %s |\n", m.Go)
	p("| Load average at start | %.2f |\n", m.Load1)
	p("| Load generator | %s |\n\n", strings.Join(m.Tools, ", "))

	p("### Setup\n\n")
	p("- Each server under test is pinned to **cpu %d** (`taskset -c %d`); dnsperf and the harness with its own latency generator run on **cpu %d**. Everything is on 127.0.0.1.\n",
		cfg.ServerCPU, cfg.ServerCPU, cfg.LoadCPU)
	p("- Upstream: %s. It only sees cache misses.\n", rep.Upstream)
	for _, name := range cfg.Systems {
		if s, ok := lookupSystem(name); ok {
			p("- %s: %s.\n", s.label, s.notes)
		}
	}
	p("- Every cached phase starts with a warm-up pass over the %d names (CoreDNS caps success TTLs at 30 s).\n", cachedNames)
	p("\nFigures and the tool that produced them:\n\n")
	p("| Figure | How |\n|---|---|\n")
	p("| Max cached QPS, loss | dnsperf, no `-Q`, `-c %d -T %d -q %d`, %s over the %d cached names. dnsperf has a single core, so check *server CPU*: below ~90%% the figure is bound by the load generator, not the server. |\n",
		cfg.PerfClients, cfg.PerfThreads, cfg.PerfOutstanding, cfg.Duration, cachedNames)
	p("| Answers per CPU-second | NOERROR answers in the max-QPS phase ÷ server CPU time in that phase: the server's capacity on one core, independent of the load generator. |\n")
	p("| CPU µs per cached answer | dnsperf `-Q %.0f` for %s; server utime+stime (`/proc/PID/stat`, all threads) over the run ÷ NOERROR answers. Softirq time (loopback delivery) is not charged to processes on this kernel, for any system. |\n", cfg.FixedRate, cfg.FixedDuration)
	p("| Lost at %s QPS, avg latency | the same dnsperf run (`-c %d -q %d`; dnsperf 2.10 reports only average latency). |\n", kqps(cfg.FixedRate), cfg.PerfClients, cfg.FixedOutstanding)
	p("| Cached p50 / p99 | the harness's own open-loop generator (Go, `miekg/dns` packing, rate-paced, 4 UDP sockets) at %.0f QPS for %s; dnsperf has no latency histogram. |\n", cfg.LatRate, cfg.LatDuration)
	p("| Other work on server core | time the server core spent running tasks (`/proc/stat` user+nice+system+steal) minus the server's own CPU time, during the max-QPS and fixed-rate phases (the higher): other processes or interrupts that disturbed the measurement. A system is measured again (`-retries`) when it exceeds 10%%. |\n")
	p("| Miss p50 / p99, upstream alone | same generator, %d never-seen names at %.0f QPS through the cache, and as many straight to the upstream, in 4 interleaved blocks; *added* = through the cache minus upstream alone (p50 − p50, p99 − p99). |\n\n", cfg.MissQueries, cfg.MissRate)

	p("Reading the figures: CPU per answer at a fixed %s QPS is higher than 1 ÷ answers per CPU-second, because at a moderate rate a server pays a wake-up (epoll, context switch) for nearly every query, while under saturation it drains many per wake-up. ", kqps(cfg.FixedRate))
	p("At %.0f QPS the miss path is dominated by waking idle vCPUs, which is slow on a VM: compare systems with each other and with the upstream-alone column measured alongside, not with bare-metal figures.\n\n", cfg.MissRate)
	p("### Results\n\n")
	p("| System | Version | Max cached QPS | Loss at max | Server CPU at max | Answers per CPU-s | CPU µs / cached answer @%s | Lost @%s | Avg latency @%s (dnsperf) | Cached p50 / p99 @%s | Miss p50 / p99 | Upstream alone p50 / p99 | Miss added p50 / p99 | Peak RSS | Other work on server core |\n",
		kqps(cfg.FixedRate), kqps(cfg.FixedRate), kqps(cfg.FixedRate), kqps(cfg.LatRate))
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rep.Results {
		name := r.Label
		if r.Name == "node-cache" {
			name = "**" + name + "**"
		}
		switch {
		case r.Skipped != "":
			p("| %s | skipped: %s |||||||||||||| \n", name, r.Skipped)
			continue
		case r.Err != "":
			p("| %s | failed: %s |||||||||||||| \n", name, strings.ReplaceAll(firstLine(r.Err), "|", "\\|"))
			continue
		}
		p("| %s | %s | %.0f | %.2f%% | %.0f%% | %.0f | %.2f | %d of %d | %s µs | %s / %s µs | %s / %s µs | %s / %s µs | %s / %s µs | %.0f MiB | %.0f%% |\n",
			name, r.Version, r.Max.QPS, r.Max.LossPct(), 100*r.MaxUtil, r.CapacityQPS(),
			r.CPUPerAns, r.Fixed.Lost, r.Fixed.Sent, us(r.Fixed.AvgLat),
			us(r.Lat.P50), us(r.Lat.P99), us(r.Miss.P50), us(r.Miss.P99), us(r.Direct.P50), us(r.Direct.P99),
			addedUS(r.Miss.P50-r.Direct.P50), addedUS(r.Miss.P99-r.Direct.P99), float64(r.RSS)/(1<<20), 100*r.OtherLoad)
	}
	p("\n")

	p("### Ratios\n\n")
	nc, haveNC := rep.result("node-cache")
	if !haveNC {
		p("node-cache was not measured in this run, so there are no ratios yet.\n\n")
	} else {
		p("| | CPU per cached answer | Max cached QPS | Answers per CPU-s |\n|---|--:|--:|--:|\n")
		for _, peer := range []string{"coredns", "unbound", "dnsmasq"} {
			r, ok := rep.result(peer)
			if !ok {
				continue
			}
			p("| node-cache / %s | %.2f× | %.2f× | %.2f× |\n", r.Label, ratio(nc.CPUPerAns, r.CPUPerAns),
				ratio(nc.Max.QPS, r.Max.QPS), ratio(nc.CapacityQPS(), r.CapacityQPS()))
		}
		p("\n")
	}

	p("### Targets\n\n")
	p("| Target | node-cache | Verdict |\n|---|---|---|\n")
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
		p("### Plot\n\n![CPU per cached answer, max cached QPS and miss-path latency per system](%s)\n\n", plotRel)
	}
	p("%s\n", SectionEnd)
	return b.String()
}

// UpdateDoc replaces the DNS-cache section of the markdown file at path
// (creating the file, or appending the section, when needed).
func UpdateDoc(path, section string) error {
	return UpdateSection(path, SectionStart, SectionEnd, section)
}

// UpdateSection replaces the text between the start and end markers (both
// included; section must begin with start and end with end) in the markdown
// file at path, creating the file or appending the section when needed. The
// other benchmark programs use it for their own sections.
func UpdateSection(path, start, end, section string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	doc := string(old)
	var out string
	i := strings.Index(doc, start)
	j := strings.Index(doc, end)
	switch {
	case len(doc) == 0:
		out = "# Benchmarks\n\n" +
			"Each section below is generated by a benchmark program and delimited by\n" +
			"`<!-- bench:NAME:start -->` / `<!-- bench:NAME:end -->` markers; a program only\n" +
			"rewrites its own section.\n\n" + section
	case i >= 0 && j > i:
		out = doc[:i] + strings.TrimSuffix(section, "\n") + doc[j+len(end):]
	case i >= 0 || j >= 0:
		return fmt.Errorf("%s: unbalanced %s / %s markers", path, start, end)
	default:
		out = strings.TrimRight(doc, "\n") + "\n\n" + section
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(out), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// RepoPath resolves a relative path against the module root (as Run does
// for its outputs); it returns p unchanged if the root cannot be found.
func RepoPath(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	root, err := findRepoRoot()
	if err != nil {
		return p
	}
	return filepath.Join(root, p)
}

// LoadReport reads a report written with Config.JSON.
func LoadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	rep := &Report{}
	if err := json.Unmarshal(b, rep); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rep, nil
}

// WriteOutputs writes the markdown section, the plot and the JSON as
// configured.
func (rep *Report) WriteOutputs() error {
	cfg := rep.Config
	plotRel := ""
	if cfg.Plot != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.Plot), 0o755); err != nil {
			return err
		}
		if err := writePlot(cfg.Plot, rep); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		plotRel = cfg.Plot
		if cfg.Out != "" {
			if rel, err := filepath.Rel(filepath.Dir(cfg.Out), cfg.Plot); err == nil {
				plotRel = filepath.ToSlash(rel)
			}
		}
	}
	if cfg.Out != "" {
		if err := UpdateDoc(cfg.Out, rep.Markdown(plotRel)); err != nil {
			return err
		}
	}
	if cfg.JSON != "" {
		if err := WriteJSON(cfg.JSON, rep); err != nil {
			return err
		}
	}
	return nil
}
