package node

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/dnstest"
	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

// The steps of the demo and of test/e2e. Each measures what it shows and
// returns an error saying what did not behave.

// ServiceFQDN is the demo Service's cluster name.
func ServiceFQDN() string { return ServiceName + "." + ServiceNamespace + ".svc.cluster.local" }

// PrivateZoneName is the demo Service's PrivateZone name (pvtz-sync's
// default template {{.Name}}.{{.Namespace}} in Zone).
func PrivateZoneName() string { return ServiceName + "." + ServiceNamespace + "." + Zone }

// CheckPods verifies step 1: every pod has a distinct VPC address from the
// pool, on its ENI, and its Pod object says so.
func (n *Node) CheckPods() error {
	if len(n.Pods) != 2 {
		return fmt.Errorf("%d pods, want 2", len(n.Pods))
	}
	seen := map[netip.Addr]bool{}
	for _, p := range n.Pods {
		switch {
		case !VPCCIDR.Contains(p.IP):
			return fmt.Errorf("pod %s: address %s is not in the VPC %s", p.Name, p.IP, VPCCIDR)
		case seen[p.IP]:
			return fmt.Errorf("pods share the address %s", p.IP)
		case p.ENI == "":
			return fmt.Errorf("pod %s: no ENI", p.Name)
		case p.Object == nil || p.Object.Status.PodIP != p.IP.String():
			return fmt.Errorf("pod %s: Pod object's podIP is not %s", p.Name, p.IP)
		}
		seen[p.IP] = true
		var has bool
		if err := p.cni.Do(func() error {
			out, err := exec.Command("ip", "-4", "-o", "addr", "show", "dev", "eth0").Output()
			has = err == nil && strings.Contains(string(out), " "+p.IP.String()+"/32")
			return nil
		}); err != nil {
			return err
		}
		if !has {
			return fmt.Errorf("pod %s: %s is not on its eth0", p.Name, p.IP)
		}
	}
	return nil
}

// Metrics is a scrape of node-cache's /metrics: name{labels} -> value.
type Metrics = dnstest.Metrics

// NodeCacheMetricsNow scrapes node-cache.
func (n *Node) NodeCacheMetricsNow() (Metrics, error) {
	b, err := httpBody("http://" + n.NodeCacheMetrics + "/metrics")
	if err != nil {
		return nil, err
	}
	return dnstest.ParseMetrics(strings.NewReader(b))
}

// CacheCounters are node-cache's cache and autopath counters.
type CacheCounters struct {
	Hits, Misses, AutopathHits, Steered float64
}

func (n *Node) counters() (CacheCounters, error) {
	m, err := n.NodeCacheMetricsNow()
	if err != nil {
		return CacheCounters{}, err
	}
	return CacheCounters{
		Hits:         m.Sum("coredns_nodecache_hits_total", "") + m.Sum("coredns_nodecache_fastpath_hits_total", ""),
		Misses:       m.Sum("coredns_nodecache_misses_total", ""),
		AutopathHits: m.Sum("coredns_k8s_autopath_hits_total", ""),
		Steered:      m.Sum("dnsaccel_nodecache_steering_operations_total", `result="steered"`),
	}, nil
}

func (c CacheCounters) minus(o CacheCounters) CacheCounters {
	return CacheCounters{c.Hits - o.Hits, c.Misses - o.Misses, c.AutopathHits - o.AutopathHits, c.Steered - o.Steered}
}

// Exec runs a command in pod p's namespace with its resolv.conf and hosts
// (ip netns exec).
func (n *Node) Exec(ctx context.Context, p *Pod, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.Netns}, argv...)...)
	return cmd.CombinedOutput()
}

// Dig is one dig from a pod.
type Dig struct {
	Answer string        // first A
	Server string        // dig's SERVER line: whom it asked and accepted the reply from
	Time   time.Duration // dig's query time
}

