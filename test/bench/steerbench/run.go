package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath/notrack"
	"github.com/dnsaccel/dnsaccel/test/bench"
	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/notracktest"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

// Config is what a run measures.
type Config struct {
	Rules     []int  `json:"rules"`
	Queries   int    `json:"queries"`
	Rounds    int    `json:"rounds"`
	ClientCPU int    `json:"client_cpu"`
	ServerCPU int    `json:"server_cpu"`
	NodeCache string `json:"node_cache"`
	Quick     bool   `json:"quick"`
	Out       string `json:"-"`
	JSON      string `json:"-"`
	Command   string `json:"command"`
}

// DefaultConfig is the full benchmark, for a quiet machine.
func DefaultConfig() Config {
	return Config{Rules: []int{1, 1000, 10000}, Queries: 20000, Rounds: 4, ClientCPU: 0, ServerCPU: 1, NodeCache: "bin/node-cache"}
}

// ApplyQuick shrinks the run for a smoke check on a busy machine; flags the
// user set explicitly win.
func (c *Config) ApplyQuick(set func(string) bool) {
	c.Quick = true
	if !set("rules") {
		c.Rules = []int{1, 1000}
	}
	if !set("queries") {
		c.Queries = 300
	}
	if !set("rounds") {
		c.Rounds = 2
	}
}

// The paths a query takes from the pod to the cache.
const (
	// PathStraight and PathSteering run against node-cache as it ships
	// (its NOTRACK table on), without the kernel cache.
	PathStraight = "straight to the cache"
	PathSteering = "eBPF steering"
	// PathTracked is steering against node-cache --notrack=false: each
	// query a new conntrack flow, walking the nat chains.
	PathTracked = "eBPF steering, --notrack=false"
	// PathIptables runs against the --notrack=false node-cache too: a DNAT
	// needs conntrack on the reply as well.
	PathIptables = "iptables DNAT"
	// PathKernel is node-cache's default: steering with its NOTRACK table,
	// and hot names answered by the in-kernel cache at the pod's veth,
	// before netfilter.
	PathKernel = "eBPF steering + kernel cache"
)

// phase is one node-cache configuration and the paths measured against it,
// alternating within each round.
type phase struct {
	notrack, kernel bool
	paths           []string
}

var (
	phases = []phase{
		{notrack: true, paths: []string{PathStraight, PathSteering}},
		{notrack: false, paths: []string{PathTracked, PathIptables}},
		{notrack: true, kernel: true, paths: []string{PathKernel}},
	}
	allPaths = []string{PathStraight, PathSteering, PathTracked, PathIptables, PathKernel}
)

// Result is one path at one rule count, all rounds together.
type Result struct {
	Path      string        `json:"path"`
	Rules     int           `json:"rules"`
	Queries   int           `json:"queries"`
	Failed    int           `json:"failed"`
	FirstErr  string        `json:"first_error,omitempty"`
	Median    time.Duration `json:"median_ns"`
	P90       time.Duration `json:"p90_ns"`
	P99       time.Duration `json:"p99_ns"`
	ClientCPU time.Duration `json:"client_cpu_per_query_ns"` // the pod's sending thread, kernel work included
	ServerCPU time.Duration `json:"server_cpu_per_query_ns"` // bin/node-cache, all threads
	Conntrack float64       `json:"conntrack_per_query"`     // entries from the pod's address created per query
}

// Report is a whole run.
type Report struct {
	Config  Config        `json:"config"`
	Machine bench.Machine `json:"machine"`
	Start   time.Time     `json:"start"`
	Elapsed time.Duration `json:"elapsed_ns"`
	Results []Result      `json:"results"`
	Version string        `json:"node_cache_version"`
}

const (
	answerName = "bench.steer.test."
	answerIP   = "10.13.0.1"
	chainSvc   = "DNSA-BENCH-SERVICES"
	chainSep   = "DNSA-BENCH-SEP"
)

// env is what Run sets up and tears down.
type env struct {
	cfg     Config
	pod     *netns.Pod
	local   netip.Addr // the cache's address (on lo)
	vip     netip.Addr // steered
	dnatVIP netip.Addr // DNATed by iptables
	bpffs   string
	procs   bench.Procs
	cache   *bench.Proc
	nodeBin string
	// What startCache needs to (re)start node-cache.
	ports      *bench.Ports
	health     string
	logPath    string
	steerFlags []string
	upstream   string
	table      notrack.Table // node-cache's NOTRACK table, a name of the run's own
	cleanups   []func()
}

