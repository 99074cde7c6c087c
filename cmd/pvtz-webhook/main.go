// Command pvtz-webhook is an ExternalDNS webhook provider for Alibaba Cloud
// PrivateZone: ExternalDNS (--provider=webhook) talks to it on
// 127.0.0.1:8888; it writes through the same PrivateZone provider package
// as pvtz-sync. See externaldns/README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"

	"github.com/dnsaccel/dnsaccel/alicloud"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/externaldns/webhook"
	"github.com/dnsaccel/dnsaccel/internal/logging"
)

func main() { os.Exit(run()) }

func run() int {
	fs := pflag.NewFlagSet("pvtz-webhook", pflag.ContinueOnError)
	var logOpts logging.Options
	logOpts.AddFlags(fs)
	zones := fs.StringSlice("zone", nil, "PrivateZone zone NAME ExternalDNS may write to (required; repeat or comma-separate for several); announced to ExternalDNS as its domain filter")
	vpcID := fs.String("vpc-id", "", "VPC the zones are bound to: picks each zone among same-named ones")
	region := fs.String("region", "cn-hangzhou", "region of the SDK client")
	endpointURL := fs.String("endpoint", provider.DefaultEndpoint, "PrivateZone OpenAPI endpoint URL (override for a VPC endpoint or the emulator, e.g. http://127.0.0.1:8380)")
	qps := fs.Float64("qps", 20, "client-side write budget, API calls per second, shared by all writes of a POST /records (PrivateZone allows about 20 per write action)")
	workers := fs.Int("workers", 0, "writes in flight during a POST /records (default: qps/5, 4 to 64)")
	listen := fs.String("listen", "127.0.0.1:8888", "ADDR of the webhook API ExternalDNS calls (--webhook-provider-url); keep it on loopback in the ExternalDNS pod")
	health := fs.String("health", ":8080", "ADDR serving /healthz (liveness), /readyz (zones found and readable) and /metrics (empty: off)")
	ttl := fs.Int("ttl", 60, "TTL in seconds (5-86400) of records whose endpoint sets none")
	remark := fs.String("remark", "external-dns", "Remark of the records this webhook writes unless the endpoint sets webhook/pvtz-remark; never a pvtz-sync ownership marker (ed;o=...)")
	applyTimeout := fs.Duration("apply-timeout", 10*time.Second, "bound of a POST /records: no write starts after 80% of it and calls still retrying at its end are abandoned; what is left is answered 500 and done in ExternalDNS's next cycle. Keep it below ExternalDNS's --webhook-provider-read-timeout + --webhook-provider-write-timeout (15s by default): a timeout makes ExternalDNS exit")
	fullResync := fs.Duration("full-resync", 10*time.Minute, "list each zone in full at least this often; between, GET /records costs one change-log read per zone while the zone is unchanged")
	dryRun := fs.Bool("dry-run", false, "make no write call: POST /records logs the writes it would make and answers 204 (ExternalDNS's own --dry-run still posts its changes to the webhook)")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: pvtz-webhook --zone NAME [flags]\n\n"+
			"An ExternalDNS webhook provider for Alibaba Cloud PrivateZone: run it beside ExternalDNS\n"+
			"(--provider=webhook --registry=txt) in the same pod. It serves ExternalDNS's webhook protocol\n"+
			"(GET /, GET and POST /records, POST /adjustendpoints; content type\n"+
			"application/external.dns.webhook+json;version=1) on --listen, and health and metrics on --health.\n"+
			"Records pvtz-sync owns (Remark \"ed;o=...\") are never changed, whatever ExternalDNS asks.\n"+
			"Credentials: the SDK's default chain (ALIBABA_CLOUD_ACCESS_KEY_ID/\n"+
			"ALIBABA_CLOUD_ACCESS_KEY_SECRET[/ALIBABA_CLOUD_SECURITY_TOKEN], RRSA/OIDC, the CLI and\n"+
			"credentials-file profiles, the ECS RAM role, ALIBABA_CLOUD_CREDENTIALS_URI).\n\n"+
			"  pvtz-webhook --zone k8s.internal --vpc-id vpc-xxx\n"+
			"  external-dns --provider=webhook --registry=txt --txt-owner-id=prod-1 --policy=sync --source=service\n\nFlags:\n")
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
		fmt.Fprintf(os.Stderr, "pvtz-webhook: %v\n", err)
		return 2
	}
	fail := func(msg string, args ...any) int { log.Error(msg, args...); return 2 }
	if len(*zones) == 0 {
		return fail("invalid configuration", "err", "--zone is required")
	}
	if *qps < 0 {
		return fail("invalid configuration", "err", "--qps must not be negative")
	}
	if *workers <= 0 {
		*workers = min(64, max(4, int(*qps/5)))
	}
	metrics := webhook.NewMetrics()
	prov, err := provider.New(provider.Config{Endpoint: *endpointURL, Region: *region, QPS: *qps, DryRun: *dryRun,
		Logger: log, Observe: metrics.Observe})
	if err != nil {
		return fail("invalid configuration", "err", "--endpoint: "+err.Error())
	}
	srv, err := webhook.New(webhook.Config{Provider: prov, Zones: *zones, VPCID: *vpcID, TTL: *ttl, Remark: *remark,
		Workers: *workers, ApplyTimeout: *applyTimeout, FullResync: *fullResync, Metrics: metrics, Logger: log})
	if err != nil {
		return fail("invalid configuration", "err", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// Listen first, so a port in use is a start-up error.
	api, err := net.Listen("tcp", *listen)
	if err != nil {
		return fail("listen", "addr", *listen, "err", err)
	}
	var hl net.Listener
	if *health != "" {
		if hl, err = net.Listen("tcp", *health); err != nil {
			api.Close()
			return fail("listen", "addr", *health, "err", err)
		}
	}
	// The API has no write timeout of its own: a POST /records stops
	// starting writes at --apply-timeout.
	apiSrv := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
	hm := http.NewServeMux()
	hm.HandleFunc("/healthz", srv.Healthz)
	hm.HandleFunc("/readyz", srv.Readyz)
	hm.Handle("/metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}))
	healthSrv := &http.Server{Handler: hm, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- apiSrv.Serve(api) }()
	if hl != nil {
		go func() { errc <- healthSrv.Serve(hl) }()
	}
	log.Info("starting", "listen", api.Addr().String(), "health", *health, "zones", *zones, "vpc", *vpcID, "endpoint", *endpointURL,
		"qps", *qps, "workers", *workers, "ttl", *ttl, "remark", *remark, "apply_timeout", applyTimeout.String(),
		"full_resync", fullResync.String(), "dry_run", *dryRun, "access_key_id", alicloud.MaskKeyID(prov.AccessKeyID()))

	// Look the zones up now (readiness); requests retry it until it works.
	go func() {
		for delay := time.Second; ctx.Err() == nil; delay = min(2*delay, time.Minute) {
			err := srv.Init(ctx)
			if err == nil {
				return
			}
			if provider.IsCredentialError(err) {
				log.Error("credentials rejected", "err", err)
			} else {
				log.Warn("zones not ready", "err", err, "retry_in", delay.String())
			}
			select {
			case <-ctx.Done():
			case <-time.After(delay):
			}
		}
	}()

	code := 0
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-errc:
		log.Error("server", "err", err)
		code = 1
	}
	// Let a POST /records in flight finish its writes.
	sctx, cancel := context.WithTimeout(context.Background(), *applyTimeout+5*time.Second)
	defer cancel()
	if err := apiSrv.Shutdown(sctx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	_ = healthSrv.Shutdown(sctx)
	return code
}
