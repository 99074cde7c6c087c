// Command steerbench is the eBPF steering benchmark run by `make bench`. From
// a pod (a network namespace, test/netns) it sends DNS queries, each from a
// fresh UDP socket as glibc's resolver does, to the node cache
// (bin/node-cache, answering from its cache) along these paths:
//
//   - straight: to the cache's own address (--local-ip);
//   - steering: to the cluster DNS VIP, rewritten to the cache's address by
//     node-cache's eBPF programs at the socket, with node-cache's own
//     NOTRACK table (its default, --notrack);
//   - steering with --notrack=false: the same, each query a conntrack flow;
//   - iptables: to another VIP that a kube-proxy-style iptables DNAT rule
//     sends to the cache, behind 1 / 1,000 / 10,000 other Service rules
//     (against the --notrack=false node-cache: NOTRACK on the cache's
//     replies would skip the reverse NAT);
//   - steering + kernel cache: node-cache's default, hot names answered at
//     the pod's veth.
//
// The Service rules are installed for every path (a kube-proxy node has them
// whatever the path), in a chain jumped to from nat PREROUTING like
// KUBE-SERVICES. Per path and rule count it reports latency (median, p90,
// p99), CPU per query (the pod's sending thread and node-cache, from
// schedstat) and conntrack entries created per query, and updates the
// steering section of docs/benchmarks.md.
//
// Needs root, iptables, bin/node-cache (`make build`). Everything it creates
// (namespace, addresses, iptables rules, conntrack entries of its pod, BPF
// pins, node-cache's nftables table) is removed at the end, also on failure
// or interrupt.
//
//	go run ./test/bench/steerbench -out docs/benchmarks.md
//	go run ./test/bench/steerbench -quick -out ''
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
	cfg := DefaultConfig()
	rules := flag.String("rules", joinInts(cfg.Rules), "comma-separated counts of other Service rules ahead of the DNS VIP's DNAT rule")
	flag.IntVar(&cfg.Queries, "queries", cfg.Queries, "queries per path, rule count and round")
	flag.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "rounds per rule count; the paths alternate within each round")
	flag.IntVar(&cfg.ClientCPU, "client-cpu", cfg.ClientCPU, "core the pod's querying thread is pinned to")
	flag.IntVar(&cfg.ServerCPU, "server-cpu", cfg.ServerCPU, "core bin/node-cache is pinned to")
	flag.StringVar(&cfg.NodeCache, "node-cache", cfg.NodeCache, "node-cache binary (relative paths: working dir, then repo root)")
	out := flag.String("out", "docs/benchmarks.md", "markdown file whose steering section is replaced, relative to the repo root ('' = don't write)")
	flag.StringVar(&cfg.JSON, "json", "", "also write raw results as JSON to this file (relative to the repo root)")
	quick := flag.Bool("quick", false, "reduced scale for a busy machine: rules 1,1000, 300 queries, 2 rounds (explicit flags win)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "steerbench: unexpected arguments: %v\n", flag.Args())
		os.Exit(2)
	}
	var err error
	if cfg.Rules, err = parseInts(*rules); err != nil {
		fmt.Fprintf(os.Stderr, "steerbench: -rules: %v\n", err)
		os.Exit(2)
	}
	if *quick {
		cfg.ApplyQuick(bench.FlagSet)
	}
	if cfg.Queries < 10 || cfg.Rounds < 1 {
		fmt.Fprintf(os.Stderr, "steerbench: -queries must be >= 10 and -rounds >= 1\n")
		os.Exit(2)
	}
	cfg.Out = *out
	cfg.Command = strings.Join(append([]string{"go run ./test/bench/steerbench"}, os.Args[1:]...), " ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	rep, err := Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "steerbench: %v\n", err)
		stop()
		os.Exit(1)
	}
	rep.WriteTable(os.Stdout)
	if err := rep.WriteOutputs(); err != nil {
		fmt.Fprintf(os.Stderr, "steerbench: %v\n", err)
		os.Exit(1)
	}
	if cfg.Out != "" {
		fmt.Fprintf(os.Stderr, "steerbench: wrote %s\n", cfg.Out)
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
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%q is not a count", f)
		}
		if len(out) > 0 && n <= out[len(out)-1] {
			return nil, fmt.Errorf("counts must be ascending")
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no counts")
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