var (
	digTime   = regexp.MustCompile(`Query time: (\d+) msec`)
	digServer = regexp.MustCompile(`SERVER: (\S+)`)
)

// Dig runs `dig +tries=1 +time=2 name` in pod p (dig's nameserver: the
// pod's resolv.conf, the VIP). dig drops replies from any other source
// than the server it asked.
func (n *Node) Dig(ctx context.Context, p *Pod, name string) (Dig, error) {
	out, err := n.Exec(ctx, p, "dig", "+tries=1", "+time=2", "+nocookie", name, "A")
	if err != nil {
		return Dig{}, fmt.Errorf("dig %s in %s: %v\n%s", name, p.Name, err, out)
	}
	var d Dig
	if m := digServer.FindSubmatch(out); m != nil {
		d.Server = string(m[1])
	}
	if m := digTime.FindSubmatch(out); m != nil {
		ms, _ := strconv.Atoi(string(m[1]))
		d.Time = time.Duration(ms) * time.Millisecond
	}
	r := new(dns.Msg)
	for _, l := range strings.Split(string(out), "\n") {
		if rr, err := dns.NewRR(l); err == nil && rr != nil && !strings.HasPrefix(l, ";") {
			r.Answer = append(r.Answer, rr)
		}
	}
	d.Answer = firstA(r)
	if d.Answer == "" {
		return d, fmt.Errorf("dig %s in %s: no A record\n%s", name, p.Name, out)
	}
	return d, nil
}

// Getent is one glibc lookup (getent ahosts: getaddrinfo, A and AAAA) from
// a pod, with the DNS queries the pod put on the wire for it.
type Getent struct {
	Addrs   []string
	Queries []netns.Query
}

// Getent runs `getent ahosts name` in pod p and captures its queries on
// the pod's veth (tcpdump).
func (n *Node) Getent(ctx context.Context, p *Pod, name string) (Getent, error) {
	c, err := netns.CaptureDNSOn(ctx, p.HostVeth)
	if err != nil {
		return Getent{}, err
	}
	out, err := n.Exec(ctx, p, "getent", "ahosts", name)
	q := c.Stop()
	if err != nil {
		return Getent{Queries: q}, fmt.Errorf("getent ahosts %s in %s: %v\n%s", name, p.Name, err, out)
	}
	g := Getent{Queries: q}
	seen := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && !seen[f[0]] {
			seen[f[0]] = true
			g.Addrs = append(g.Addrs, f[0])
		}
	}
	return g, nil
}

// Source asks the VIP for name from pod p, from an unconnected UDP socket,
// and returns the address the reply came from as the application sees it.
func (n *Node) Source(p *Pod, name string) (netip.AddrPort, string, error) {
	var (
		from netip.AddrPort
		ans  string
		qerr error
	)
	err := p.cni.Do(func() error {
		from, ans, qerr = rawQuery(netip.AddrPortFrom(n.VIP, 53), name, 2*time.Second)
		return nil
	})
	if err != nil {
		return from, "", err
	}
	return from, ans, qerr
}

// rawQuery asks for name's A record from an unconnected UDP socket and
// returns the reply's source and its first A (answer or additional
// section: whoami answers there).
func rawQuery(to netip.AddrPort, name string, timeout time.Duration) (netip.AddrPort, string, error) {
	r, src, err := steertest.Query(to, name, false, timeout)
	if err != nil {
		return netip.AddrPort{}, "", err
	}
	for _, rr := range append(append([]dns.RR{}, r.Answer...), r.Extra...) {
		if a, ok := rr.(*dns.A); ok {
			return src, a.A.String(), nil
		}
	}
	return src, "", fmt.Errorf("%s: no A record (%s)", name, dns.RcodeToString[r.Rcode])
}

var whoamiSeq atomic.Int64

