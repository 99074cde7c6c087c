package bench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dnsaccel/dnsaccel/test/cluster"
)

func TestParseDNSPerf(t *testing.T) {
	out := `Statistics:

  Queries sent:         489137
  Queries completed:    489000 (99.97%)
  Queries lost:         137 (0.03%)

  Response codes:       NOERROR 488990 (100.00%), SERVFAIL 10 (0.00%)
  Average packet size:  request 36, response 52
  Run time (s):         4.000313
  Queries per second:   122275.079369

  Average Latency (s):  0.000293 (min 0.000017, max 0.006140)
  Latency StdDev (s):   0.000101
`
	r, err := parseDNSPerf(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 489137 || r.Completed != 489000 || r.Lost != 137 || r.NoError != 488990 {
		t.Errorf("counts: %+v", r)
	}
	if r.QPS < 122275 || r.QPS > 122276 || r.AvgLat != 293*time.Microsecond {
		t.Errorf("rates: %+v", r)
	}
}

func TestUpdateDoc(t *testing.T) {
	path := filepath.Join(t.TempDir(), "benchmarks.md")
	sec := func(body string) string { return SectionStart + "\n" + body + "\n" + SectionEnd + "\n" }
	if err := UpdateDoc(path, sec("one")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	doc := string(b) + "\n<!-- bench:autopath:start -->\nother\n<!-- bench:autopath:end -->\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := UpdateDoc(path, sec("two")); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	got := string(b)
	if strings.Contains(got, "one") || !strings.Contains(got, "two") || !strings.Contains(got, "other") ||
		strings.Count(got, SectionStart) != 1 || !strings.HasPrefix(got, "# Benchmarks") {
		t.Errorf("unexpected document:\n%s", got)
	}
}

// TestQuickRun runs the harness in -quick mode against node-cache, unbound
// and stock CoreDNS and checks that it produces figures for each. Missing
// tools skip it outside CI and fail it under CI=true (make test installs
// them); stock CoreDNS is built when it is not cached.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	for _, tool := range []string{"dnsperf", "unbound", "taskset"} {
		if _, err := lookPath(tool); err != nil {
			cluster.SkipOrFail(t, "%s not installed (apt-get install -y dnsperf unbound)", tool)
		}
	}
	if len(onlineCPUs()) < 2 {
		cluster.SkipOrFail(t, "needs two CPUs")
	}
	root, err := findRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	nodeCache := filepath.Join(root, "bin", "node-cache")
	if _, err := os.Stat(nodeCache); err != nil {
		cluster.SkipOrFail(t, "%s missing: run `make build` first", nodeCache)
	}

	// Stock CoreDNS (also the upstream) is cached by `make bench` and by an
	// earlier run of this test; the build shares its packages with `make
	// build`, so only the stock plugins and the link are new.
	bctx, bcancel := context.WithTimeout(context.Background(), 10*time.Minute)
	coredns, err := ensureStockCoreDNS(bctx, root, t.Logf)
	bcancel()
	if err != nil {
		t.Fatalf("stock CoreDNS: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	cfg := DefaultConfig()
	cfg.Systems = []string{"node-cache", "unbound", "coredns"}
	cfg.NodeCache = nodeCache
	cfg.ApplyQuick()
	cfg.Duration = 1500 * time.Millisecond
	cfg.FixedDuration = 1500 * time.Millisecond
	cfg.LatDuration = 500 * time.Millisecond
	cfg.MissQueries = 200
	cfg.CoreDNS = coredns
	cfg.RepoRoot = root
	dir := t.TempDir()
	cfg.Out = filepath.Join(dir, "benchmarks.md")
	cfg.Plot = filepath.Join(dir, "bench-cpu.png")
	cfg.JSON = filepath.Join(dir, "bench.json")
	cfg.Log = testWriter{t}
	// Put the harness's temp dir (configs of every server) under our own dir,
	// so leftovers can be found by path afterwards.
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", tmp)

	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	rep.WriteTable(&sb)
	t.Log(sb.String())
	if err := rep.WriteOutputs(); err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != len(cfg.Systems) {
		t.Fatalf("got %d results, want %d", len(rep.Results), len(cfg.Systems))
	}
	for _, r := range rep.Results {
		if !r.OK() {
			t.Errorf("%s: skipped %q, error %q", r.Name, r.Skipped, r.Err)
			continue
		}
		if r.Max.QPS <= 0 || r.Max.NoError == 0 {
			t.Errorf("%s: no max-QPS figure: %+v", r.Name, r.Max)
		}
		if r.Fixed.QPS <= 0 || r.CPUPerAns <= 0 {
			t.Errorf("%s: no fixed-rate figures: %+v, %.2f µs/answer", r.Name, r.Fixed, r.CPUPerAns)
		}
		if r.Lat.Answers == 0 || r.Lat.P50 <= 0 || r.Miss.Answers == 0 || r.Miss.P50 <= 0 || r.Direct.P50 <= 0 {
			t.Errorf("%s: no latency figures: cached %+v, miss %+v, direct %+v", r.Name, r.Lat, r.Miss, r.Direct)
		}
	}
	for _, f := range []string{cfg.Out, cfg.Plot, cfg.JSON} {
		if st, err := os.Stat(f); err != nil || st.Size() == 0 {
			t.Errorf("output %s missing or empty: %v", f, err)
		}
	}
	b, _ := os.ReadFile(cfg.Out)
	if !strings.Contains(string(b), SectionStart) || !strings.Contains(string(b), "| unbound |") {
		t.Errorf("markdown lacks the results section:\n%s", b)
	}
	// Nothing may be left running.
	if out, _ := exec.Command("pgrep", "-af", tmp).Output(); len(out) > 0 {
		t.Errorf("processes left behind: %s", out)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		t.Errorf("temp files left behind in %s: %v", tmp, ents)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
