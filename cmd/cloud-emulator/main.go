// Command cloud-emulator serves the Alibaba Cloud OpenAPI RPC protocol for
// the products dnsaccel talks to (PrivateZone; ECS with the CNI), over real
// HTTP with signature checks, fault injection and a request log, for tests,
// demos and benchmarks. See cloud/README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/dnsaccel/dnsaccel/cloud/ecs"
	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz"

	"github.com/dnsaccel/dnsaccel/internal/logging"
)

func main() {
	fs := pflag.NewFlagSet("cloud-emulator", pflag.ContinueOnError)
	var logOpts logging.Options
	logOpts.AddFlags(fs)
	listen := fs.String("listen", "127.0.0.1:8380", "ADDR the OpenAPI endpoint listens on (HTTP; port 0 picks one, printed in the \"listening\" log line)")
	keyID := fs.String("access-key-id", "emulator-access-key-id", "AccessKeyId the emulator accepts")
	keySecret := fs.String("access-key-secret", "emulator-access-key-secret", "AccessKeySecret of --access-key-id")
	state := fs.String("state", "", "FILE the state (zones, records, ...) is loaded from at start and saved to after changes, atomically (empty: memory only)")
	dnsAddr := fs.String("dns", "", "ADDR to also answer DNS on (UDP+TCP) for the PrivateZone zones, as PrivateZone does inside a VPC (empty: off)")
	throttle := fs.Float64("throttle-qps", 0, "per-action request budget per second; over it: HTTP 400 Throttling.User (0: unlimited)")
	throttleRate := fs.Float64("throttle-rate", 0, "fraction (0..1) of requests answered 400 Throttling.User whatever the rate (tests of retry paths)")
	faultRate := fs.Float64("fault-rate", 0, "fraction (0..1) of requests answered with 503 ServiceUnavailable or a dropped connection, before or after the action ran")
	latency := fs.Duration("latency", 0, "DURATION added to every API request")
	localENIs := fs.Bool("local-enis", false, "ECS: an attached ENI becomes a kernel interface in this namespace (a veth into a \"vpc\" namespace routing the vSwitches); needs root")
	faults := fs.StringArray("fault", nil, "ACTION=FAULT[:CODE[:HTTP]][*N]: script the next N requests of ACTION (repeatable; FAULT: 503-before, drop-before, 503-after, drop-after, error), e.g. BindZoneVpc=error:Forbidden.RAM:403*3")
	stsToken := fs.String("security-token", "", "accept the key only with this STS SecurityToken (as an STS credential)")
	reqLog := fs.String("request-log", "", "FILE to append the request log to as JSON lines (always readable at GET /_emulator/requests; no secrets)")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: cloud-emulator [flags]\n\n"+
			"An Alibaba Cloud OpenAPI (RPC, signature v1) server for PrivateZone (pvtz 2018-01-01),\n"+
			"for tests and demos. Point the SDK at it with client.Domain = ADDR and scheme HTTP,\n"+
			"or pvtz-sync/pvtzctl --endpoint http://ADDR.\n\n"+
			"  cloud-emulator --listen 127.0.0.1:8380 --dns 127.0.0.1:5380 --state /tmp/pvtz.json\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	log, err := logOpts.New()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cloud-emulator: %v\n", err)
		os.Exit(2)
	}
	if *faultRate < 0 || *faultRate > 1 || *throttleRate < 0 || *throttleRate > 1 {
		log.Error("invalid configuration", "err", fmt.Sprintf("--fault-rate %v, --throttle-rate %v: want 0..1", *faultRate, *throttleRate))
		os.Exit(2)
	}
	if *throttle < 0 || *latency < 0 || *keyID == "" || *keySecret == "" {
		log.Error("invalid configuration", "err", "--throttle-qps and --latency must not be negative; --access-key-id and --access-key-secret must not be empty")
		os.Exit(2)
	}
	var logOut io.Writer
	if *reqLog != "" {
		f, err := os.OpenFile(*reqLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			log.Error("request log", "err", err)
			os.Exit(2)
		}
		defer f.Close()
		logOut = f
	}
	srv := openapi.New(openapi.Config{
		Credentials: []openapi.Credential{{AccessKeyID: *keyID, AccessKeySecret: *keySecret, SecurityToken: *stsToken}},
		StateFile:   *state, ThrottleQPS: *throttle, ThrottleRate: *throttleRate, FaultRate: *faultRate, Latency: *latency,
		RequestLog: logOut, Logger: log,
	})
	for _, f := range *faults {
		r, err := openapi.ParseFaultRule(f)
		if err == nil {
			err = srv.AddFaultRules(r)
		}
		if err != nil {
			log.Error("invalid configuration", "err", "--fault: "+err.Error())
			os.Exit(2)
		}
	}
	store := pvtz.NewStore()
	var ecsStore *ecs.Store
	// Products: one registration line each.
	for _, reg := range []func() error{
		func() error { return pvtz.Register(srv, store) },
		func() (err error) { ecsStore, err = ecs.RegisterDefault(srv, *localENIs, log); return err },
	} {
		if err := reg(); err != nil {
			log.Error("register product", "err", err)
			os.Exit(2)
		}
	}
	if err := srv.Load(); err != nil {
		log.Error("load state", "err", err)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("listen", "addr", *listen, "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if *dnsAddr != "" {
		d, err := store.ListenDNS(*dnsAddr)
		if err != nil {
			log.Error("dns", "err", err)
			os.Exit(2)
		}
		defer d.Close()
		log.Info("dns listening", "addr", d.Addr())
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	log.Info("listening", "addr", ln.Addr().String(), "state", *state, "throttle_qps", *throttle, "fault_rate", *faultRate, "latency", latency.String())
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		log.Error("serve", "err", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	if err := errors.Join(srv.Close(), ecsStore.Close()); err != nil {
		log.Error("save state", "err", err)
		os.Exit(1)
	}
	log.Info("stopped")
}