// WhoSaw asks the central CoreDNS's whoami through the VIP from pod p (a
// new name each time: no cache holds it) and returns the client address
// the central CoreDNS saw: the pod's own when the query reached it
// directly, the node's when node-cache answered and forwarded it.
func (n *Node) WhoSaw(p *Pod, timeout time.Duration) (netip.Addr, error) {
	name := fmt.Sprintf("q%d-%d.%s", time.Now().UnixNano()%1e6, whoamiSeq.Add(1), WhoamiZone)
	var (
		ans  string
		qerr error
	)
	if err := p.cni.Do(func() error {
		_, ans, qerr = rawQuery(netip.AddrPortFrom(n.VIP, 53), name, timeout)
		return nil
	}); err != nil {
		return netip.Addr{}, err
	}
	if qerr != nil {
		return netip.Addr{}, qerr
	}
	return netip.ParseAddr(ans)
}

// Resolve is step 2.
type Resolve struct {
	Miss, Hit     Dig            // dig of the Service name, twice
	From          netip.AddrPort // reply source seen by a plain socket
	Short         Getent         // getent ahosts <service> (short name)
	External      Getent         // getent ahosts <PrivateZone name> (autopath)
	NoAutopath    Getent         // the same from pod-b, which k8s_autopath leaves alone
	Kernel        Kernel         // the Service's name asked again: answered in the kernel
	CentralSaw    netip.Addr     // whoami through the cache: the node
	Counters      CacheCounters  // node-cache's counters over the step
	ClusterDNSLog string         // where node-cache found the VIP
}

// ResolveFromPod is step 2: from pod A, dig the Service's name (a miss,
// then a hit), glibc-resolve its short name and its PrivateZone name
// (k8s_autopath: 2 queries on the wire instead of 8), check that replies
// come from the VIP and that node-cache answered.
func (n *Node) ResolveFromPod(ctx context.Context) (Resolve, error) {
	var r Resolve
	p := n.Pods[0]
	before, err := n.counters()
	if err != nil {
		return r, err
	}
	if r.Miss, err = n.Dig(ctx, p, ServiceFQDN()); err != nil {
		return r, err
	}
	if r.Hit, err = n.Dig(ctx, p, ServiceFQDN()); err != nil {
		return r, err
	}
	for _, d := range []Dig{r.Miss, r.Hit} {
		if d.Answer != n.ServiceIP.String() {
			return r, fmt.Errorf("dig %s: %s, want the ClusterIP %s", ServiceFQDN(), d.Answer, n.ServiceIP)
		}
		if !strings.HasPrefix(d.Server, n.VIP.String()+"#53") {
			return r, fmt.Errorf("dig %s: answered by %s, want the VIP %s", ServiceFQDN(), d.Server, n.VIP)
		}
	}
	var ans string
	if r.From, ans, err = n.Source(p, ServiceFQDN()); err != nil {
		return r, err
	}
	if r.From != netip.AddrPortFrom(n.VIP, 53) || ans != n.ServiceIP.String() {
		return r, fmt.Errorf("plain socket: reply from %s with %s, want from %s:53 with %s", r.From, ans, n.VIP, n.ServiceIP)
	}
	if r.Short, err = n.Getent(ctx, p, ServiceName); err != nil {
		return r, err
	}
	if !slices.Contains(r.Short.Addrs, n.ServiceIP.String()) {
		return r, fmt.Errorf("getent ahosts %s: %v, want %s", ServiceName, r.Short.Addrs, n.ServiceIP)
	}
	if r.External, err = n.Getent(ctx, p, PrivateZoneName()); err != nil {
		return r, err
	}
	if !slices.Contains(r.External.Addrs, n.ServiceIP.String()) {
		return r, fmt.Errorf("getent ahosts %s: %v, want %s", PrivateZoneName(), r.External.Addrs, n.ServiceIP)
	}
	if len(r.External.Queries) != 2 {
		return r, fmt.Errorf("getent ahosts %s: the pod sent %d queries (%v), want 2 (A and AAAA, expanded by k8s_autopath)", PrivateZoneName(), len(r.External.Queries), r.External.Queries)
	}
	// pod-b: its Pod's dnsConfig sets ndots, so the pod walks its search
	// list itself: A and AAAA for each of the 3 domains, then the name.
	if r.NoAutopath, err = n.Getent(ctx, n.Pods[1], PrivateZoneName()); err != nil {
		return r, err
	}
	if !slices.Contains(r.NoAutopath.Addrs, n.ServiceIP.String()) || len(r.NoAutopath.Queries) != 8 {
		return r, fmt.Errorf("getent ahosts %s in %s (no autopath): %v with %d queries (%v), want %s with 8", PrivateZoneName(), n.Pods[1].Name,
			r.NoAutopath.Addrs, len(r.NoAutopath.Queries), r.NoAutopath.Queries, n.ServiceIP)
	}
	if r.Kernel, err = n.kernelAnswers(p, 20); err != nil {
		return r, err
	}
	if r.CentralSaw, err = n.WhoSaw(p, 2*time.Second); err != nil {
		return r, fmt.Errorf("whoami through the VIP: %w", err)
	}
	if r.CentralSaw != n.Central.HostIP {
		return r, fmt.Errorf("the central CoreDNS saw %s, want the node's %s (node-cache forwarding)", r.CentralSaw, n.Central.HostIP)
	}
	after, err := n.counters()
	if err != nil {
		return r, err
	}
	r.Counters = after.minus(before)
	if r.Counters.Hits < 1 || r.Counters.Misses < 1 || r.Counters.AutopathHits < 1 || r.Counters.Steered < 4 {
		return r, fmt.Errorf("node-cache counters over the step: %+v; want hits, misses, autopath hits and steered operations", r.Counters)
	}
	var start struct {
		From string `json:"cluster-dns-from"`
	}
	if decodeJSONLine(n.NodeCache.Log, "cluster-dns-from", &start) {
		r.ClusterDNSLog = start.From
	}
	return r, nil
}

