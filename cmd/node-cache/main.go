// Command node-cache is dnsaccel's node-local DNS cache: CoreDNS with the
// nodecache plugin, run as a DaemonSet on every node.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/dnsaccel/dnsaccel/datapath/notrack"
	"github.com/dnsaccel/dnsaccel/nodecache"

	"github.com/dnsaccel/dnsaccel/internal/logging"
)

func main() {
	var cfg nodecache.Config
	fs := pflag.NewFlagSet("node-cache", pflag.ContinueOnError)
	var logOpts logging.Options
	logOpts.AddFlags(fs)
	fs.StringArrayVar(&cfg.Listen, "listen", []string{"127.0.0.1:53"}, "IP:PORT the cache answers DNS on (UDP and TCP); repeatable")
	fs.StringArrayVar(&cfg.Upstreams, "upstream", nil, "IP:PORT of a resolver the cache forwards misses to (in Kubernetes mode: those outside the cluster zones), over TCP; repeatable (default: the nameservers of --resolv-conf)")
	fs.StringVar(&cfg.Conf, "conf", "", "run this Corefile instead of the one generated from --listen and --upstream")
	fs.StringVar(&cfg.Metrics, "metrics", ":9253", "ADDR serving Prometheus /metrics (empty: off)")
	fs.StringVar(&cfg.Health, "health", ":8080", "ADDR serving /healthz (liveness: the process) and /readyz (readiness: CoreDNS answers node-cache's own serving probes, and with steering the heartbeat is fresh) (empty: off); /health and /ready are aliases, as node-local-dns names them")
	version := fs.Bool("version", false, "print the version and exit")
	resolvConf := fs.String("resolv-conf", "/etc/resolv.conf", "where the default upstreams and the node's search domains are read from")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the API server (default: the in-cluster service account when running in a pod); with either, node-cache runs in Kubernetes mode")
	fs.StringVar(&cfg.NodeName, "node-name", "", "this node's name: k8s_autopath indexes only the pods scheduled here (default: $NODE_NAME; empty: every pod)")
	fs.StringVar(&cfg.ClusterDomain, "cluster-domain", "cluster.local", "Kubernetes mode: the cluster's DNS domain; it, in-addr.arpa and ip6.arpa go to --cluster-upstream, with k8s_autopath")
	fs.StringArrayVar(&cfg.ClusterUpstreams, "cluster-upstream", nil, "Kubernetes mode: IP:PORT of the cluster DNS, over TCP; repeatable (default: the ClusterIP(s) of Service kube-system/kube-dns-upstream, else kube-system/kube-dns, looked up at start)")
	printConfig := fs.Bool("print-config", false, "print the Corefile node-cache would run (after defaults and the Service lookup) and exit")
	fs.StringArrayVar(&cfg.Steer.LocalIPs, "local-ip", []string{nodecache.DefaultLocalIP}, "steering: the cache's own address, served on port 53 and set up on --interface; repeatable (one per IP family)")
	fs.StringVar(&cfg.Steer.Interface, "interface", "", "steering: the device --local-ip goes on (default: "+nodecache.DummyInterface+", a dummy device, where the kernel has the dummy driver; else lo)")
	fs.StringArrayVar(&cfg.Steer.ClusterDNS, "cluster-dns", nil, "steering: IP of the cluster DNS Service (the VIP in pods' resolv.conf) to steer to the cache; repeatable (default: the ClusterIP(s) of Service kube-system/kube-dns, in Kubernetes mode)")
	fs.StringVar(&cfg.Steer.Mode, "steer", "auto", "steer pods' queries for --cluster-dns to the cache with eBPF: auto (when there is a VIP to steer), true, false")
	fs.Lookup("steer").NoOptDefVal = "true"
	fs.StringVar(&cfg.Steer.Cgroup, "cgroup", "", "steering: cgroup v2 directory the eBPF programs attach to (default: the cgroup v2 mount, detected)")
	fs.StringVar(&cfg.Steer.BPFFS, "bpffs", "/sys/fs/bpf", "steering: bpf file system; programs, links and maps are pinned under PATH/dnsaccel (mounted if PATH is not one)")
	fs.DurationVar(&cfg.Steer.HeartbeatTimeout, "heartbeat-timeout", nodecache.DefaultHeartbeatTimeout, "steering: the kernel steers only while node-cache's last heartbeat is younger than this; after that pods query --cluster-dns directly. node-cache beats only when it answers its own probes (UDP and TCP queries to --local-ip:53, every timeout/4, answered within timeout/2), so a wedged CoreDNS falls back like a dead process; /ready follows the same probes")
	fs.BoolVar(&cfg.KernelCache.On, "kernel-cache", true, "with steering: answer hot names in the kernel, at pods' interfaces (a tc program on each veth's host end, and on ipvlan/macvlan interfaces inside pods' namespaces, see --kernel-cache-netns-dir), without waking node-cache; where the kernel cannot run it, node-cache goes on without it")
	fs.StringVar(&cfg.KernelCache.Interfaces, "kernel-cache-interfaces", "", "REGEX: with --kernel-cache, only host interfaces whose names match get the tc program (empty: every veth)")
	fs.StringVar(&cfg.KernelCache.NetnsDir, "kernel-cache-netns-dir", nodecache.DefaultNetnsDir, "DIR: with --kernel-cache, where the container runtime bind-mounts pods' network namespaces (containerd, CRI-O: /var/run/netns); in each, the egress of ipvlan and macvlan interfaces (pod interfaces with no host end to attach to) gets the tc program; empty: not watched")
	fs.IntVar(&cfg.KernelCache.MaxBytes, "kernel-cache-max-bytes", nodecache.DefaultKernelCacheMaxBytes, "largest response (bytes) answered from the kernel, which also never answers more than the client's UDP size (512 without EDNS0); larger ones are answered by node-cache")
	cfg.CacheMaxBytes = nodecache.DefaultCacheMaxBytes
	fs.Var(&cfg.CacheMaxBytes, "cache-max-bytes", "bytes the cached answers of each generated server block may take (positive and negative together), least recently used evicted first: bytes, or with a K, M or G suffix (powers of 1024); keep it well below the container's memory limit (answers over TCP reach 64 KiB each)")
	fs.BoolVar(&cfg.Accounting.On, "dns-accounting", true, "per-pod DNS accounting: queries, answers by rcode, what answered (kernel, cache, upstream), latency, timeouts and search-path waste per pod, namespace and name (the top --accounting-top-k become Prometheus series), served as JSON on --observe for dnsaccelctl, with a query log turned on at runtime")
	fs.IntVar(&cfg.Accounting.TopK, "accounting-top-k", 50, "the top K pods, namespaces and names that become Prometheus series; the rest are summed as \"other\"")
	fs.IntVar(&cfg.Accounting.MaxSeries, "accounting-max-series", nodecache.DefaultMaxSeries, "at most this many per-pod, per-namespace and per-name series in one scrape; what does not fit is summed as \"other\"")
	fs.IntVar(&cfg.Accounting.MaxClients, "accounting-max-clients", nodecache.DefaultMaxClients, "client addresses counted apart (about 300 bytes each); more are summed as \"other\"")
	fs.StringVar(&cfg.Accounting.Observe, "observe", nodecache.DefaultObserve, "ADDR serving the observability JSON (dnsaccelctl: top, cache, steering) and the query log switch and feed (empty: off). It shows which pods ask which names: keep it off the pod network (127.0.0.1:PORT, a NetworkPolicy or a host firewall)")
	fs.IntVar(&cfg.Accounting.QueryLogMaxRate, "query-log-max-rate", nodecache.DefaultQueryLogMaxRate, "the query log writes at most this many lines a second; the rest are counted as rate_limited")
	mark := fs.String("upstream-mark", fmt.Sprintf("%#x", nodecache.DefaultUpstreamMark), "steering: SO_MARK of the cache's upstream sockets, which are never steered (so the upstream may be the steered VIP)")
	fs.BoolVar(&cfg.Steer.Notrack, "notrack", true, "steering: keep the cache's own traffic (to and from --local-ip, port 53) out of conntrack with NOTRACK rules at raw priority in an nftables table of its own, written over netlink (no nft or iptables binary); its upstream queries stay tracked. Where nftables is not available node-cache warns and steers without it. false: no table (one a previous node-cache left is removed)")
	fs.StringVar(&cfg.Steer.NotrackTable, "notrack-table", notrack.DefaultTable, "steering: name of that nftables table (family inet)")
	debugWedge := fs.Bool("debug-wedge", false, "tests only: serve POST /debug/wedge?part=chain|fastpath|all on --health, which makes the DNS serving path block forever while the process lives")
	fs.MarkHidden("debug-wedge")
	cleanup := fs.Bool("cleanup", false, "remove every eBPF program, link, map and pin (under --bpffs), the NOTRACK table (--notrack-table) and every --local-ip address (from --interface) node-cache created, then exit 0")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: node-cache [flags]\n\n"+
			"A node-local DNS cache: answers pods' queries on the node, forwards misses to the\n"+
			"upstreams over pipelined TCP, and answers cache hits on a UDP fast path.\n\n"+
			"With --kubeconfig (or in a pod with a service account) it runs in Kubernetes mode:\n"+
			"the cluster domain and reverse zones go to the cluster DNS, everything else to the\n"+
			"node's resolvers, and k8s_autopath expands pods' search paths server-side.\n\n"+
			"With --cluster-dns (or the kube-dns Service found through the API) it steers pods'\n"+
			"queries for that VIP to itself with eBPF at the socket (no iptables rules, no DNAT),\n"+
			"serving on --local-ip:53 with that traffic kept out of conntrack (an nftables\n"+
			"table of its own, --notrack); when it stops beating, the kernel falls back to the VIP.\n"+
			"A new node-cache started beside a running one takes over; --cleanup removes it all.\n\n"+
			"  node-cache --listen 127.0.0.1:5301 --upstream 127.0.0.1:5300\n"+
			"  node-cache --cluster-dns 10.96.0.10 --upstream 10.96.0.10:53\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == pflag.ErrHelp {
			os.Exit(0)
		}
		// pflag prints nothing itself with ContinueOnError.
		fmt.Fprintf(os.Stderr, "node-cache: %v (see --help)\n", err)
		os.Exit(2)
	}
	if *version {
		fmt.Println(versionString())
		return
	}
	log, err := logOpts.New()
	if err != nil {
		fmt.Fprintf(os.Stderr, "node-cache: %v\n", err)
		os.Exit(2)
	}
	m, err := strconv.ParseUint(*mark, 0, 32)
	if err != nil || m == 0 {
		log.Error("invalid configuration", "err", fmt.Sprintf("--upstream-mark %q: want a non-zero 32-bit number", *mark))
		os.Exit(2)
	}
	cfg.Steer.UpstreamMark = uint32(m)
	cfg.KernelCache.Explicit = fs.Changed("kernel-cache")
	if *cleanup {
		if err := nodecache.Cleanup(cfg.Steer, log); err != nil {
			log.Error("cleanup", "err", err)
			os.Exit(1)
		}
		log.Info("cleanup done", "bpffs", cfg.Steer.BPFFS, "local-ip", cfg.Steer.LocalIPs, "nftables-table", "inet "+cfg.Steer.NotrackTable)
		return
	}
	cfg.Kube = nodecache.DetectKube(*kubeconfig)
	if !fs.Changed("node-name") {
		cfg.NodeName = os.Getenv("NODE_NAME") // the downward API's spec.nodeName
	}
	// A --conf Corefile in node-local-dns's shape takes
	// __PILLAR__UPSTREAM__SERVERS__ from resolv.conf, as node-local-dns does.
	if cfg.Conf == "" || cfg.ConfUses("__PILLAR__UPSTREAM__SERVERS__") {
		if err := resolvConfDefaults(&cfg, *resolvConf, fs.Changed("upstream"), fs.Changed("resolv-conf")); err != nil {
			log.Error("reading defaults", "resolv-conf", *resolvConf, "err", err)
			os.Exit(2)
		}
	}
	if err := cfg.ResolveClusterUpstreams(context.Background()); err != nil {
		log.Error("Kubernetes mode", "err", err)
		os.Exit(2)
	}
	if err := cfg.ResolveSteering(context.Background()); err != nil {
		log.Error("Kubernetes mode", "err", err)
		os.Exit(2)
	}
	if err := cfg.Steer.LookupErr; err != nil && !cfg.Steer.Enabled() {
		log.Warn("--steer=auto: not steering, pods keep querying the cluster DNS directly", "err", err)
	} else if err != nil {
		log.Warn("steering only part of the cluster DNS", "err", err)
	}
	if err := cfg.Validate(); err != nil {
		log.Error("invalid configuration", "err", err)
		os.Exit(2)
	}
	log.Info("configuration", cfg.LogAttrs()...)
	if *printConfig {
		corefile, _, err := cfg.Source()
		if err != nil {
			log.Error("reading the Corefile", "err", err)
			os.Exit(2)
		}
		fmt.Print(corefile)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	agent := nodecache.New(cfg, log)
	agent.DebugWedge = *debugWedge
	if err := agent.Run(ctx); err != nil {
		log.Error("node-cache failed", "err", err)
		os.Exit(1)
	}
}

// resolvConfDefaults takes from the node's resolv.conf what the flags left
// out: the upstreams and, in Kubernetes mode with --resolv-conf given, the
// search domains (without it k8s_autopath reads /etc/resolv.conf itself).
func resolvConfDefaults(cfg *nodecache.Config, path string, upstreamGiven, pathGiven bool) error {
	if !upstreamGiven {
		ups, err := nodecache.ResolvConfUpstreams(path)
		if err != nil {
			return err
		}
		cfg.Upstreams = ups
	}
	if cfg.Kube.Enabled() && pathGiven {
		search, err := nodecache.ResolvConfSearch(path)
		if err != nil {
			return err
		}
		cfg.Search = append([]string{}, search...) // non-nil: "none" is an answer too
	}
	return nil
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
