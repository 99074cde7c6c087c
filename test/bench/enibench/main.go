// Command enibench measures the ENI CNI's pod ADD latency with a warm pool
// and with a cold one, and the ECS API calls the pool makes per 100 pods,
// against the ECS emulator with a fixed latency per API call (1 s, like the
// real API's slow calls) and --local-enis (real interfaces), the real
// bin/eni-agent and bin/eni-cni through libcni. It prints a table and
// replaces the eni section of docs/benchmarks.md. Needs root.
//
//	go run ./test/bench/enibench -out docs/benchmarks.md
//	go run ./test/bench/enibench -quick -out ''
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cni/api"
	"github.com/dnsaccel/dnsaccel/test/bench"
	"github.com/dnsaccel/dnsaccel/test/cnitest"
)

// Section markers in docs/benchmarks.md.
const (
	SectionStart = "<!-- bench:eni:start -->"
	SectionEnd   = "<!-- bench:eni:end -->"
)

// Targets.
const (
	targetWarmP99     = 50 * time.Millisecond
	targetCallsPer100 = 15.0
)

type config struct {
	Pods, ColdPods   int
	Latency          time.Duration
	Rate             float64
	MinIdle, MaxIdle int
	Out              string
	Command          string
}

type phase struct {
	Name     string
	Pods     int
	P50, P99 time.Duration
	Max      time.Duration
	Calls    map[string]int
	Total    int
}

func main() {
	cfg := config{}
	flag.IntVar(&cfg.Pods, "pods", 100, "pods ADDed with the warm pool (API calls are counted over them)")
	flag.IntVar(&cfg.ColdPods, "cold-pods", 10, "pods ADDed one at a time with a cold pool (each waits for the cloud)")
	flag.DurationVar(&cfg.Latency, "latency", time.Second, "emulator latency per ECS API call")
	flag.Float64Var(&cfg.Rate, "rate", 5, "warm phase: pod ADDs started per second (a node's pod start rate)")
	flag.IntVar(&cfg.MinIdle, "min-idle", 20, "eni-agent --min-idle for the warm phase")
	flag.IntVar(&cfg.MaxIdle, "max-idle", 50, "eni-agent --max-idle for the warm phase")
	flag.StringVar(&cfg.Out, "out", "docs/benchmarks.md", "markdown file whose eni section is replaced, relative to the repo root ('' = don't write)")
	quick := flag.Bool("quick", false, "smoke run: 30 warm pods, 4 cold, 200 ms latency (explicit flags win)")
	flag.Parse()
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		if !set["pods"] {
			cfg.Pods = 30
		}
		if !set["cold-pods"] {
			cfg.ColdPods = 4
		}
		if !set["latency"] {
			cfg.Latency = 200 * time.Millisecond
		}
	}
	cfg.Command = strings.Join(append([]string{"go run ./test/bench/enibench"}, os.Args[1:]...), " ")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "enibench: %v\n", err)
		os.Exit(1)
	}
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s)-1)*p + 0.5)
	return s[i]
}

func run(ctx context.Context, cfg config) error {
	if err := cnitest.Check(); err != nil {
		return err
	}
	root, err := bench.FindRepoRoot()
	if err != nil {
		return err
	}
	if err := os.Chdir(root); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "enibench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintf(os.Stderr, "enibench: building eni-cni and eni-agent\n")
	if err := cnitest.Build(dir); err != nil {
		return err
	}
	machine := bench.MachineInfo(ctx)
	start := time.Now()
	warm, err := runPhase(ctx, cfg, dir, "warm", cfg.Pods, cfg.MinIdle, cfg.MaxIdle)
	if err != nil {
		return fmt.Errorf("warm pool: %w", err)
	}
	cold, err := runPhase(ctx, cfg, dir, "cold", cfg.ColdPods, 0, 0)
	if err != nil {
		return fmt.Errorf("cold pool: %w", err)
	}
	per100 := float64(warm.Total) * 100 / float64(warm.Pods)
	fmt.Printf("\nENI CNI benchmark, %s, ECS emulator latency %s per call\n", start.Format("2006-01-02 15:04"), cfg.Latency)
	fmt.Printf("%-6s %5s %10s %10s %10s %s\n", "pool", "pods", "p50", "p99", "max", "API calls")
	for _, ph := range []phase{warm, cold} {
		fmt.Printf("%-6s %5d %10s %10s %10s %d %v\n", ph.Name, ph.Pods, ph.P50.Round(time.Microsecond), ph.P99.Round(time.Microsecond), ph.Max.Round(time.Microsecond), ph.Total, ph.Calls)
	}
	fmt.Printf("API calls per 100 pods (warm, start-up included): %.1f\n", per100)
	if cfg.Out == "" {
		return nil
	}
	md := markdown(cfg, machine, start, warm, cold, per100)
	if err := bench.UpdateSection(cfg.Out, SectionStart, SectionEnd, md); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "enibench: wrote %s\n", cfg.Out)
	return nil
}

