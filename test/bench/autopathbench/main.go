// Command autopathbench is the k8s_autopath benchmark run by `make bench`
// after the cache benchmark. Against a real etcd + kube-apiserver
// (test/cluster) it measures
//
//  1. the memory of k8s_autopath's pod index against CoreDNS's kubernetes
//     plugin with `pods verified`, with 10k and 50k pods in the API server:
//     bin/coredns run in turn with each configuration and with neither
//     (the baseline that is subtracted);
//  2. an external-name lookup from a pod (glibc getent in a network
//     namespace, test/netns, warm node-local cache): queries on the wire and
//     wall time per lookup, with and without k8s_autopath in front of
//     nodecache.
//
// It prints a table and updates the autopath section of docs/benchmarks.md.
// Needs root (network namespaces), etcd and the cached kube-apiserver
// (`make kube`), bin/coredns (`make build`) and tcpdump.
//
//	go run ./test/bench/autopathbench -out docs/benchmarks.md
//	go run ./test/bench/autopathbench -quick -out ''
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/dnsaccel/dnsaccel/test/bench"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	// Inside a netns pod the program runs itself as the lookup loop.
	if len(os.Args) > 1 && os.Args[1] == podLoopCmd {
		os.Exit(podLoop(os.Args[2:]))
	}

	cfg := DefaultConfig()
	sizes := flag.String("sizes", joinInts(cfg.Sizes), "comma-separated pod counts at which memory is measured, ascending")
	parts := flag.String("parts", "latency,memory", "what to measure: latency, memory or both")
	flag.IntVar(&cfg.Namespaces, "namespaces", cfg.Namespaces, "namespaces the pods are spread over")
	flag.IntVar(&cfg.PodsPerService, "pods-per-service", cfg.PodsPerService, "one Service (and one app label value) per this many pods")
	flag.IntVar(&cfg.Workers, "workers", cfg.Workers, "concurrent API clients creating pods")
	flag.IntVar(&cfg.Samples, "samples", cfg.Samples, "memory samples per run (1 s apart, each after a forced GC); the minimum is reported")
	flag.DurationVar(&cfg.Settle, "settle", cfg.Settle, "after sync, force a GC every second for at least this long (and until RSS stops dropping) before sampling memory")
	flag.IntVar(&cfg.Lookups, "lookups", cfg.Lookups, "timed lookups per configuration and client (getent, Go resolver)")
	flag.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "the lookups are split into this many rounds, alternating the configurations")
	flag.StringVar(&cfg.CoreDNS, "coredns", cfg.CoreDNS, "CoreDNS binary with k8s_autopath and nodecache (relative paths: working dir, then repo root)")
	flag.IntVar(&cfg.ServerCPU, "server-cpu", cfg.ServerCPU, "core bin/coredns is pinned to")
	flag.IntVar(&cfg.LoadCPU, "load-cpu", cfg.LoadCPU, "core the harness and the pod's lookups are pinned to during the latency part")
	out := flag.String("out", "docs/benchmarks.md", "markdown file whose autopath section is replaced, relative to the repo root ('' = don't write)")
	flag.StringVar(&cfg.JSON, "json", "", "also write raw results as JSON to this file (relative to the repo root)")
	quick := flag.Bool("quick", false, "smoke run: 1000 pods, 20 lookups, 2 s settle, 2 samples (explicit flags win)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "autopathbench: unexpected arguments: %v\n", flag.Args())
		os.Exit(2)
	}
	var err error
	if cfg.Sizes, err = parseInts(*sizes); err != nil {
		fmt.Fprintf(os.Stderr, "autopathbench: -sizes: %v\n", err)
		os.Exit(2)
	}
	cfg.Memory, cfg.Latency = false, false
	for _, p := range strings.Split(*parts, ",") {
		switch strings.TrimSpace(p) {
		case "memory":
			cfg.Memory = true
		case "latency":
			cfg.Latency = true
		case "":
		default:
			fmt.Fprintf(os.Stderr, "autopathbench: -parts: unknown part %q (latency, memory)\n", p)
			os.Exit(2)
		}
	}
	if *quick {
		cfg.ApplyQuick(bench.FlagSet)
	}
	cfg.Out = *out
	cfg.Command = strings.Join(append([]string{"go run ./test/bench/autopathbench"}, os.Args[1:]...), " ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	rep, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "autopathbench: %v\n", err)
		stop()
		os.Exit(1)
	}
	rep.WriteTable(os.Stdout)
	if err := rep.WriteOutputs(); err != nil {
		fmt.Fprintf(os.Stderr, "autopathbench: %v\n", err)
		os.Exit(1)
	}
	if rep.Config.Out != "" {
		fmt.Fprintf(os.Stderr, "autopathbench: wrote %s\n", rep.Config.Out)
	}
	if rep.Failed() {
		os.Exit(1)
	}
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("sizes must be ascending")
		}
		out = append(out, n)
	}
	return out, nil
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
