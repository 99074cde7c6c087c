// Command pvtzbench is the PrivateZone sync benchmark run by `make bench`.
// Against a real etcd + kube-apiserver (test/cluster) holding N ClusterIP
// Services and the PrivateZone emulator limiting every action (so every
// write action) to --write-qps, it measures
//
//  1. the time bin/pvtz-sync --once takes from start to a converged zone
//     (N records), against the bound N / write-qps (the API rate is the
//     physical bound: PrivateZone has no batch record API);
//  2. the API calls (reads, writes) of one reconcile without drift, from
//     the emulator's request log, beside what ExternalDNS's Alibaba provider
//     does for the same zone, computed from its published behaviour
//     (docs: shared reference, provider/alibabacloud/alibaba_cloud.go).
//
// It prints a table and updates the pvtz section of docs/benchmarks.md.
// Needs etcd and the cached kube-apiserver (`make kube`) and bin/pvtz-sync
// (`make build`; built into a temporary directory when missing).
//
//	go run ./test/bench/pvtzbench -out docs/benchmarks.md
//	go run ./test/bench/pvtzbench -services 1000 -out ''   # reduced scale
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz/pvtztest"
	"github.com/dnsaccel/dnsaccel/test/bench"
	"github.com/dnsaccel/dnsaccel/test/cluster"
)

// Section markers in docs/benchmarks.md.
const (
	SectionStart = "<!-- bench:pvtz:start -->"
	SectionEnd   = "<!-- bench:pvtz:end -->"
)

type config struct {
	Services int
	WriteQPS float64
	Binary   string
	Out      string
	Command  string
}

type result struct {
	Config          config
	Machine         string
	Converge        time.Duration
	Bound           time.Duration
	Records         int
	InitialWrites   int
	InitialReads    int
	Throttled       int
	NoDriftReads    map[string]int
	NoDriftWrites   int
	NoDriftDuration time.Duration
	When            time.Time
}

func main() {
	cfg := config{}
	flag.IntVar(&cfg.Services, "services", 10000, "ClusterIP Services in the API server (one A record each)")
	flag.Float64Var(&cfg.WriteQPS, "write-qps", 200, "the emulator's per-action limit (Throttling.User above it) and pvtz-sync's --qps")
	flag.StringVar(&cfg.Binary, "pvtz-sync", "bin/pvtz-sync", "pvtz-sync binary (relative: repo root; built when missing)")
	flag.StringVar(&cfg.Out, "out", "docs/benchmarks.md", "markdown file whose pvtz section is replaced, relative to the repo root ('' = don't write)")
	flag.Parse()
	cfg.Command = "go run ./test/bench/pvtzbench " + strings.Join(os.Args[1:], " ")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	res, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pvtzbench: %v\n", err)
		os.Exit(1)
	}
	res.write(os.Stdout)
	if cfg.Out != "" {
		root, err := bench.FindRepoRoot()
		if err != nil {
			fmt.Fprintf(os.Stderr, "pvtzbench: %v\n", err)
			os.Exit(1)
		}
		if err := bench.UpdateSection(filepath.Join(root, cfg.Out), SectionStart, SectionEnd, res.markdown()); err != nil {
			fmt.Fprintf(os.Stderr, "pvtzbench: %v\n", err)
			os.Exit(1)
		}
	}
}

