// Package ctl is dnsaccelctl: a kubectl-like view of node-cache's per-pod
// DNS accounting, its cache and its steering, from one node-cache
// (--endpoint, --node) or every node-cache of the cluster (the DaemonSet's
// pods, reached through the API server's pod proxy). Exit codes as
// pvtzctl's: 0 fine, 1 attention (a node in fallback, a node that did not
// answer while others did), 2 error.
package ctl

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/dnsaccel/dnsaccel/nodecache/dnsstats"
	"github.com/dnsaccel/dnsaccel/nodecache/obsapi"
)

const usage = `Usage: dnsaccelctl COMMAND [ARGS] [flags]

DNS observability from node-cache: who asks what, what fails, what the search
path wastes, what the cache and the steering do.

Commands:
  top pods|namespaces|names      the top talkers: queries (and QPS over --interval),
                                 what answered (kernel, cache, upstream), NXDOMAIN,
                                 SERVFAIL, timeouts, search-path waste, latency
  log --pod NS/NAME [--follow]   turn the query log on for one pod (or --namespace NS)
                                 and print its queries; --off turns it off
  cache                          size, byte budget, hit ratio, kernel share, hottest names
  steering                       VIPs, heartbeat age, fallback state, links
                                 (exit 1 when a node is in fallback)

Which node-cache: --endpoint URL (its --observe address), --node NAME (the
node-cache pod on that node, through the API server), or, with neither, every
node-cache pod (--selector in --node-cache-namespace) through the API server.
Exit codes: 0 fine, 1 attention (a node in fallback, a node that did not
answer while others did), 2 error.

Flags:
`

// Main runs dnsaccelctl with args (without the program name) and returns
// the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return run(ctx, args, stdout, stderr)
}

type options struct {
	endpoint, node, kubeconfig, ncNamespace, selector, port string
	output                                                  string
	k                                                       int
	interval, timeout                                       time.Duration
	pod, namespace                                          string
	follow, off                                             bool
	sample                                                  int
	duration                                                time.Duration
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("dnsaccelctl", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.endpoint, "endpoint", "", "URL of one node-cache's --observe endpoint (http://127.0.0.1:9254)")
	fs.StringVar(&o.node, "node", "", "the node-cache on this node, through the API server")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the API server (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
	fs.StringVar(&o.ncNamespace, "node-cache-namespace", "kube-system", "namespace of the node-cache DaemonSet")
	fs.StringVar(&o.selector, "selector", "k8s-app=node-cache", "label selector of the node-cache pods")
	fs.StringVar(&o.port, "port", "9254", "node-cache's --observe port, through the API server's pod proxy")
	fs.StringVarP(&o.output, "output", "o", "table", "output format: table, json, yaml")
	fs.IntVarP(&o.k, "top", "k", 20, "top: rows per node")
	fs.DurationVar(&o.interval, "interval", time.Second, "top: measure QPS over this long (0: totals since node-cache started, no QPS)")
	fs.StringVar(&o.pod, "pod", "", "log: NAMESPACE/NAME of the pod")
	fs.StringVarP(&o.namespace, "namespace", "n", "", "log: every pod of this namespace")
	fs.BoolVarP(&o.follow, "follow", "f", false, "log: print queries as they come until interrupted (or --duration), then turn the log off")
	fs.BoolVar(&o.off, "off", false, "log: turn the query log off")
	fs.IntVar(&o.sample, "sample", 1, "log: log one query in N")
	fs.DurationVar(&o.duration, "duration", 5*time.Minute, "log: node-cache turns the log off after this long (at most 1h)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "give up on a node-cache after this long (not with log --follow)")
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "dnsaccelctl: %v\n", err)
		return 2
	}
	fail := func(err error) int { fmt.Fprintf(stderr, "dnsaccelctl: %v\n", err); return 2 }
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return 2
	}
	if o.output != "table" && o.output != "json" && o.output != "yaml" {
		return fail(fmt.Errorf("-o %q: want table, json or yaml", o.output))
	}
	if o.endpoint != "" && o.node != "" {
		return fail(errors.New("--endpoint and --node: give one"))
	}
	c := &cli{o: o, stdout: stdout, stderr: stderr}
	switch rest[0] {
	case "top":
		if len(rest) != 2 || (rest[1] != "pods" && rest[1] != "namespaces" && rest[1] != "names") {
			return fail(errors.New("top: want pods, namespaces or names"))
		}
		return c.top(ctx, rest[1])
	case "log":
		if len(rest) != 1 {
			return fail(errors.New("log takes no arguments: --pod NS/NAME or --namespace NS"))
		}
		return c.log(ctx)
	case "cache":
		return c.cache(ctx)
	case "steering":
		return c.steering(ctx)
	}
	return fail(fmt.Errorf("unknown command %q (see --help)", rest[0]))
}

