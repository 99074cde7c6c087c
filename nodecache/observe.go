package nodecache

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dnsaccel/dnsaccel/datapath/steer"
	"github.com/dnsaccel/dnsaccel/nodecache/dnsstats"
	"github.com/dnsaccel/dnsaccel/nodecache/obsapi"
)

// The observability endpoint (--observe): the JSON dnsaccelctl shows
// (nodecache/obsapi) and the query log's switch and feed. It tells who asks
// which names: keep it off the pod network (--observe 127.0.0.1:9254, or a
// NetworkPolicy / host firewall), or turn it off with --observe "".

func (ac *accounting) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+obsapi.PathTop, ac.serveTop)
	mux.HandleFunc("GET "+obsapi.PathCache, ac.serveCache)
	mux.HandleFunc("GET "+obsapi.PathSteering, ac.serveSteering)
	mux.HandleFunc("GET "+obsapi.PathQueryLog, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, ac.stats.LogStatus(ac.cfg.Accounting.QueryLogMaxRate))
	})
	mux.HandleFunc("POST "+obsapi.PathQueryLog, ac.serveLogOn)
	mux.HandleFunc("DELETE "+obsapi.PathQueryLog, func(w http.ResponseWriter, _ *http.Request) {
		ac.stopLog()
		writeJSON(w, http.StatusOK, ac.stats.LogStatus(ac.cfg.Accounting.QueryLogMaxRate))
	})
	mux.HandleFunc("GET "+obsapi.PathQueryLogFeed, ac.serveLogFeed)
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func httpError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func (ac *accounting) node() string {
	if ac.cfg.NodeName != "" {
		return ac.cfg.NodeName
	}
	h, _ := os.Hostname()
	return h
}