func run(ctx context.Context, cfg config) (*result, error) {
	root, err := bench.FindRepoRoot()
	if err != nil {
		return nil, err
	}
	bin := cfg.Binary
	if !filepath.IsAbs(bin) {
		bin = filepath.Join(root, bin)
	}
	if _, err := os.Stat(bin); err != nil {
		dir, err := os.MkdirTemp("", "pvtzbench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "pvtz-sync")
		b := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/pvtz-sync")
		b.Dir, b.Env = root, append(os.Environ(), "CGO_ENABLED=0")
		if out, err := b.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build pvtz-sync: %v\n%s", err, out)
		}
	}
	fmt.Fprintf(os.Stderr, "starting etcd + kube-apiserver...\n")
	c, err := cluster.Start(ctx, cluster.WithServiceCIDR("10.96.0.0/12"))
	if err != nil {
		return nil, fmt.Errorf("test cluster: %w", err)
	}
	defer c.Stop()
	ns := "pvtzbench"
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "creating %d Services...\n", cfg.Services)
	if err := createServices(ctx, c, ns, cfg.Services); err != nil {
		return nil, err
	}

	emu, err := pvtztest.StartErr(openapi.Config{ThrottleQPS: cfg.WriteQPS})
	if err != nil {
		return nil, err
	}
	defer emu.Close()
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir(),
		"ALIBABA_CLOUD_ACCESS_KEY_ID=" + pvtztest.AccessKeyID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET=" + pvtztest.AccessKeySecret,
		"ALIBABA_CLOUD_ECS_METADATA_DISABLED=true"}
	args := []string{"--kubeconfig", c.Kubeconfig, "--zone", "bench.internal", "--create-zone", "--vpc-id", "vpc-bench",
		"--endpoint", emu.URL, "--namespace", ns, "--owner-id", "bench", "--policy", "sync", "--once",
		"--qps", fmt.Sprint(cfg.WriteQPS), "--metrics", "", "--health", ""}
	res := &result{Config: cfg, When: time.Now().UTC(), Machine: machine(ctx),
		Bound: time.Duration(float64(cfg.Services) / cfg.WriteQPS * float64(time.Second))}

	fmt.Fprintf(os.Stderr, "initial sync (bound %v)...\n", res.Bound)
	before := emu.Server.Stats()
	t0 := time.Now()
	if err := runSync(ctx, bin, env, args); err != nil {
		return nil, fmt.Errorf("initial sync: %w", err)
	}
	res.Converge = time.Since(t0)
	after := emu.Server.Stats()
	res.InitialWrites, res.InitialReads, res.Throttled = after.Writes-before.Writes, after.Reads-before.Reads, after.Throttled-before.Throttled
	res.Records = countRecords(emu)

	fmt.Fprintf(os.Stderr, "reconcile without drift...\n")
	before = emu.Server.Stats()
	t0 = time.Now()
	if err := runSync(ctx, bin, env, args); err != nil {
		return nil, fmt.Errorf("second sync: %w", err)
	}
	res.NoDriftDuration = time.Since(t0)
	after = emu.Server.Stats()
	res.NoDriftWrites = after.Writes - before.Writes
	res.NoDriftReads = map[string]int{}
	for k, v := range after.ByAction {
		if d := v - before.ByAction[k]; d > 0 {
			res.NoDriftReads[k] = d
		}
	}
	if res.Records != cfg.Services {
		return res, fmt.Errorf("zone has %d records, want %d", res.Records, cfg.Services)
	}
	return res, nil
}

func runSync(ctx context.Context, bin string, env, args []string) error {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		s := stderr.String()
		return fmt.Errorf("%v\n%s", err, s[max(0, len(s)-2000):])
	}
	return nil
}

func countRecords(emu *pvtztest.Emulator) int {
	raw, err := emu.Store.Snapshot()
	if err != nil {
		return -1
	}
	return strings.Count(string(raw), `"RecordId"`)
}

