package steer_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath/steer"
	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	steertest.RemoveBinaries()
	os.Exit(code)
}

const (
	cacheName   = "cache-only.steer.test."
	cacheAnswer = "10.12.0.1"
	testMark    = 0x0d530000
)

// fakeCache is a DNS server standing in for the node cache: it knows
// cacheName and records the client addresses it sees.
type fakeCache struct {
	addr netip.AddrPort
	mu   sync.Mutex
	seen []netip.Addr
}

func startFakeCache(t *testing.T, ip netip.Addr) *fakeCache {
	t.Helper()
	fc := &fakeCache{addr: netip.AddrPortFrom(ip, 53)}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		ap, _ := netip.ParseAddrPort(w.RemoteAddr().String())
		fc.mu.Lock()
		fc.seen = append(fc.seen, ap.Addr().Unmap())
		fc.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(r)
		if r.Question[0].Name == cacheName {
			rr, _ := dns.NewRR(cacheName + " 5 IN A " + cacheAnswer)
			m.Answer = append(m.Answer, rr)
		} else {
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", fc.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", fc.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	us := &dns.Server{PacketConn: pc, Handler: h}
	ts := &dns.Server{Listener: ln, Handler: h}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	t.Cleanup(func() { us.Shutdown(); ts.Shutdown() })
	return fc
}

func (fc *fakeCache) sawOnly(ip netip.Addr) bool {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if len(fc.seen) == 0 {
		return false
	}
	for _, s := range fc.seen {
		if s != ip {
			return false
		}
	}
	return true
}

// TestSteering drives the programs with real traffic from a pod namespace:
// no steering before the first heartbeat, UDP and TCP steered to the cache
// with the VIP shown as the peer and the pod's own address seen by the
// cache, marked sockets left alone, fallback to the cluster DNS when the
// heartbeat stops, adoption by a second process-like Attach, and Cleanup
// leaving nothing in the kernel or the bpffs.
func TestSteering(t *testing.T) {
	cg := steertest.RequireBPF(t)
	tp := steertest.New(t)
	bpffs := steertest.BPFFS(t)
	cache := startFakeCache(t, tp.Pod.HostIP)
	vip := netip.AddrPortFrom(tp.VIP, 53)
	const timeout = 300 * time.Millisecond

	s, err := steer.Attach(steer.Options{Cgroup: cg, BPFFS: bpffs, HeartbeatTimeout: timeout, SkipMark: testMark})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Cleanup() })
	if s.Adopted() != 0 {
		t.Fatalf("fresh bpffs, yet %d links adopted", s.Adopted())
	}
	rules := []steer.Rule{
		{VIP: vip, Proto: steer.UDP, Target: cache.addr},
		{VIP: vip, Proto: steer.TCP, Target: cache.addr},
	}
	if err := s.SetTable(rules); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Table(); len(got) != 2 {
		t.Fatalf("table: %v", got)
	}

	type result struct {
		r    *dns.Msg
		from netip.AddrPort
		err  error
	}
	query := func(name string, tcp bool, mark uint32) result {
		var res result
		err := tp.Pod.Do(func() error {
			if mark != 0 {
				res.r, res.from, res.err = markedQuery(vip, name, mark)
				return nil
			}
			res.r, res.from, res.err = steertest.Query(vip, name, tcp, 2*time.Second)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	// No heartbeat yet: the cluster DNS answers.
	if res := query(steertest.ClusterName, false, 0); res.err != nil || !steertest.HasA(res.r, steertest.ClusterAnswer) {
		t.Fatalf("before the first heartbeat: %v %v", res.err, res.r)
	}

	// Heartbeat: UDP and TCP go to the cache; the peer shown is the VIP.
	beat := func() {
		if err := s.Beat(); err != nil {
			t.Fatal(err)
		}
	}
	beat()
	for _, tcp := range []bool{false, true} {
		beat()
		res := query(cacheName, tcp, 0)
		if res.err != nil || !steertest.HasA(res.r, cacheAnswer) {
			t.Fatalf("steered query (tcp=%v): %v %v", tcp, res.err, res.r)
		}
		if res.from != vip {
			t.Errorf("steered reply (tcp=%v) seen from %s, want the VIP %s", tcp, res.from, vip)
		}
	}
	if !cache.sawOnly(tp.Pod.IP) {
		t.Errorf("the cache saw clients %v, want only the pod's own %s", cache.seen, tp.Pod.IP)
	}

	// The cache's own sockets (marked) reach the real VIP.
	beat()
	if res := query(steertest.ClusterName, false, testMark); res.err != nil || !steertest.HasA(res.r, steertest.ClusterAnswer) {
		t.Fatalf("marked socket: %v %v", res.err, res.r)
	}

	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st[steer.StatSteered] < 2 || st[steer.StatReversed] < 2 || st[steer.StatSkipMark] < 1 || st[steer.StatStale] < 1 {
		t.Errorf("counters: %v", st)
	}

	// Adoption: a second Attach (as a restarted process does) takes over
	// the pinned links and maps; the table survives.
	s2, err := steer.Attach(steer.Options{Cgroup: cg, BPFFS: bpffs, HeartbeatTimeout: timeout, SkipMark: testMark})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Adopted() != len(steer.ProgramNames) {
		t.Errorf("adopted %d links, want %d", s2.Adopted(), len(steer.ProgramNames))
	}
	s.Close()
	if err := s2.Beat(); err != nil {
		t.Fatal(err)
	}
	if res := query(cacheName, false, 0); res.err != nil || !steertest.HasA(res.r, cacheAnswer) {
		t.Fatalf("after adoption: %v %v", res.err, res.r)
	}

	// Heartbeat stops: the pod falls back to the cluster DNS within the
	// timeout, with no user-space action.
	s2.Beat()
	stopped := time.Now()
	var fellBack time.Duration
	steertest.WaitFor(t, "fallback to the cluster DNS", 5*time.Second, func() bool {
		res := query(steertest.ClusterName, false, 0)
		if res.err == nil && steertest.HasA(res.r, steertest.ClusterAnswer) {
			fellBack = time.Since(stopped)
			return true
		}
		return false
	})
	if fellBack > timeout+time.Second {
		t.Errorf("fell back after %s, heartbeat timeout %s", fellBack, timeout)
	}
	t.Logf("fell back %s after the last heartbeat (timeout %s)", fellBack.Round(time.Millisecond), timeout)

	// Cleanup: nothing left, by kernel ID and in the bpffs.
	ids, err := s2.IDs()
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Cleanup(); err != nil {
		t.Fatal(err)
	}
	steertest.WaitFor(t, "programs, maps and links gone", 5*time.Second, func() bool { return len(steertest.Alive(ids)) == 0 })
	if steer.Pinned(bpffs) {
		t.Errorf("%s/%s still there after Cleanup", bpffs, steer.PinDir)
	}
	s2.Beat() // harmless on a closed handle
	if res := query(steertest.ClusterName, false, 0); res.err != nil || !steertest.HasA(res.r, steertest.ClusterAnswer) {
		t.Fatalf("after Cleanup: %v %v", res.err, res.r)
	}
}

// markedQuery is steertest.Query from a socket with SO_MARK set.
func markedQuery(to netip.AddrPort, name string, mark uint32) (*dns.Msg, netip.AddrPort, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)) })
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", ":0")
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	defer pc.Close()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	wire, _ := m.Pack()
	pc.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := pc.WriteTo(wire, net.UDPAddrFromAddrPort(to)); err != nil {
		return nil, netip.AddrPort{}, err
	}
	buf := make([]byte, 4096)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil {
		return nil, netip.AddrPort{}, err
	}
	return r, from.(*net.UDPAddr).AddrPort(), nil
}

