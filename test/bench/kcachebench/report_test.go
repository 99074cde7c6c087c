package main

import (
	"strings"
	"testing"
	"time"

	"github.com/dnsaccel/dnsaccel/test/bench"
)

var (
	c1Batch = Load{Clients: 1, Batch: true}
	c4      = Load{Clients: 4}
)

// fixedRun is a run whose node CPU per answer is nodeUS, over 1000 answers.
func fixedRun(round int, load Load, nodeUS float64) FixedRun {
	return FixedRun{Round: round, Load: load, Perf: bench.PerfResult{Sent: 1000, Completed: 1000, NoError: 1000, QPS: 30000},
		NodeCPU: time.Duration(nodeUS * 1000 * float64(time.Microsecond)), PerfSwitches: 1500}
}

func testReport() *Report {
	cfg := DefaultConfig()
	cfg.Systems = []string{SysKernel, SysUnbound}
	cfg.Loads = []Load{c1Batch, c4}
	cfg.Rounds = 3
	k := Result{System: SysKernel, Label: "kernel path"}
	u := Result{System: SysUnbound, Label: "unbound"}
	// Round 2 is slow for both: paired ratios 0.3, 0.5, 0.35 at -c 1,
	// while the ratio of the medians would be 9/30 = 0.3.
	for round, v := range [][2]float64{{9, 30}, {20, 40}, {7, 20}} {
		k.Fixed = append(k.Fixed, fixedRun(round, c1Batch, v[0]), fixedRun(round, c4, 2*v[0]))
		u.Fixed = append(u.Fixed, fixedRun(round, c1Batch, v[1]), fixedRun(round, c4, v[1]))
	}
	return &Report{Config: cfg, Results: []Result{k, u}}
}

func TestRatioIsMedianOfRounds(t *testing.T) {
	rep := testReport()
	tests := []struct {
		load        Load
		med, lo, hi float64
	}{
		{c1Batch, 0.35, 0.3, 0.5},
		{c4, 0.7, 0.6, 1.0},
	}
	for _, tt := range tests {
		med, lo, hi, n := rep.ratio(tt.load)
		if n != 3 || !near(med, tt.med) || !near(lo, tt.lo) || !near(hi, tt.hi) {
			t.Errorf("%s: ratio %.3f (%.3f–%.3f) rounds=%d, want %.3f (%.3f–%.3f) of 3", tt.load, med, lo, hi, n, tt.med, tt.lo, tt.hi)
		}
	}
	if got := rep.Results[0].NodeCPUPerAns(c1Batch); !near(got, 9) {
		t.Errorf("kernel median node CPU = %.2f, want 9", got)
	}
	ts := rep.targets()
	if !strings.HasPrefix(ts[0].value, "0.35×") || ts[0].verdict != "met" {
		t.Errorf("headline target = %+v, want 0.35× met", ts[0])
	}
	if !strings.Contains(ts[1].what, "-c 4") || ts[1].verdict == "met" {
		t.Errorf("-c 4 target = %+v, want not met", ts[1])
	}
}

func TestRatioNeedsBothSystems(t *testing.T) {
	rep := testReport()
	rep.Results[1].Err = "unbound failed"
	if _, _, _, n := rep.ratio(c1Batch); n != 0 {
		t.Fatal("ratio without unbound")
	}
	if ts := rep.targets(); !strings.Contains(ts[0].verdict, "not measured") {
		t.Errorf("target without unbound = %+v", ts[0])
	}
}

func TestRunOrderFollowsTurns(t *testing.T) {
	rep := testReport()
	var got []string
	for _, f := range rep.runOrder() {
		got = append(got, f.system[:1]+string(rune('0'+f.Round))+string(rune('0'+f.Load.Clients)))
	}
	// Round 0 starts with the kernel path, round 1 with unbound, round 2
	// with the kernel path again; each system runs -c 1 then -c 4.
	want := "k01 k04 u01 u04 u11 u14 k11 k14 k21 k24 u21 u24"
	if strings.Join(got, " ") != want {
		t.Errorf("run order %s, want %s", strings.Join(got, " "), want)
	}
}

func TestMarkdownListsEveryRun(t *testing.T) {
	rep := testReport()
	md := rep.Markdown("")
	if n := strings.Count(md, "| 30000 | 0 |"); n != 12 {
		t.Errorf("per-run table has %d rows, want 12", n)
	}
	for _, want := range []string{SectionStart, SectionEnd, "0.35×, median of 3 rounds (0.30–0.50)", "1.50 at -c 1, SCHED_BATCH"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
}

func TestParseLoads(t *testing.T) {
	got, err := ParseLoads("1/batch, 1,4")
	want := []Load{c1Batch, {Clients: 1}, c4}
	if err != nil || len(got) != len(want) {
		t.Fatalf("ParseLoads = %v, %v; want %v", got, err, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("load %d = %v, want %v", i, got[i], want[i])
		}
	}
	if s := FlagLoads(got); s != "1/batch,1,4" {
		t.Errorf("FlagLoads = %q", s)
	}
	for _, bad := range []string{"", "0", "x", "1/fifo", "-2/batch"} {
		if _, err := ParseLoads(bad); err == nil {
			t.Errorf("ParseLoads(%q) accepted", bad)
		}
	}
}

func TestP99IsMedianOfRounds(t *testing.T) {
	rep := testReport()
	k := &rep.Results[0]
	for round, p99 := range []time.Duration{12, 90, 20} {
		k.Lats = append(k.Lats, LatRun{Round: round, Lat: bench.LatResult{Sent: 100, P50: 6 * time.Microsecond, P99: p99 * time.Microsecond}})
	}
	med, lo, hi := k.P99()
	if med != 20*time.Microsecond || lo != 12*time.Microsecond || hi != 90*time.Microsecond {
		t.Errorf("P99 = %v (%v–%v), want 20µs (12µs–90µs)", med, lo, hi)
	}
	if tg := rep.p99Target(*k); tg.verdict != "met" || !strings.HasPrefix(tg.value, "20 µs, median of 3 rounds (12–90)") {
		t.Errorf("p99 target = %+v", tg)
	}
	k.Lats[2].Lat.P99 = 31 * time.Microsecond
	if tg := rep.p99Target(*k); tg.verdict == "met" {
		t.Errorf("p99 target with a 31 µs median = %+v, want not met", tg)
	}
	k.Lats = nil
	if tg := rep.p99Target(*k); tg.verdict == "met" {
		t.Errorf("p99 target without latency runs = %+v, want not met", tg)
	}
}

func TestRoundOrderPairsKernelAndUnbound(t *testing.T) {
	systems := []string{SysKernel, SysNodeCache, SysUnbound, SysCoreDNS}
	want := [][]int{{0, 2, 1, 3}, {1, 2, 0, 3}, {2, 0, 3, 1}, {3, 0, 2, 1}, {0, 2, 1, 3}}
	for round, w := range want {
		got := roundOrder(systems, round)
		if len(got) != len(w) {
			t.Fatalf("round %d: %v, want %v", round, got, w)
		}
		for i := range w {
			if got[i] != w[i] {
				t.Errorf("round %d: %v, want %v", round, got, w)
				break
			}
		}
	}
	if got := roundOrder([]string{SysNodeCache, SysCoreDNS}, 1); len(got) != 2 || got[0] != 1 || got[1] != 0 {
		t.Errorf("without the pair: %v, want [1 0]", got)
	}
}

func TestMedian(t *testing.T) {
	for _, tt := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
