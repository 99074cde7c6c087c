// Command webhookbench measures ExternalDNS + bin/pvtz-webhook against the
// PrivateZone emulator: N ClusterIP Services (internal-hostname annotation)
// in a real kube-apiserver (test/cluster), ExternalDNS v0.22
// (--provider=webhook --registry=txt) run with --once against one
// long-running pvtz-webhook; the emulator limits every action to
// --write-qps (Throttling.User above it) and pvtz-webhook writes at the same
// --qps. It reports
//
//  1. the time from ExternalDNS's start to its exit with the zone converged
//     (N records + N TXT registry records), against the API-rate bound
//     2N / write-qps (PrivateZone has no batch record API);
//  2. the API calls of a run without drift (a second --once);
//
// beside what ExternalDNS's in-tree alibabacloud provider calls for the same
// zone, computed from its code (it hard-codes request.Domain
// "pvtz.aliyuncs.com" over HTTPS, so it cannot be pointed at the emulator
// without a TLS-intercepting proxy; see the reference, §2.3-2.5).
//
// ExternalDNS comes from the cache the e2e test fills
// ($DNSACCEL_CACHE/bin/external-dns-v0.22.0: run
// `go test ./externaldns/webhook/e2e` once) or -external-dns.
//
//	go run ./test/bench/webhookbench -out docs/benchmarks.md
//	go run ./test/bench/webhookbench -services 10000 -out ''
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz/pvtztest"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/test/bench"
	"github.com/dnsaccel/dnsaccel/test/cluster"
)

// Section markers in docs/benchmarks.md.
const (
	SectionStart = "<!-- bench:pvtzwebhook:start -->"
	SectionEnd   = "<!-- bench:pvtzwebhook:end -->"
)

const zone = "bench.internal"

type config struct {
	Services    int
	WriteQPS    float64
	ExternalDNS string
	Out         string
	Command     string
}

type result struct {
	Config        config
	When          time.Time
	Machine       string
	Converge      time.Duration
	Bound         time.Duration
	Records       int
	InitialWrites int
	InitialReads  int
	Throttled     int
	IdleCalls     map[string]int
	IdleWrites    int
	IdleDuration  time.Duration
	// The in-tree alibabacloud provider, run through intercept.
	InTree inTreeResult
}

type inTreeResult struct {
	Err                     string // why it was not measured
	Converge                time.Duration
	Runs                    int // --once runs until converged
	Converged               bool
	Records                 int
	Writes, Reads, Throttle int
	IdleCalls               map[string]int
	IdleWrites              int
	Failed                  int    // runs that exited non-zero
	LastFailure             string // the error code of the last one
}

// fatalCode picks the API error code out of ExternalDNS's fatal log line.
func fatalCode(out string) string {
	i := strings.LastIndex(out, "level=fatal")
	if i < 0 {
		return "exit status non-zero"
	}
	if j := strings.Index(out[i:], "ErrorCode: "); j >= 0 {
		code := out[i+j+len("ErrorCode: "):]
		if k := strings.IndexAny(code, "\\\n "); k >= 0 {
			code = code[:k]
		}
		return code
	}
	return "fatal"
}

func main() {
	cfg := config{}
	cache, _ := cluster.CacheDir()
	flag.IntVar(&cfg.Services, "services", 1000, "ClusterIP Services (one A record and one TXT registry record each)")
	flag.Float64Var(&cfg.WriteQPS, "write-qps", 50, "the emulator's per-action limit (Throttling.User above it) and pvtz-webhook's --qps")
	flag.StringVar(&cfg.ExternalDNS, "external-dns", filepath.Join(cache, "bin", "external-dns-v0.22.0"), "external-dns binary")
	flag.StringVar(&cfg.Out, "out", "docs/benchmarks.md", "markdown file whose pvtzwebhook section is replaced, relative to the repo root ('' = don't write)")
	flag.Parse()
	cfg.Command = "go run ./test/bench/webhookbench " + strings.Join(os.Args[1:], " ")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	res, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "webhookbench: %v\n", err)
		os.Exit(1)
	}
	res.write(os.Stdout)
	if cfg.Out != "" {
		root, err := bench.FindRepoRoot()
		if err == nil {
			err = bench.UpdateSection(filepath.Join(root, cfg.Out), SectionStart, SectionEnd, res.markdown())
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "webhookbench: %v\n", err)
			os.Exit(1)
		}
	}
}