type cli struct {
	o              options
	stdout, stderr io.Writer
}

// target is one node-cache.
type target interface {
	Name() string
	Do(ctx context.Context, method, path string, q url.Values, body []byte) ([]byte, error)
	Stream(ctx context.Context, path string, q url.Values) (io.ReadCloser, error)
}

// httpTarget is a node-cache reached directly (--endpoint).
type httpTarget struct {
	base string
	hc   *http.Client
}

func (h *httpTarget) Name() string { return h.base }

func (h *httpTarget) url(path string, q url.Values) string {
	u := strings.TrimSuffix(h.base, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

func (h *httpTarget) Do(ctx context.Context, method, path string, q url.Values, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(string(body))
	}
	req, err := http.NewRequestWithContext(ctx, method, h.url(path, q), rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, apiError(resp.StatusCode, b)
	}
	return b, nil
}

func (h *httpTarget) Stream(ctx context.Context, path string, q url.Values) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url(path, q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, apiError(resp.StatusCode, b)
	}
	return resp.Body, nil
}

func apiError(code int, b []byte) error {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return fmt.Errorf("%s (HTTP %d)", e.Error, code)
	}
	return fmt.Errorf("HTTP %d: %s", code, strings.TrimSpace(string(b)))
}

// proxyTarget is a node-cache pod reached through the API server's pod
// proxy (RBAC: get on pods/proxy in its namespace; create and delete for
// the query log's switch).
type proxyTarget struct {
	cs            kubernetes.Interface
	ns, pod, port string
	node          string
}

func (p *proxyTarget) Name() string { return p.node }

func (p *proxyTarget) Do(ctx context.Context, method, path string, q url.Values, body []byte) ([]byte, error) {
	req := p.cs.CoreV1().RESTClient().Verb(method).Namespace(p.ns).Resource("pods").
		Name(p.pod + ":" + p.port).SubResource("proxy").Suffix(path)
	for k, vs := range q {
		for _, v := range vs {
			req = req.Param(k, v)
		}
	}
	if body != nil {
		req = req.Body(body).SetHeader("Content-Type", "application/json")
	}
	b, err := req.Do(ctx).Raw()
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", p.ns, p.pod, err)
	}
	return b, nil
}

func (p *proxyTarget) Stream(ctx context.Context, path string, q url.Values) (io.ReadCloser, error) {
	req := p.cs.CoreV1().RESTClient().Get().Namespace(p.ns).Resource("pods").
		Name(p.pod + ":" + p.port).SubResource("proxy").Suffix(path)
	for k, vs := range q {
		for _, v := range vs {
			req = req.Param(k, v)
		}
	}
	return req.Stream(ctx)
}

func (c *cli) kube() (kubernetes.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if c.o.kubeconfig != "" {
		rules.ExplicitPath = c.o.kubeconfig
	}
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	rc.UserAgent = "dnsaccelctl"
	return kubernetes.NewForConfig(rc)
}

