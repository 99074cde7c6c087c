package nodecache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	// The plugin set and order of bin/coredns.
	_ "github.com/dnsaccel/dnsaccel/plugin"
	nodecacheplugin "github.com/dnsaccel/dnsaccel/plugin/nodecache"
)

// Agent runs the node cache.
type Agent struct {
	// DebugWedge serves POST /debug/wedge?part=chain|fastpath|all on
	// --health: the nodecache plugin's ServeDNS and/or fast-path threads
	// block forever while the process lives (hidden flag --debug-wedge,
	// for the tests of the heartbeat). Never in production.
	DebugWedge bool

	cfg   Config
	log   *slog.Logger
	ready atomic.Bool
	steer *steering // nil: not steering
	hb    *heartbeat
	// kernelCacheStop detaches the in-kernel cache; nil: none.
	kernelCacheStop func()
}

// New returns an agent for a validated configuration.
func New(cfg Config, log *slog.Logger) *Agent { return &Agent{cfg: cfg, log: log} }

var prometheusDirective = regexp.MustCompile(`(?m)^\s*prometheus(\s|$)`)

// Run starts CoreDNS and the HTTP endpoints and serves until ctx ends, then
// shuts down gracefully.
//
// With steering, it first puts the local IPs on the interface and attaches
// (or adopts from a predecessor) the eBPF programs, then starts CoreDNS on
// the local IPs (SO_REUSEPORT, so beside a predecessor still serving), and
// only then starts the heartbeat that makes the kernel steer. When ctx ends
// it stops the heartbeat and keeps serving until a successor beats or the
// heartbeat has expired (pods then use the cluster DNS), and only then stops
// CoreDNS. Addresses and pins stay for the successor; --cleanup removes them.
// The NOTRACK table stays too, unless no node-cache serves after this one
// (see steering.releaseNotrack).
func (a *Agent) Run(ctx context.Context) error {
	corefile, name, err := a.cfg.Source()
	if err != nil {
		return err
	}
	if a.cfg.Steer.Enabled() {
		// Upstream sockets skip steering: Source put upstream_mark in
		// every nodecache block of the Corefile.
		st, err := startSteering(a.cfg.Steer, a.log)
		if err != nil {
			return fmt.Errorf("steering (--steer=false runs the cache without it): %w", err)
		}
		a.steer = st
		current.Store(st)
		defer func() {
			current.CompareAndSwap(st, nil)
			st.close()
		}()
	}

	if err := a.startKernelCache(); err != nil {
		return err
	}
	defer a.stopKernelCache()

	// Per-pod accounting: the plugin's observer is in place before CoreDNS
	// serves its first query.
	var acc *accounting
	if a.cfg.Accounting.On {
		ac, err := startAccounting(a.cfg, a.log)
		if err != nil {
			return err
		}
		acc = ac
		defer acc.stop()
	}

	// The heartbeat (kernel steering, readiness) follows the serving
	// probes; set up before /ready reads it, started once CoreDNS serves.
	if targets := a.cfg.probeTargets(); len(targets) > 0 {
		var beat func() error
		if a.steer != nil {
			beat = a.steer.beat
		}
		a.hb = newHeartbeat(targets, a.cfg.Steer.HeartbeatTimeout, beat, a.log)
	}

	var servers []*http.Server
	defer func() {
		for _, s := range servers {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			s.Shutdown(sctx)
			cancel()
		}
	}()
	health := http.NewServeMux()
	// /healthz and /readyz, as every dnsaccel daemon names them; /health and
	// /ready stay for node-local-dns's probes.
	live := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "OK") }
	ready := func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "starting or stopping", http.StatusServiceUnavailable)
			return
		}
		if a.hb != nil && !a.hb.alive() {
			http.Error(w, "serving probes unanswered", http.StatusServiceUnavailable)
			return
		}
		if a.steer != nil && !a.steer.dp.Fresh() {
			http.Error(w, "steering heartbeat stale", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "OK")
	}
	for _, p := range []string{"/healthz", "/health"} {
		health.HandleFunc(p, live)
	}
	for _, p := range []string{"/readyz", "/ready"} {
		health.HandleFunc(p, ready)
	}
	if a.DebugWedge {
		health.HandleFunc("POST /debug/wedge", a.debugWedge)
	}
	if a.cfg.Health != "" {
		hs, err := a.serveHTTP("health", a.cfg.Health, health)
		if err != nil {
			return err
		}
		servers = append(servers, hs)
	}
	// The Corefile's prometheus plugin serves the default registry; without
	// one (a --conf that has none), the agent serves it itself.
	if a.cfg.Metrics != "" && !prometheusDirective.MatchString(corefile) {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.Handler())
		ms, err := a.serveHTTP("metrics", a.cfg.Metrics, mux)
		if err != nil {
			return err
		}
		servers = append(servers, ms)
	}

	if acc != nil && a.cfg.Accounting.Observe != "" {
		obs, err := a.serveHTTP("observe", a.cfg.Accounting.Observe, acc.handler())
		if err != nil {
			return err
		}
		servers = append(servers, obs)
	}

	// Before the listeners exist: on a handover, the TCP connections in
	// the closing node-cache's accept queue move to its successor.
	enableTCPMigrateReq(a.log)
	dnsserver.Quiet = true
	a.log.Info("starting CoreDNS", "corefile", name)
	inst, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: name, ServerTypeName: "dns"})
	if err != nil {
		return fmt.Errorf("start CoreDNS with the %s Corefile: %w", name, err)
	}
	// The kernel steers from the first answered round of probes on.
	if a.hb != nil {
		a.hb.start(ctx)
		defer a.hb.stop()
	} else {
		a.log.Info("no serving probes: with --conf and without steering node-cache does not know the addresses the Corefile serves; /ready only says CoreDNS started")
	}
	a.ready.Store(true)
	a.log.Info("serving", "mode", a.cfg.Mode(), "listen", a.cfg.listenAddrs(), "upstreams", a.cfg.Upstreams, "metrics", a.cfg.Metrics, "health", a.cfg.Health, "steer", a.steer != nil, "kernel_cache", a.kernelCacheStop != nil, "observe", a.cfg.Accounting.Observe)

	<-ctx.Done()
	a.ready.Store(false)
	a.log.Info("shutting down")
	if a.hb != nil {
		a.hb.stop() // no beat from here on
	}
	if a.steer != nil {
		a.steer.handover()
	}
	if err := inst.Stop(); err != nil {
		return fmt.Errorf("stop CoreDNS: %w", err)
	}
	inst.ShutdownCallbacks()
	return nil
}