func run(ctx context.Context, cfg config) (*result, error) {
	if _, err := os.Stat(cfg.ExternalDNS); err != nil {
		return nil, fmt.Errorf("external-dns: %w (build it with `go test ./externaldns/webhook/e2e`, or pass -external-dns)", err)
	}
	root, err := bench.FindRepoRoot()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "webhookbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	wh := filepath.Join(dir, "pvtz-webhook")
	b := exec.CommandContext(ctx, "go", "build", "-o", wh, "./cmd/pvtz-webhook")
	b.Dir, b.Env = root, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := b.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build pvtz-webhook: %v\n%s", err, out)
	}

	fmt.Fprintf(os.Stderr, "starting etcd + kube-apiserver...\n")
	c, err := cluster.Start(ctx, cluster.WithServiceCIDR("10.96.0.0/12"))
	if err != nil {
		return nil, fmt.Errorf("test cluster: %w", err)
	}
	defer c.Stop()
	ns := "webhookbench"
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
	admin, err := provider.New(provider.Config{Endpoint: emu.URL, Credential: credentials.NewStaticAKCredentialsProvider(pvtztest.AccessKeyID, pvtztest.AccessKeySecret)})
	if err != nil {
		return nil, err
	}
	zid, err := admin.CreateZone(ctx, zone, "vpc-bench", "cn-hangzhou")
	if err != nil {
		return nil, err
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"ALIBABA_CLOUD_ACCESS_KEY_ID=" + pvtztest.AccessKeyID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET=" + pvtztest.AccessKeySecret,
		"ALIBABA_CLOUD_ECS_METADATA_DISABLED=true"}
	listen, health := freeAddr(), freeAddr()
	// One POST /records carries the whole initial plan: ExternalDNS's
	// client timeout and the webhook's apply bound are raised together.
	applyTimeout := time.Duration(float64(2*cfg.Services)/cfg.WriteQPS*float64(time.Second))*2 + time.Minute
	whCmd := exec.CommandContext(ctx, wh, "--zone", zone, "--vpc-id", "vpc-bench", "--endpoint", emu.URL, "--qps", fmt.Sprint(cfg.WriteQPS),
		"--workers", "64", "--listen", listen, "--health", health, "--apply-timeout", applyTimeout.String(), "--log-format", "json", "--log-level", "warn")
	whCmd.Env = env
	var whErr strings.Builder
	whCmd.Stderr = &whErr
	whCmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := whCmd.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = syscall.Kill(-whCmd.Process.Pid, syscall.SIGTERM); _ = whCmd.Wait() }()
	if err := waitReady(ctx, "http://"+health+"/readyz"); err != nil {
		return nil, fmt.Errorf("pvtz-webhook: %v\n%s", err, whErr.String())
	}
	edArgs := []string{"--source=service", "--provider=webhook", "--webhook-provider-url=http://" + listen,
		"--webhook-provider-read-timeout=1m", "--webhook-provider-write-timeout=" + (applyTimeout + time.Minute).String(),
		"--registry=txt", "--txt-owner-id=bench", "--namespace=" + ns, "--kubeconfig=" + c.Kubeconfig, "--policy=sync", "--once",
		"--metrics-address=" + freeAddr()}

	res := &result{Config: cfg, When: time.Now().UTC(), Machine: fmt.Sprintf("%+v", bench.MachineInfo(ctx)),
		Bound: time.Duration(float64(2*cfg.Services) / cfg.WriteQPS * float64(time.Second))}
	fmt.Fprintf(os.Stderr, "initial sync, ExternalDNS --once (bound %v)...\n", res.Bound)
	before := emu.Server.Stats()
	t0 := time.Now()
	if err := runCmd(ctx, cfg.ExternalDNS, env, edArgs); err != nil {
		return nil, fmt.Errorf("initial sync: %w\npvtz-webhook: %s", err, tail(whErr.String()))
	}
	res.Converge = time.Since(t0)
	after := emu.Server.Stats()
	res.InitialWrites, res.InitialReads, res.Throttled = after.Writes-before.Writes, after.Reads-before.Reads, after.Throttled-before.Throttled
	recs, err := admin.Records(ctx, zid, "")
	if err != nil {
		return nil, err
	}
	res.Records = len(recs)

	fmt.Fprintf(os.Stderr, "run without drift...\n")
	before = emu.Server.Stats()
	t0 = time.Now()
	if err := runCmd(ctx, cfg.ExternalDNS, env, edArgs); err != nil {
		return nil, fmt.Errorf("second run: %w", err)
	}
	res.IdleDuration = time.Since(t0)
	after = emu.Server.Stats()
	res.IdleWrites = after.Writes - before.Writes
	res.IdleCalls = map[string]int{}
	for k, v := range after.ByAction {
		if d := v - before.ByAction[k]; d > 0 {
			res.IdleCalls[k] = d
		}
	}
	if res.Records != 2*cfg.Services {
		return res, fmt.Errorf("zone has %d records, want %d", res.Records, 2*cfg.Services)
	}
	fmt.Fprintf(os.Stderr, "in-tree alibabacloud provider, --once until converged...\n")
	res.InTree = runInTree(ctx, cfg, dir, env, c, ns)
	return res, nil
}

