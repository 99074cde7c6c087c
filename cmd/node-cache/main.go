// Command node-cache is dnsaccel's node-local DNS cache: CoreDNS with the
// nodecache plugin, run as a DaemonSet on every node.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/dnsaccel/dnsaccel/nodecache"
)

func main() {
	var cfg nodecache.Config
	fs := pflag.NewFlagSet("node-cache", pflag.ContinueOnError)
	fs.StringArrayVar(&cfg.Listen, "listen", []string{"127.0.0.1:53"}, "IP:PORT the cache answers DNS on (UDP and TCP); repeatable")
	fs.StringArrayVar(&cfg.Upstreams, "upstream", nil, "IP:PORT of a resolver the cache forwards misses to, over TCP; repeatable (default: the nameservers of /etc/resolv.conf)")
	fs.StringVar(&cfg.Conf, "conf", "", "run this Corefile instead of the one generated from --listen and --upstream")
	fs.StringVar(&cfg.Metrics, "metrics", ":9253", "ADDR serving Prometheus /metrics (empty: off)")
	fs.StringVar(&cfg.Health, "health", ":8080", "ADDR serving /health (liveness) and /ready (readiness) (empty: off)")
	version := fs.Bool("version", false, "print the version and exit")
	resolvConf := fs.String("resolv-conf", "/etc/resolv.conf", "where the default upstreams are read from")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: node-cache [flags]\n\n"+
			"A node-local DNS cache: answers pods' queries on the node, forwards misses to the\n"+
			"upstreams over pipelined TCP, and answers cache hits on a UDP fast path.\n\n"+
			"  node-cache --listen 127.0.0.1:5301 --upstream 127.0.0.1:5300\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == pflag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if *version {
		fmt.Println(versionString())
		return
	}
	log := newLogger()
	if !fs.Changed("upstream") && cfg.Conf == "" {
		ups, err := nodecache.ResolvConfUpstreams(*resolvConf)
		if err != nil {
			log.Error("reading default upstreams", "resolv-conf", *resolvConf, "err", err)
			os.Exit(2)
		}
		cfg.Upstreams = ups
	}
	if err := cfg.Validate(); err != nil {
		log.Error("invalid configuration", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := nodecache.New(cfg, log).Run(ctx); err != nil {
		log.Error("node-cache failed", "err", err)
		os.Exit(1)
	}
}

// versionString names this build and the CoreDNS it embeds.
func versionString() string {
	v, core := "devel", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, d := range bi.Deps {
			if d.Path == "github.com/coredns/coredns" {
				core = d.Version
			}
		}
		return fmt.Sprintf("node-cache %s (CoreDNS %s, %s)", v, core, bi.GoVersion)
	}
	return "node-cache " + v
}

// newLogger logs JSON unless stderr is a terminal.
func newLogger() *slog.Logger {
	if term.IsTerminal(int(os.Stderr.Fd())) {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, nil))
}
