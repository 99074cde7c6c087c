package upstream

import (
	"github.com/coredns/coredns/plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

const subsystem = "nodecache"

// Failure reasons, the values of upstream_failures_total's "reason" label.
const (
	reasonDial     = "dial"     // could not connect (or in reconnect backoff)
	reasonTimeout  = "timeout"  // no matching answer within the attempt's deadline
	reasonConn     = "conn"     // connection closed or failed with the query in flight
	reasonProtocol = "protocol" // unparseable answer or broken framing
	reasonNetwork  = "network"  // other socket error (UDP)
)

// Metrics are registered on the default registry, which CoreDNS's
// prometheus plugin serves. Label "to" is the upstream's ip:port.
var (
	requestsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: subsystem,
		Name:      "upstream_requests_total",
		Help:      "Queries sent to upstreams, per upstream and transport (every attempt counts).",
	}, []string{"to", "proto"})

	requestDuration = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: plugin.Namespace,
		Subsystem: subsystem,
		Name:      "upstream_request_duration_seconds",
		Buckets:   plugin.TimeBuckets,
		Help:      "Time from sending a query to an upstream to receiving its answer (answered attempts only).",
	}, []string{"to", "proto"})

	failuresTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: subsystem,
		Name:      "upstream_failures_total",
		Help:      "Failed upstream attempts, per upstream and reason (dial, timeout, conn, protocol, network).",
	}, []string{"to", "reason"})

	healthyGauge = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: subsystem,
		Name:      "upstream_healthy",
		Help:      "1 if the upstream is considered healthy, 0 if it is marked down.",
	}, []string{"to"})

	connectionsGauge = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: subsystem,
		Name:      "upstream_connections",
		Help:      "Open TCP connections to the upstream (including draining ones).",
	}, []string{"to"})

	inflightGauge = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: subsystem,
		Name:      "upstream_inflight",
		Help:      "Exchanges in progress across all upstreams.",
	})

	overloadedTotal = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: subsystem,
		Name:      "upstream_overloaded_total",
		Help:      "Exchanges refused because MaxInflight queries were already in flight.",
	})

	mismatchedTotal = promauto.NewCounter(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: subsystem,
		Name:      "upstream_mismatched_total",
		Help:      "Answers dropped because their ID matched no query in flight or their question did not match the query's.",
	})
)