// targets are the node-caches to ask: --endpoint, --node, or all (node
// "" with onNode set: the node-cache of that node).
func (c *cli) targets(ctx context.Context, onNode string) ([]target, error) {
	if c.o.endpoint != "" {
		return []target{&httpTarget{base: c.o.endpoint, hc: &http.Client{}}}, nil
	}
	cs, err := c.kube()
	if err != nil {
		return nil, err
	}
	node := c.o.node
	if node == "" {
		node = onNode
	}
	lo := metav1.ListOptions{LabelSelector: c.o.selector}
	if node != "" {
		lo.FieldSelector = "spec.nodeName=" + node
	}
	pods, err := cs.CoreV1().Pods(c.o.ncNamespace).List(ctx, lo)
	if err != nil {
		return nil, fmt.Errorf("listing node-cache pods (%s in %s): %w", c.o.selector, c.o.ncNamespace, err)
	}
	var out []target
	for _, p := range pods.Items {
		if p.Status.Phase != "Running" {
			continue
		}
		out = append(out, &proxyTarget{cs: cs, ns: p.Namespace, pod: p.Name, port: c.o.port, node: p.Spec.NodeName})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	if len(out) == 0 {
		where := "in the cluster"
		if node != "" {
			where = "on node " + node
		}
		return nil, fmt.Errorf("no running node-cache pod (%s in %s) %s", c.o.selector, c.o.ncNamespace, where)
	}
	return out, nil
}

// each asks every target at once; failures are reported on stderr and
// make the result partial.
func each[T any](ctx context.Context, c *cli, ts []target, f func(ctx context.Context, t target) (T, error)) ([]T, int) {
	res := make([]T, len(ts))
	errs := make([]error, len(ts))
	var wg sync.WaitGroup
	for i, t := range ts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tctx, cancel := context.WithTimeout(ctx, c.o.timeout)
			defer cancel()
			res[i], errs[i] = f(tctx, t)
		}()
	}
	wg.Wait()
	var ok []T
	failed := 0
	for i, err := range errs {
		if err != nil {
			fmt.Fprintf(c.stderr, "dnsaccelctl: %s: %v\n", ts[i].Name(), err)
			failed++
			continue
		}
		ok = append(ok, res[i])
	}
	switch {
	case failed == 0:
		return ok, 0
	case len(ok) > 0:
		return ok, 1
	}
	return nil, 2
}

func getJSON[T any](ctx context.Context, t target, path string, q url.Values) (T, error) {
	var v T
	b, err := t.Do(ctx, http.MethodGet, path, q, nil)
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// ---- output ----

func (c *cli) emit(v any, header []string, rows [][]string) int {
	switch c.o.output {
	case "json":
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			fmt.Fprintf(c.stderr, "dnsaccelctl: %v\n", err)
			return 2
		}
		fmt.Fprintln(c.stdout, string(b))
		return 0
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			fmt.Fprintf(c.stderr, "dnsaccelctl: %v\n", err)
			return 2
		}
		fmt.Fprint(c.stdout, string(b))
		return 0
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
	return 0
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fmtMs(v float64) string {
	if v == 0 {
		return "-"
	}
	if v < 1 {
		return fmt.Sprintf("%.0fµs", v*1000)
	}
	return fmt.Sprintf("%.1fms", v)
}

func pct(v float64) string { return fmt.Sprintf("%.1f%%", v*100) }

func bytesString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGi", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMi", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKi", float64(n)/(1<<10))
	}
	return fmt.Sprint(n)
}

// ---- top ----

// TopResult is one node's top, with the rates over --interval.
type TopResult struct {
	obsapi.Top
	IntervalSeconds float64            `json:"interval_seconds,omitempty"`
	QPS             map[string]float64 `json:"qps,omitempty"` // by row key (namespace/pod, namespace, name)
}

func rowKey(by string, r obsapi.Row) string {
	switch by {
	case "pods":
		return r.Namespace + "/" + r.Pod
	case "namespaces":
		return r.Namespace
	}
	return r.Name
}