func (e *env) defer_(f func()) { e.cleanups = append(e.cleanups, f) }

func (e *env) close() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
}

// Run measures every path at every rule count.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (network namespaces, iptables, BPF)")
	}
	if _, err := bench.LookPath("iptables-restore"); err != nil {
		return nil, fmt.Errorf("iptables-restore: %w (apt-get install iptables)", err)
	}
	rep = &Report{Config: cfg, Start: time.Now(), Machine: bench.MachineInfo(ctx)}
	e := &env{cfg: cfg}
	defer e.close()
	if err := e.setup(ctx); err != nil {
		return nil, err
	}
	if out, err := exec.Command(e.nodeBin, "--version").Output(); err == nil {
		rep.Version = strings.TrimSpace(string(out))
	}
	// Rounds go over every rule count in turn, so that the machine's
	// drift over the run (a few µs per query, either way) lands on every
	// count alike instead of on whichever was measured first.
	acc := map[int]*accum{}
	for _, n := range cfg.Rules {
		acc[n] = newAccum(n)
	}
	for round := 0; round < cfg.Rounds; round++ {
		// Each round starts at another count: what a position in the
		// round costs (following the removal of 10,000 rules, say) is
		// spread over the counts too.
		for k := range cfg.Rules {
			n := cfg.Rules[(round+k)%len(cfg.Rules)]
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			fmt.Fprintf(os.Stderr, "steerbench: round %d/%d, %d Service rules\n", round+1, cfg.Rounds, n)
			if err := installIptables(n, e.dnatVIP, e.local); err != nil {
				return nil, err
			}
			err := e.measure(ctx, acc[n])
			removeIptables()
			if err != nil {
				return nil, err
			}
			// Deleting thousands of rules leaves the kernel freeing them
			// in the background for a while; the next count would pay.
			bench.WaitIdle(ctx, []int{cfg.ClientCPU, cfg.ServerCPU}, 10*time.Second)
		}
	}
	for _, n := range cfg.Rules {
		rep.Results = append(rep.Results, acc[n].results()...)
	}
	rep.Elapsed = time.Since(rep.Start).Round(time.Second)
	return rep, nil
}

func (e *env) setup(ctx context.Context) error {
	root, err := bench.FindRepoRoot()
	if err != nil {
		return err
	}
	e.nodeBin = e.cfg.NodeCache
	if !filepath.IsAbs(e.nodeBin) {
		if _, err := os.Stat(e.nodeBin); err != nil {
			e.nodeBin = filepath.Join(root, e.nodeBin)
		}
	}
	if _, err := os.Stat(e.nodeBin); err != nil {
		return fmt.Errorf("%s: %w (make build)", e.cfg.NodeCache, err)
	}
	pod, err := netns.New(ctx, netns.Options{NoSearch: true})
	if err != nil {
		return fmt.Errorf("pod namespace: %w", err)
	}
	e.pod = pod
	e.defer_(func() { pod.Close() })
	e.defer_(func() { flushConntrack(pod.IP) })

	e.local, e.vip, e.dnatVIP = freeLinkLocal(), randomAddr("10.246"), randomAddr("10.246")
	for e.dnatVIP == e.vip {
		e.dnatVIP = randomAddr("10.246")
	}

	// A private bpf file system for node-cache's pins, named after this
	// process and the cache's address so that a later run can clean up
	// after a killed one.
	sweep()
	var unmount func()
	if e.bpffs, unmount, err = steertest.PrivateBPFFS(bpffsPrefix, e.local.String()); err != nil {
		return err
	}
	e.defer_(unmount)

	// The cache's upstream: a tiny authoritative server on loopback.
	upPC, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	upLn, err := net.Listen("tcp", upPC.LocalAddr().String())
	if err != nil {
		upPC.Close()
		return err
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Name == answerName {
			rr, _ := dns.NewRR(answerName + " 3600 IN A " + answerIP)
			m.Answer = append(m.Answer, rr)
		}
		w.WriteMsg(m)
	})
	us, ts := &dns.Server{PacketConn: upPC, Handler: h}, &dns.Server{Listener: upLn, Handler: h}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	e.defer_(func() { us.Shutdown(); ts.Shutdown() })

	var ports bench.Ports
	hp, err := ports.Get()
	if err != nil {
		return err
	}
	health := "127.0.0.1:" + strconv.Itoa(hp)
	logPath := filepath.Join(os.TempDir(), fmt.Sprintf("steerbench-node-cache-%d.log", os.Getpid()))
	e.table = notrack.Table{Name: notracktest.NotrackTable(tablePrefix)}
	steerFlags := []string{"--bpffs", e.bpffs, "--local-ip", e.local.String(), "--interface", "lo", "--notrack-table", e.table.Name}
	e.defer_(func() {
		exec.Command(e.nodeBin, append([]string{"--cleanup"}, steerFlags...)...).Run()
		e.table.Remove()
		os.Remove(logPath)
	})
	e.defer_(e.procs.StopAll)
	e.ports, e.health, e.logPath, e.steerFlags, e.upstream = &ports, health, logPath, steerFlags, upPC.LocalAddr().String()
	return nil
}