func offloadHits(m Metrics) float64 { return m.Sum("coredns_nodecache_offload_hits_total", "") }

// Kernel is what the in-kernel cache answered.
type Kernel struct {
	On         bool          // node-cache runs it (the kernel can)
	Interfaces int           // pod interfaces it is on
	Queries    int           // queries sent once the kernel held the name
	Hits       float64       // of them answered in the kernel
	UserSpace  float64       // requests node-cache itself saw meanwhile
	Median     time.Duration // round trip from the pod, fresh socket each
}

// kernelAnswers asks the Service's name from pod p until the kernel cache
// answers it (node-cache offers an entry on its second hit), then k more
// times, from a fresh socket each: all k must be answered in the kernel.
func (n *Node) kernelAnswers(p *Pod, k int) (Kernel, error) {
	var kc Kernel
	var on struct {
		Interfaces int `json:"interfaces"`
	}
	if !decodeJSONLine(n.NodeCache.Log, "max_bytes", &on) {
		return kc, nil // this kernel cannot run it; node-cache said so
	}
	kc.On, kc.Interfaces = true, on.Interfaces
	hits := func() (float64, error) {
		m, err := n.NodeCacheMetricsNow()
		return offloadHits(m), err
	}
	vip := netip.AddrPortFrom(n.VIP, 53)
	deadline := time.Now().Add(10 * time.Second)
	for {
		before, err := hits()
		if err != nil {
			return kc, err
		}
		var qerr error
		_ = p.cni.Do(func() error {
			c := &steertest.RawClient{To: vip, Timeout: 2 * time.Second}
			_, _, qerr = c.Query(ServiceFQDN())
			return nil
		})
		if qerr != nil {
			return kc, qerr
		}
		after, err := hits()
		if err != nil {
			return kc, err
		}
		if after > before {
			break
		}
		if time.Now().After(deadline) {
			return kc, fmt.Errorf("the kernel cache never answered %s", ServiceFQDN())
		}
	}
	m0, err := n.NodeCacheMetricsNow()
	if err != nil {
		return kc, err
	}
	var rtts []time.Duration
	var qerr error
	_ = p.cni.Do(func() error {
		c := &steertest.RawClient{To: vip, Timeout: 2 * time.Second}
		for i := 0; i < k; i++ {
			t0 := time.Now()
			r, from, err := c.Query(ServiceFQDN())
			rtts = append(rtts, time.Since(t0))
			if err == nil && (from != vip || firstA(r) != n.ServiceIP.String()) {
				err = fmt.Errorf("kernel answer %v from %s", r, from)
			}
			if err != nil {
				qerr = err
				return nil
			}
		}
		return nil
	})
	if qerr != nil {
		return kc, qerr
	}
	m1, err := n.NodeCacheMetricsNow()
	if err != nil {
		return kc, err
	}
	kc.Queries, kc.Hits = k, offloadHits(m1)-offloadHits(m0)
	kc.UserSpace = m1.Sum("coredns_dns_requests_total", "") - m0.Sum("coredns_dns_requests_total", "")
	slices.Sort(rtts)
	kc.Median = rtts[len(rtts)/2]
	if kc.Hits != float64(k) {
		return kc, fmt.Errorf("%v of %d queries answered in the kernel, want all", kc.Hits, k)
	}
	if kc.UserSpace != 0 {
		return kc, fmt.Errorf("node-cache itself saw %v requests while the kernel answered", kc.UserSpace)
	}
	return kc, nil
}

