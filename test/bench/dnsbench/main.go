// Command dnsbench is the whole-system DNS cache benchmark run by
// `make bench`: node-cache against stock CoreDNS (NodeLocal DNSCache
// configuration), unbound and dnsmasq, each pinned to one core with the load
// generator on another, all on loopback. It prints a table and updates the
// DNS-cache section of docs/benchmarks.md.
//
//	go run ./test/bench/dnsbench -out docs/benchmarks.md
//	go run ./test/bench/dnsbench -quick -systems coredns,unbound -out ''
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
	cfg := bench.DefaultConfig()
	systems := flag.String("systems", strings.Join(bench.AllSystems, ","), "comma-separated systems to measure, in order")
	flag.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of the max-QPS (dnsperf unlimited) phase")
	flag.DurationVar(&cfg.FixedDuration, "fixed-duration", cfg.FixedDuration, "length of the fixed-rate phase (CPU per answer, loss)")
	flag.Float64Var(&cfg.FixedRate, "fixed-rate", cfg.FixedRate, "queries/s of the fixed-rate phase")
	flag.DurationVar(&cfg.LatDuration, "lat-duration", cfg.LatDuration, "length of the cached-latency phase")
	flag.Float64Var(&cfg.LatRate, "lat-rate", cfg.LatRate, "queries/s of the cached-latency phase (own generator)")
	flag.Float64Var(&cfg.MissRate, "miss-rate", cfg.MissRate, "queries/s on the miss path")
	flag.IntVar(&cfg.MissQueries, "miss-queries", cfg.MissQueries, "unique never-cached names per system on the miss path")
	flag.IntVar(&cfg.PerfClients, "perf-clients", cfg.PerfClients, "dnsperf -c")
	flag.IntVar(&cfg.PerfThreads, "perf-threads", cfg.PerfThreads, "dnsperf -T")
	flag.IntVar(&cfg.PerfOutstanding, "perf-outstanding", cfg.PerfOutstanding, "dnsperf -q")
	flag.IntVar(&cfg.ServerCPU, "server-cpu", cfg.ServerCPU, "core the server under test is pinned to")
	flag.IntVar(&cfg.LoadCPU, "load-cpu", cfg.LoadCPU, "core the load generators and the upstream are pinned to")
	flag.IntVar(&cfg.UpstreamCPU, "upstream-cpu", cfg.UpstreamCPU, "core the upstream authoritative server is pinned to (-2 = the server's core, -1 = unpinned)")
	flag.StringVar(&cfg.NodeCache, "node-cache", cfg.NodeCache, "node-cache binary (relative paths: working dir, then repo root)")
	flag.StringVar(&cfg.CoreDNS, "coredns", "", "stock CoreDNS binary (default: build the go.mod version into "+bench.StockCoreDNSPath()+")")
	flag.DurationVar(&cfg.WaitIdle, "wait-idle", cfg.WaitIdle, "before each system, wait up to this long for both cores to be idle (0 = don't)")
	flag.IntVar(&cfg.Retries, "retries", cfg.Retries, "measure a system again (at most this often) when other work took >10% of the server core")
	out := flag.String("out", "docs/benchmarks.md", "markdown file whose DNS-cache section is replaced, relative to the repo root ('' = don't write)")
	plot := flag.String("plot", "", "PNG plot (default: bench-cpu.png next to -out)")
	jsonOut := flag.String("json", "", "also write raw results as JSON to this file (relative to the repo root)")
	quick := flag.Bool("quick", false, "short phases and no idle wait or retries, for a smoke check")
	fromJSON := flag.String("from-json", "", "don't measure: re-render the table, -out and -plot from a -json file of an earlier run")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "dnsbench: unexpected arguments: %v\n", flag.Args())
		os.Exit(2)
	}
	cfg.Systems = nil
	for _, s := range strings.Split(*systems, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Systems = append(cfg.Systems, s)
		}
	}
	if *quick {
		cfg.ApplyQuick()
	}
	cfg.Out = *out
	cfg.Plot = *plot
	if cfg.Plot == "" && cfg.Out != "" {
		cfg.Plot = filepath.Join(filepath.Dir(cfg.Out), "bench-cpu.png")
	}
	cfg.JSON = *jsonOut

	if *fromJSON != "" {
		rep, err := bench.LoadReport(*fromJSON)
		if err == nil {
			rep.Config.Out, rep.Config.Plot, rep.Config.JSON = bench.RepoPath(cfg.Out), bench.RepoPath(cfg.Plot), ""
			rep.WriteTable(os.Stdout)
			err = rep.WriteOutputs()
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "dnsbench: %v\n", err)
			os.Exit(1)
		}
		return
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dnsbench: %v\n", err)
		stop()
		os.Exit(1)
	}
	rep.WriteTable(os.Stdout)
	if err := rep.WriteOutputs(); err != nil {
		fmt.Fprintf(os.Stderr, "dnsbench: %v\n", err)
		os.Exit(1)
	}
	if cfg.Out != "" {
		fmt.Fprintf(os.Stderr, "dnsbench: wrote %s and %s\n", cfg.Out, cfg.Plot)
	}
}