// runInTree runs ExternalDNS's in-tree provider (same module, same
// emulator configuration, same Services) with --once until the zone holds
// every record (at most 30 runs, as many intervals), then once more without
// drift.
func runInTree(ctx context.Context, cfg config, dir string, env []string, c *cluster.Cluster, ns string) inTreeResult {
	var r inTreeResult
	emu, err := pvtztest.StartErr(openapi.Config{ThrottleQPS: cfg.WriteQPS})
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer emu.Close()
	admin, err := provider.New(provider.Config{Endpoint: emu.URL, Credential: credentials.NewStaticAKCredentialsProvider(pvtztest.AccessKeyID, pvtztest.AccessKeySecret)})
	if err != nil {
		r.Err = err.Error()
		return r
	}
	zid, err := admin.CreateZone(ctx, zone, "vpc-bench", "cn-hangzhou")
	if err != nil {
		r.Err = err.Error()
		return r
	}
	ic, err := newIntercept(dir, emu.URL)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer ic.Close()
	cfgFile, err := inTreeConfig(dir, pvtztest.AccessKeyID, pvtztest.AccessKeySecret, "vpc-bench")
	if err != nil {
		r.Err = err.Error()
		return r
	}
	env = append(append([]string{}, env...), "HTTPS_PROXY="+ic.URL(), "SSL_CERT_FILE="+ic.caFile)
	args := []string{"--source=service", "--provider=alibabacloud", "--alibaba-cloud-zone-type=private", "--alibaba-cloud-config-file=" + cfgFile,
		"--registry=txt", "--txt-owner-id=bench", "--namespace=" + ns, "--kubeconfig=" + c.Kubeconfig, "--policy=sync", "--once",
		"--metrics-address=" + freeAddr()}
	before := emu.Server.Stats()
	t0 := time.Now()
	for r.Runs < 30 && ctx.Err() == nil {
		r.Runs++
		// A run that exits non-zero is what a Deployment restarts (a
		// non-soft error is fatal in ExternalDNS's loop too): counted, and
		// the next run goes on.
		if err := runCmd(ctx, cfg.ExternalDNS, env, args); err != nil {
			r.Failed++
			r.LastFailure = fatalCode(err.Error())
		}
		recs, err := admin.Records(ctx, zid, "")
		if err != nil {
			r.Err = err.Error()
			return r
		}
		r.Records = len(recs)
		if r.Records >= 2*cfg.Services {
			r.Converged = true
			break
		}
	}
	r.Converge = time.Since(t0)
	after := emu.Server.Stats()
	r.Writes, r.Reads, r.Throttle = after.Writes-before.Writes, after.Reads-before.Reads, after.Throttled-before.Throttled
	if !r.Converged {
		return r
	}
	before = emu.Server.Stats()
	if err := runCmd(ctx, cfg.ExternalDNS, env, args); err != nil {
		r.Err = fmt.Sprintf("run without drift: %s", fatalCode(err.Error()))
		return r
	}
	after = emu.Server.Stats()
	r.IdleWrites = after.Writes - before.Writes
	r.IdleCalls = map[string]int{}
	for k, v := range after.ByAction {
		if d := v - before.ByAction[k]; d > 0 {
			r.IdleCalls[k] = d
		}
	}
	return r
}