// Fallback is step 3.
type Fallback struct {
	Recovered  time.Duration // kill -9 -> first answer from the central CoreDNS
	Failed     int           // queries without an answer meanwhile (200 ms timeout each)
	Dig        Dig           // dig of the Service while node-cache is down
	Stale      uint64        // kernel: operations not steered for a stale heartbeat
	Restart    time.Duration // new node-cache ready
	Adopted    int           // pinned links the new node-cache adopted
	SteerAgain time.Duration // restart -> queries steered again
}

// KillAndRestart is step 3: kill -9 node-cache; pod A's queries reach the
// central CoreDNS within --heartbeat-timeout + 1 s with nothing done in
// user space; then a new node-cache adopts the pinned programs and steers
// again.
func (n *Node) KillAndRestart(ctx context.Context) (Fallback, error) {
	var f Fallback
	p := n.Pods[0]
	_, stale0, err := n.SteerStats()
	if err != nil {
		return f, err
	}
	n.KillNodeCache()
	killed := time.Now()
	limit := n.Opt.HeartbeatTimeout + time.Second
	for {
		saw, err := n.WhoSaw(p, 200*time.Millisecond)
		if err == nil && saw == p.IP {
			f.Recovered = time.Since(killed)
			break
		}
		f.Failed++
		if time.Since(killed) > limit+5*time.Second {
			return f, fmt.Errorf("no answer from the central CoreDNS %s after kill -9 (last: %v, saw %s)", time.Since(killed).Round(time.Millisecond), err, saw)
		}
	}
	if f.Recovered > limit {
		return f, fmt.Errorf("fallback took %s, want at most --heartbeat-timeout + 1 s = %s", f.Recovered.Round(time.Millisecond), limit)
	}
	if f.Dig, err = n.Dig(ctx, p, ServiceFQDN()); err != nil {
		return f, fmt.Errorf("with node-cache down: %w", err)
	}
	if f.Dig.Answer != n.ServiceIP.String() || !strings.HasPrefix(f.Dig.Server, n.VIP.String()+"#53") {
		return f, fmt.Errorf("with node-cache down: dig %s answered %s by %s", ServiceFQDN(), f.Dig.Answer, f.Dig.Server)
	}
	_, stale1, err := n.SteerStats()
	if err != nil {
		return f, err
	}
	f.Stale = stale1 - stale0
	if f.Stale == 0 {
		return f, fmt.Errorf("the kernel counted no query left alone for a stale heartbeat")
	}
	t0 := time.Now()
	if err := n.StartNodeCache(ctx); err != nil {
		return f, fmt.Errorf("restarting node-cache: %w", err)
	}
	f.Restart = time.Since(t0)
	var adopted struct {
		N int `json:"adopted-links"`
	}
	decodeJSONLine(n.NodeCache.Log, "adopted-links", &adopted)
	if f.Adopted = adopted.N; f.Adopted == 0 {
		return f, fmt.Errorf("the new node-cache did not adopt the pinned links (log: %s)", n.NodeCache.Log)
	}
	for {
		saw, err := n.WhoSaw(p, time.Second)
		if err == nil && saw == n.Central.HostIP {
			f.SteerAgain = time.Since(t0)
			break
		}
		if time.Since(t0) > 15*time.Second {
			return f, fmt.Errorf("not steered to the new node-cache within 15 s (central CoreDNS saw %s, %v)", saw, err)
		}
	}
	return f, nil
}