// TestSteeringIPv6: an IPv6 VIP is steered to an IPv6 target (UDP from a
// plain AF_INET6 socket and TCP), with the reply shown from the VIP; an IPv4
// VIP asked from an AF_INET socket and from a dual-stack AF_INET6 socket
// (a v4-mapped address) is steered too.
func TestSteeringIPv6(t *testing.T) {
	cg := steertest.RequireBPF(t)
	pod := netns.NewPod(t, netns.Options{IPv6: true})
	bpffs := steertest.BPFFS(t)
	cache6 := startFakeCache(t, pod.HostIPv6)
	cache4 := startFakeCache(t, pod.HostIP)
	// The pod's own random low bytes keep concurrent runs apart.
	low := pod.IP.As4()
	vip6 := netip.AddrPortFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x2, 0x46, 14: low[2], 15: low[3]}), 53)
	vip4 := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 246, low[2], low[3]}), 53)

	s, err := steer.Attach(steer.Options{Cgroup: cg, BPFFS: bpffs, HeartbeatTimeout: 5 * time.Second, SkipMark: testMark})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Cleanup() })
	if err := s.SetTable([]steer.Rule{
		{VIP: vip6, Proto: steer.UDP, Target: cache6.addr},
		{VIP: vip6, Proto: steer.TCP, Target: cache6.addr},
		{VIP: vip4, Proto: steer.UDP, Target: cache4.addr},
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetTable([]steer.Rule{{VIP: vip6, Proto: steer.UDP, Target: cache4.addr}}); err == nil {
		t.Error("a rule mixing IP families was accepted")
	}
	if err := s.Beat(); err != nil {
		t.Fatal(err)
	}
	check := func(what string, to netip.AddrPort, q func() (*dns.Msg, netip.AddrPort, error)) {
		t.Helper()
		var (
			r    *dns.Msg
			from netip.AddrPort
			qerr error
		)
		if err := pod.Do(func() error { r, from, qerr = q(); return nil }); err != nil {
			t.Fatal(err)
		}
		if qerr != nil || !steertest.HasA(r, cacheAnswer) {
			t.Errorf("%s: %v %v", what, qerr, r)
			return
		}
		if from != to {
			t.Errorf("%s: reply from %s, want the VIP %s", what, from, to)
		}
	}
	check("IPv6 UDP, AF_INET6 socket", vip6, func() (*dns.Msg, netip.AddrPort, error) {
		c := &steertest.RawClient{To: vip6, Timeout: 2 * time.Second}
		return c.Query(cacheName)
	})
	check("IPv6 TCP", vip6, func() (*dns.Msg, netip.AddrPort, error) { return steertest.Query(vip6, cacheName, true, 2*time.Second) })
	check("IPv4 UDP, AF_INET socket", vip4, func() (*dns.Msg, netip.AddrPort, error) {
		c := &steertest.RawClient{To: vip4, Timeout: 2 * time.Second}
		return c.Query(cacheName)
	})
	check("IPv4 UDP, dual-stack AF_INET6 socket (v4-mapped)", vip4, func() (*dns.Msg, netip.AddrPort, error) {
		return steertest.Query(vip4, cacheName, false, 2*time.Second)
	})
	if !cache6.sawOnly(pod.IPv6) {
		t.Errorf("the IPv6 cache saw %v, want only the pod's %s", cache6.seen, pod.IPv6)
	}
	if !cache4.sawOnly(pod.IP) {
		t.Errorf("the IPv4 cache saw %v, want only the pod's %s", cache4.seen, pod.IP)
	}
}

// TestConcurrentAttach: two processes attaching at once (a DaemonSet surge
// racing a restart) both succeed; the second adopts the first's links
// instead of attaching its own.
func TestConcurrentAttach(t *testing.T) {
	cg := steertest.RequireBPF(t)
	bpffs := steertest.BPFFS(t)
	opts := steer.Options{Cgroup: cg, BPFFS: bpffs, HeartbeatTimeout: time.Second}
	var (
		wg   sync.WaitGroup
		got  [2]*steer.Steering
		errs [2]error
	)
	for i := range got {
		wg.Add(1)
		go func() { defer wg.Done(); got[i], errs[i] = steer.Attach(opts) }()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, s := range got {
			if s != nil {
				s.Close()
			}
		}
		steer.Cleanup(bpffs)
	})
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("attach: %v, %v", errs[0], errs[1])
	}
	if a, b := got[0].Adopted(), got[1].Adopted(); a+b != len(steer.ProgramNames) || a*b != 0 {
		t.Fatalf("adopted %d and %d links, want 0 and %d", a, b, len(steer.ProgramNames))
	}
	ids0, _ := got[0].IDs()
	ids1, _ := got[1].IDs()
	if fmt.Sprint(ids0.Links) != fmt.Sprint(ids1.Links) {
		t.Errorf("two sets of links: %v and %v", ids0.Links, ids1.Links)
	}
}