func sum(m map[string]int) (int, string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	total := 0
	var parts []string
	for _, k := range keys {
		total += m[k]
		parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
	}
	return total, strings.Join(parts, " + ")
}

func (it inTreeResult) summary(n int, qps float64) (converge, initial, idle string) {
	if it.Err != "" {
		return "not measured: " + it.Err, "", ""
	}
	if !it.Converged {
		converge = fmt.Sprintf("not converged after %d `--once` runs (%v): %d of %d records", it.Runs, it.Converge.Round(time.Millisecond), it.Records, 2*n)
	} else {
		converge = fmt.Sprintf("%v in %d `--once` runs = %.2f× the bound", it.Converge.Round(time.Millisecond), it.Runs,
			float64(it.Converge)/(float64(2*n)/qps*float64(time.Second)))
	}
	if it.Failed > 0 {
		converge += fmt.Sprintf("; %d runs exited 1 (`%s`: fatal in ExternalDNS, a crash loop in a Deployment)", it.Failed, it.LastFailure)
	}
	initial = fmt.Sprintf("%d writes, %d reads, %d answered `Throttling.User`", it.Writes, it.Reads, it.Throttle)
	idle = "not reached (it never converged)"
	if it.IdleCalls != nil {
		t, d := sum(it.IdleCalls)
		idle = fmt.Sprintf("%d writes, %d calls (%s)", it.IdleWrites, t, d)
	}
	return converge, initial, idle
}

func runCmd(ctx context.Context, bin string, env, args []string) error {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = io.Discard, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%v\n%s", err, tail(out.String()))
	}
	return nil
}

func tail(s string) string { return s[max(0, len(s)-3000):] }

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer l.Close()
	return l.Addr().String()
}

func waitReady(ctx context.Context, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond) // polling
	}
	return fmt.Errorf("%s not ready within 30s", url)
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
				name := fmt.Sprintf("svc-%05d", i)
				svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
					Annotations: map[string]string{"external-dns.kubernetes.io/internal-hostname": name + "." + zone}},
					Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
				if _, err := c.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
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

// inTree computes what ExternalDNS's alibabacloud provider calls for one
// private zone holding 2n records (n records + their TXT): Records() =
// ceil(zones/50) DescribeZones + one DescribeZoneInfo per zone +
// ceil(2n/50) DescribeZoneRecords, every interval; ApplyChanges lists
// everything again, then one AddZoneRecord per value, with no rate limit.
func inTree(n int) (idleReads, initialReads, initialWrites int) {
	idleReads = 1 + 1 + (2*n+49)/50
	initialReads = 2 * (1 + 1) // an empty zone, listed twice
	return idleReads, initialReads, 2 * n
}

func (r *result) ratio() float64 { return float64(r.Converge) / float64(r.Bound) }

func (r *result) verdict() string {
	if r.ratio() <= 1.1 {
		return fmt.Sprintf("%.2f× the bound: target ≤ 1.1× met", r.ratio())
	}
	return fmt.Sprintf("%.2f× the bound: target ≤ 1.1× NOT met", r.ratio())
}

func (r *result) idle() (int, string) { return sum(r.IdleCalls) }

