package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"

	"github.com/dnsaccel/dnsaccel/cni/api"
)

// Config is eni-agent's configuration (its flags).
type Config struct {
	Socket           string
	StateFile        string
	MetadataEndpoint string
	Region           string
	VSwitches        []string
	SecurityGroups   []string
	MinIdle, MaxIdle int
	QPS              float64
	NodeName         string
	MetricsAddr      string
	HealthAddr       string
	GCInterval       time.Duration
	QuotaBackoff     time.Duration

	// NewCloud builds the ECS client once the region is known.
	NewCloud func(region string) (Cloud, error)
	Kube     kubernetes.Interface // nil: no pod reconcile, events or condition
	Log      *slog.Logger
	// HostCleanup undoes a pod's host side when its address is freed
	// without a CNI DEL; taken: the address is another attachment's now
	// (leave what is keyed by the address alone).
	HostCleanup func(a api.Allocation, taken bool)
	// Ready, if set, is closed when the socket serves.
	Ready chan<- string
}

// Validate checks the configuration; errors name the flag.
func (c *Config) Validate() error {
	switch {
	case c.Socket == "":
		return errors.New("--socket: must not be empty")
	case c.StateFile == "":
		return errors.New("--state: must not be empty")
	case c.MinIdle < 0 || c.MaxIdle < 0:
		return errors.New("--min-idle/--max-idle: must not be negative")
	case c.MaxIdle < c.MinIdle:
		return fmt.Errorf("--max-idle %d: must be at least --min-idle %d", c.MaxIdle, c.MinIdle)
	case c.QPS < 0:
		return errors.New("--qps: must not be negative")
	case c.MetadataEndpoint == "":
		return errors.New("--metadata-endpoint: must not be empty")
	}
	return nil
}

type observer struct {
	m   *Metrics
	rep Reporter
}

func (o observer) APICall(action, code string, d time.Duration) { o.m.APICall(action, code, d) }
func (o observer) Throttled(action string, err error) {
	o.m.throttled(action)
	if o.rep != nil {
		o.rep.Event(true, "ENIAPIThrottled", fmt.Sprintf("ECS throttled %s (%v); retrying with backoff", action, err))
	}
}

// Run runs the agent until ctx ends: identity from metadata, limits from
// DescribeInstanceTypes, reconcile, then the pool, the socket, the leak
// loop and the metrics/health endpoints.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	m := NewMetrics(reg)
	var ready sync.Map // "ready" -> bool
	var wg sync.WaitGroup
	defer wg.Wait()
	serveHTTP := func(addr string, h http.Handler, what string) error {
		if addr == "" {
			return nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("--%s %s: %w", what, addr, err)
		}
		log.Info(what+" listening", "addr", ln.Addr().String())
		wg.Add(1)
		go func() { defer wg.Done(); _ = Serve(ctx, ln, h) }()
		return nil
	}
	metricsMux := http.NewServeMux()
	metricsMux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if err := serveHTTP(cfg.MetricsAddr, metricsMux, "metrics"); err != nil {
		return err
	}
	healthMux := http.NewServeMux()
	healthMux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	healthMux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if _, ok := ready.Load("ready"); !ok {
			http.Error(w, "reconciling", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if err := serveHTTP(cfg.HealthAddr, healthMux, "health"); err != nil {
		return err
	}

	meta := NewMetadata(cfg.MetadataEndpoint)
	id, err := waitIdentity(ctx, meta, log)
	if err != nil {
		return err
	}
	region := cfg.Region
	if region == "" {
		region = id.Region
	}
	vsws := cfg.VSwitches
	if len(vsws) == 0 {
		vsws = []string{id.VSwitchID}
	}
	sgs := cfg.SecurityGroups
	if len(sgs) == 0 {
		sgs = id.SecurityGroups
	}
	if len(sgs) == 0 {
		return errors.New("--security-groups: none given and none in metadata")
	}
	raw, err := cfg.NewCloud(region)
	if err != nil {
		return err
	}
	var rep Reporter
	var pods Pods
	if cfg.Kube != nil {
		if cfg.NodeName == "" {
			return errors.New("--node-name: required with --kubeconfig")
		}
		rep = &KubeReporter{Client: cfg.Kube, Node: cfg.NodeName, Log: log}
		pods = KubePods{Client: cfg.Kube, Node: cfg.NodeName}
	}
	cloud := NewLimited(raw, cfg.QPS, observer{m: m, rep: rep})
	lim, err := cloud.InstanceLimits(ctx, id.InstanceType)
	if err != nil {
		return fmt.Errorf("ENI limits of %s: %w", id.InstanceType, err)
	}
	log.Info("instance", "id", id.InstanceID, "type", id.InstanceType, "region", region, "enis", lim.ENIs, "ips_per_eni", lim.IPsPerENI,
		"vswitches", strings.Join(vsws, ","), "security_groups", strings.Join(sgs, ","), "min_idle", cfg.MinIdle, "max_idle", cfg.MaxIdle)

	store, err := OpenStore(cfg.StateFile)
	if err != nil {
		return err
	}
	defer store.Close()
	pool := NewPool(PoolConfig{InstanceID: id.InstanceID, NodeIP: id.PrimaryIP.String(), VSwitches: vsws, SecurityGroups: sgs,
		MinIdle: cfg.MinIdle, MaxIdle: cfg.MaxIdle, Limits: lim, QuotaBackoff: cfg.QuotaBackoff}, cloud, meta, store, rep, log, m)
	pool.HostCleanup = cfg.HostCleanup
	if err := pool.Reconcile(ctx, pods); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	ln, err := ListenUnix(cfg.Socket)
	if err != nil {
		return fmt.Errorf("--socket %s: %w", cfg.Socket, err)
	}
	wg.Add(2)
	go func() { defer wg.Done(); pool.Run(ctx) }()
	go func() { defer wg.Done(); pool.LeakLoop(ctx, pods, cfg.GCInterval) }()
	ready.Store("ready", true)
	log.Info("serving", "socket", cfg.Socket)
	if cfg.Ready != nil {
		cfg.Ready <- cfg.Socket
	}
	err = Serve(ctx, ln, Handler(pool))
	// Stop the pool's goroutines before the state file closes.
	cancel()
	wg.Wait()
	return err
}

// waitIdentity reads metadata, retrying while the service is not up.
func waitIdentity(ctx context.Context, meta *Metadata, log *slog.Logger) (*Identity, error) {
	wait := 100 * time.Millisecond
	for {
		id, err := meta.Identity(ctx)
		if err == nil {
			return id, nil
		}
		if errors.Is(err, errMetaNotFound) {
			return nil, fmt.Errorf("instance metadata: %w", err)
		}
		log.Warn("instance metadata not reachable yet", "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("instance metadata: %w", err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}