// runPhase starts a fresh emulator and agent, waits for the pool to reach
// minIdle, then ADDs pods (paced at cfg.Rate when warm, one after another
// when cold), and DELs them.
func runPhase(ctx context.Context, cfg config, dir, name string, pods, minIdle, maxIdle int) (phase, error) {
	ph := phase{Name: name, Pods: pods, Calls: map[string]int{}}
	pdir, err := os.MkdirTemp(dir, name+"-")
	if err != nil {
		return ph, err
	}
	e, err := cnitest.Start(cnitest.Options{Dir: pdir, BinDir: dir, Net: "10.213", API: openapi.Config{Latency: cfg.Latency},
		MinIdle: minIdle, MaxIdle: maxIdle, QPS: 10, AttachDelay: cfg.Latency})
	if err != nil {
		return ph, err
	}
	defer e.Close()
	seq0 := len(logEntries(e))
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := e.StartAgent(sctx); err != nil {
		return ph, err
	}
	cl := api.NewClient(e.Socket)
	for {
		st, err := cl.Status(sctx, api.ModeVeth)
		if err != nil {
			return ph, err
		}
		if st.Idle >= minIdle {
			break
		}
		select {
		case <-sctx.Done():
			return ph, fmt.Errorf("pool not warm (%d idle of %d): %w", st.Idle, minIdle, sctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	ps := make([]*cnitest.Pod, pods)
	for i := range ps {
		if ps[i], err = cnitest.NewPod("bench", fmt.Sprintf("%s-%d", name, i)); err != nil {
			return ph, err
		}
		defer ps[i].Close()
	}
	fmt.Fprintf(os.Stderr, "enibench: %s pool: %d ADDs\n", name, pods)
	lat := make([]time.Duration, 0, pods)
	var interval time.Duration
	if name == "warm" && cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) / cfg.Rate)
	}
	next := time.Now()
	for _, p := range ps {
		if interval > 0 {
			select {
			case <-ctx.Done():
				return ph, ctx.Err()
			case <-time.After(time.Until(next)):
			}
			next = next.Add(interval)
		}
		actx, acancel := context.WithTimeout(ctx, 2*time.Minute)
		t0 := time.Now()
		_, err := e.Add(actx, api.ModeVeth, p)
		d := time.Since(t0)
		acancel()
		if err != nil {
			return ph, fmt.Errorf("ADD %s: %w\n%s", p.Name, err, e.AgentLog())
		}
		lat = append(lat, d)
	}
	for _, ent := range logEntries(e)[seq0:] {
		if ent.Product == "ecs" || strings.HasPrefix(ent.Version, "2014") {
			ph.Calls[ent.Action]++
			ph.Total++
		}
	}
	ph.P50, ph.P99, ph.Max = pct(lat, 0.5), pct(lat, 0.99), slices.Max(lat)
	for _, p := range ps {
		dctx, dcancel := context.WithTimeout(ctx, time.Minute)
		err := e.Del(dctx, api.ModeVeth, p)
		dcancel()
		if err != nil {
			return ph, fmt.Errorf("DEL %s: %w", p.Name, err)
		}
	}
	return ph, nil
}

func logEntries(e *cnitest.Env) []openapi.Entry {
	ents, _ := e.Emu.Server.Log(0)
	return ents
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

func markdown(cfg config, m bench.Machine, start time.Time, warm, cold phase, per100 float64) string {
	var b strings.Builder
	p := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	p("%s\n", SectionStart)
	p("## ENI CNI: pod ADD latency, warm vs cold pool; ECS API calls per 100 pods\n\n")
	p("`bin/eni-cni` ADDs (veth mode) through libcni, `bin/eni-agent` with its pool, against the ECS\n")
	p("emulator with %s of latency per API call and `--local-enis` (real interfaces, the VPC a network\n", cfg.Latency)
	p("namespace). Warm: `--min-idle %d --max-idle %d`, pool filled first, %d pods started at %.0f/s.\n", cfg.MinIdle, cfg.MaxIdle, warm.Pods, cfg.Rate)
	p("Cold: `--min-idle 0 --max-idle 0`, %d pods one after another, each waiting for the cloud.\n", cold.Pods)
	p("API calls are every ECS call the emulator served from the agent's start to the last ADD.\n\n")
	p("| pool | pods | ADD p50 ms | ADD p99 ms | max ms | ECS calls | target |\n|---|---|---|---|---|---|---|\n")
	p("| warm | %d | %s | %s | %s | %d | p99 ≤ %s: %s |\n", warm.Pods, ms(warm.P50), ms(warm.P99), ms(warm.Max), warm.Total, ms(targetWarmP99), verdict(warm.P99 <= targetWarmP99))
	p("| cold | %d | %s | %s | %s | %d | |\n\n", cold.Pods, ms(cold.P50), ms(cold.P99), ms(cold.Max), cold.Total)
	p("ECS API calls per 100 pods (warm, start-up included): **%.1f** (target ≤ %.0f: %s).\n\n", per100, targetCallsPer100, verdict(per100 <= targetCallsPer100))
	var acts []string
	for a, n := range warm.Calls {
		acts = append(acts, fmt.Sprintf("%s %d", a, n))
	}
	slices.Sort(acts)
	p("Warm-phase calls by action: %s.\n\n", strings.Join(acts, ", "))
	p("Run %s on %s (%d CPUs, kernel %s, load %.2f at start), with other work on the machine.\n\n", start.Format("2006-01-02 15:04"), m.CPUModel, m.CPUs, m.Kernel, m.Load1)
	p("Reproduce: `%s` (as root).\n", cfg.Command)
	p("%s\n", SectionEnd)
	return b.String()
}
