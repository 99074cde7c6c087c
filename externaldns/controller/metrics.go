package controller

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the sync, dnsaccel_pvtzsync_*.
type Metrics struct {
	Registry      *prometheus.Registry
	APIRequests   *prometheus.CounterVec // action, write, code ("ok" on success)
	APIRetries    *prometheus.CounterVec // action, code
	Changes       *prometheus.CounterVec // op, result (ok, error, dry_run)
	SyncErrors    *prometheus.CounterVec // reason
	Conflicts     prometheus.Counter
	Reconciles    *prometheus.CounterVec // result
	DriftNames    prometheus.Gauge
	Records       *prometheus.GaugeVec // kind: owned, unowned, desired
	QueueDepth    prometheus.Gauge
	LastReconcile prometheus.Gauge
	CredentialErr prometheus.Gauge
	SkippedDelete prometheus.Counter
}

// NewMetrics registers the metrics in a new registry.
func NewMetrics() *Metrics {
	const ns, sub = "dnsaccel", "pvtzsync"
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		APIRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "api_requests_total",
			Help: "PrivateZone API attempts by action, whether it writes, and result code (ok, an API error code, network)."}, []string{"action", "write", "code"}),
		APIRetries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "api_retries_total",
			Help: "PrivateZone API attempts retried after a retryable error, by action and code."}, []string{"action", "code"}),
		Changes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "changes_total",
			Help: "Record changes by op (create, update, remark, adopt, enable, delete) and result (ok, error, dry_run)."}, []string{"op", "result"}),
		SyncErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "sync_errors_total",
			Help: "Failures by reason (record, list, zone, credentials)."}, []string{"reason"}),
		Conflicts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "conflicts_total",
			Help: "Desired values not written because another owner (or nobody) holds the record."}),
		Reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reconciles_total",
			Help: "Full reconciles (zone listing + drift check) by result."}, []string{"result"}),
		DriftNames: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "drift_names",
			Help: "Record names the last full reconcile found out of sync."}),
		Records: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "records",
			Help: "Records at the last full reconcile: owned (by this owner id), unowned (anyone else's), desired (values the cluster wants)."}, []string{"kind"}),
		LastReconcile: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "last_reconcile_timestamp_seconds",
			Help: "Unix time of the last successful full reconcile."}),
		CredentialErr: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "credentials_rejected",
			Help: "1 while PrivateZone rejects the credentials."}),
		SkippedDelete: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "deletes_withheld_total",
			Help: "Reconciles or names whose deletes were withheld because the source was empty or not synced."}),
	}
	m.QueueDepth = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "queue_depth",
		Help: "Record names waiting in the work queue."})
	m.Registry.MustRegister(m.APIRequests, m.APIRetries, m.Changes, m.SyncErrors, m.Conflicts, m.Reconciles, m.DriftNames,
		m.Records, m.QueueDepth, m.LastReconcile, m.CredentialErr, m.SkippedDelete,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// Observe is the provider's per-attempt hook.
func (m *Metrics) Observe(action string, write bool, code string, retry bool) {
	w := "false"
	if write {
		w = "true"
	}
	c := code
	if c == "" {
		c = "ok"
	}
	m.APIRequests.WithLabelValues(action, w, c).Inc()
	if retry {
		m.APIRetries.WithLabelValues(action, c).Inc()
	}
}