func (r *result) write(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	idle, detail := r.idle()
	ir, _, iw := inTree(r.Config.Services)
	fmt.Fprintf(tw, "services\t%d (%d records with the TXT registry)\n", r.Config.Services, r.Records)
	fmt.Fprintf(tw, "write limit\t%.0f QPS per action (emulator), --qps %.0f (pvtz-webhook)\n", r.Config.WriteQPS, r.Config.WriteQPS)
	fmt.Fprintf(tw, "converge\t%v (bound %v): %s\n", r.Converge.Round(time.Millisecond), r.Bound, r.verdict())
	fmt.Fprintf(tw, "initial calls\t%d writes, %d reads, %d throttled\n", r.InitialWrites, r.InitialReads, r.Throttled)
	fmt.Fprintf(tw, "run without drift\t%d writes, %d calls (%s), %v\n", r.IdleWrites, idle, detail, r.IdleDuration.Round(time.Millisecond))
	fmt.Fprintf(tw, "in-tree alibabacloud (computed)\tno drift: %d reads, 0 writes; initial: %d writes, no rate limit\n", ir, iw)
	c, i, d := r.InTree.summary(r.Config.Services, r.Config.WriteQPS)
	fmt.Fprintf(tw, "in-tree alibabacloud (measured)\tconverge: %s; initial: %s; no drift: %s\n", c, i, d)
	tw.Flush()
}

func (r *result) markdown() string {
	var b strings.Builder
	n := r.Config.Services
	idle, detail := r.idle()
	ir, _, iw := inTree(n)
	fmt.Fprintf(&b, "%s\n## ExternalDNS + `bin/pvtz-webhook`\n\n", SectionStart)
	fmt.Fprintf(&b, "_Generated by `test/bench/webhookbench` on %s with `%s`; do not edit by hand between the `bench:pvtzwebhook` markers._\n\n",
		r.When.Format("2006-01-02 15:04 UTC"), r.Config.Command)
	fmt.Fprintf(&b, "%d ClusterIP Services with `external-dns.kubernetes.io/internal-hostname` in a real kube-apiserver; ExternalDNS %s "+
		"(`--provider=webhook --registry=txt --policy=sync --once`, built from `sigs.k8s.io/external-dns`) against one `pvtz-webhook --qps %.0f`; "+
		"the PrivateZone emulator answers `Throttling.User` above %.0f requests/s per action. The bound is the API rate: %d records "+
		"(each Service's A record and its TXT registry record) / %.0f writes/s = %v.\n\n",
		n, "v0.22.0", r.Config.WriteQPS, r.Config.WriteQPS, 2*n, r.Config.WriteQPS, r.Bound)
	c, i, d := r.InTree.summary(n, r.Config.WriteQPS)
	fmt.Fprintf(&b, "| | ExternalDNS + pvtz-webhook | ExternalDNS in-tree `alibabacloud` (measured) | in-tree, computed from its code |\n|---|---|---|---|\n")
	fmt.Fprintf(&b, "| time to converge | **%v** = %s | %s | ≥ %v (%d writes), no client-side rate limit: throttled writes are only logged |\n",
		r.Converge.Round(time.Millisecond), r.verdict(), c, time.Duration(float64(iw)/r.Config.WriteQPS*float64(time.Second)), iw)
	fmt.Fprintf(&b, "| API calls to converge | %d writes, %d reads, %d answered `Throttling.User` | %s | %d writes |\n", r.InitialWrites, r.InitialReads, r.Throttled, i, iw)
	fmt.Fprintf(&b, "| one run without drift | **%d writes, %d calls** (%s) | %s | 0 writes, %d reads (DescribeZones + DescribeZoneInfo + DescribeZoneRecords at PageSize 50 over %d records) |\n\n",
		r.IdleWrites, idle, detail, d, ir, 2*n)
	fmt.Fprintf(&b, "The in-tree provider always calls `https://pvtz.aliyuncs.com` (`request.Domain` is hard-coded): the harness gives it an "+
		"`HTTPS_PROXY` on loopback that terminates TLS with a certificate of its own CA (`SSL_CERT_FILE`) and forwards to an emulator "+
		"configured the same way; each `--once` run stands for one `--interval`. Machine: %s.\n\n%s\n", r.Machine, SectionEnd)
	return b.String()
}