// startCache (re)starts node-cache: with or without its NOTRACK table and
// its kernel cache. It checks that the table is there exactly when asked.
func (e *env) startCache(withNotrack, kernel bool) error {
	if e.cache != nil {
		e.cache.Stop()
		e.cache = nil
	}
	lp, err := e.ports.Get()
	if err != nil {
		return err
	}
	// Without the kernel cache every path ends at node-cache's UDP socket;
	// with it (PathKernel) hot names are answered at the pod's veth.
	args := append([]string{e.nodeBin, "--steer=true", "--kernel-cache=" + strconv.FormatBool(kernel), "--notrack=" + strconv.FormatBool(withNotrack),
		"--cluster-dns", e.vip.String(), "--heartbeat-timeout", "1s",
		"--listen", "127.0.0.1:" + strconv.Itoa(lp), "--upstream", e.upstream,
		"--metrics", "", "--health", e.health}, e.steerFlags...)
	cache, err := e.procs.Start("node-cache", e.cfg.ServerCPU, []string{"GOMAXPROCS=1"}, e.logPath, args...)
	if err != nil {
		return err
	}
	e.cache = cache
	health := e.health
	deadline := time.Now().Add(30 * time.Second)
	for {
		if cache.Exited() {
			return cache.ExitError()
		}
		if resp, err := (&http.Client{Timeout: time.Second}).Get("http://" + health + "/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node-cache not ready after 30 s:\n%s", cache.LogTail())
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
	// The table is written before node-cache is ready.
	if ok, err := e.table.Exists(); err != nil || ok != withNotrack {
		return fmt.Errorf("node-cache --notrack=%v: its nftables table inet %s there: %v (err %v)\n%s", withNotrack, e.table.Name, ok, err, cache.LogTail())
	}
	return nil
}

// installIptables puts n kube-proxy-style Service rules and then the DNAT
// rule of dnatVIP:53 -> local:53 in a chain jumped to from nat PREROUTING.
func installIptables(n int, dnatVIP, local netip.Addr) error {
	var b strings.Builder
	b.WriteString("*nat\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n:%s - [0:0]\n", chainSvc, chainSep)
	for i := 0; i < n; i++ {
		// 10.250.0.0/16 and up: never the bench's own addresses.
		ip := netip.AddrFrom4([4]byte{10, byte(250 + i/65536), byte(i / 256 % 256), byte(i % 256)})
		proto := "udp"
		if i%2 == 1 {
			proto = "tcp"
		}
		fmt.Fprintf(&b, "-A %s -d %s/32 -p %s -m comment --comment \"bench/svc-%d:dns cluster IP\" -m %s --dport 53 -j %s\n",
			chainSvc, ip, proto, i, proto, chainSep)
	}
	fmt.Fprintf(&b, "-A %s -d %s/32 -p udp -m comment --comment \"kube-system/kube-dns:dns cluster IP\" -m udp --dport 53 -j DNAT --to-destination %s:53\n",
		chainSvc, dnatVIP, local)
	fmt.Fprintf(&b, "-I PREROUTING 1 -j %s\n", chainSvc)
	b.WriteString("COMMIT\n")
	cmd := exec.Command("iptables-restore", "--noflush", "-w")
	cmd.Stdin = strings.NewReader(b.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		removeIptables()
		return fmt.Errorf("iptables-restore (%d rules): %v: %s", n, err, out)
	}
	return nil
}

// removeIptables deletes everything installIptables adds (idempotent).
func removeIptables() {
	for i := 0; i < 100; i++ {
		if exec.Command("iptables", "-w", "-t", "nat", "-D", "PREROUTING", "-j", chainSvc).Run() != nil {
			break
		}
	}
	for _, c := range []string{chainSvc, chainSep} {
		exec.Command("iptables", "-w", "-t", "nat", "-F", c).Run()
	}
	for _, c := range []string{chainSvc, chainSep} {
		exec.Command("iptables", "-w", "-t", "nat", "-X", c).Run()
	}
}

// accum gathers one rule count's samples over the rounds.
type accum struct {
	res map[string]*Result
	lat map[string][]time.Duration
}

func newAccum(rules int) *accum {
	a := &accum{res: map[string]*Result{}, lat: map[string][]time.Duration{}}
	for _, p := range allPaths {
		a.res[p] = &Result{Path: p, Rules: rules}
	}
	return a
}

// results turns the samples into one Result per path.
func (a *accum) results() []Result {
	var out []Result
	for _, p := range allPaths {
		r := *a.res[p]
		l := a.lat[p]
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		if len(l) > 0 {
			r.Median, r.P90, r.P99 = l[len(l)/2], l[len(l)*90/100], l[len(l)*99/100]
		}
		if r.Queries > 0 {
			r.ClientCPU /= time.Duration(r.Queries)
			r.ServerCPU /= time.Duration(r.Queries)
			r.Conntrack /= float64(r.Queries)
		}
		out = append(out, r)
	}
	return out
}

// measure runs one round of every path of every phase, each phase against
// a node-cache of its own configuration, with the paths of a phase
// alternating.
func (e *env) measure(ctx context.Context, a *accum) error {
	targets := map[string]netip.AddrPort{
		PathStraight: netip.AddrPortFrom(e.local, 53),
		PathSteering: netip.AddrPortFrom(e.vip, 53),
		PathTracked:  netip.AddrPortFrom(e.vip, 53),
		PathIptables: netip.AddrPortFrom(e.dnatVIP, 53),
		PathKernel:   netip.AddrPortFrom(e.vip, 53),
	}
	for _, ph := range phases {
		if err := e.startCache(ph.notrack, ph.kernel); err != nil {
			return err
		}
		for _, p := range ph.paths {
			// Warm-up: the cache entry (with the kernel cache: the name
			// gets hot), the paths, the CPU frequency.
			if _, err := e.run(targets[p], 200); err != nil {
				return fmt.Errorf("%s, warm-up: %w", p, err)
			}
		}
		// The paths take turns every chunk of queries: consecutive blocks
		// of a second or two differ by several µs on a VM, more than the
		// differences measured here.
		chunks := max(1, e.cfg.Queries/chunkQueries)
		for c := 0; c < chunks; c++ {
			n := e.cfg.Queries / chunks
			if c == chunks-1 {
				n = e.cfg.Queries - n*(chunks-1)
			}
			for _, p := range ph.paths {
				if err := ctx.Err(); err != nil {
					return err
				}
				flushConntrack(e.pod.IP)
				l, err := e.round(a.res[p], targets[p], n)
				if err != nil {
					return fmt.Errorf("%s: %w", p, err)
				}
				a.lat[p] = append(a.lat[p], l...)
			}
		}
	}
	return nil
}

// chunkQueries is how many queries a path sends before the next path's turn.
const chunkQueries = 1000

// round sends n queries to `to`, adds its counts to r and returns the
// latencies.
func (e *env) round(r *Result, to netip.AddrPort, n int) ([]time.Duration, error) {
	before := e.serverCPU()
	st, err := e.run(to, n)
	if err != nil {
		return nil, err
	}
	r.ServerCPU += e.serverCPU() - before
	r.ClientCPU += st.cpu
	r.Queries += n
	r.Failed += st.failed
	if r.FirstErr == "" && st.firstErr != nil {
		r.FirstErr = st.firstErr.Error()
	}
	r.Conntrack += float64(countConntrack(e.pod.IP))
	return st.lat, nil
}

type runStats struct {
	lat      []time.Duration
	cpu      time.Duration
	failed   int
	firstErr error
}

// run sends n queries to `to` from the pod, each from a fresh socket, on one
// thread pinned to the client core.
func (e *env) run(to netip.AddrPort, n int) (runStats, error) {
	var st runStats
	err := e.pod.Do(func() error {
		var set unix.CPUSet
		set.Set(e.cfg.ClientCPU)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return fmt.Errorf("pinning the client thread: %w", err)
		}
		c := &steertest.RawClient{To: to, Timeout: time.Second}
		st.lat = make([]time.Duration, 0, n)
		cpu0 := threadCPU()
		for i := 0; i < n; i++ {
			t0 := time.Now()
			r, from, err := c.Query(answerName)
			d := time.Since(t0)
			if err == nil && (len(r.Answer) != 1 || from != to) {
				err = fmt.Errorf("answer %v from %s", r.Answer, from)
			}
			if err != nil {
				st.failed++
				if st.firstErr == nil {
					st.firstErr = err
				}
				continue
			}
			st.lat = append(st.lat, d)
		}
		st.cpu = threadCPU() - cpu0
		return nil
	})
	if err == nil && st.failed == n {
		err = fmt.Errorf("every query failed: %v", st.firstErr)
	}
	return st, err
}