// Records is step 4: `bin/pvtzctl records Zone` and `bin/pvtzctl diff`.
type Records struct {
	Command string
	Output  string
	Diff    string // pvtzctl diff output (exit 0: in sync)
}

// PrivateZoneRecords runs pvtzctl against the emulator.
func (n *Node) PrivateZoneRecords(ctx context.Context) (Records, error) {
	var r Records
	args := []string{"records", Zone, "--endpoint", n.EmulatorURL, "--owner", OwnerID}
	r.Command = "bin/pvtzctl " + strings.Join(args, " ")
	cmd := exec.CommandContext(ctx, n.bin("pvtzctl"), args...)
	cmd.Env = append(cmd.Environ(), credsEnv()...)
	out, err := cmd.CombinedOutput()
	r.Output = string(out)
	if err != nil {
		return r, fmt.Errorf("%s: %v\n%s", r.Command, err, out)
	}
	rel := ServiceName + "." + ServiceNamespace
	found := false
	for _, l := range strings.Split(r.Output, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && (f[0] == rel || f[0] == PrivateZoneName()) && strings.Contains(l, n.ServiceIP.String()) {
			found = true
		}
	}
	if !found {
		return r, fmt.Errorf("%s: no record %s -> %s:\n%s", r.Command, rel, n.ServiceIP, r.Output)
	}
	cmd = exec.CommandContext(ctx, n.bin("pvtzctl"), "diff", Zone, "--endpoint", n.EmulatorURL, "--kubeconfig", n.Cluster.Kubeconfig,
		"--owner-id", OwnerID, "--source", "service")
	cmd.Env = append(cmd.Environ(), credsEnv()...)
	out, err = cmd.CombinedOutput()
	r.Diff = strings.TrimSpace(string(out))
	if err != nil {
		return r, fmt.Errorf("pvtzctl diff: %v (exit 1: drift)\n%s", err, out)
	}
	return r, nil
}

// TopPods is `dnsaccelctl top pods` against node-cache's --observe
// endpoint: the pods' DNS as node-cache counted it (kernel answers
// included). It checks that pod a's queries are there, attributed to it.
func (n *Node) TopPods(ctx context.Context) (Records, error) {
	var r Records
	args := []string{"top", "pods", "--endpoint", "http://" + n.NodeCacheObserve, "--interval", "0", "-k", "5"}
	r.Command = "bin/dnsaccelctl " + strings.Join(args, " ")
	out, err := exec.CommandContext(ctx, n.bin("dnsaccelctl"), args...).CombinedOutput()
	r.Output = string(out)
	if err != nil {
		return r, fmt.Errorf("%s: %v\n%s", r.Command, err, out)
	}
	for _, l := range strings.Split(r.Output, "\n") {
		if f := strings.Fields(l); len(f) > 3 && f[1] == n.Pods[0].Name && f[2] != "0" {
			return r, nil
		}
	}
	return r, fmt.Errorf("%s: no queries of %s:\n%s", r.Command, n.Pods[0].Name, r.Output)
}
