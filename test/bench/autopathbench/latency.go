package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/bench"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/netns"
)

const (
	latWithout = "without"
	latWith    = "with"
	latNoDNS   = "no DNS"         // localhost from the pod's /etc/hosts: the clients' own cost
	clientNS   = "apbench-client" // the netns pod's namespace
	captureN   = 10               // lookups whose queries are captured
)

// LatencyRun is one configuration of the latency part.
type LatencyRun struct {
	Name string `json:"name"`
	// Queries is the number of DNS queries the pod put on the wire per
	// lookup (tcpdump on its veth, over captureN lookups); Sample lists
	// one lookup's.
	Queries float64  `json:"queries_per_lookup"`
	Sample  []string `json:"sample_queries"`
	Getent  Stats    `json:"getent"`
	Go      Stats    `json:"go_resolver"`
	// Upstream is how many queries reached the authoritative server during
	// the timed lookups (0: the cache was warm).
	Upstream int64 `json:"upstream_queries"`
	// Hits is k8s_autopath's hits_total per timed lookup.
	Hits float64 `json:"autopath_hits_per_lookup"`
}

// Stats summarises lookup wall times.
type Stats struct {
	N    int           `json:"n"`
	P50  time.Duration `json:"p50"`
	P90  time.Duration `json:"p90"`
	P99  time.Duration `json:"p99"`
	Mean time.Duration `json:"mean"`
	raw  []time.Duration
}

