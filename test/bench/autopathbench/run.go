package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dnsaccel/dnsaccel/test/bench"
	"github.com/dnsaccel/dnsaccel/test/cluster"
)

// Config controls a run.
type Config struct {
	Memory, Latency bool

	Sizes          []int // pod counts, ascending
	Namespaces     int
	PodsPerService int
	Workers        int
	Settle         time.Duration
	Samples        int

	Lookups int // per configuration and client
	Rounds  int

	CoreDNS   string
	ServerCPU int
	LoadCPU   int

	Out, JSON string
	Quick     bool
	Command   string // as typed, for the docs
	RepoRoot  string
}

// DefaultConfig is the full run of `make bench`.
func DefaultConfig() Config {
	return Config{
		Memory:         true,
		Latency:        true,
		Sizes:          []int{10000, 50000},
		Namespaces:     50,
		PodsPerService: 10,
		Workers:        32,
		Settle:         10 * time.Second,
		Samples:        5,
		Lookups:        200,
		Rounds:         2,
		CoreDNS:        "bin/coredns",
		ServerCPU:      1,
		LoadCPU:        0,
	}
}

// ApplyQuick shrinks the run to a smoke check; isSet reports the flags
// given explicitly, which are kept.
func (c *Config) ApplyQuick(isSet func(flag string) bool) {
	c.Quick = true
	if !isSet("sizes") {
		c.Sizes = []int{1000}
	}
	if !isSet("lookups") {
		c.Lookups = 20
	}
	if !isSet("settle") {
		c.Settle = 2 * time.Second
	}
	if !isSet("samples") {
		c.Samples = 2
	}
}

// Report is the outcome of a run.
type Report struct {
	Start          time.Time     `json:"start"`
	Elapsed        time.Duration `json:"elapsed"`
	Machine        bench.Machine `json:"machine"`
	Config         Config        `json:"config"`
	CoreDNSVersion string        `json:"coredns_version"`
	KubeVersion    string        `json:"kube_version"`

	Latency    []LatencyRun `json:"latency,omitempty"`
	LatencyErr string       `json:"latency_error,omitempty"`

	Memory    []SizeResult `json:"memory,omitempty"`
	MemoryErr string       `json:"memory_error,omitempty"`
}

// Failed reports whether a part that was asked for produced no figures.
func (r *Report) Failed() bool { return r.LatencyErr != "" || r.MemoryErr != "" }

// Run starts one API server, measures the parts asked for and stops
// everything it started before returning.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	rep := &Report{Start: time.Now(), KubeVersion: cluster.KubeVersion}
	defer func() { rep.Elapsed = time.Since(rep.Start).Round(time.Second) }()
	root, err := bench.FindRepoRoot()
	if err != nil {
		return rep, err
	}
	cfg.RepoRoot = root
	for _, p := range []*string{&cfg.Out, &cfg.JSON} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(root, *p)
		}
	}
	if cfg.CoreDNS != "" && !filepath.IsAbs(cfg.CoreDNS) {
		if _, err := os.Stat(cfg.CoreDNS); err != nil {
			cfg.CoreDNS = filepath.Join(root, cfg.CoreDNS)
		}
	}
	rep.Config = cfg
	if !cfg.Memory && !cfg.Latency {
		return rep, errors.New("nothing to measure (-parts)")
	}
	out, err := exec.CommandContext(ctx, cfg.CoreDNS, "-plugins").Output()
	if err != nil {
		return rep, fmt.Errorf("%s: %w (run `make build`)", cfg.CoreDNS, err)
	}
	for _, p := range []string{"dns.k8s_autopath", "dns.nodecache", "dns.kubernetes", "dns.pprof"} {
		if !slices.Contains(strings.Fields(string(out)), p) {
			return rep, fmt.Errorf("%s lacks the %s plugin (run `make build`)", cfg.CoreDNS, p)
		}
	}
	if v, err := exec.CommandContext(ctx, cfg.CoreDNS, "-version").Output(); err == nil {
		rep.CoreDNSVersion = strings.TrimSpace(strings.SplitN(string(v), "\n", 2)[0])
	}
	cpus := bench.OnlineCPUs()
	if !slices.Contains(cpus, cfg.ServerCPU) || !slices.Contains(cpus, cfg.LoadCPU) || cfg.ServerCPU == cfg.LoadCPU {
		return rep, fmt.Errorf("need two distinct usable CPUs (server %d, load %d); usable: %v", cfg.ServerCPU, cfg.LoadCPU, cpus)
	}
	if _, err := bench.LookPath("taskset"); err != nil {
		return rep, fmt.Errorf("taskset is required (util-linux): %w", err)
	}
	rep.Machine = bench.MachineInfo(ctx)
	rep.Machine.Tools = nil

	dir, err := os.MkdirTemp("", "autopathbench-")
	if err != nil {
		return rep, err
	}
	defer os.RemoveAll(dir)
	e := &env{cfg: cfg, dir: dir, procs: &bench.Procs{}, ports: &bench.Ports{}}
	defer e.procs.StopAll()

	logf("starting etcd + kube-apiserver %s", cluster.KubeVersion)
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	c, err := cluster.Start(sctx)
	cancel()
	if err != nil {
		return rep, fmt.Errorf("test API server: %w", err)
	}
	defer c.Stop()
	e.cluster, e.kubeconfig = c, c.Kubeconfig

	// The latency part first, while the pod index holds just the test pod
	// (as in a node-local cache indexing its own node).
	if cfg.Latency {
		runs, err := measureLatency(ctx, e)
		rep.Latency = runs
		if err != nil {
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			rep.LatencyErr = err.Error()
			logf("latency: FAILED: %v", err)
		}
	}
	if cfg.Memory {
		err := measureMemory(ctx, e, func(r SizeResult) { rep.Memory = append(rep.Memory, r) })
		if err != nil {
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			rep.MemoryErr = err.Error()
			logf("memory: FAILED: %v", err)
		}
	}
	return rep, nil
}

// env is what the parts share.
type env struct {
	cfg        Config
	dir        string
	procs      *bench.Procs
	ports      *bench.Ports
	cluster    *cluster.Cluster
	kubeconfig string // admin kubeconfig for bin/coredns
	nconf      int
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "autopathbench: "+format+"\n", a...)
}

// startCoreDNS writes corefile and runs bin/coredns with it, pinned to the
// server core.
func (e *env) startCoreDNS(name, corefile string) (*bench.Proc, error) {
	e.nconf++
	path := filepath.Join(e.dir, fmt.Sprintf("Corefile.%d.%s", e.nconf, name))
	if err := os.WriteFile(path, []byte(corefile), 0o644); err != nil {
		return nil, err
	}
	return e.procs.Start("coredns-"+name, e.cfg.ServerCPU, nil, path+".log", e.cfg.CoreDNS, "-conf", path)
}
