package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are eni-agent's Prometheus metrics (dnsaccel_eni_*).
type Metrics struct {
	Idle, InUse, ENIs, Ready prometheus.Gauge
	APICalls                 *prometheus.CounterVec   // action, code
	APISeconds               *prometheus.HistogramVec // action
	Throttled                *prometheus.CounterVec   // action
	Backoffs                 *prometheus.CounterVec   // code
	AllocSeconds             *prometheus.HistogramVec // mode
	AllocErrors              prometheus.Counter
	Released                 *prometheus.CounterVec // why: del, gc, reconcile, leak
}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	ns := "dnsaccel_eni_"
	m := &Metrics{
		Idle:         prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "pool_idle_addresses", Help: "Idle addresses in the pool (shared ENIs)."}),
		InUse:        prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "pool_in_use_addresses", Help: "Addresses (and exclusive ENIs) held by pods."}),
		ENIs:         prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "pool_enis", Help: "Secondary ENIs the pool holds."}),
		Ready:        prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "pool_ready", Help: "1 when the pool can serve a veth/ipvlan ADD, else 0."}),
		APICalls:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "api_calls_total", Help: "ECS API calls by action and result code (OK on success)."}, []string{"action", "code"}),
		APISeconds:   prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: ns + "api_call_seconds", Help: "ECS API call latency.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"action"}),
		Throttled:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "api_throttled_total", Help: "ECS API calls answered Throttling and retried."}, []string{"action"}),
		Backoffs:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "pool_backoffs_total", Help: "Times the pool stopped asking after a quota answer, by code."}, []string{"code"}),
		AllocSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: ns + "alloc_seconds", Help: "Time to serve an allocation.", Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 16)}, []string{"mode"}),
		AllocErrors:  prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "alloc_errors_total", Help: "Allocations that failed (pool exhausted or timed out)."}),
		Released:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "released_total", Help: "Addresses released, by why: del, gc, reconcile, leak."}, []string{"why"}),
	}
	if reg != nil {
		reg.MustRegister(m.Idle, m.InUse, m.ENIs, m.Ready, m.APICalls, m.APISeconds, m.Throttled, m.Backoffs, m.AllocSeconds, m.AllocErrors, m.Released)
	}
	return m
}

// APICall implements Observer.
func (m *Metrics) APICall(action, code string, d time.Duration) {
	m.APICalls.WithLabelValues(action, code).Inc()
	m.APISeconds.WithLabelValues(action).Observe(d.Seconds())
}

// Throttled implements Observer (without the event; see observer).
func (m *Metrics) throttled(action string) { m.Throttled.WithLabelValues(action).Inc() }
