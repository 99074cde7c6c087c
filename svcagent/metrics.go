package svcagent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the agent's Prometheus metrics (dnsaccel_datapath_*).
type Metrics struct {
	Registry *prometheus.Registry

	services, frontends, backends prometheus.Gauge
	invalid                       *prometheus.CounterVec
	mapFull, syncErrors           prometheus.Counter
	terminated                    prometheus.Counter
	syncSeconds                   prometheus.Histogram
}

// NewMetrics registers the metrics on a new registry (with the Go and
// process collectors).
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry:  r,
		services:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "dnsaccel_datapath_services", Help: "Services programmed into the eBPF tables."}),
		frontends: prometheus.NewGauge(prometheus.GaugeOpts{Name: "dnsaccel_datapath_frontends", Help: "Service frontends (address, port, protocol) programmed."}),
		backends:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "dnsaccel_datapath_backends", Help: "Backends programmed, summed over frontends."}),
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dnsaccel_datapath_invalid_objects_total",
			Help: "Services or parts of them skipped (with a Warning Event), by reason."}, []string{"reason"}),
		mapFull: prometheus.NewCounter(prometheus.CounterOpts{Name: "dnsaccel_datapath_map_full_total",
			Help: "Updates refused because an eBPF map was full (the Service is retried; raise the map sizes)."}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "dnsaccel_datapath_sync_errors_total",
			Help: "Service syncs that failed (retried with back-off)."}),
		terminated: prometheus.NewCounter(prometheus.CounterOpts{Name: "dnsaccel_datapath_udp_sockets_terminated_total",
			Help: "Connected UDP sockets destroyed because their backend left the Service."}),
		syncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "dnsaccel_datapath_sync_seconds",
			Help: "Time to program one Service.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 8)}),
	}
	r.MustRegister(m.services, m.frontends, m.backends, m.invalid, m.mapFull, m.syncErrors, m.terminated, m.syncSeconds,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// StatsCollector exports the eBPF programs' per-CPU counters (summed) as
// dnsaccel_datapath_lb_operations_total{what}.
type StatsCollector struct {
	Read func() (map[string]uint64, error)
}

var statsDesc = prometheus.NewDesc("dnsaccel_datapath_lb_operations_total",
	"Socket operations seen by the load-balancing programs, by what they did.", []string{"what"}, nil)

// Describe implements prometheus.Collector.
func (c StatsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- statsDesc }

// Collect implements prometheus.Collector.
func (c StatsCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.Read()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(statsDesc, err)
		return
	}
	for what, v := range st {
		ch <- prometheus.MustNewConstMetric(statsDesc, prometheus.CounterValue, float64(v), what)
	}
}
