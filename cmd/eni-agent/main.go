// Command eni-agent is the dnsaccel ENI CNI's node daemon: it owns the
// node's ENI address pool and serves bin/eni-cni on a unix socket. See
// cni/README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"
	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/dnsaccel/dnsaccel/cni/agent"
	"github.com/dnsaccel/dnsaccel/cni/api"
	"github.com/dnsaccel/dnsaccel/cni/netsetup"

	"github.com/dnsaccel/dnsaccel/internal/logging"
)

func main() {
	fs := pflag.NewFlagSet("eni-agent", pflag.ContinueOnError)
	var logOpts logging.Options
	logOpts.AddFlags(fs)
	var cfg agent.Config
	fs.StringVar(&cfg.Socket, "socket", api.DefaultSocket, "unix socket eni-cni talks to")
	fs.StringVar(&cfg.StateFile, "state", "/var/lib/dnsaccel/eni.db", "FILE: bbolt state (allocations, ENIs, pending cloud calls)")
	endpoint := fs.String("endpoint", "", "URL of the ECS API (default: the SDK's regional endpoint), e.g. http://127.0.0.1:8380 for bin/cloud-emulator")
	fs.StringVar(&cfg.MetadataEndpoint, "metadata-endpoint", "http://100.100.100.200", "URL of the instance metadata service")
	fs.StringVar(&cfg.Region, "region", "", "region id (default: the instance's, from metadata)")
	fs.StringSliceVar(&cfg.VSwitches, "vswitches", nil, "ID,...: vSwitches new ENIs may use, the one with most free addresses first (default: the primary ENI's)")
	fs.StringSliceVar(&cfg.SecurityGroups, "security-groups", nil, "ID,...: security groups of new ENIs (default: the primary ENI's)")
	fs.IntVar(&cfg.MinIdle, "min-idle", 2, "N: refill when fewer idle addresses than this")
	fs.IntVar(&cfg.MaxIdle, "max-idle", 10, "N: refill up to this many idle addresses; release idle addresses above it")
	fs.Float64Var(&cfg.QPS, "qps", 10, "N: client-side limit of ECS calls per second, per action (0: none)")
	kubeconfig := fs.String("kubeconfig", "", "FILE: kubeconfig for the API server (default: in-cluster config if present; none: no pod reconcile, events or node condition)")
	fs.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name in Kubernetes (default $NODE_NAME)")
	fs.StringVar(&cfg.MetricsAddr, "metrics", "", "ADDR to serve Prometheus /metrics on (empty: off)")
	fs.StringVar(&cfg.HealthAddr, "health", "", "ADDR to serve /healthz and /readyz on (empty: off)")
	fs.DurationVar(&cfg.GCInterval, "gc-interval", time.Minute, "how often addresses of pods gone from the node are released")
	fs.DurationVar(&cfg.QuotaBackoff, "quota-backoff", time.Minute, "how long a vSwitch out of addresses (or over quota) is left alone")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: eni-agent [flags]\n\n"+
			"The node daemon of eni-cni: a pool of ENI addresses (ECS API) served on a unix socket.\n"+
			"Instance, type and ENI limits come from the metadata service and DescribeInstanceTypes;\n"+
			"region, vSwitches and security groups default to the primary ENI's. Credentials: the\n"+
			"SDK's default chain (ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET, profiles, the instance's RAM role).\n\n"+
			"  eni-agent --endpoint http://127.0.0.1:8380 --metadata-endpoint http://127.0.0.1:8380 \\\n"+
			"            --socket /run/dnsaccel/eni-agent.sock --state /var/lib/dnsaccel/eni.db \\\n"+
			"            --kubeconfig /etc/kubernetes/kubelet.conf --node-name $(hostname)\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "eni-agent: unexpected arguments %v\n", fs.Args())
		os.Exit(2)
	}
	log, err := logOpts.New()
	if err != nil {
		fmt.Fprintf(os.Stderr, "eni-agent: %v\n", err)
		os.Exit(2)
	}
	cfg.Log = log
	if err := cfg.Validate(); err != nil {
		log.Error("invalid configuration", "err", err)
		os.Exit(2)
	}
	kc, err := kubeClient(*kubeconfig)
	if err != nil {
		log.Error("invalid configuration", "err", err)
		os.Exit(2)
	}
	cfg.Kube = kc
	cfg.NewCloud = func(region string) (agent.Cloud, error) {
		return agent.NewECS(region, *endpoint, credentials.NewDefaultCredentialsProvider())
	}
	cfg.HostCleanup = hostCleanup(log)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := agent.Run(ctx, cfg); err != nil {
		log.Error("eni-agent", "err", err)
		os.Exit(1)
	}
	log.Info("stopped")
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		rc, err = rest.InClusterConfig()
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
	}
	rc.UserAgent = "eni-agent"
	return kubernetes.NewForConfig(rc)
}

// hostCleanup removes a pod's host-side interface and rules when its
// address is freed without a CNI DEL (GC, reconcile, leak loop). taken:
// another attachment holds the address now; its rules and routes stay.
func hostCleanup(log *slog.Logger) func(a api.Allocation, taken bool) {
	return func(a api.Allocation, taken bool) {
		host, closeFn, err := netsetup.CurrentNS()
		if err != nil {
			return
		}
		defer closeFn()
		mode := a.Mode
		if mode == api.ModeExclusive {
			mode = api.ModeVeth // the ENI itself goes with the detach; remove the node link
		}
		owner := netsetup.AddrOurs
		if taken {
			owner = netsetup.AddrTaken
		}
		if err := netsetup.Teardown(netsetup.Config{Mode: mode, IfName: a.IfName, ContainerID: a.ContainerID, Alloc: a, HostNS: host, NL: netsetup.Kernel{}, Addr: owner}); err != nil {
			log.Warn("host-side cleanup", "key", a.Key.String(), "err", err)
		}
	}
}