// threadCPU is the calling thread's CPU time (user + system), from
// schedstat: nanoseconds, softirq work done in its context included.
func threadCPU() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", unix.Gettid()))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	ns, _ := strconv.ParseInt(f[0], 10, 64)
	return time.Duration(ns)
}

// serverCPU is node-cache's CPU time, all threads.
func (e *env) serverCPU() time.Duration {
	pid := e.cache.Pid()
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			total += time.Duration(ns)
		}
	}
	return total
}

func podFilter(ip netip.Addr) *netlink.ConntrackFilter {
	f := &netlink.ConntrackFilter{}
	f.AddIP(netlink.ConntrackOrigSrcIP, net.IP(ip.AsSlice()))
	return f
}

// countConntrack counts the host's conntrack entries from the pod.
func countConntrack(ip netip.Addr) int {
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		return 0
	}
	n := 0
	for _, f := range flows {
		if a, ok := netip.AddrFromSlice(f.Forward.SrcIP); ok && a.Unmap() == ip {
			n++
		}
	}
	return n
}

// flushConntrack removes the host's conntrack entries from the pod.
func flushConntrack(ip netip.Addr) {
	netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, podFilter(ip))
}

const (
	bpffsPrefix = "steerbench-bpffs-"
	tablePrefix = "steerbench" // node-cache's NOTRACK table: steerbench-<pid>
)

