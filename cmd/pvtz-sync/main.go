// Command pvtz-sync publishes Kubernetes Services and Pods to an Alibaba
// Cloud PrivateZone zone, event-driven and within the API's rate limits.
// See externaldns/README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
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

	"github.com/dnsaccel/dnsaccel/alicloud"
	"github.com/dnsaccel/dnsaccel/externaldns/controller"
	"github.com/dnsaccel/dnsaccel/externaldns/plan"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/externaldns/source"

	"github.com/dnsaccel/dnsaccel/internal/logging"
)

func main() { os.Exit(run()) }

func run() int {
	fs := pflag.NewFlagSet("pvtz-sync", pflag.ContinueOnError)
	var logOpts logging.Options
	logOpts.AddFlags(fs)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the API server (default: the in-cluster service account)")
	zone := fs.String("zone", "", "PrivateZone zone NAME the records go to (required)")
	createZone := fs.Bool("create-zone", false, "create --zone (bound to --vpc-id) when it does not exist")
	vpcID := fs.String("vpc-id", "", "VPC the zone is bound to: picks the zone among same-named ones, and is bound on --create-zone")
	region := fs.String("region", "cn-hangzhou", "region of the VPC and of the SDK client")
	endpointURL := fs.String("endpoint", provider.DefaultEndpoint, "PrivateZone OpenAPI endpoint URL (override for a VPC endpoint or the emulator, e.g. http://127.0.0.1:8380)")
	owner := fs.String("owner-id", "default", "owner id written into each managed record's Remark (1-16 of a-z0-9._-); records of other owners are never changed")
	policy := fs.String("policy", "", "what the sync may do: sync (create, update, delete), upsert-only (no deletes), create-only (required)")
	sources := fs.String("source", "service,pod", "comma-separated sources: service, pod (pods only with annotation dnsaccel.io/pvtz-publish=true)")
	namespace := fs.String("namespace", "", "watch only this namespace (default: all)")
	tmpl := fs.String("fqdn-template", source.DefaultFQDNTemplate, "Go template of a record's name relative to the zone, from .Name, .Namespace, .Kind (service or pod); hostname annotations take precedence")
	ttl := fs.Int("ttl", 60, "record TTL in seconds (5-86400) unless the ttl annotation says otherwise")
	qps := fs.Float64("qps", 20, "client-side write budget, API calls per second (PrivateZone allows about 20 per write action)")
	interval := fs.Duration("interval", time.Minute, "full reconcile period: list the zone, repair drift (no drift: no write)")
	workers := fs.Int("workers", 0, "concurrent record names in flight (default: qps/5, 4 to 64)")
	dryRun := fs.Bool("dry-run", false, "make no write call: print the plan to stdout instead")
	once := fs.Bool("once", false, "one full reconcile, apply it, exit (0 synced, 1 some records failed, 2 cannot sync at all)")
	metricsAddr := fs.String("metrics", ":7979", "ADDR serving Prometheus /metrics (empty: off)")
	healthAddr := fs.String("health", ":8081", "ADDR serving /healthz (liveness) and /readyz (readiness) (empty: off)")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: pvtz-sync --zone NAME --policy sync|upsert-only|create-only [flags]\n\n"+
			"Publishes Services (ClusterIP, headless, LoadBalancer) and opted-in Pods to an Alibaba\n"+
			"Cloud PrivateZone zone. Credentials: the SDK's default chain (ALIBABA_CLOUD_ACCESS_KEY_ID/\n"+
			"ALIBABA_CLOUD_ACCESS_KEY_SECRET[/ALIBABA_CLOUD_SECURITY_TOKEN], RRSA/OIDC, the CLI and\n"+
			"credentials-file profiles, the ECS RAM role, ALIBABA_CLOUD_CREDENTIALS_URI).\n\n"+
			"  pvtz-sync --zone k8s.internal --vpc-id vpc-xxx --policy sync --owner-id prod-1\n\nFlags:\n")
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
		fmt.Fprintf(os.Stderr, "pvtz-sync: %v\n", err)
		os.Exit(2)
	}
	fail := func(msg string, args ...any) int { log.Error(msg, args...); return 2 }
	if *zone == "" {
		return fail("invalid configuration", "err", "--zone is required")
	}
	pol, err := plan.ParsePolicy(*policy)
	if err != nil {
		return fail("invalid configuration", "err", "--policy: "+err.Error()+" (required, as ExternalDNS requires it)")
	}
	var svc, pod bool
	for _, s := range strings.Split(*sources, ",") {
		switch strings.TrimSpace(s) {
		case "service":
			svc = true
		case "pod":
			pod = true
		case "":
		default:
			return fail("invalid configuration", "err", fmt.Sprintf("--source %q: want service, pod", s))
		}
	}
	if *qps < 0 {
		return fail("invalid configuration", "err", "--qps must not be negative")
	}
	if *workers <= 0 {
		*workers = min(64, max(4, int(*qps/5)))
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fail("kubeconfig", "err", err)
	}
	restCfg.QPS, restCfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fail("kubernetes client", "err", err)
	}

	metrics := controller.NewMetrics()
	prov, err := provider.New(provider.Config{Endpoint: *endpointURL, Region: *region, QPS: *qps, DryRun: *dryRun,
		Logger: log, Observe: metrics.Observe})
	if err != nil {
		return fail("invalid configuration", "err", "--endpoint: "+err.Error())
	}
	bc := record.NewBroadcaster()
	bc.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer bc.Shutdown()
	recorder := bc.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "pvtz-sync"})

	var ctl *controller.Controller
	src, err := source.New(source.Config{Client: client, Services: svc, Pods: pod, Namespace: *namespace, Zone: *zone,
		FQDNTemplate: *tmpl, TTL: *ttl, Logger: log,
		OnChange: func(names []string) {
			if ctl != nil {
				ctl.Enqueue(names)
			}
		},
		OnInvalid: func(ref *corev1.ObjectReference, reason string) {
			recorder.Event(ref, corev1.EventTypeWarning, "PrivateZoneInvalid", reason)
		}})
	if err != nil {
		return fail("invalid configuration", "err", err)
	}
	ctl, err = controller.New(controller.Config{Provider: prov, Source: src, Zone: *zone, VPCID: *vpcID, Region: *region,
		CreateZone: *createZone, OwnerID: *owner, Policy: pol, Interval: *interval, Workers: *workers, DryRun: *dryRun,
		Recorder: recorder, Metrics: metrics, Logger: log, PlanOut: os.Stdout})
	if err != nil {
		return fail("invalid configuration", "err", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var servers []*http.Server
	serve := func(addr string, mux *http.ServeMux, what string) bool {
		if addr == "" {
			return true
		}
		hs := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, hs)
		go func() {
			if err := hs.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error(what+" server", "addr", addr, "err", err)
				stop()
			}
		}()
		return true
	}
	mm := http.NewServeMux()
	mm.Handle("/metrics", promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{}))
	serve(*metricsAddr, mm, "metrics")
	hm := http.NewServeMux()
	hm.HandleFunc("/healthz", ctl.Healthz)
	hm.HandleFunc("/readyz", ctl.Readyz)
	serve(*healthAddr, hm, "health")
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		for _, hs := range servers {
			_ = hs.Shutdown(sctx)
		}
	}()

	log.Info("starting", "zone", *zone, "vpc", *vpcID, "endpoint", *endpointURL, "owner_id", *owner, "policy", string(pol),
		"source", *sources, "namespace", *namespace, "qps", *qps, "workers", *workers, "interval", interval.String(),
		"dry_run", *dryRun, "once", *once, "access_key_id", alicloud.MaskKeyID(prov.AccessKeyID()))
	err = ctl.Run(ctx, *once)
	switch {
	case err == nil:
		return 0
	case provider.IsCredentialError(err):
		log.Error("credentials rejected", "err", err)
		return 2
	case *once && ctl.ZoneID() != "":
		log.Error("sync incomplete", "err", err)
		return 1
	default:
		log.Error("cannot sync", "err", err)
		return 2
	}
}
