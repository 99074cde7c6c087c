package dnsstats

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The Prometheus view: the top TopK pods, namespaces and names, the rest
// summed as "other" ({namespace="",pod="other"}, {namespace="other"},
// {name="other"}; a namespace really named "other" is summed there too),
// and never more than MaxSeries series in one scrape (what does not fit is
// summed into "other" as well, and counted in
// dnsaccel_nodecache_dns_accounting_series_dropped_total). The remainder
// series are always emitted, so sums over a metric stay whole.

var (
	podLabels = []string{"namespace", "pod"}

	descPodQueries = prometheus.NewDesc("dnsaccel_nodecache_pod_queries_total",
		"DNS queries of a pod seen by node-cache (the top pods; the rest as pod=\"other\"), by what answered them: kernel (the in-kernel cache), cache (node-cache's user-space cache), upstream, none (no answer: dropped or upstream timeout).",
		[]string{"namespace", "pod", "answered_by"}, nil)
	descPodResponses = prometheus.NewDesc("dnsaccel_nodecache_pod_responses_total",
		"DNS answers to a pod by rcode (the top pods; the rest as pod=\"other\").", []string{"namespace", "pod", "rcode"}, nil)
	descPodTimeouts = prometheus.NewDesc("dnsaccel_nodecache_pod_timeouts_total",
		"Queries of a pod that got no answer in time: dropped by node-cache, or no upstream answer before the deadline (answered SERVFAIL).", podLabels, nil)
	descPodWaste = prometheus.NewDesc("dnsaccel_nodecache_pod_search_waste_total",
		"NXDOMAIN answers to a pod for <name>.<search domain> candidates of its search path: what k8s_autopath saves or would save.", podLabels, nil)
	descPodLatency = prometheus.NewDesc("dnsaccel_nodecache_pod_latency_seconds",
		"Latency of node-cache's user-space answers to a pod, from the query's arrival to the answer leaving (kernel answers are not timed).", podLabels, nil)

	descNSQueries = prometheus.NewDesc("dnsaccel_nodecache_namespace_queries_total",
		"DNS queries of a namespace's pods by what answered them (the top namespaces; the rest as namespace=\"other\"; namespace=\"\": clients that are not pods).",
		[]string{"namespace", "answered_by"}, nil)
	descNSResponses = prometheus.NewDesc("dnsaccel_nodecache_namespace_responses_total",
		"DNS answers to a namespace's pods by rcode.", []string{"namespace", "rcode"}, nil)
	descNSTimeouts = prometheus.NewDesc("dnsaccel_nodecache_namespace_timeouts_total",
		"Queries of a namespace's pods that got no answer in time.", []string{"namespace"}, nil)
	descNSWaste = prometheus.NewDesc("dnsaccel_nodecache_namespace_search_waste_total",
		"NXDOMAIN answers to a namespace's pods for search-path candidates.", []string{"namespace"}, nil)

	descNameQueries = prometheus.NewDesc("dnsaccel_nodecache_name_queries_total",
		"Queries for a name that reached node-cache's user space (the top names by the space-saving count; the rest as name=\"other\").", []string{"name"}, nil)
	descNameNX = prometheus.NewDesc("dnsaccel_nodecache_name_nxdomain_total",
		"NXDOMAIN answers for a name (the top names; the rest as name=\"other\").", []string{"name"}, nil)

	descSeries = prometheus.NewDesc("dnsaccel_nodecache_dns_accounting_series",
		"Series of the per-pod, per-namespace and per-name metrics in this scrape.", nil, nil)
	descDropped = prometheus.NewDesc("dnsaccel_nodecache_dns_accounting_series_dropped_total",
		"Pods, namespaces and names summed into \"other\" because of the series cap (--accounting-max-series).", nil, nil)
	descClients = prometheus.NewDesc("dnsaccel_nodecache_dns_accounting_clients",
		"Client addresses counted apart (at most --accounting-max-clients).", nil, nil)
)

// Per-entity series counts.
const (
	podSeries  = int(nBy) + nRcode + 2 + nBuckets + 3 // + histogram buckets, +Inf, sum, count
	nsSeries   = int(nBy) + nRcode + 2
	nameSeries = 2
)

// Collector returns a prometheus.Collector of s.
func (s *Stats) Collector() prometheus.Collector { return collector{s} }