// sweep removes what a killed earlier run left: its bpf file system (the
// pinned programs go with it), the cache's address on lo, iptables rules,
// node-cache's NOTRACK table.
func sweep() {
	removeIptables()
	notracktest.SweepNotrackTables(tablePrefix)
	logs, _ := filepath.Glob(filepath.Join(os.TempDir(), "steerbench-node-cache-*.log"))
	for _, l := range logs {
		pid := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(l), "steerbench-node-cache-"), ".log")
		if _, err := os.Stat("/proc/" + pid); err != nil {
			os.Remove(l)
		}
	}
	// A killed run's bpf file system (the pins go with it) and its
	// cache address on lo.
	steertest.SweepBPFFS(bpffsPrefix, func(tag string) {
		if a, err := netip.ParseAddr(tag); err == nil {
			if lo, err := netlink.LinkByName("lo"); err == nil {
				netlink.AddrDel(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(32, 32)}})
			}
		}
	})
}

func randomAddr(prefix16 string) netip.Addr {
	var b [2]byte
	for {
		rand.Read(b[:])
		if b[1] != 0 && b[1] != 255 {
			break
		}
	}
	p := netip.MustParseAddr(prefix16 + ".0.0").As4()
	return netip.AddrFrom4([4]byte{p[0], p[1], b[0], b[1]})
}

// freeLinkLocal is a 169.254.X.Y no interface holds.
func freeLinkLocal() netip.Addr {
	used := map[netip.Addr]bool{}
	if addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4); err == nil {
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				used[ip.Unmap()] = true
			}
		}
	}
	for {
		a := randomAddr("169.254")
		if !used[a] && a != netip.MustParseAddr("169.254.20.10") && a != netip.MustParseAddr("169.254.169.254") {
			return a
		}
	}
}
