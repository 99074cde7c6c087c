package k8sautopath

import (
	"github.com/coredns/coredns/plugin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	hits = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "k8s_autopath",
		Name:      "hits_total",
		Help:      "Queries answered server-side with a CNAME to a later search candidate.",
	}, []string{"server"})
	misses = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "k8s_autopath",
		Name:      "misses_total",
		Help:      "Queries expanded but answered for the literal name: it exists, every candidate is NXDOMAIN, or a candidate failed.",
	}, []string{"server", "reason"})
	passes = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: plugin.Namespace,
		Subsystem: "k8s_autopath",
		Name:      "passes_total",
		Help:      "Queries under a namespace search domain passed through without expansion, by reason.",
	}, []string{"server", "reason"})
	indexPods = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "k8s_autopath",
		Name:      "index_pods",
		Help:      "Pods in the pod index.",
	}, []string{"node"})
	indexSynced = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: plugin.Namespace,
		Subsystem: "k8s_autopath",
		Name:      "index_synced",
		Help:      "1 once the pod index holds a full list of pods; until then queries pass through.",
	}, []string{"node"})
)
