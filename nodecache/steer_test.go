package nodecache

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath/notrack"
	"github.com/dnsaccel/dnsaccel/datapath/steer"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/dnstest"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

const (
	cacheOnlyName   = "cache-only.steer.test."
	cacheOnlyAnswer = "10.12.0.1"
)

// nodeCacheProc is a running bin/node-cache.
type nodeCacheProc struct {
	name   string
	cmd    *exec.Cmd
	logs   *syncBuffer
	done   chan struct{}
	err    error
	health string
}

// startNodeCache runs bin/node-cache with args plus its own --health and
// waits until /ready says it serves (and, steering, beats).
func startNodeCache(t *testing.T, name string, args ...string) *nodeCacheProc {
	t.Helper()
	p := &nodeCacheProc{name: name, logs: &syncBuffer{}, done: make(chan struct{}), health: freeAddr(t)}
	p.cmd = command(buildBinary(t), append(args, "--health", p.health)...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s logs:\n%s", p.name, p.logs.String())
		}
	})
	steertest.WaitFor(t, name+" ready", 30*time.Second, func() bool {
		select {
		case <-p.done:
			t.Fatalf("%s exited: %v\n%s", name, p.err, p.logs.String())
		default:
		}
		return httpGet(p.health, "/ready") == 200
	})
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *nodeCacheProc) stop(t *testing.T, within time.Duration) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("%s: exit after SIGTERM: %v\n%s", p.name, p.err, p.logs.String())
		}
	case <-time.After(within):
		t.Fatalf("%s: no exit %s after SIGTERM\n%s", p.name, within, p.logs.String())
	}
}

// steerSetup is the topology plus what node-cache's steering flags need;
// everything node-cache creates is removed with --cleanup when the test
// ends (and the private bpffs unmounted after that).
type steerSetup struct {
	*steertest.Topology
	bpffs string
	// notrack is node-cache's NOTRACK table, in the host's namespace (where
	// node-cache runs), under a name of this test's own so that it never
	// touches a real node-cache's table.
	notrack notrack.Table
}

func newSteerSetup(t *testing.T) *steerSetup {
	t.Helper()
	steertest.RequireBPF(t)
	s := &steerSetup{Topology: steertest.New(t), bpffs: steertest.BPFFS(t), notrack: notrack.Table{Name: testTableName("dnsaccel-test")}}
	t.Cleanup(func() {
		out, err := command(buildBinary(t), s.cleanupArgs()...).CombinedOutput()
		if err != nil {
			t.Errorf("node-cache --cleanup: %v\n%s", err, out)
		}
		if removed, err := s.notrack.Remove(); removed || err != nil {
			t.Errorf("nftables table inet %s still there after --cleanup (removed now: %v, %v)", s.notrack.Name, removed, err)
		}
	})
	return s
}

func tableExists(t *testing.T, name string) bool {
	t.Helper()
	ok, err := notrack.Table{Name: name}.Exists()
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func testTableName(prefix string) string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%x", prefix, os.Getpid(), b)
}

func (s *steerSetup) cleanupArgs() []string {
	return []string{"--cleanup", "--bpffs", s.bpffs, "--local-ip", s.LocalIP.String(), "--interface", "lo", "--notrack-table", s.notrack.Name}
}

// steerArgs are the steering flags of node-cache in this setup.
func (s *steerSetup) steerArgs(timeout time.Duration) []string {
	return []string{"--steer=true", "--cluster-dns", s.VIP.String(), "--local-ip", s.LocalIP.String(),
		"--interface", "lo", "--bpffs", s.bpffs, "--heartbeat-timeout", timeout.String(), "--notrack-table", s.notrack.Name}
}

// notrackOwners is who owns node-cache's NOTRACK table (nil: no table),
// after checking that its rules are the ones for the local IP.
func (s *steerSetup) notrackOwners(t *testing.T) []string {
	t.Helper()
	ok, err := s.notrack.Exists()
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return nil
	}
	rules, err := s.notrack.Rules()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, ch := range []string{notrack.ChainPrerouting, notrack.ChainOutput} {
		for _, r := range []string{"daddr %s udp dport", "daddr %s tcp dport", "saddr %s udp sport", "saddr %s tcp sport"} {
			want = append(want, ch+": ip "+fmt.Sprintf(r, s.LocalIP)+" 53 notrack")
		}
	}
	if !slices.Equal(rules, want) {
		t.Errorf("table inet %s rules:\n%s\nwant:\n%s", s.notrack.Name, strings.Join(rules, "\n"), strings.Join(want, "\n"))
	}
	owners, err := s.notrack.Owners()
	if err != nil {
		t.Fatal(err)
	}
	return owners
}