func (c *cli) top(ctx context.Context, by string) int {
	ts, err := c.targets(ctx, "")
	if err != nil {
		fmt.Fprintf(c.stderr, "dnsaccelctl: %v\n", err)
		return 2
	}
	q := url.Values{"by": {by}, "k": {fmt.Sprint(max(c.o.k, 1))}}
	results, code := each(ctx, c, ts, func(ctx context.Context, t target) (TopResult, error) {
		if c.o.interval <= 0 {
			top, err := getJSON[obsapi.Top](ctx, t, obsapi.PathTop, q)
			return TopResult{Top: top}, err
		}
		// The rates need every row of the first sample that may be in
		// the second's top: ask for more rows the first time.
		q1 := url.Values{"by": {by}, "k": {"10000"}}
		first, err := getJSON[obsapi.Top](ctx, t, obsapi.PathTop, q1)
		if err != nil {
			return TopResult{}, err
		}
		start := time.Now()
		select {
		case <-ctx.Done():
			return TopResult{}, ctx.Err()
		case <-time.After(c.o.interval):
		}
		second, err := getJSON[obsapi.Top](ctx, t, obsapi.PathTop, q)
		if err != nil {
			return TopResult{}, err
		}
		secs := time.Since(start).Seconds()
		before := map[string]uint64{}
		for _, r := range first.Rows {
			before[rowKey(by, r)] = r.Queries
		}
		res := TopResult{Top: second, IntervalSeconds: secs, QPS: map[string]float64{}}
		for _, r := range second.Rows {
			k := rowKey(by, r)
			res.QPS[k] = float64(r.Queries-min(before[k], r.Queries)) / secs
		}
		res.QPS["total"] = float64(second.Total.Queries-min(first.Total.Queries, second.Total.Queries)) / secs
		return res, nil
	})
	if code == 2 {
		return 2
	}
	var header []string
	if len(results) > 1 || c.o.endpoint == "" {
		header = append(header, "NODE")
	}
	withNode := len(header) == 1
	switch by {
	case "pods":
		header = append(header, "NAMESPACE", "POD")
	case "namespaces":
		header = append(header, "NAMESPACE")
	default:
		header = append(header, "NAME")
	}
	rates := c.o.interval > 0
	header = append(header, "QUERIES")
	if rates {
		header = append(header, "QPS")
	}
	if by == "names" {
		header = append(header, "NXDOMAIN")
	} else {
		header = append(header, "KERNEL", "CACHE", "UPSTREAM", "NXDOMAIN", "SERVFAIL", "TIMEOUTS", "SEARCH-WASTE", "P50", "P99")
	}
	var rows [][]string
	for _, r := range results {
		add := func(label []string, row obsapi.Row, qps float64) {
			cells := []string{}
			if withNode {
				cells = append(cells, r.Node)
			}
			cells = append(cells, label...)
			cells = append(cells, fmt.Sprint(row.Queries))
			if rates {
				cells = append(cells, fmt.Sprintf("%.1f", qps))
			}
			if by == "names" {
				cells = append(cells, fmt.Sprint(row.NXDomain))
			} else {
				cells = append(cells, fmt.Sprint(row.Kernel), fmt.Sprint(row.Cache), fmt.Sprint(row.Upstream),
					fmt.Sprint(row.NXDomain), fmt.Sprint(row.ServFail), fmt.Sprint(row.Timeouts), fmt.Sprint(row.SearchWaste),
					fmtMs(row.P50Ms), fmtMs(row.P99Ms))
			}
			rows = append(rows, cells)
		}
		for _, row := range r.Rows {
			var label []string
			switch by {
			case "pods":
				label = []string{dash(row.Namespace), row.Pod}
			case "namespaces":
				label = []string{dash(row.Namespace)}
			default:
				label = []string{row.Name}
			}
			add(label, row, r.QPS[rowKey(by, row)])
		}
		if r.Other != nil {
			label := []string{"(other)"}
			if by == "pods" {
				label = []string{"(other)", "-"}
			}
			add(label, *r.Other, 0)
		}
	}
	if out := c.emit(results, header, rows); out != 0 {
		return out
	}
	return code
}

// ---- cache ----

