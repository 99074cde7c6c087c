// Command datapath-agent is dnsaccel's node Service datapath, a DaemonSet
// replacing kube-proxy: Services are load-balanced in eBPF at the pods'
// sockets (datapath/lb), programmed from the API (svcagent).
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"github.com/dnsaccel/dnsaccel/datapath/lb"
	"github.com/dnsaccel/dnsaccel/datapath/policy"
	"github.com/dnsaccel/dnsaccel/internal/logging"
	"github.com/dnsaccel/dnsaccel/policyagent"
	"github.com/dnsaccel/dnsaccel/svcagent"
)

func main() { os.Exit(run()) }

func run() int {
	fs := pflag.NewFlagSet("datapath-agent", pflag.ContinueOnError)
	var logOpts logging.Options
	logOpts.AddFlags(fs)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the API server (default: the in-cluster service account)")
	nodeName := fs.String("node-name", os.Getenv("NODE_NAME"), "this node's name: endpoints on it are local for internalTrafficPolicy/externalTrafficPolicy Local, and its addresses carry NodePorts (default: $NODE_NAME)")
	cgroup := fs.String("cgroup", "", "cgroup v2 directory the socket programs attach to; every socket of a process in it or below is load-balanced (default: the cgroup v2 mount, detected)")
	bpffs := fs.String("bpffs", "/sys/fs/bpf", "bpf file system; programs, links and maps are pinned under PATH/dnsaccel (mounted if PATH is not one)")
	mode := fs.String("lb-mode", "both", "where Services are load-balanced: socket (cgroup programs at pods' and the node's sockets), tc (per packet at pods' interfaces, for what sockets cannot see), both")
	npAddrs := fs.StringSlice("nodeport-addresses", nil, "CIDR,...: NodePorts open on the node's interface addresses within these prefixes (default: the Node object's InternalIP and ExternalIP addresses)")
	metricsAddr := fs.String("metrics", ":10249", "ADDR serving Prometheus /metrics (empty: off)")
	healthAddr := fs.String("health", ":10256", "ADDR serving /healthz (liveness) and /readyz (readiness: the first full sync is programmed) (empty: off)")
	cleanup := fs.Bool("cleanup", false, "remove every eBPF program, link, map and pin the agent created (under --bpffs), then exit 0; kube-proxy can take over again")
	maxSvc := fs.Int("max-service-entries", lb.DefaultMaxServiceEntries, "size of the eBPF Service table: one entry per frontend (Service IP, port, protocol) plus one per backend of it")
	maxBE := fs.Int("max-backends", lb.DefaultMaxBackends, "size of the eBPF backend table: one entry per frontend and backend")
	// NetworkPolicy (issue #24): policyagent.
	policies := fs.Bool("policies", true, "enforce NetworkPolicies in eBPF at the pods' interfaces (policyagent)")
	policyAudit := fs.Bool("policy-audit", false, "with --policies: log and count (dnsaccel_policy_drops_total) what NetworkPolicies would drop, drop nothing")
	nodeDNS := fs.StringSlice("policy-node-dns", []string{"169.254.20.10"}, "ADDR,...: node-cache's local addresses; DNS steered there is allowed by every policy that allows DNS to the kube-dns pods")
	maxAff := fs.Int("max-affinity", lb.DefaultMaxAffinity, "size of the sessionAffinity table (clients x Services with ClientIP affinity, least recently used evicted)")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: datapath-agent [flags]\n\n"+
			"Load-balances Kubernetes Services in eBPF on this node, replacing kube-proxy: ClusterIP,\n"+
			"NodePort, externalIPs and LoadBalancer ingress IPs, TCP and UDP, IPv4 and IPv6, with\n"+
			"sessionAffinity ClientIP and the traffic policies. Connections to a Service without\n"+
			"endpoints are refused at once. Cooperates with node-cache's DNS steering (same --bpffs).\n"+
			"Also enforces NetworkPolicies in eBPF at the pods' interfaces (--policies, --policy-audit).\n\n"+
			"  datapath-agent --kubeconfig ~/.kube/config --node-name $(hostname)\n"+
			"  datapath-agent --cleanup\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return 2
	}
	log, err := logOpts.New()
	if err != nil {
		fmt.Fprintf(os.Stderr, "datapath-agent: %v\n", err)
		return 2
	}
	fail := func(msg string, args ...any) int { log.Error(msg, args...); return 2 }

	if *cleanup {
		if err := errors.Join(lb.Cleanup(*bpffs), policy.Cleanup(policyagent.PinDir(*bpffs))); err != nil {
			return fail("cleanup", "err", err)
		}
		log.Info("removed every program, link, map and pin of the Service datapath", "bpffs", *bpffs)
		return 0
	}
	socketLB, packetLB := false, false
	switch *mode {
	case "socket":
		socketLB = true
	case "both":
		socketLB, packetLB = true, true
	case "tc":
		packetLB = true
	default:
		return fail("invalid configuration", "err", fmt.Sprintf("--lb-mode %q: want socket, tc or both", *mode))
	}
	var cidrs []netip.Prefix
	for _, s := range *npAddrs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fail("invalid configuration", "err", fmt.Sprintf("--nodeport-addresses %q: %v", s, err))
		}
		cidrs = append(cidrs, p.Masked())
	}
	if *nodeName == "" {
		log.Warn("no --node-name (or $NODE_NAME): no endpoint is local (traffic policy Local drops everything) and NodePorts open only with --nodeport-addresses")
	}

	restCfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fail("kubeconfig", "err", err)
	}
	restCfg.QPS, restCfg.Burst = 50, 100
	restCfg.UserAgent = "datapath-agent"
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fail("kubernetes client", "err", err)
	}

	tbl, err := lb.Open(lb.Options{Cgroup: *cgroup, BPFFS: *bpffs, MaxServiceEntries: *maxSvc, MaxBackends: *maxBE, MaxAffinity: *maxAff, NoSocket: !socketLB})
	if err != nil {
		return fail("attaching the Service load balancer", "err", err)
	}
	defer tbl.Close()
	if n := len(tbl.Services()); n > 0 || tbl.Adopted() > 0 {
		log.Info("adopted the pinned Service datapath", "links", tbl.Adopted(), "frontends", n, "replaced_maps", fmt.Sprint(tbl.Replaced()))
	}

	bc := record.NewBroadcaster()
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer bc.Shutdown()
	recorder := bc.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "datapath-agent", Host: *nodeName})

	metrics := svcagent.NewMetrics()
	metrics.Registry.MustRegister(svcagent.StatsCollector{Read: func() (map[string]uint64, error) {
		st, err := tbl.Stats()
		out := map[string]uint64{}
		for k, v := range st {
			out[lb.StatNames[k]] = v
		}
		return out, err
	}})
	agent, err := svcagent.New(svcagent.Config{Client: client, Table: tbl, NodeName: *nodeName, NodePortCIDRs: cidrs,
		Recorder: recorder, Metrics: metrics, Logger: log})
	if err != nil {
		return fail("invalid configuration", "err", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var servers []*http.Server
	serve := func(addr string, mux *http.ServeMux, what string) {
		if addr == "" {
			return
		}
		hs := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, hs)
		go func() {
			if err := hs.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error(what+" server", "addr", addr, "err", err)
				stop()
			}
		}()
	}
	mm := http.NewServeMux()
	mm.Handle("/metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}))
	serve(*metricsAddr, mm, "metrics")
	hm := http.NewServeMux()
	hm.HandleFunc("/healthz", agent.Healthz)
	hm.HandleFunc("/readyz", agent.Readyz)
	serve(*healthAddr, hm, "health")
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		for _, hs := range servers {
			_ = hs.Shutdown(sctx)
		}
	}()

	log.Info("starting", "node", *nodeName, "lb_mode", *mode, "cgroup", tbl.Options().Cgroup, "bpffs", *bpffs,
		"nodeport_addresses", fmt.Sprint(cidrs), "metrics", *metricsAddr, "health", *healthAddr)
	if *policies {
		if _, err := policyagent.Start(ctx, policyagent.Config{Client: client, NodeName: *nodeName, BPFFS: *bpffs,
			Audit: *policyAudit, NodeDNS: parseAddrs(*nodeDNS), Registry: metrics.Registry, Logger: log}); err != nil {
			return fail("starting the NetworkPolicy datapath", "err", err)
		}
	}
	if packetLB {
		go svcagent.AttachInterfaces(ctx, tbl, agent.NodePortAddrs, log)
	}
	if err := agent.Run(ctx); err != nil && ctx.Err() == nil {
		log.Error("stopped", "err", err)
		return 1
	}
	// The programs and maps stay pinned: Services keep working until the
	// next agent adopts them (or --cleanup removes them).
	log.Info("stopped; the Service datapath stays attached")
	return 0
}

// parseAddrs parses --policy-node-dns (bad entries are skipped).
func parseAddrs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}