// conntrackFlows are the host's conntrack entries as "proto src -> dst:port".
func conntrackFlows(t *testing.T) []string {
	t.Helper()
	fl, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		t.Fatalf("conntrack list: %v", err)
	}
	var out []string
	for _, f := range fl {
		proto := map[uint8]string{unix.IPPROTO_UDP: "udp", unix.IPPROTO_TCP: "tcp"}[f.Forward.Protocol]
		out = append(out, fmt.Sprintf("%s %s -> %s", proto, f.Forward.SrcIP, net.JoinHostPort(f.Forward.DstIP.String(), fmt.Sprint(f.Forward.DstPort))))
	}
	return out
}

type answer struct {
	r    *dns.Msg
	from netip.AddrPort
	err  error
}

// query asks the VIP from the pod, from a fresh socket.
func (s *steerSetup) query(t *testing.T, name string, tcp bool, timeout time.Duration) answer {
	t.Helper()
	var a answer
	if err := s.Pod.Do(func() error {
		a.r, a.from, a.err = steertest.Query(netip.AddrPortFrom(s.VIP, 53), name, tcp, timeout)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return a
}

var whoamiSeq atomic.Int64

// whoSaw asks the cluster DNS's whoami through the VIP (a fresh name each
// time, so no cache answers it) and returns the client it saw: the pod
// itself when the query went straight to the cluster DNS, the node (the
// cache's upstream connection) when node-cache answered it.
func (s *steerSetup) whoSaw(t *testing.T, timeout time.Duration) (netip.Addr, error) {
	t.Helper()
	a := s.query(t, fmt.Sprintf("q%d.%s", whoamiSeq.Add(1), steertest.WhoamiZone), false, timeout)
	if a.err != nil {
		return netip.Addr{}, a.err
	}
	return steertest.Seen(a.r), nil
}

// TestSteerFromPods: a pod's queries for the cluster DNS VIP are answered
// by node-cache (a name only the cache's upstream knows), over UDP (dig, a
// raw socket, glibc's getent) and TCP; the reply comes from the VIP; the
// cache sees the pod's own address; the cache's own upstream queries to the
// VIP are not steered back to it. On a host that tracks connections, the
// pod's steered queries leave no conntrack entry (node-cache's NOTRACK
// table) while the cache's own upstream connection is tracked. SIGTERM
// leaves the pins and address for a successor (queries fall back
// meanwhile) and, with no successor, removes the NOTRACK table; --cleanup
// removes everything.
func TestSteerFromPods(t *testing.T) {
	s := newSteerSetup(t)
	steertest.TrackConnections(t, 0)
	zone := dnstest.NewZone(t)
	zone.Add(t, cacheOnlyName+" 30 IN A "+cacheOnlyAnswer)
	metrics := freeAddr(t)
	local := s.LocalIP.String()
	conf := filepath.Join(t.TempDir(), "Corefile")
	os.WriteFile(conf, []byte(fmt.Sprintf(`seen.steer.test:53 {
    bind %[1]s
    whoami
}
cache-only.steer.test:53 {
    bind %[1]s
    nodecache %[2]s
}
.:53 {
    bind %[1]s
    prometheus %[3]s
    nodecache %[4]s:53
}
`, local, zone.Addr, metrics, s.VIP)), 0o644)
	nc := startNodeCache(t, "node-cache", append(s.steerArgs(time.Second), "--conf", conf, "--metrics", metrics)...)
	if ok, _ := steertest.HasAddr("lo", s.LocalIP); !ok {
		t.Fatalf("--local-ip %s not on lo", s.LocalIP)
	}
	if owners := s.notrackOwners(t); len(owners) != 1 {
		t.Errorf("NOTRACK table inet %s after start: owners %v, want node-cache's", s.notrack.Name, owners)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vip := s.VIP.String()
	for _, args := range [][]string{
		{"dig", "+short", "+time=2", "+tries=1", "@" + vip, cacheOnlyName},
		{"dig", "+short", "+tcp", "+time=2", "+tries=1", "@" + vip, cacheOnlyName},
		{"getent", "ahostsv4", strings.TrimSuffix(cacheOnlyName, ".")},
	} {
		// dig drops a reply from any source but the server it asked; glibc
		// too: an answer proves the reply came from the VIP.
		out, err := s.Pod.Exec(ctx, args...)
		if err != nil || !strings.Contains(string(out), cacheOnlyAnswer) {
			t.Errorf("%s in the pod: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, tcp := range []bool{false, true} {
		a := s.query(t, cacheOnlyName, tcp, 2*time.Second)
		if a.err != nil || !steertest.HasA(a.r, cacheOnlyAnswer) {
			t.Fatalf("query (tcp=%v): %v %v", tcp, a.err, a.r)
		}
		if want := netip.AddrPortFrom(s.VIP, 53); a.from != want {
			t.Errorf("reply (tcp=%v) from %s, want the VIP %s", tcp, a.from, want)
		}
	}
	// node-cache's whoami: the cache sees the pod's own address.
	if a := s.query(t, "x.seen.steer.test.", false, 2*time.Second); a.err != nil || steertest.Seen(a.r) != s.Pod.IP {
		t.Errorf("the cache saw %v (err %v), want the pod's %s", steertest.Seen(a.r), a.err, s.Pod.IP)
	}
	// The cluster DNS's whoami through the cache, whose upstream is the
	// steered VIP: it sees the node, so the query went pod -> cache -> VIP.
	if saw, err := s.whoSaw(t, 2*time.Second); err != nil || saw != s.DNS.HostIP {
		t.Errorf("cluster DNS saw %v (err %v), want the node's %s (the cache's upstream query)", saw, err, s.DNS.HostIP)
	}
	// Conntrack: nothing from the pod to the cache (every query above was
	// steered there), but the cache's upstream connection to the VIP.
	flows := conntrackFlows(t)
	toCache := func(f string) bool {
		return strings.HasPrefix(f, "udp "+s.Pod.IP.String()+" -> ") || strings.HasPrefix(f, "tcp "+s.Pod.IP.String()+" -> ")
	}
	if slices.ContainsFunc(flows, toCache) {
		t.Errorf("steered queries from the pod created conntrack entries (NOTRACK table not applied): %v", slices.DeleteFunc(slices.Clone(flows), func(f string) bool { return !toCache(f) }))
	}
	if up := fmt.Sprintf("tcp %s -> %s", s.DNS.HostIP, netip.AddrPortFrom(s.VIP, 53)); !slices.Contains(flows, up) {
		t.Errorf("no conntrack entry %q for the cache's own upstream connection (it must stay tracked); entries: %v", up, flows)
	}
	body := httpBody(t, metrics, "/metrics")
	for _, want := range []string{"dnsaccel_nodecache_steering_attached 1", "dnsaccel_nodecache_steering_table_entries 2", "dnsaccel_nodecache_steering_notrack 1",
		"dnsaccel_nodecache_steering_heartbeat_age_seconds", `dnsaccel_nodecache_steering_operations_total{result="steered"}`,
		`dnsaccel_nodecache_steering_operations_total{result="own_socket"}`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// SIGTERM: no successor, so the heartbeat expires before it stops
	// serving; pins and address stay for the next node-cache.
	nc.stop(t, 10*time.Second)
	if !strings.Contains(nc.logs.String(), "heartbeat expired") {
		t.Errorf("no handover log line:\n%s", nc.logs.String())
	}
	if !steer.Pinned(s.bpffs) {
		t.Error("pins removed on SIGTERM; a successor could not adopt them")
	}
	if ok, _ := steertest.HasAddr("lo", s.LocalIP); !ok {
		t.Error("--local-ip removed on SIGTERM")
	}
	if owners := s.notrackOwners(t); owners != nil {
		t.Errorf("NOTRACK table still there after SIGTERM with no successor (owners %v)", owners)
	}
	if !strings.Contains(nc.logs.String(), "removed the NOTRACK table") {
		t.Errorf("no log line for removing the NOTRACK table:\n%s", nc.logs.String())
	}
	if saw, err := s.whoSaw(t, 2*time.Second); err != nil || saw != s.Pod.IP {
		t.Errorf("after SIGTERM the cluster DNS saw %v (err %v), want the pod's %s directly", saw, err, s.Pod.IP)
	}

	// --cleanup: no program, link, map, pin or address left.
	pins, pinNames, err := steertest.ReadPins(s.bpffs)
	if err != nil {
		t.Fatal(err)
	}
	if len(pins.Links) != len(steer.ProgramNames) || len(pins.Programs) != len(steer.ProgramNames) || len(pins.Maps) != len(steer.MapNames) {
		t.Fatalf("pinned: %v; want %d links, %d programs, %d maps", pinNames, len(steer.ProgramNames), len(steer.ProgramNames), len(steer.MapNames))
	}
	t.Logf("pinned before --cleanup: %v", pinNames)
	if out, err := command(buildBinary(t), s.cleanupArgs()...).CombinedOutput(); err != nil {
		t.Fatalf("--cleanup: %v\n%s", err, out)
	}
	if steer.Pinned(s.bpffs) {
		t.Errorf("%s/%s still there after --cleanup", s.bpffs, steer.PinDir)
	}
	if ok, err := steertest.HasAddr("lo", s.LocalIP); ok || err != nil {
		t.Errorf("--local-ip %s still on lo after --cleanup (err %v)", s.LocalIP, err)
	}
	steertest.WaitFor(t, "kernel objects gone after --cleanup", 5*time.Second, func() bool { return len(steertest.Alive(pins)) == 0 })
	if a := s.query(t, steertest.ClusterName, false, 2*time.Second); a.err != nil || !steertest.HasA(a.r, steertest.ClusterAnswer) {
		t.Errorf("after --cleanup the cluster DNS should answer: %v %v", a.err, a.r)
	}
}

// TestSteerKillAndRestart: kill -9 node-cache and pods reach the cluster
// DNS within --heartbeat-timeout + 1 s, with nothing done in user space; a
// new node-cache adopts the pinned programs; restarts (new process, then
// SIGTERM to the old) under >= 1,000 queries/s from a pod lose nothing and
// never even fall back to the cluster DNS. The NOTRACK table survives the
// kill -9 and every handover (each successor takes it over), goes with
// --notrack=false, and --cleanup removes it with the rest.
func TestSteerKillAndRestart(t *testing.T) {
	s := newSteerSetup(t)
	const timeout = time.Second
	listen := freeAddr(t) // shared by all of them, as the local IP is
	args := func(extra ...string) []string {
		return append(append(s.steerArgs(timeout), "--listen", listen, "--upstream", s.VIP.String()+":53", "--metrics", ""), extra...)
	}
	a := startNodeCache(t, "node-cache A", args()...)
	if v, err := os.ReadFile(tcpMigrateReq); err != nil || strings.TrimSpace(string(v)) != "1" {
		t.Errorf("node-cache running: %s = %q (err %v), want 1", tcpMigrateReq, v, err)
	}
	if saw, err := s.whoSaw(t, 2*time.Second); err != nil || saw != s.DNS.HostIP {
		t.Fatalf("with A running the cluster DNS saw %v (err %v), want the node's %s", saw, err, s.DNS.HostIP)
	}
	ownersA := s.notrackOwners(t)
	if len(ownersA) != 1 {
		t.Fatalf("NOTRACK table with A running: owners %v, want A", ownersA)
	}

	// kill -9: the kernel stops steering once the heartbeat is stale.
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.done
	killed := time.Now()
	var recovered time.Duration
	steertest.WaitFor(t, "pod queries answered by the cluster DNS after kill -9", 10*time.Second, func() bool {
		saw, err := s.whoSaw(t, 200*time.Millisecond)
		if err == nil && saw == s.Pod.IP {
			recovered = time.Since(killed)
			return true
		}
		return false
	})
	t.Logf("after kill -9, pod queries answered by the cluster DNS %s later (heartbeat timeout %s)", recovered.Round(time.Millisecond), timeout)
	if recovered > timeout+time.Second {
		t.Errorf("fallback took %s, want <= heartbeat timeout %s + 1s", recovered, timeout)
	}

	if owners := s.notrackOwners(t); !slices.Equal(owners, ownersA) {
		t.Errorf("NOTRACK table after kill -9 of A: owners %v, want A's %v still", owners, ownersA)
	}

	// A new node-cache adopts the pinned links and steers again; with
	// --notrack=false it removes the table A left.
	b := startNodeCache(t, "node-cache B", args("--notrack=false")...)
	if !strings.Contains(b.logs.String(), `"adopted-links":8`) {
		t.Errorf("B did not adopt the pinned links:\n%s", b.logs.String())
	}
	if owners := s.notrackOwners(t); owners != nil {
		t.Errorf("B runs with --notrack=false, but the NOTRACK table is there (owners %v)", owners)
	}
	steertest.WaitFor(t, "steering through B", 5*time.Second, func() bool {
		saw, err := s.whoSaw(t, time.Second)
		return err == nil && saw == s.DNS.HostIP
	})

	// Restarts under load: C starts beside B, then B gets SIGTERM; then
	// the same from C to D. No query may fail, and none may even fall back
	// to the cluster DNS: the kernel's counters show every one steered.
	stale0, steered0 := steerCounters(t, s.bpffs)
	load := startLoad(t, s, 8, 1600, false)
	// TCP queries too, each on a new connection: the handover must not
	// reset connections waiting in the old node-cache's accept queue
	// (net.ipv4.tcp_migrate_req moves them to the successor).
	tcpLoad := startLoad(t, s, 8, 800, true)
	steertest.WaitFor(t, "load running", 10*time.Second, func() bool { return load.total() >= 300 && tcpLoad.total() >= 100 })
	old := b
	var prevOwners []string
	for _, name := range []string{"node-cache C", "node-cache D"} {
		next := startNodeCache(t, name, args()...)
		owners := s.notrackOwners(t)
		if len(owners) != 1 || slices.Equal(owners, prevOwners) {
			t.Errorf("NOTRACK table with %s started: owners %v, want %s's alone (before: %v)", name, owners, name, prevOwners)
		}
		old.stop(t, 10*time.Second)
		if !strings.Contains(old.logs.String(), "another node-cache keeps the heartbeat") {
			t.Errorf("%s did not see %s take over the heartbeat:\n%s", old.name, name, old.logs.String())
		}
		// The old one's SIGTERM after the takeover leaves the table.
		if after := s.notrackOwners(t); !slices.Equal(after, owners) {
			t.Errorf("NOTRACK table after %s's SIGTERM: owners %v, want %s's %v", old.name, after, name, owners)
		}
		prevOwners = owners
		after, tcpAfter := load.total(), tcpLoad.total()
		steertest.WaitFor(t, "load continuing after "+old.name+" exited", 10*time.Second, func() bool {
			return load.total() >= after+1000 && tcpLoad.total() >= tcpAfter+200
		})
		old = next
	}
	res, tcpRes := load.stop(), tcpLoad.stop()
	stale1, steered1 := steerCounters(t, s.bpffs)
	t.Logf("2 restarts under load: UDP %d queries in %s (%.0f/s), %d failed; TCP %d queries (%.0f/s), %d failed; kernel: %d steered, %d not steered for a stale heartbeat",
		res.total, res.elapsed.Round(time.Millisecond), float64(res.total)/res.elapsed.Seconds(), res.failed,
		tcpRes.total, float64(tcpRes.total)/tcpRes.elapsed.Seconds(), tcpRes.failed, steered1-steered0, stale1-stale0)
	if res.failed != 0 {
		t.Errorf("%d of %d queries failed during the restarts; first: %v", res.failed, res.total, res.firstErr)
	}
	if tcpRes.failed != 0 {
		t.Errorf("%d of %d TCP queries (new connections) failed during the restarts; first: %v", tcpRes.failed, tcpRes.total, tcpRes.firstErr)
	}
	if rate := float64(res.total) / res.elapsed.Seconds(); rate < 1000 {
		t.Errorf("load was %.0f queries/s, want >= 1000", rate)
	}
	if stale1 != stale0 {
		t.Errorf("%d queries fell back to the cluster DNS during the restarts (heartbeat lapsed)", stale1-stale0)
	}
	if steered1-steered0 < uint64(res.total+tcpRes.total) {
		t.Errorf("kernel steered %d operations, fewer than the %d queries", steered1-steered0, res.total+tcpRes.total)
	}
	if saw, err := s.whoSaw(t, 2*time.Second); err != nil || saw != s.DNS.HostIP {
		t.Errorf("after the restarts the cluster DNS saw %v (err %v), want the node's %s (D steering)", saw, err, s.DNS.HostIP)
	}

	// kill -9 D: everything stays, and --cleanup removes it all.
	old.cmd.Process.Signal(syscall.SIGKILL)
	<-old.done
	if s.notrackOwners(t) == nil || !steer.Pinned(s.bpffs) {
		t.Fatal("the NOTRACK table or the pins went with a kill -9")
	}
	if out, err := command(buildBinary(t), s.cleanupArgs()...).CombinedOutput(); err != nil {
		t.Fatalf("--cleanup: %v\n%s", err, out)
	}
	if ok, err := s.notrack.Exists(); ok || err != nil {
		t.Errorf("NOTRACK table inet %s still there after --cleanup (err %v)", s.notrack.Name, err)
	}
	if steer.Pinned(s.bpffs) {
		t.Errorf("pins still there after --cleanup")
	}
}

// steerCounters reads the programs' counters from the pinned map: queries
// not steered because the heartbeat was stale, and queries steered.
func steerCounters(t *testing.T, bpffs string) (stale, steered uint64) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(bpffs, steer.PinDir, "dnsa_stats"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	sum := func(i steer.Stat) uint64 {
		var per []uint64
		if err := m.Lookup(uint32(i), &per); err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, v := range per {
			n += v
		}
		return n
	}
	return sum(steer.StatStale), sum(steer.StatSteered)
}

// load sends queries for ClusterName to the VIP from the pod, each from a
// fresh socket (over TCP: a new connection), at a steady rate; any query
// without the right answer within 2 s fails.
type load struct {
	stopc    chan struct{}
	wg       sync.WaitGroup
	ok, fail atomic.Int64
	mu       sync.Mutex
	firstErr error
	start    time.Time
}

type loadResult struct {
	total, failed int64
	elapsed       time.Duration
	firstErr      error
}

func startLoad(t *testing.T, s *steerSetup, workers int, qps int, tcp bool) *load {
	t.Helper()
	l := &load{stopc: make(chan struct{}), start: time.Now()}
	interval := time.Duration(int64(time.Second) * int64(workers) / int64(qps))
	vip := netip.AddrPortFrom(s.VIP, 53)
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			s.Pod.Do(func() error {
				c := &steertest.RawClient{To: vip, Timeout: 2 * time.Second}
				next := time.Now()
				for {
					select {
					case <-l.stopc:
						return nil
					default:
					}
					var r *dns.Msg
					var err error
					if tcp {
						r, _, err = steertest.Query(vip, steertest.ClusterName, true, 2*time.Second)
					} else {
						r, _, err = c.Query(steertest.ClusterName)
					}
					if err == nil && !steertest.HasA(r, steertest.ClusterAnswer) {
						err = fmt.Errorf("answer %v", r)
					}
					if err != nil {
						l.fail.Add(1)
						l.mu.Lock()
						if l.firstErr == nil {
							l.firstErr = err
						}
						l.mu.Unlock()
					} else {
						l.ok.Add(1)
					}
					next = next.Add(interval)
					if d := time.Until(next); d > 0 {
						time.Sleep(d) // pacing, not synchronisation
					} else if d < -time.Second {
						next = time.Now()
					}
				}
			})
		}()
	}
	t.Cleanup(func() { l.stop() })
	return l
}

func (l *load) total() int64 { return l.ok.Load() + l.fail.Load() }

func (l *load) stop() loadResult {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return loadResult{total: l.total(), failed: l.fail.Load(), elapsed: time.Since(l.start), firstErr: l.firstErr}
}

// TestSteerBadInput: invalid --cluster-dns and --steer values are refused at
// start; a missing kernel feature (here: no cgroup v2 where --cgroup
// points) is an error naming it, changing nothing; with --steer=false the
// cache runs without any eBPF or address.
func TestSteerBadInput(t *testing.T) {
	bin := buildBinary(t)
	up := startUpstream(t)
	help, _ := command(bin, "--help").CombinedOutput()
	for _, f := range []string{"--steer", "--cluster-dns", "--local-ip", "--interface", "--cgroup", "--bpffs",
		"--heartbeat-timeout", "--upstream-mark", "--cleanup", "--notrack", "--notrack-table"} {
		if !strings.Contains(string(help), f) {
			t.Errorf("--help does not explain %s", f)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster-dns", "not-an-ip"}, "--cluster-dns"},
		{[]string{"--cluster-dns", "10.96.0.10:53"}, "without a port"},
		{[]string{"--cluster-dns", "0.0.0.0"}, "wildcard"},
		{[]string{"--cluster-dns", "169.254.20.10"}, "also a --local-ip"},
		{[]string{"--cluster-dns", "fd00::10"}, "no --local-ip of its IP family"},
		{[]string{"--cluster-dns", "10.96.0.10", "--local-ip", "bogus"}, "--local-ip"},
		{[]string{"--steer=true"}, "no VIP to steer"},
		{[]string{"--steer=maybe", "--cluster-dns", "10.96.0.10"}, "--steer"},
		{[]string{"--cluster-dns", "10.96.0.10", "--heartbeat-timeout", "0s"}, "--heartbeat-timeout"},
		{[]string{"--cluster-dns", "10.96.0.10", "--upstream-mark", "0"}, "--upstream-mark"},
	} {
		args := append([]string{"--listen", freeAddr(t), "--upstream", up, "--health", "", "--metrics", ""}, tc.args...)
		out, err := command(bin, args...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: want exit 2 naming %q, got %v: %s", tc.args, tc.want, err, out)
		}
	}

	steertest.RequireBPF(t)
	bpffs := steertest.BPFFS(t)
	local := steertest.FreeLinkLocal(t)
	table := testTableName("dnsaccel-test") // never a real node-cache's
	t.Cleanup(func() {
		command(bin, "--cleanup", "--bpffs", bpffs, "--local-ip", local.String(), "--interface", "lo", "--notrack-table", table).Run()
	})
	notCgroup := t.TempDir()
	out, err := command(bin, "--listen", freeAddr(t), "--upstream", up, "--health", "", "--metrics", "",
		"--cluster-dns", "10.246.0.1", "--local-ip", local.String(), "--interface", "lo", "--bpffs", bpffs, "--notrack-table", table, "--cgroup", notCgroup).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "cgroup v2") {
		t.Errorf("--cgroup on a non-cgroup2 directory: want an error naming cgroup v2, got %v: %s", err, out)
	}
	if ok, _ := steertest.HasAddr("lo", local); ok || steer.Pinned(bpffs) || tableExists(t, table) {
		t.Errorf("a failed start left the address (%v), pins (%v) or the NOTRACK table (%v)", ok, steer.Pinned(bpffs), tableExists(t, table))
	}

	// No BPF permission: the same, as an unprivileged user.
	os.Chmod(filepath.Dir(bin), 0o755)
	cmd := command(bin, "--listen", freeAddr(t), "--upstream", up, "--health", "", "--metrics", "",
		"--cluster-dns", "10.246.0.1", "--local-ip", local.String(), "--interface", "lo", "--bpffs", bpffs, "--notrack-table", table)
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: 65534, Gid: 65534}
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "BPF permission") {
		t.Errorf("as an unprivileged user: want an error naming the BPF permission, got %v: %s", err, out)
	}
	if ok, _ := steertest.HasAddr("lo", local); ok || steer.Pinned(bpffs) || tableExists(t, table) {
		t.Errorf("a failed start left the address (%v), pins (%v) or the NOTRACK table (%v)", ok, steer.Pinned(bpffs), tableExists(t, table))
	}

	// --steer=false: the plain cache, no BPF, no address.
	listen := freeAddr(t)
	startNodeCache(t, "node-cache --steer=false", "--steer=false", "--listen", listen, "--upstream", up, "--metrics", "",
		"--cluster-dns", "10.246.0.1", "--local-ip", local.String(), "--interface", "lo", "--bpffs", bpffs, "--notrack-table", table)
	m := new(dns.Msg)
	m.SetQuestion("www.example.test.", dns.TypeA)
	if r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, listen); err != nil || len(r.Answer) != 1 {
		t.Errorf("--steer=false cache on %s: %v %v", listen, err, r)
	}
	if ok, _ := steertest.HasAddr("lo", local); ok || steer.Pinned(bpffs) || tableExists(t, table) {
		t.Errorf("--steer=false set up the address (%v), pins (%v) or the NOTRACK table (%v)", ok, steer.Pinned(bpffs), tableExists(t, table))
	}
}

// TestSteerVIPFromKubeDNS: without --cluster-dns, the VIP to steer is the
// ClusterIP of Service kube-system/kube-dns in the real API server, and the
// cache then also serves --local-ip:53; with no such Service, --steer=auto
// stays off and --steer=true refuses to start.
func TestSteerVIPFromKubeDNS(t *testing.T) {
	c := cluster.Shared(t)
	base := []string{"--kubeconfig", c.Kubeconfig, "--node-name", "node-a", "--listen", "127.0.0.1:5353",
		"--upstream", "192.0.2.53:53", "--cluster-upstream", "192.0.2.54:53"}

	_, stderr, code := printConfig(t, base...)
	if code != 0 || !strings.Contains(stderr, `"steer":false`) {
		t.Fatalf("no kube-dns Service, --steer=auto: want exit 0 without steering, got %d:\n%s", code, stderr)
	}
	_, stderr, code = printConfig(t, append(base, "--steer=true")...)
	if code != 2 || !strings.Contains(stderr, "kube-system/kube-dns") {
		t.Fatalf("no kube-dns Service, --steer=true: want exit 2 naming the Service, got %d:\n%s", code, stderr)
	}

	ip := c.MustCreateService(t, cluster.ServiceOptions{Namespace: "kube-system", Name: "kube-dns"}).Spec.ClusterIP
	out, stderr, code := printConfig(t, base...)
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	for _, want := range []string{`"steer":true`, `"cluster-dns":["` + ip + `"]`, `"cluster-dns-from":"Service kube-system/kube-dns"`} {
		if !strings.Contains(stderr, want) {
			t.Errorf("start-up log lacks %s:\n%s", want, stderr)
		}
	}
	if !strings.Contains(out, "cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {\n    bind 169.254.20.10\n") {
		t.Errorf("the Corefile does not serve the default --local-ip on :53 beside --listen:\n%s", out)
	}
	_, stderr, code = printConfig(t, append(base, "--steer=false")...)
	if code != 0 || !strings.Contains(stderr, `"steer":false`) {
		t.Errorf("--steer=false with a kube-dns Service: want no steering, got %d:\n%s", code, stderr)
	}
}

func TestSteerRules(t *testing.T) {
	s := Steer{Mode: "auto", LocalIPs: []string{"169.254.20.10", "fd00::53"}, ClusterDNS: []string{"10.96.0.10", "fd00:96::a"},
		HeartbeatTimeout: time.Second, BPFFS: "/sys/fs/bpf"}
	var got []string
	for _, r := range s.rules() {
		got = append(got, r.String())
	}
	want := "10.96.0.10:53/udp -> 169.254.20.10:53,10.96.0.10:53/tcp -> 169.254.20.10:53," +
		"[fd00:96::a]:53/udp -> [fd00::53]:53,[fd00:96::a]:53/tcp -> [fd00::53]:53"
	if strings.Join(got, ",") != want {
		t.Fatalf("rules:\n%s\nwant\n%s", strings.Join(got, ","), want)
	}
	c := Config{Listen: []string{"127.0.0.1:53"}, Upstreams: []string{"10.96.0.10:53"}, Steer: s}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if l := strings.Join(c.listenAddrs(), ","); l != "127.0.0.1:53,169.254.20.10:53,[fd00::53]:53" {
		t.Fatalf("listen %s", l)
	}
	c.Steer.Mode = "false"
	if l := strings.Join(c.listenAddrs(), ","); l != "127.0.0.1:53" {
		t.Fatalf("--steer=false listens on %s", l)
	}
}

func TestSteerServiceVIPsDualStack(t *testing.T) {
	s := Steer{LocalIPs: []string{"169.254.20.10"}}
	if err := s.useServiceVIPs([]string{"10.96.0.10", "fd00:96::a"}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(s.ClusterDNS, ",") != "10.96.0.10" || s.LookupErr == nil || !strings.Contains(s.LookupErr.Error(), "fd00:96::a") {
		t.Fatalf("IPv4 local IP, dual-stack Service: VIPs %v, note %v", s.ClusterDNS, s.LookupErr)
	}
	s = Steer{LocalIPs: []string{"169.254.20.10"}}
	if err := s.useServiceVIPs([]string{"fd00:96::a"}); err == nil || len(s.ClusterDNS) != 0 {
		t.Fatalf("IPv6-only Service, IPv4 local IP: err %v, VIPs %v", err, s.ClusterDNS)
	}
	s = Steer{LocalIPs: []string{"169.254.20.10", "fd00::53"}}
	if err := s.useServiceVIPs([]string{"10.96.0.10", "fd00:96::a"}); err != nil || len(s.ClusterDNS) != 2 || s.LookupErr != nil {
		t.Fatalf("both families: err %v, VIPs %v, note %v", err, s.ClusterDNS, s.LookupErr)
	}
}