func createServices(ctx context.Context, c *cluster.Cluster, ns string, n int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || ctx.Err() != nil {
					return
				}
				_, err := cluster.CreateService(ctx, c.Client, cluster.ServiceOptions{Namespace: ns, Name: fmt.Sprintf("svc-%05d", i),
					Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}})
				if err != nil {
					select {
					case errc <- err:
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	return ctx.Err()
}

func machine(ctx context.Context) string {
	m := bench.MachineInfo(ctx)
	return fmt.Sprintf("%+v", m)
}

// externalDNS computes what ExternalDNS's Alibaba provider calls for one
// zone holding n records it manages with its TXT registry (2n records):
// per run Records() = ceil(zones/50) DescribeZones + one DescribeZoneInfo
// per zone + ceil(2n/50) DescribeZoneRecords; ApplyChanges (only when the
// plan has changes) lists everything again; each record value is one
// AddZoneRecord, plus its TXT.
type edCalls struct {
	Reads, Writes int
	ApplyReads    int
}

func externalDNS(n int) (noDrift edCalls, initial edCalls) {
	list := 1 + 1 + (2*n+49)/50
	noDrift = edCalls{Reads: list}
	initial = edCalls{Reads: 1 + 1 + 0, ApplyReads: 1 + 1 + 0, Writes: 2 * n} // empty zone listed twice
	return
}

func (r *result) verdict() string {
	ratio := float64(r.Converge) / float64(r.Bound)
	if ratio <= 1.1 {
		return fmt.Sprintf("%.2f× the bound: target ≤ 1.1× met", ratio)
	}
	return fmt.Sprintf("%.2f× the bound: target ≤ 1.1× NOT met", ratio)
}

func (r *result) noDriftReads() (int, string) {
	total := 0
	var parts []string
	for _, a := range []string{"DescribeZones", "DescribeZoneInfo", "DescribeZoneVpcTree", "DescribeZoneRecords"} {
		if v := r.NoDriftReads[a]; v > 0 {
			total += v
			parts = append(parts, fmt.Sprintf("%d %s", v, a))
		}
	}
	return total, strings.Join(parts, " + ")
}

func (r *result) write(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	ed0, edInit := externalDNS(r.Config.Services)
	reads, detail := r.noDriftReads()
	fmt.Fprintf(tw, "services\t%d\n", r.Config.Services)
	fmt.Fprintf(tw, "write limit\t%.0f QPS per action (emulator), --qps %.0f (pvtz-sync)\n", r.Config.WriteQPS, r.Config.WriteQPS)
	fmt.Fprintf(tw, "converge\t%v (bound %v): %s\n", r.Converge.Round(time.Millisecond), r.Bound, r.verdict())
	fmt.Fprintf(tw, "initial calls\t%d writes, %d reads, %d throttled\n", r.InitialWrites, r.InitialReads, r.Throttled)
	fmt.Fprintf(tw, "no-drift reconcile\t%d writes, %d reads (%s), %v\n", r.NoDriftWrites, reads, detail, r.NoDriftDuration.Round(time.Millisecond))
	fmt.Fprintf(tw, "ExternalDNS (computed)\tno drift: %d reads, 0 writes; initial: %d writes (bound %v)\n", ed0.Reads, edInit.Writes,
		time.Duration(float64(edInit.Writes)/r.Config.WriteQPS*float64(time.Second)))
	tw.Flush()
}

func (r *result) markdown() string {
	var b strings.Builder
	ed0, edInit := externalDNS(r.Config.Services)
	reads, detail := r.noDriftReads()
	n := r.Config.Services
	fmt.Fprintf(&b, "%s\n## PrivateZone sync (`bin/pvtz-sync`)\n\n", SectionStart)
	fmt.Fprintf(&b, "_Generated by `test/bench/pvtzbench` on %s with `%s`; do not edit by hand between the `bench:pvtz` markers._\n\n",
		r.When.Format("2006-01-02 15:04 UTC"), r.Config.Command)
	fmt.Fprintf(&b, "%d ClusterIP Services in a real kube-apiserver; the PrivateZone emulator (`cloud/pvtz`, real SDK, signed requests) "+
		"answers `Throttling.User` above %.0f requests/s per action; `pvtz-sync --once --qps %.0f` from start to exit. "+
		"The bound is the API rate: %d records / %.0f writes/s = %v (PrivateZone has no batch record API).\n\n",
		n, r.Config.WriteQPS, r.Config.WriteQPS, n, r.Config.WriteQPS, r.Bound)
	fmt.Fprintf(&b, "| | pvtz-sync (measured) | ExternalDNS Alibaba provider (computed from its code) |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| time to converge | **%v** = %s | ≥ %v: %d writes (each A record plus its TXT registry record), no client-side rate limit, throttled writes are only logged (§2.5 of the reference) |\n",
		r.Converge.Round(time.Millisecond), r.verdict(), time.Duration(float64(edInit.Writes)/r.Config.WriteQPS*float64(time.Second)), edInit.Writes)
	fmt.Fprintf(&b, "| initial sync API calls | %d writes, %d reads, %d answered `Throttling.User` | %d writes, %d reads |\n",
		r.InitialWrites, r.InitialReads, r.Throttled, edInit.Writes, edInit.Reads+edInit.ApplyReads)
	fmt.Fprintf(&b, "| one reconcile without drift | **%d writes, %d reads** (%s) | 0 writes, %d reads (1 DescribeZones + 1 DescribeZoneInfo per zone + %d DescribeZoneRecords at PageSize 50 over %d records incl. TXT), every `--interval` |\n",
		r.NoDriftWrites, reads, detail, ed0.Reads, ed0.Reads-2, 2*n)
	fmt.Fprintf(&b, "| a change to one Service | writes for its own records, no listing (event-driven, `externaldns/e2e`) | a full listing (%d reads) twice, then the writes, at the next run |\n\n", ed0.Reads)
	fmt.Fprintf(&b, "Machine: %s. Processes not pinned (the emulator runs in the harness).\n\n%s\n", r.Machine, SectionEnd)
	return b.String()
}