// debugWedge makes the serving path hang for good (--debug-wedge only).
func (a *Agent) debugWedge(w http.ResponseWriter, r *http.Request) {
	part := r.URL.Query().Get("part")
	switch part {
	case "chain", "fastpath", "all":
	default:
		http.Error(w, "part: want chain, fastpath or all", http.StatusBadRequest)
		return
	}
	a.log.Warn("debug: wedging the serving path for good", "part", part)
	nodecacheplugin.Wedge(part != "fastpath", part != "chain")
	fmt.Fprintln(w, "wedged", part)
}

func (a *Agent) serveHTTP(what, addr string, h http.Handler) (*http.Server, error) {
	// SO_REUSEPORT: a successor binds the same port while this one drains.
	lc := net.ListenConfig{Control: reusePort}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--%s %s: %w", what, addr, err)
	}
	s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server", "what", what, "err", err)
		}
	}()
	return s, nil
}

func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

// startKernelCache puts the in-kernel cache on pods' interfaces, answering
// for the steering's local IPs. Where the kernel cannot run it, node-cache
// goes on without it (an error only when --kernel-cache was given).
func (a *Agent) startKernelCache() error {
	kc := a.cfg.KernelCache
	if !kc.On {
		return nil
	}
	if a.steer == nil {
		if kc.Explicit {
			a.log.Warn("kernel cache: off: it answers queries to the steering's --local-ip, and node-cache is not steering")
		}
		return nil
	}
	addrs := a.cfg.Steer.localAddrs()
	ifaces, err := kc.interfaces()
	if err != nil {
		return err
	}
	stop, err := startKernelCache(context.Background(), KernelCacheConfig{Addrs: addrs, MaxBytes: kc.MaxBytes, Interfaces: ifaces, NetnsDir: kc.NetnsDir}, a.log)
	if err != nil {
		if kc.Explicit {
			return fmt.Errorf("kernel cache (--kernel-cache=false runs without it): %w", err)
		}
		a.log.Warn("kernel cache: off: this kernel cannot run it", "err", err)
		return nil
	}
	a.kernelCacheStop = stop
	return nil
}

func (a *Agent) stopKernelCache() {
	if a.kernelCacheStop != nil {
		a.kernelCacheStop()
		a.kernelCacheStop = nil
	}
}
