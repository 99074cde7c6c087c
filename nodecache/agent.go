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
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	// The plugin set and order of bin/coredns.
	_ "github.com/dnsaccel/dnsaccel/plugin"
)

// Agent runs the node cache.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	ready atomic.Bool
}

// New returns an agent for a validated configuration.
func New(cfg Config, log *slog.Logger) *Agent { return &Agent{cfg: cfg, log: log} }

var prometheusDirective = regexp.MustCompile(`(?m)^\s*prometheus(\s|$)`)

// Run starts CoreDNS and the HTTP endpoints and serves until ctx ends, then
// shuts down gracefully.
func (a *Agent) Run(ctx context.Context) error {
	corefile, name, err := a.cfg.Source()
	if err != nil {
		return err
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
	health.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "OK") })
	health.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "starting or stopping", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "OK")
	})
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

	dnsserver.Quiet = true
	a.log.Info("starting CoreDNS", "corefile", name)
	inst, err := caddy.Start(caddy.CaddyfileInput{Contents: []byte(corefile), Filepath: name, ServerTypeName: "dns"})
	if err != nil {
		return fmt.Errorf("start CoreDNS with the %s Corefile: %w", name, err)
	}
	a.ready.Store(true)
	a.log.Info("serving", "mode", a.cfg.Mode(), "listen", a.cfg.Listen, "upstreams", a.cfg.Upstreams, "metrics", a.cfg.Metrics, "health", a.cfg.Health)

	<-ctx.Done()
	a.ready.Store(false)
	a.log.Info("shutting down")
	if err := inst.Stop(); err != nil {
		return fmt.Errorf("stop CoreDNS: %w", err)
	}
	inst.ShutdownCallbacks()
	return nil
}

func (a *Agent) serveHTTP(what, addr string, h http.Handler) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
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