func (c *cli) cache(ctx context.Context) int {
	ts, err := c.targets(ctx, "")
	if err != nil {
		fmt.Fprintf(c.stderr, "dnsaccelctl: %v\n", err)
		return 2
	}
	results, code := each(ctx, c, ts, func(ctx context.Context, t target) (obsapi.Cache, error) {
		return getJSON[obsapi.Cache](ctx, t, obsapi.PathCache, nil)
	})
	if code == 2 {
		return 2
	}
	header := []string{"NODE", "ENTRIES", "BYTES", "BUDGET", "HITS", "KERNEL-HITS", "MISSES", "HIT-RATIO", "KERNEL-SHARE", "KERNEL-ENTRIES", "KERNEL-IFACES", "HOTTEST"}
	var rows [][]string
	for _, r := range results {
		budget := "-"
		if r.MaxBytes > 0 {
			budget = bytesString(r.MaxBytes) + "/block"
		}
		var hot []string
		for i, h := range r.Hottest {
			if i == 3 {
				break
			}
			hot = append(hot, fmt.Sprintf("%s(%d)", h.Name, h.Queries))
		}
		ke, ki := "-", "-"
		if r.Kernel {
			ke, ki = fmt.Sprint(r.KernelEntries), fmt.Sprint(r.KernelInterfaces)
		}
		rows = append(rows, []string{r.Node, fmt.Sprint(r.Entries), bytesString(r.Bytes), budget, fmt.Sprint(r.Hits),
			fmt.Sprint(r.KernelHits), fmt.Sprint(r.Misses), pct(r.HitRatio), pct(r.KernelShare), ke, ki, dash(strings.Join(hot, ","))})
	}
	if out := c.emit(results, header, rows); out != 0 {
		return out
	}
	return code
}

// ---- steering ----

func (c *cli) steering(ctx context.Context) int {
	ts, err := c.targets(ctx, "")
	if err != nil {
		fmt.Fprintf(c.stderr, "dnsaccelctl: %v\n", err)
		return 2
	}
	results, code := each(ctx, c, ts, func(ctx context.Context, t target) (obsapi.Steering, error) {
		return getJSON[obsapi.Steering](ctx, t, obsapi.PathSteering, nil)
	})
	if code == 2 {
		return 2
	}
	header := []string{"NODE", "STEERING", "VIPS", "LOCAL-IPS", "HEARTBEAT-AGE", "TIMEOUT", "STATE", "NOTRACK", "LINKS", "KERNEL-CACHE-LINKS", "STEERED"}
	var rows [][]string
	for _, r := range results {
		if !r.Enabled {
			rows = append(rows, []string{r.Node, "off", "-", "-", "-", "-", "-", "-", "0", fmt.Sprint(r.KernelCacheLinks), "-"})
			continue
		}
		state, age := "steering", "never"
		if r.Fallback {
			state = "fallback"
			code = max(code, 1)
		}
		if r.HeartbeatAgeSeconds >= 0 {
			age = (time.Duration(r.HeartbeatAgeSeconds * float64(time.Second))).Round(time.Millisecond).String()
		}
		nt := "off"
		if r.Notrack {
			nt = "on"
		}
		rows = append(rows, []string{r.Node, "on", strings.Join(r.VIPs, ","), strings.Join(r.LocalIPs, ","), age,
			(time.Duration(r.HeartbeatTimeoutSeconds * float64(time.Second))).String(), state, nt,
			fmt.Sprint(r.Links), fmt.Sprint(r.KernelCacheLinks), fmt.Sprint(r.Operations["steered"])})
	}
	if out := c.emit(results, header, rows); out != 0 {
		return out
	}
	return code
}

// ---- log ----