type collector struct{ s *Stats }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPodQueries, descPodResponses, descPodTimeouts, descPodWaste, descPodLatency,
		descNSQueries, descNSResponses, descNSTimeouts, descNSWaste, descNameQueries, descNameNX, descSeries, descDropped, descClients} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	snap := s.Snapshot()
	k := s.cfg.TopK
	// The remainders and the three gauges always fit.
	budget := s.cfg.MaxSeries - podSeries - nsSeries - nameSeries - 3
	emitted := 0
	var dropped uint64

	other := snap.Overflow
	for i, p := range snap.Pods {
		if i >= k || budget-podSeries < 0 || p.Namespace == "" && p.Name == "other" {
			if i < k {
				dropped++
			}
			other.Add(&p.Counters)
			continue
		}
		budget -= podSeries
		emitted += podSeries
		emitPod(ch, p.Namespace, p.Name, &p.Counters)
	}
	emitPod(ch, "", "other", &other)
	emitted += podSeries

	otherNS := snap.Overflow
	for i, n := range snap.Namespaces {
		if i >= k || budget-nsSeries < 0 || n.Namespace == "other" {
			if i < k && n.Namespace != "other" {
				dropped++
			}
			otherNS.Add(&n.Counters)
			continue
		}
		budget -= nsSeries
		emitted += nsSeries
		emitNS(ch, n.Namespace, &n.Counters)
	}
	emitNS(ch, "other", &otherNS)
	emitted += nsSeries

	restQ, restNX := snap.NameTotal, snap.NameNX
	for i, n := range snap.Names {
		if i >= k || budget-nameSeries < 0 {
			if i < k {
				dropped++
			}
			continue
		}
		budget -= nameSeries
		emitted += nameSeries
		// Space-saving counts may be over by their error: the exact
		// remainder below never goes negative.
		q, nx := min(n.Queries, restQ), min(n.NXDomain, restNX)
		restQ -= q
		restNX -= nx
		ch <- prometheus.MustNewConstMetric(descNameQueries, prometheus.CounterValue, float64(q), n.Name)
		ch <- prometheus.MustNewConstMetric(descNameNX, prometheus.CounterValue, float64(nx), n.Name)
	}
	ch <- prometheus.MustNewConstMetric(descNameQueries, prometheus.CounterValue, float64(restQ), "other")
	ch <- prometheus.MustNewConstMetric(descNameNX, prometheus.CounterValue, float64(restNX), "other")
	emitted += nameSeries

	total := s.dropped.Add(dropped)
	ch <- prometheus.MustNewConstMetric(descSeries, prometheus.GaugeValue, float64(emitted+3))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(total))
	ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, float64(snap.Clients))
}

func emitPod(ch chan<- prometheus.Metric, ns, pod string, c *Counters) {
	for b := By(0); b < nBy; b++ {
		ch <- prometheus.MustNewConstMetric(descPodQueries, prometheus.CounterValue, float64(c.By[b]), ns, pod, ByNames[b])
	}
	for i, v := range c.Rcodes {
		ch <- prometheus.MustNewConstMetric(descPodResponses, prometheus.CounterValue, float64(v), ns, pod, RcodeNames[i])
	}
	ch <- prometheus.MustNewConstMetric(descPodTimeouts, prometheus.CounterValue, float64(c.Timeouts), ns, pod)
	ch <- prometheus.MustNewConstMetric(descPodWaste, prometheus.CounterValue, float64(c.SearchWaste), ns, pod)
	buckets := make(map[float64]uint64, nBuckets)
	var cum uint64
	for i, b := range Buckets {
		cum += c.Latency[i]
		buckets[b] = cum
	}
	ch <- prometheus.MustNewConstHistogram(descPodLatency, c.Answered(), c.LatencySum.Seconds(), buckets, ns, pod)
}

func emitNS(ch chan<- prometheus.Metric, ns string, c *Counters) {
	for b := By(0); b < nBy; b++ {
		ch <- prometheus.MustNewConstMetric(descNSQueries, prometheus.CounterValue, float64(c.By[b]), ns, ByNames[b])
	}
	for i, v := range c.Rcodes {
		ch <- prometheus.MustNewConstMetric(descNSResponses, prometheus.CounterValue, float64(v), ns, RcodeNames[i])
	}
	ch <- prometheus.MustNewConstMetric(descNSTimeouts, prometheus.CounterValue, float64(c.Timeouts), ns)
	ch <- prometheus.MustNewConstMetric(descNSWaste, prometheus.CounterValue, float64(c.SearchWaste), ns)
}