func summarize(ds []time.Duration) Stats {
	s := Stats{N: len(ds), raw: ds}
	if len(ds) == 0 {
		return s
	}
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	q := func(p float64) time.Duration {
		return sorted[max(0, int(math.Ceil(p*float64(len(sorted))))-1)]
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	s.P50, s.P90, s.P99, s.Mean = q(0.50), q(0.90), q(0.99), sum/time.Duration(len(ds))
	return s
}

// latCorefile is bin/coredns as a node-local cache on the pod's gateway
// address, with or without k8s_autopath.
func latCorefile(hostIP, metricsAddr, kubeconfig, upstream string, autopath bool) string {
	ap := ""
	if autopath {
		ap = fmt.Sprintf("    k8s_autopath cluster.local {\n        kubeconfig %s\n        search\n    }\n", kubeconfig)
	}
	return fmt.Sprintf("cluster.local:53 in-addr.arpa:53 {\n    bind %[1]s\n    prometheus %[2]s\n%[3]s    nodecache %[4]s\n}\n"+
		".:53 {\n    bind %[1]s\n    prometheus %[2]s\n    nodecache %[4]s\n}\n", hostIP, metricsAddr, ap, upstream)
}

// measureLatency times a pod's lookups of an external name through a warm
// node-local cache, without and with k8s_autopath, alternating in rounds.
func measureLatency(ctx context.Context, e *env) ([]LatencyRun, error) {
	if err := netns.Check(); err != nil {
		return nil, err
	}
	if _, err := bench.LookPath("tcpdump"); err != nil {
		return nil, fmt.Errorf("tcpdump is required (make deps): %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cs := e.cluster.Client
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: clientNS}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating namespace %s: %w", clientNS, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cluster.DeleteNamespace(dctx, cs, clientNS); err != nil {
			logf("latency: deleting namespace %s: %v", clientNS, err)
		}
	}()
	pod, err := netns.New(ctx, netns.Options{Namespace: clientNS, Client: cs})
	if err != nil {
		return nil, fmt.Errorf("netns pod: %w", err)
	}
	defer func() {
		if err := pod.Close(); err != nil {
			logf("latency: removing netns pod %s: %v", pod.Name, err)
		}
	}()
	logf("latency: pod %s (%s, namespace %s), node-local cache on %s:53", pod.Name, pod.IP, clientNS, pod.HostIP)
	auth, err := startAuth(e.ports)
	if err != nil {
		return nil, err
	}
	defer auth.stop()

	// The harness, the pod's lookups and the authoritative server (idle
	// once the cache is warm) on the load core, bin/coredns on the server core.
	restore, err := bench.PinSelf(e.cfg.LoadCPU)
	if err != nil {
		return nil, err
	}
	defer restore()

	loopName := func(mode string, n int, name, want string) ([]time.Duration, error) {
		out, err := pod.Exec(ctx, exe, podLoopCmd, "-mode", mode, "-n", strconv.Itoa(n), "-name", name, "-want", want)
		if err != nil {
			return nil, err
		}
		var ds []time.Duration
		for _, l := range strings.Fields(string(out)) {
			v, err := strconv.ParseInt(l, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("lookup loop output %q: %w", l, err)
			}
			ds = append(ds, time.Duration(v))
		}
		if len(ds) != n {
			return nil, fmt.Errorf("lookup loop: %d timings, want %d", len(ds), n)
		}
		return ds, nil
	}
	loop := func(mode string, n int) ([]time.Duration, error) {
		return loopName(mode, n, strings.TrimSuffix(extName, "."), extA)
	}

	runs := []*LatencyRun{{Name: latWithout}, {Name: latWith}}
	rounds := max(1, e.cfg.Rounds)
	per := max(1, e.cfg.Lookups/rounds)
	getent := map[string][]time.Duration{}
	gores := map[string][]time.Duration{}
	hits := map[string]float64{}
	for round := range rounds {
		for _, run := range runs {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			withAP := run.Name == latWith
			mp, err := e.ports.Get()
			if err != nil {
				return nil, err
			}
			metricsAddr := fmt.Sprintf("127.0.0.1:%d", mp)
			p, err := e.startCoreDNS("latency-"+run.Name, latCorefile(pod.HostIP.String(), metricsAddr, e.kubeconfig, auth.addr, withAP))
			if err != nil {
				return nil, err
			}
			err = func() error {
				defer p.Stop()
				server := pod.HostIP.String() + ":53"
				err := pollUntil(ctx, p, time.Minute, 100*time.Millisecond, "coredns on "+server, func() (bool, error) {
					if withAP {
						m, err := scrape(ctx, metricsAddr)
						if err != nil {
							return false, err
						}
						if m["coredns_k8s_autopath_index_synced"] < 1 || m["coredns_k8s_autopath_index_pods"] < 1 {
							return false, fmt.Errorf("pod index not synced")
						}
					}
					m, err := ask(ctx, server, extName, dns.TypeA)
					if err != nil {
						return false, err
					}
					return m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0, fmt.Errorf("%s: %s", extName, dns.RcodeToString[m.Rcode])
				})
				if err != nil {
					return err
				}
				// Warm up: every name either configuration asks is cached.
				for _, mode := range []string{"getent", "go"} {
					if _, err := loop(mode, 3); err != nil {
						return fmt.Errorf("warm-up: %w", err)
					}
				}
				if round == 0 {
					capt, err := pod.CaptureDNS(ctx)
					if err != nil {
						return err
					}
					_, lerr := loop("getent", captureN)
					qs := capt.Stop()
					if lerr != nil {
						return lerr
					}
					run.Queries = float64(len(qs)) / captureN
					for _, q := range qs[:len(qs)/captureN] {
						run.Sample = append(run.Sample, q.String())
					}
				}
				up0 := auth.asked.Load()
				m0, err := scrape(ctx, metricsAddr)
				if err != nil {
					return err
				}
				g, err := loop("getent", per)
				if err != nil {
					return err
				}
				gr, err := loop("go", per)
				if err != nil {
					return err
				}
				m1, err := scrape(ctx, metricsAddr)
				if err != nil {
					return err
				}
				run.Upstream += auth.asked.Load() - up0
				getent[run.Name] = append(getent[run.Name], g...)
				gores[run.Name] = append(gores[run.Name], gr...)
				hits[run.Name] += m1["coredns_k8s_autopath_hits_total"] - m0["coredns_k8s_autopath_hits_total"]
				if p.Exited() {
					return p.ExitError()
				}
				return nil
			}()
			if err != nil {
				return nil, fmt.Errorf("%s k8s_autopath, round %d: %w", run.Name, round+1, err)
			}
		}
		// The clients' own cost: a name from the pod's /etc/hosts, no DNS.
		for _, mode := range []string{"getent", "go"} {
			ds, err := loopName(mode, per, "localhost", "127.0.0.1")
			if err != nil {
				return nil, fmt.Errorf("no-DNS lookups: %w", err)
			}
			if mode == "getent" {
				getent[latNoDNS] = append(getent[latNoDNS], ds...)
			} else {
				gores[latNoDNS] = append(gores[latNoDNS], ds...)
			}
		}
		logf("latency: round %d of %d done (%d lookups per configuration and client)", round+1, rounds, per)
	}
	var out []LatencyRun
	for _, run := range append(runs, &LatencyRun{Name: latNoDNS}) {
		run.Getent, run.Go = summarize(getent[run.Name]), summarize(gores[run.Name])
		if n := run.Getent.N + run.Go.N; n > 0 {
			run.Hits = hits[run.Name] / float64(n)
		}
		logf("latency: %-7s k8s_autopath: %.1f queries/lookup, getent p50 %s p90 %s, Go resolver p50 %s p90 %s, %d upstream queries",
			run.Name, run.Queries, run.Getent.P50, run.Getent.P90, run.Go.P50, run.Go.P90, run.Upstream)
		out = append(out, *run)
	}
	return out, nil
}