func (c *cli) log(ctx context.Context) int {
	fail := func(err error) int { fmt.Fprintf(c.stderr, "dnsaccelctl: %v\n", err); return 2 }
	var req obsapi.LogRequest
	onNode := ""
	if !c.o.off {
		switch {
		case c.o.pod != "" && c.o.namespace != "":
			return fail(errors.New("log: --pod or --namespace, not both"))
		case c.o.pod != "":
			ns, name, ok := strings.Cut(c.o.pod, "/")
			if !ok || ns == "" || name == "" {
				return fail(fmt.Errorf("--pod %q: want NAMESPACE/NAME", c.o.pod))
			}
			req.Namespace, req.Pod = ns, name
			if c.o.endpoint == "" && c.o.node == "" {
				// The pod's own node-cache only.
				cs, err := c.kube()
				if err != nil {
					return fail(err)
				}
				p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					return fail(fmt.Errorf("pod %s: %w", c.o.pod, err))
				}
				onNode = p.Spec.NodeName
			}
		case c.o.namespace != "":
			req.Namespace = c.o.namespace
		default:
			return fail(errors.New("log: --pod NAMESPACE/NAME or --namespace NS (or --off)"))
		}
		req.Sample, req.Duration = c.o.sample, c.o.duration.String()
	}
	ts, err := c.targets(ctx, onNode)
	if err != nil {
		return fail(err)
	}
	if c.o.off {
		_, code := each(ctx, c, ts, func(ctx context.Context, t target) (struct{}, error) {
			_, err := t.Do(ctx, http.MethodDelete, obsapi.PathQueryLog, nil, nil)
			return struct{}{}, err
		})
		if code != 2 {
			fmt.Fprintln(c.stderr, "query log off")
		}
		return code
	}
	body, _ := json.Marshal(req)
	// Turn it on where it is not on for this very selection (a second
	// call shows what was logged since the first).
	_, code := each(ctx, c, ts, func(ctx context.Context, t target) (struct{}, error) {
		st, err := getJSON[dnsstats.LogStatus](ctx, t, obsapi.PathQueryLog, nil)
		if err == nil && st.On && st.Selection != nil && st.Selection.Namespace == req.Namespace &&
			st.Selection.Pod == req.Pod && st.Selection.Sample == max(req.Sample, 1) && !c.o.follow {
			return struct{}{}, nil
		}
		_, err = t.Do(ctx, http.MethodPost, obsapi.PathQueryLog, nil, body)
		return struct{}{}, err
	})
	if code == 2 {
		return 2
	}
	what := req.Namespace + "/" + req.Pod
	if req.Pod == "" {
		what = "namespace " + req.Namespace
	}
	out := &lineWriter{c: c}
	if !c.o.follow {
		_, code2 := each(ctx, c, ts, func(ctx context.Context, t target) (struct{}, error) {
			b, err := t.Do(ctx, http.MethodGet, obsapi.PathQueryLogFeed, nil, nil)
			if err != nil {
				return struct{}{}, err
			}
			sc := bufio.NewScanner(strings.NewReader(string(b)))
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				out.line(sc.Bytes())
			}
			return struct{}{}, nil
		})
		out.flush()
		fmt.Fprintf(c.stderr, "query log on for %s for %s from its start: run again for more, --follow to stream, --off to stop\n", what, c.o.duration)
		return max(code, code2)
	}
	fmt.Fprintf(c.stderr, "query log on for %s (Ctrl-C to stop)\n", what)
	var wg sync.WaitGroup
	for _, t := range ts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, err := t.Stream(ctx, obsapi.PathQueryLogFeed, url.Values{"follow": {"true"}})
			if err != nil {
				fmt.Fprintf(c.stderr, "dnsaccelctl: %s: %v\n", t.Name(), err)
				return
			}
			defer rc.Close()
			sc := bufio.NewScanner(rc)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				out.line(sc.Bytes())
				out.flush()
			}
		}()
	}
	wg.Wait()
	out.flush()
	// Off again on the way out, whatever ended the stream.
	offCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, t := range ts {
		t.Do(offCtx, http.MethodDelete, obsapi.PathQueryLog, nil, nil)
	}
	return code
}

// lineWriter prints query log lines in the chosen format.
type lineWriter struct {
	c      *cli
	mu     sync.Mutex
	tw     *tabwriter.Writer
	header bool
}

func (w *lineWriter) line(b []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch w.c.o.output {
	case "json":
		fmt.Fprintln(w.c.stdout, string(b))
		return
	case "yaml":
		var v any
		if json.Unmarshal(b, &v) == nil {
			y, _ := yaml.Marshal(v)
			fmt.Fprintf(w.c.stdout, "---\n%s", y)
		}
		return
	}
	var l dnsstats.LogLine
	if err := json.Unmarshal(b, &l); err != nil {
		return
	}
	if w.tw == nil {
		w.tw = tabwriter.NewWriter(w.c.stdout, 0, 4, 2, ' ', 0)
	}
	if !w.header {
		fmt.Fprintln(w.tw, "TIME\tNAMESPACE\tPOD\tNAME\tTYPE\tRCODE\tANSWERED-BY\tLATENCY")
		w.header = true
	}
	lat := fmt.Sprintf("%.0fµs", l.LatencyUS)
	if l.Timeout {
		lat += " (timeout)"
	}
	fmt.Fprintf(w.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Time.Format("15:04:05.000"), l.Namespace, l.Pod, l.Name, l.Type, dash(l.Rcode), l.AnsweredBy, lat)
}

func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.tw != nil {
		w.tw.Flush()
	}
}
