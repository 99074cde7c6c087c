// Command kcachebench is the benchmark of the in-kernel DNS cache (issue 6),
// run by `make bench`. dnsperf runs inside a pod (a network namespace with a
// veth, test/netns) and queries the cluster DNS VIP, which the eBPF steering
// sends to the cache's link-local address, for 1,000 cached names. The same
// pod, over the same veth, is served by:
//
//   - kernel: bin/node-cache with --kernel-cache, its tc program on the
//     pod's host veth answering hot names without waking node-cache;
//   - node-cache: bin/node-cache with --kernel-cache=false (user space);
//   - unbound (1 thread) and stock CoreDNS (cache + forward, GOMAXPROCS=1),
//     configured as the DNS cache benchmark runs them, listening on the
//     link-local address, with the bench itself steering the VIP to them.
//
// Per system: node CPU per answer at a fixed 30k QPS (all CPU time of the
// machine minus dnsperf's own user time), the server process's CPU per
// answer, maximum QPS, p50/p99 latency and lost queries, checked against
// the targets. It prints a table, and updates its section of
// docs/benchmarks.md with a plot and the JSON results.
//
// Needs root, dnsperf, unbound, bin/node-cache (`make build`). Everything it
// creates (namespace, address, BPF pins, processes) is removed at the end,
// also on failure or interrupt, and by the next run after a kill -9.
//
//	go run ./test/bench/kcachebench -out docs/benchmarks.md
//	go run ./test/bench/kcachebench -quick -out ''
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/dnsaccel/dnsaccel/test/bench"
)

func main() {
	cfg := DefaultConfig()
	systems := flag.String("systems", strings.Join(AllSystems, ","), "comma-separated systems to measure, in order ("+strings.Join(AllSystems, ", ")+")")
	flag.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of the max-QPS phase (dnsperf unthrottled)")
	flag.DurationVar(&cfg.FixedDuration, "fixed-duration", cfg.FixedDuration, "length of the fixed-rate phase (node CPU, loss)")
	flag.Float64Var(&cfg.FixedRate, "fixed-rate", cfg.FixedRate, "queries/s of the fixed-rate phase")
	flag.DurationVar(&cfg.LatDuration, "lat-duration", cfg.LatDuration, "length of the latency phase")
	flag.IntVar(&cfg.ClosedQueries, "closed-queries", cfg.ClosedQueries, "queries of each closed-loop run (one blocking socket in the pod, as a resolver asks)")
	flag.Float64Var(&cfg.LatRate, "lat-rate", cfg.LatRate, "queries/s of the latency phase (own generator, in the pod)")
	flag.IntVar(&cfg.ServerCPU, "server-cpu", cfg.ServerCPU, "core the server under test (and the upstream) is pinned to")
	flag.IntVar(&cfg.PerfClients, "clients", cfg.PerfClients, "dnsperf's sockets (-c) in the max-QPS phase")
	loads := flag.String("loads", FlagLoads(cfg.Loads), "how dnsperf runs in the fixed-rate runs, comma-separated: its socket count (-c), /batch to run it as SCHED_BATCH; the first gives the headline figures")
	flag.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "fixed-rate rounds, the systems taking turns (figures are medians over rounds)")
	flag.IntVar(&cfg.LoadCPU, "load-cpu", cfg.LoadCPU, "core dnsperf and the harness are pinned to")
	flag.DurationVar(&cfg.WaitIdle, "wait-idle", cfg.WaitIdle, "before each system, wait up to this long for both cores to be idle (0 = don't)")
	flag.BoolVar(&cfg.DNSAccounting, "dns-accounting", cfg.DNSAccounting, "node-cache's per-pod DNS accounting (--dns-accounting); false measures node-cache without it, for its overhead")
	flag.StringVar(&cfg.NodeCache, "node-cache", cfg.NodeCache, "node-cache binary (relative paths: working dir, then repo root)")
	flag.StringVar(&cfg.CoreDNS, "coredns", "", "stock CoreDNS binary (default: build the go.mod version into "+bench.StockCoreDNSPath()+")")
	out := flag.String("out", "docs/benchmarks.md", "markdown file whose kcache section is replaced, relative to the repo root ('' = don't write)")
	plot := flag.String("plot", "", "PNG plot (default: kcache.png next to -out)")
	jsonOut := flag.String("json", "", "raw results as JSON (default with -out: test/bench/results/kcache.json; relative to the repo root)")
	quick := flag.Bool("quick", false, "short phases (2 s) and no idle wait, for a smoke check on a busy machine (explicit flags win)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "kcachebench: unexpected arguments: %v\n", flag.Args())
		os.Exit(2)
	}
	var err error
	if cfg.Loads, err = ParseLoads(*loads); err != nil {
		fmt.Fprintf(os.Stderr, "kcachebench: -loads: %v\n", err)
		os.Exit(2)
	}
	if cfg.Rounds < 1 {
		fmt.Fprintln(os.Stderr, "kcachebench: -rounds: at least 1")
		os.Exit(2)
	}
	cfg.Systems = nil
	for _, s := range strings.Split(*systems, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Systems = append(cfg.Systems, s)
		}
	}
	if *quick {
		cfg.ApplyQuick(bench.FlagSet)
	}
	cfg.Out, cfg.Plot, cfg.JSON = *out, *plot, *jsonOut
	if cfg.Out != "" {
		if cfg.Plot == "" {
			cfg.Plot = filepath.Join(filepath.Dir(cfg.Out), "kcache.png")
		}
		if cfg.JSON == "" {
			cfg.JSON = "test/bench/results/kcache.json"
		}
	}
	cfg.Command = strings.Join(append([]string{"go run ./test/bench/kcachebench"}, os.Args[1:]...), " ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	rep, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kcachebench: %v\n", err)
		stop()
		os.Exit(1)
	}
	rep.WriteTable(os.Stdout)
	if err := rep.WriteOutputs(); err != nil {
		fmt.Fprintf(os.Stderr, "kcachebench: %v\n", err)
		os.Exit(1)
	}
	if cfg.Out != "" {
		fmt.Fprintf(os.Stderr, "kcachebench: wrote %s, %s and %s\n", cfg.Out, cfg.Plot, cfg.JSON)
	}
	if rep.Failed() {
		os.Exit(1)
	}
}
