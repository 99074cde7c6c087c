package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dnsaccel/dnsaccel/test/bench"
)

// The whole benchmark needs a minute or more (API server, thousands of pods,
// a netns pod): `make bench` runs it; `go run ./test/bench/autopathbench
// -quick -out ''` is the smoke run. These tests cover the cheap parts.

func TestScrape(t *testing.T) {
	body := `# HELP go_memstats_heap_inuse_bytes x
go_memstats_heap_inuse_bytes 5.824512e+06
coredns_k8s_autopath_index_pods{node="*"} 10000
coredns_k8s_autopath_hits_total{server="dns://10.245.0.1:53"} 3
coredns_k8s_autopath_hits_total{server="dns://10.245.0.2:53",x="a}b"} 4
`
	m := parseMetrics(body)
	for k, want := range map[string]float64{
		"go_memstats_heap_inuse_bytes":    5824512,
		"coredns_k8s_autopath_index_pods": 10000,
		"coredns_k8s_autopath_hits_total": 7,
	} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
}

func TestSummarize(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	s := summarize(ds)
	if s.N != 100 || s.P50 != 50*time.Millisecond || s.P90 != 90*time.Millisecond || s.P99 != 99*time.Millisecond {
		t.Errorf("summarize: %+v", s)
	}
}

func TestPodNames(t *testing.T) {
	p := &population{namespaces: 50, podsPerService: 10, pods: 70000, services: 7000}
	if got := podIP(65535); got != "10.129.0.0" {
		t.Errorf("podIP(65535) = %s", got)
	}
	if got, want := p.lastPod(), "10-129-17-112."+nsName(6999%50)+".pod.cluster.local."; got != want {
		t.Errorf("lastPod = %s, want %s", got, want)
	}
	if got, want := p.lastService(), "app-6999."+nsName(6999%50)+".svc.cluster.local."; got != want {
		t.Errorf("lastService = %s, want %s", got, want)
	}
	seen := map[string]bool{}
	for i := range 2000 {
		o := p.podOptions(i)
		if seen[o.Namespace+"/"+o.Name] {
			t.Fatalf("duplicate pod %s/%s", o.Namespace, o.Name)
		}
		seen[o.Namespace+"/"+o.Name] = true
	}
}

// TestMarkdown renders a report into a document that also holds the cache
// section, which must survive.
func TestMarkdown(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Command = "go run ./test/bench/autopathbench -out docs/benchmarks.md"
	mb := func(v float64) int64 { return int64(v * (1 << 20)) }
	rep := &Report{Start: time.Now(), Config: cfg, Memory: []SizeResult{{
		Pods: 10000, Services: 1000, Namespaces: 50,
		Runs: []MemRun{
			{Name: sysBaseline, HeapInuse: mb(6), RSS: mb(60), PeakRSS: mb(61)},
			{Name: sysAutopath, HeapInuse: mb(10), RSS: mb(70), PeakRSS: mb(190), Settle: 12 * time.Second},
			{Name: sysPodsVerified, HeapInuse: mb(30), RSS: mb(90), PeakRSS: mb(200)},
			{Name: sysKubernetes, Err: "boom\nmore"},
		},
	}}, Latency: []LatencyRun{
		{Name: latWithout, Queries: 8, Sample: []string{"A www.example.com.ns.svc.cluster.local."}},
		{Name: latWith, Queries: 2},
	}}
	md := rep.Markdown()
	for _, want := range []string{SectionStart, SectionEnd, "| 10000 | 1000 | **`k8s_autopath` (cluster-wide)** |", "+4.0 MiB", "| 0.17 |",
		"failed: boom", "**with**", "2.0 vs 8.0 | met", cfg.Command} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	path := filepath.Join(t.TempDir(), "benchmarks.md")
	cache := bench.SectionStart + "\ncache figures\n" + bench.SectionEnd + "\n"
	if err := bench.UpdateSection(path, bench.SectionStart, bench.SectionEnd, cache); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		rep.Config.Out = path
		if err := rep.WriteOutputs(); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(path)
	doc := string(b)
	if strings.Count(doc, SectionStart) != 1 || !strings.Contains(doc, "cache figures") || !strings.HasPrefix(doc, "# Benchmarks") {
		t.Errorf("unexpected document:\n%s", doc)
	}
}