func row(c *dnsstats.Counters) obsapi.Row {
	return obsapi.Row{
		Queries: c.Queries, Kernel: c.By[dnsstats.ByKernel], Cache: c.By[dnsstats.ByCache],
		Upstream: c.By[dnsstats.ByUpstream], NoAnswer: c.By[dnsstats.ByNone],
		NXDomain: c.Rcodes[3], ServFail: c.Rcodes[2], Timeouts: c.Timeouts, SearchWaste: c.SearchWaste,
		P50Ms: ms(c.Quantile(0.5)), P99Ms: ms(c.Quantile(0.99)),
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// top is the top k pods, namespaces or names.
func (ac *accounting) top(by string, k int) (obsapi.Top, error) {
	snap := ac.stats.Snapshot()
	t := obsapi.Top{Node: ac.node(), By: by, Since: ac.since.UTC().Truncate(time.Second), Rows: []obsapi.Row{}}
	var total, other dnsstats.Counters
	total.Add(&snap.Overflow)
	other.Add(&snap.Overflow)
	switch by {
	case "pods", "namespaces":
		list := snap.Pods
		if by == "namespaces" {
			list = snap.Namespaces
		}
		for i := range list {
			p := &list[i]
			total.Add(&p.Counters)
			if i >= k {
				other.Add(&p.Counters)
				continue
			}
			r := row(&p.Counters)
			r.Namespace = p.Namespace
			if by == "pods" {
				r.Pod = p.Name
			}
			t.Rows = append(t.Rows, r)
		}
		t.Total = row(&total)
		if other.Queries > 0 {
			o := row(&other)
			t.Other = &o
		}
	case "names":
		rest, restNX := snap.NameTotal, snap.NameNX
		for i, n := range snap.Names {
			if i >= k {
				break
			}
			q, nx := min(n.Queries, rest), min(n.NXDomain, restNX)
			rest -= q
			restNX -= nx
			t.Rows = append(t.Rows, obsapi.Row{Name: n.Name, Queries: q, NXDomain: nx, Error: n.Error})
		}
		t.Total = obsapi.Row{Queries: snap.NameTotal, NXDomain: snap.NameNX}
		if rest > 0 {
			t.Other = &obsapi.Row{Queries: rest, NXDomain: restNX}
		}
	default:
		return t, fmt.Errorf("by %q: want pods, namespaces or names", by)
	}
	return t, nil
}

func (ac *accounting) serveTop(w http.ResponseWriter, r *http.Request) {
	by := r.URL.Query().Get("by")
	if by == "" {
		by = "pods"
	}
	k := ac.stats.Config().TopK
	if s := r.URL.Query().Get("k"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10000 {
			httpError(w, http.StatusBadRequest, fmt.Errorf("k %q: want 1 to 10000", s))
			return
		}
		k = n
	}
	t, err := ac.top(by, k)
	if err != nil {
		httpError(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// gathered sums the samples of the default registry's metrics by name.
func gathered(names ...string) map[string]float64 {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	mfs, _ := prometheus.DefaultGatherer.Gather() // partial results on error are fine
	for _, mf := range mfs {
		if !want[mf.GetName()] {
			continue
		}
		for _, m := range mf.Metric {
			switch {
			case m.Counter != nil:
				out[mf.GetName()] += m.Counter.GetValue()
			case m.Gauge != nil:
				out[mf.GetName()] += m.Gauge.GetValue()
			}
		}
	}
	return out
}

func (ac *accounting) serveCache(w http.ResponseWriter, _ *http.Request) {
	g := gathered("coredns_nodecache_hits_total", "coredns_nodecache_fastpath_hits_total", "coredns_nodecache_offload_hits_total",
		"coredns_nodecache_misses_total", "coredns_nodecache_entries", "coredns_nodecache_bytes",
		"dnsaccel_nodecache_kernel_cache_entries", "dnsaccel_nodecache_kernel_cache_interfaces")
	c := obsapi.Cache{
		Node:    ac.node(),
		Entries: int64(g["coredns_nodecache_entries"]), Bytes: int64(g["coredns_nodecache_bytes"]),
		Hits:          uint64(g["coredns_nodecache_hits_total"] + g["coredns_nodecache_fastpath_hits_total"]),
		KernelHits:    uint64(g["coredns_nodecache_offload_hits_total"]),
		Misses:        uint64(g["coredns_nodecache_misses_total"]),
		Kernel:        currentKernelCache.Load() != nil,
		KernelEntries: int64(g["dnsaccel_nodecache_kernel_cache_entries"]), KernelInterfaces: int64(g["dnsaccel_nodecache_kernel_cache_interfaces"]),
	}
	if ac.cfg.Conf == "" {
		c.MaxBytes = int64(ac.cfg.CacheMaxBytes)
		if c.MaxBytes == 0 {
			c.MaxBytes = int64(DefaultCacheMaxBytes)
		}
	}
	if c.Kernel {
		c.KernelMaxBytes = ac.cfg.KernelCache.MaxBytes
	}
	if all := c.Hits + c.KernelHits + c.Misses; all > 0 {
		c.HitRatio = float64(c.Hits+c.KernelHits) / float64(all)
		c.KernelShare = float64(c.KernelHits) / float64(all)
	}
	t, _ := ac.top("names", 10)
	c.Hottest = t.Rows
	writeJSON(w, http.StatusOK, c)
}

func (ac *accounting) serveSteering(w http.ResponseWriter, _ *http.Request) {
	st := obsapi.Steering{Node: ac.node(), HeartbeatAgeSeconds: -1}
	if k := currentKernelCache.Load(); k != nil {
		st.KernelCacheLinks = len(k.kc.Attached())
	}
	s := current.Load()
	if s == nil {
		writeJSON(w, http.StatusOK, st)
		return
	}
	st.Enabled = true
	st.VIPs = s.cfg.ClusterDNS
	st.LocalIPs = s.cfg.LocalIPs
	st.HeartbeatTimeoutSeconds = s.cfg.HeartbeatTimeout.Seconds()
	if age := s.dp.HeartbeatAge(); age >= 0 {
		st.HeartbeatAgeSeconds = age.Seconds()
	}
	st.Fallback = !s.dp.Fresh()
	st.Notrack = s.notrackOn.Load()
	st.Cgroup = s.dp.Options().Cgroup
	st.Pins = s.dp.Dir()
	if ids, err := s.dp.IDs(); err == nil {
		st.Links = len(ids.Links)
	}
	if stats, err := s.dp.Stats(); err == nil {
		st.Operations = map[string]uint64{}
		for k, v := range stats {
			st.Operations[steerStatName(k)] = v
		}
	}
	writeJSON(w, http.StatusOK, st)
}

func (ac *accounting) serveLogOn(w http.ResponseWriter, r *http.Request) {
	var req obsapi.LogRequest
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&req); err != nil {
			httpError(w, http.StatusBadRequest, fmt.Errorf("query log request: %w", err))
			return
		}
	} else {
		q := r.URL.Query()
		req.Namespace, req.Pod, req.Duration = q.Get("namespace"), q.Get("pod"), q.Get("duration")
		if s := q.Get("sample"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil {
				httpError(w, http.StatusBadRequest, fmt.Errorf("sample %q: %w", s, err))
				return
			}
			req.Sample = n
		}
	}
	sel := dnsstats.LogSelection{Namespace: req.Namespace, Pod: req.Pod, Sample: req.Sample}
	if req.Duration != "" {
		d, err := time.ParseDuration(req.Duration)
		if err != nil {
			httpError(w, http.StatusBadRequest, fmt.Errorf("duration %q: %w", req.Duration, err))
			return
		}
		sel.Duration = d
	}
	if ac.pods == nil {
		httpError(w, http.StatusConflict, errors.New("the query log selects pods by their addresses: it needs Kubernetes mode (the pod index)"))
		return
	}
	l, err := ac.startLog(sel)
	if err != nil {
		httpError(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusOK, l.Status())
}

func (ac *accounting) serveLogFeed(w http.ResponseWriter, r *http.Request) {
	l := ac.stats.Log()
	if l == nil {
		httpError(w, http.StatusNotFound, errors.New("the query log is off"))
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	flusher, _ := w.(http.Flusher)
	if r.URL.Query().Get("follow") != "true" {
		for _, b := range l.Lines() {
			w.Write(b)
		}
		return
	}
	w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}
	l.Follow(r.Context(), true, func(b []byte) error {
		if _, err := w.Write(b); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	})
}

func steerStatName(k steer.Stat) string {
	switch k {
	case steer.StatSteered:
		return "steered"
	case steer.StatStale:
		return "stale_heartbeat"
	case steer.StatSkipMark:
		return "own_socket"
	case steer.StatReversed:
		return "reply_from_vip"
	case steer.StatRevFail:
		return "reverse_failed"
	}
	return fmt.Sprintf("stat_%d", k)
}
