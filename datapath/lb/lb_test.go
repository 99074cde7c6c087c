package lb_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/dnsaccel/dnsaccel/datapath/lb"
	"github.com/dnsaccel/dnsaccel/datapath/steer"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/steertest"
	"github.com/dnsaccel/dnsaccel/test/svctest"
)

const timeout = 2 * time.Second

// env is a node: the test's cgroup (the test process in it), a private
// bpffs, the load balancer attached, a blackholed Service range, a client
// pod and backend pods.
type env struct {
	cg, bpffs string
	tbl       *lb.Table
	rng       *svctest.Range
	client    *netns.Pod
	be        []*svctest.Backend
}

func newEnv(t *testing.T, backends int) *env {
	t.Helper()
	e := &env{cg: svctest.Cgroup(t)}
	e.bpffs = steertest.BPFFS(t)
	e.rng = svctest.NewRange(t)
	e.client = netns.NewPod(t, netns.Options{PodName: "client", IPv6: true})
	pods := []*netns.Pod{e.client}
	for i := range backends {
		b := svctest.NewBackend(t, fmt.Sprintf("backend-%d", i))
		e.be = append(e.be, b)
		pods = append(pods, b.Pod)
	}
	svctest.Forward(t, pods...)
	e.tbl = e.open(t)
	return e
}

func (e *env) open(t *testing.T) *lb.Table {
	t.Helper()
	tbl, err := lb.Open(lb.Options{Cgroup: e.cg, BPFFS: e.bpffs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tbl.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return tbl
}

// service upserts a Service and sets its backends.
func (e *env) service(t *testing.T, s lb.Service, bs ...lb.Backend) {
	t.Helper()
	if err := e.tbl.UpsertService(s); err != nil {
		t.Fatal(err)
	}
	if err := e.tbl.SetBackends(s.Frontend, bs); err != nil {
		t.Fatal(err)
	}
}

func be(b *svctest.Backend, v6 bool, port uint16) lb.Backend {
	return lb.Backend{Addr: b.AddrPort(v6, port)}
}

// spread runs n HTTP requests (or UDP echoes) and counts the backends
// that answered; every answer must come from (and getpeername show) the
// frontend.
func spread(t *testing.T, e *env, f lb.Frontend, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	vip := netip.AddrPortFrom(f.Addr, f.Port)
	for range n {
		var r svctest.Result
		if f.Proto == lb.TCP {
			r = svctest.HTTPGet(e.client, vip, timeout)
		} else {
			r = svctest.UDPEcho(e.client, vip, "ping", svctest.UDPOptions{}, timeout)
		}
		if r.Err != nil {
			t.Fatalf("%s: %v", f, r.Err)
		}
		if r.Peer != vip {
			t.Fatalf("%s: peer/reply source %s, want the frontend", f, r.Peer)
		}
		seen[r.Backend]++
	}
	return seen
}

func keys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func names(bs ...*svctest.Backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.Name)
	}
	slices.Sort(out)
	return out
}

// TestSocketLB drives the socket programs with real traffic from a client
// pod to backend pods running real servers, one Service semantic per case.
func TestSocketLB(t *testing.T) {
	e := newEnv(t, 3)
	b0, b1, b2 := e.be[0], e.be[1], e.be[2]
	for _, b := range e.be {
		b.ServeHTTP(t, 8080)
		b.ServeHTTP(t, 8081)
		b.ServeEcho(t, 5353)
	}
	b1.ServeHTTP(t, 8086)

	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"ClusterIP TCP, two ports", func(t *testing.T) {
			vip := e.rng.VIP(false)
			p80 := lb.Service{Frontend: lb.Frontend{Addr: vip, Port: 80, Proto: lb.TCP}}
			p81 := lb.Service{Frontend: lb.Frontend{Addr: vip, Port: 81, Proto: lb.TCP}}
			e.service(t, p80, be(b0, false, 8080), be(b1, false, 8080))
			e.service(t, p81, be(b2, false, 8081))
			if got := keys(spread(t, e, p80.Frontend, 40)); !slices.Equal(got, names(b0, b1)) {
				t.Errorf("port 80 reached %v, want %v", got, names(b0, b1))
			}
			if got := keys(spread(t, e, p81.Frontend, 10)); !slices.Equal(got, names(b2)) {
				t.Errorf("port 81 reached %v, want %v", got, names(b2))
			}
		}},
		{"ClusterIP UDP, unconnected: the reply shows the VIP", func(t *testing.T) {
			s := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(false), Port: 53, Proto: lb.UDP}}
			e.service(t, s, be(b0, false, 5353), be(b1, false, 5353), be(b2, false, 5353))
			if got := keys(spread(t, e, s.Frontend, 60)); len(got) < 2 {
				t.Errorf("fresh sockets reached only %v", got)
			}
			// A dual-stack (AF_INET6) socket asking the v4 VIP.
			vip := netip.AddrPortFrom(s.Addr, s.Port)
			r := svctest.UDPEcho(e.client, vip, "x", svctest.UDPOptions{DualStack: true}, timeout)
			if r.Err != nil || r.Peer != vip {
				t.Errorf("dual-stack socket: %+v", r)
			}
		}},
		{"ClusterIP UDP, connected: getpeername shows the VIP", func(t *testing.T) {
			s := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(false), Port: 54, Proto: lb.UDP}}
			e.service(t, s, be(b0, false, 5353), be(b1, false, 5353))
			vip := netip.AddrPortFrom(s.Addr, s.Port)
			c, err := svctest.DialUDP(e.client, vip, svctest.UDPOptions{}, timeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if p, err := c.Peer(); err != nil || p != vip {
				t.Errorf("getpeername %s %v, want %s", p, err, vip)
			}
			first := ""
			for range 5 {
				r := c.Echo("y")
				if r.Err != nil || r.Peer != vip {
					t.Fatalf("echo on the connected socket: %+v", r)
				}
				if first == "" {
					first = r.Backend
				} else if r.Backend != first {
					t.Errorf("a connected socket moved from %s to %s", first, r.Backend)
				}
			}
		}},
		{"IPv6", func(t *testing.T) {
			svctest.WaitIPv6(t, e.client, b0.Pod, b1.Pod, b2.Pod)
			tcp := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(true), Port: 80, Proto: lb.TCP}}
			udp := lb.Service{Frontend: lb.Frontend{Addr: tcp.Addr, Port: 53, Proto: lb.UDP}}
			e.service(t, tcp, be(b0, true, 8080), be(b1, true, 8080))
			e.service(t, udp, be(b2, true, 5353))
			if got := keys(spread(t, e, tcp.Frontend, 30)); !slices.Equal(got, names(b0, b1)) {
				t.Errorf("reached %v, want %v", got, names(b0, b1))
			}
			if got := keys(spread(t, e, udp.Frontend, 5)); !slices.Equal(got, names(b2)) {
				t.Errorf("reached %v, want %v", got, names(b2))
			}
		}},
		{"no endpoints: refused at once", func(t *testing.T) {
			tcp := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(false), Port: 80, Proto: lb.TCP}}
			udp := lb.Service{Frontend: lb.Frontend{Addr: tcp.Addr, Port: 53, Proto: lb.UDP}}
			tcp6 := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(true), Port: 80, Proto: lb.TCP}}
			for _, s := range []lb.Service{tcp, udp, tcp6} {
				if err := e.tbl.UpsertService(s); err != nil {
					t.Fatal(err)
				}
				vip := netip.AddrPortFrom(s.Addr, s.Port)
				var r svctest.Result
				if s.Proto == lb.TCP {
					r = svctest.HTTPGet(e.client, vip, timeout)
				} else {
					r = svctest.UDPEcho(e.client, vip, "z", svctest.UDPOptions{}, timeout)
				}
				if !errors.Is(r.Err, syscall.ECONNREFUSED) || r.Took > 200*time.Millisecond {
					t.Errorf("%s: %v after %s, want ECONNREFUSED at once", s.Frontend, r.Err, r.Took)
				}
			}
		}},
		{"sessionAffinity ClientIP", func(t *testing.T) {
			s := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(false), Port: 80, Proto: lb.TCP}, Affinity: 30 * time.Second}
			e.service(t, s, be(b0, false, 8080), be(b1, false, 8080), be(b2, false, 8080))
			got := spread(t, e, s.Frontend, 20)
			if len(got) != 1 {
				t.Fatalf("affinity: reached %v", got)
			}
			// The affine backend leaves: the client moves and sticks again.
			var rest []lb.Backend
			for _, b := range e.be {
				if b.Name != keys(got)[0] {
					rest = append(rest, be(b, false, 8080))
				}
			}
			if err := e.tbl.SetBackends(s.Frontend, rest); err != nil {
				t.Fatal(err)
			}
			again := spread(t, e, s.Frontend, 20)
			if len(again) != 1 || keys(again)[0] == keys(got)[0] {
				t.Errorf("after the affine backend left: %v (it was %v)", again, got)
			}
		}},
		{"terminating endpoints only when none is ready", func(t *testing.T) {
			s := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(false), Port: 80, Proto: lb.TCP}}
			term := be(b1, false, 8080)
			term.Terminating = true
			e.service(t, s, be(b0, false, 8080), term)
			if got := keys(spread(t, e, s.Frontend, 20)); !slices.Equal(got, names(b0)) {
				t.Errorf("ready and terminating: reached %v, want %v", got, names(b0))
			}
			if err := e.tbl.SetBackends(s.Frontend, []lb.Backend{term}); err != nil {
				t.Fatal(err)
			}
			if got := keys(spread(t, e, s.Frontend, 5)); !slices.Equal(got, names(b1)) {
				t.Errorf("terminating only: reached %v, want %v", got, names(b1))
			}
		}},
		{"internalTrafficPolicy Local", func(t *testing.T) {
			s := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(false), Port: 80, Proto: lb.TCP}, TrafficLocal: true}
			local := be(b2, false, 8080)
			local.Local = true
			e.service(t, s, be(b0, false, 8080), local)
			if got := keys(spread(t, e, s.Frontend, 20)); !slices.Equal(got, names(b2)) {
				t.Errorf("reached %v, want the local %v", got, names(b2))
			}
			if err := e.tbl.SetBackends(s.Frontend, []lb.Backend{be(b0, false, 8080)}); err != nil {
				t.Fatal(err)
			}
			r := svctest.HTTPGet(e.client, netip.AddrPortFrom(s.Addr, s.Port), timeout)
			if !errors.Is(r.Err, syscall.EHOSTUNREACH) {
				t.Errorf("no local endpoint: %v, want EHOSTUNREACH", r.Err)
			}
		}},
		{"a removed backend is never picked again", func(t *testing.T) {
			s := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(false), Port: 80, Proto: lb.TCP}}
			e.service(t, s, be(b1, false, 8086), be(b0, false, 8080))
			if got := keys(spread(t, e, s.Frontend, 30)); !slices.Equal(got, names(b0, b1)) {
				t.Fatalf("reached %v", got)
			}
			if err := e.tbl.SetBackends(s.Frontend, []lb.Backend{be(b0, false, 8080)}); err != nil {
				t.Fatal(err)
			}
			before := b1.Hits("tcp/8086")
			spread(t, e, s.Frontend, 50)
			if n := b1.Hits("tcp/8086") - before; n != 0 {
				t.Errorf("%d connections reached the removed backend", n)
			}
		}},
		{"connected UDP pinned to a removed backend is terminated", func(t *testing.T) {
			s := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(false), Port: 55, Proto: lb.UDP}}
			e.service(t, s, be(b0, false, 5353), be(b1, false, 5353))
			vip := netip.AddrPortFrom(s.Addr, s.Port)
			c, err := svctest.DialUDP(e.client, vip, svctest.UDPOptions{}, timeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			idle, err := svctest.DialUDP(e.client, vip, svctest.UDPOptions{}, timeout)
			if err != nil {
				t.Fatal(err)
			}
			defer idle.Close()
			r := c.Echo("before")
			if r.Err != nil {
				t.Fatal(r.Err)
			}
			pinned, other := b0, b1
			if r.Backend == b1.Name {
				pinned, other = b1, b0
			}
			if err := e.tbl.SetBackends(s.Frontend, []lb.Backend{be(other, false, 5353)}); err != nil {
				t.Fatal(err)
			}
			n, err := e.tbl.TerminateUDP()
			if err != nil {
				t.Fatal(err)
			}
			if n < 1 {
				t.Fatalf("terminated %d sockets, want the one pinned to %s", n, pinned.Name)
			}
			r = c.Echo("after")
			if !errors.Is(r.Err, syscall.ECONNABORTED) && !errors.Is(r.Err, syscall.EDESTADDRREQ) {
				t.Errorf("the pinned socket after termination: %+v, want ECONNABORTED", r)
			}
			// A socket pinned to the backend that stays is left alone
			// (unless it was pinned to the removed one too).
			if r := idle.Echo("idle"); r.Err == nil && r.Backend != other.Name {
				t.Errorf("a surviving socket reached %s", r.Backend)
			}
			c2, err := svctest.DialUDP(e.client, vip, svctest.UDPOptions{}, timeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if r := c2.Echo("again"); r.Err != nil || r.Backend != other.Name {
				t.Errorf("reconnected: %+v, want %s", r, other.Name)
			}
		}},
		{"a deleted Service is not translated", func(t *testing.T) {
			s := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(false), Port: 80, Proto: lb.TCP}}
			e.service(t, s, be(b0, false, 8080))
			spread(t, e, s.Frontend, 3)
			if err := e.tbl.DeleteService(s.Frontend); err != nil {
				t.Fatal(err)
			}
			r := svctest.HTTPGet(e.client, netip.AddrPortFrom(s.Addr, s.Port), 300*time.Millisecond)
			if r.Err == nil || errors.Is(r.Err, syscall.ECONNREFUSED) {
				t.Errorf("after delete: %+v, want a timeout (the blackhole)", r)
			}
		}},
		{"hairpin: a backend reaching itself through its Service", func(t *testing.T) {
			s := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(false), Port: 80, Proto: lb.TCP}}
			e.service(t, s, be(b0, false, 8080))
			r := svctest.HTTPGet(b0.Pod, netip.AddrPortFrom(s.Addr, s.Port), timeout)
			if r.Err != nil || r.Backend != b0.Name {
				t.Errorf("hairpin: %+v", r)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, c.run)
	}
	st, err := e.tbl.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("counters: %v", st)
	if st[lb.StatXlated] == 0 || st[lb.StatReversed] == 0 || st[lb.StatRejected] == 0 {
		t.Errorf("counters: %v", st)
	}
}

// TestNodeCacheInterplay: the node cache's steering and the load balancer
// on the same cgroup hooks. While the cache's heartbeat is fresh, the
// kube-dns VIP goes to the cache; when it is stale, the load balancer
// balances it over the CoreDNS endpoints; the cache's own (marked)
// upstream sockets are balanced, never sent back to the cache. Both
// attach orders.
func TestNodeCacheInterplay(t *testing.T) {
	for _, lbFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("lb attached first=%v", lbFirst), func(t *testing.T) {
			cg := svctest.Cgroup(t)
			bpffs := steertest.BPFFS(t)
			rng := svctest.NewRange(t)
			client := netns.NewPod(t, netns.Options{PodName: "client"})
			coredns := []*svctest.Backend{svctest.NewBackend(t, "coredns-0"), svctest.NewBackend(t, "coredns-1")}
			svctest.Forward(t, client, coredns[0].Pod, coredns[1].Pod)
			for _, b := range coredns {
				b.ServeDNS(t, 5353)
			}
			// The "node cache": a DNS server on the host end of the
			// client's veth.
			cache := &svctest.Backend{Name: "node-cache"}
			cacheAddr := netip.AddrPortFrom(client.HostIP, 53)
			svctest.ServeDNSOn(t, cache, cacheAddr)

			const mark = 0x0d530000
			var (
				tbl *lb.Table
				s   *steer.Steering
				err error
			)
			openLB := func() {
				if tbl, err = lb.Open(lb.Options{Cgroup: cg, BPFFS: bpffs}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { tbl.Cleanup() })
			}
			openSteer := func() {
				if s, err = steer.Attach(steer.Options{Cgroup: cg, BPFFS: bpffs, HeartbeatTimeout: 500 * time.Millisecond, SkipMark: mark}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Cleanup() })
			}
			if lbFirst {
				openLB()
				openSteer()
			} else {
				openSteer()
				openLB()
			}
			vip := rng.VIP(false)
			if err := s.SetTable([]steer.Rule{{VIP: netip.AddrPortFrom(vip, 53), Proto: steer.UDP, Target: cacheAddr}}); err != nil {
				t.Fatal(err)
			}
			f := lb.Frontend{Addr: vip, Port: 53, Proto: lb.UDP}
			if err := tbl.UpsertService(lb.Service{Frontend: f}); err != nil {
				t.Fatal(err)
			}
			if err := tbl.SetBackends(f, []lb.Backend{
				{Addr: coredns[0].AddrPort(false, 5353)}, {Addr: coredns[1].AddrPort(false, 5353)},
			}); err != nil {
				t.Fatal(err)
			}
			to := netip.AddrPortFrom(vip, 53)
			ask := func(o svctest.UDPOptions) string {
				t.Helper()
				r := svctest.DNSQuery(client, to, o, timeout)
				if r.Err != nil {
					t.Fatalf("query: %v", r.Err)
				}
				if r.Peer != to {
					t.Fatalf("reply from %s, want %s", r.Peer, to)
				}
				return r.Backend
			}
			// No heartbeat yet: the load balancer.
			if got := ask(svctest.UDPOptions{}); got != "coredns-0" && got != "coredns-1" {
				t.Errorf("before the first beat: answered by %q, want CoreDNS", got)
			}
			if err := s.Beat(); err != nil {
				t.Fatal(err)
			}
			if got := ask(svctest.UDPOptions{}); got != "node-cache" {
				t.Errorf("fresh heartbeat: answered by %q, want the node cache", got)
			}
			if got := ask(svctest.UDPOptions{Mark: mark}); got != "coredns-0" && got != "coredns-1" {
				t.Errorf("the cache's own upstream socket: answered by %q, want CoreDNS", got)
			}
			// The cache dies: within the heartbeat timeout, CoreDNS.
			steertest.WaitFor(t, "the load balancer to take the VIP over", 2*time.Second, func() bool {
				r := svctest.DNSQuery(client, to, svctest.UDPOptions{}, timeout)
				return r.Err == nil && r.Peer == to && r.Backend != "node-cache"
			})
			seen := map[string]bool{}
			for range 30 {
				seen[ask(svctest.UDPOptions{})] = true
			}
			if !seen["coredns-0"] || !seen["coredns-1"] || seen["node-cache"] {
				t.Errorf("node cache dead: answered by %v, want both CoreDNS endpoints", seen)
			}
			// Attached first, the load balancer runs first on the hooks
			// and leaves the VIP to the steering while it is fresh;
			// attached second, it never sees the VIP then.
			st, _ := tbl.Stats()
			if lbFirst && st[lb.StatSteered] == 0 {
				t.Errorf("no operation left to the steering: %v", st)
			}
		})
	}
}

// TestRestartAdopts: a second process (another Open on the same pins)
// adopts the links and the table while a client keeps connecting: no
// connection fails, the Services are read back.
func TestRestartAdopts(t *testing.T) {
	e := newEnv(t, 2)
	for _, b := range e.be {
		b.ServeHTTP(t, 8080)
	}
	s := lb.Service{Frontend: lb.Frontend{Addr: e.rng.VIP(false), Port: 80, Proto: lb.TCP}, Affinity: time.Minute}
	e.service(t, s, be(e.be[0], false, 8080), be(e.be[1], false, 8080))
	vip := netip.AddrPortFrom(s.Addr, s.Port)

	var (
		ok, failed atomic.Int64
		stop       = make(chan struct{})
		wg         sync.WaitGroup
		firstErr   atomic.Value
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			r := svctest.HTTPGet(e.client, vip, timeout)
			if r.Err != nil || r.Peer != vip {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("%+v", r))
			} else {
				ok.Add(1)
			}
		}
	}()
	steertest.WaitFor(t, "traffic", 5*time.Second, func() bool { return ok.Load() > 20 })
	for i := range 3 {
		old := e.tbl
		if err := old.Close(); err != nil {
			t.Fatal(err)
		}
		tbl, err := lb.Open(lb.Options{Cgroup: e.cg, BPFFS: e.bpffs})
		if err != nil {
			t.Fatal(err)
		}
		e.tbl = tbl
		if tbl.Adopted() != 8 {
			t.Errorf("restart %d: adopted %d links, want 8", i, tbl.Adopted())
		}
		got := tbl.Services()
		if len(got) != 1 || len(got[s]) != 2 {
			t.Errorf("restart %d: read back %v, want %v with 2 backends", i, got, s)
		}
		n := ok.Load()
		steertest.WaitFor(t, "traffic after the restart", 5*time.Second, func() bool { return ok.Load() > n+20 })
	}
	close(stop)
	wg.Wait()
	t.Cleanup(func() { e.tbl.Cleanup() })
	if failed.Load() != 0 {
		t.Errorf("%d of %d connections failed across the restarts; first: %v", failed.Load(), failed.Load()+ok.Load(), firstErr.Load())
	}
	// The table still works after adoption.
	if err := e.tbl.SetBackends(s.Frontend, []lb.Backend{be(e.be[1], false, 8080)}); err != nil {
		t.Fatal(err)
	}
	if got := keys(spread(t, e, s.Frontend, 10)); !slices.Equal(got, names(e.be[1])) {
		t.Errorf("after adoption and an update: reached %v", got)
	}
}

// TestCleanup: Cleanup leaves no program, map, link or pin, and keeps the
// steering's when it is attached.
func TestCleanup(t *testing.T) {
	cg := svctest.Cgroup(t)
	bpffs := steertest.BPFFS(t)
	s, err := steer.Attach(steer.Options{Cgroup: cg, BPFFS: bpffs})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Cleanup()
	tbl, err := lb.Open(lb.Options{Cgroup: cg, BPFFS: bpffs})
	if err != nil {
		t.Fatal(err)
	}
	if err := tbl.UpsertService(lb.Service{Frontend: lb.Frontend{Addr: netip.MustParseAddr("10.200.255.1"), Port: 80, Proto: lb.TCP}}); err != nil {
		t.Fatal(err)
	}
	ids, err := tbl.IDs()
	if err != nil {
		t.Fatal(err)
	}
	if err := tbl.Cleanup(); err != nil {
		t.Fatal(err)
	}
	// The kernel frees programs and maps asynchronously.
	deadline := time.Now().Add(5 * time.Second)
	for alive := steertest.Alive(steer.IDs(ids)); len(alive) > 0; alive = steertest.Alive(steer.IDs(ids)) {
		if time.Now().After(deadline) {
			t.Errorf("left after Cleanup: %v", alive)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, pins, err := steertest.ReadPins(bpffs)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pins {
		if strings.Contains(p, "dnsa_lb_") {
			t.Errorf("pin %s left", p)
		}
	}
	if !slices.Contains(pins, "dnsa_hb") || !slices.Contains(pins, "link_dnsa_connect4") {
		t.Errorf("the steering's pins went too: %v", pins)
	}
	// And the steering's Cleanup leaves the load balancer's alone.
	tbl2, err := lb.Open(lb.Options{Cgroup: cg, BPFFS: bpffs})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Cleanup(); err != nil {
		t.Fatal(err)
	}
	_, pins, _ = steertest.ReadPins(bpffs)
	if !slices.Contains(pins, "link_dnsa_lb_conn4") || !slices.Contains(pins, "dnsa_hb") {
		t.Errorf("steer.Cleanup removed the load balancer's pins: %v", pins)
	}
	if err := tbl2.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(bpffs, lb.PinDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left: %v", err)
	}
}

// TestPerPacketLB: traffic no socket program sees (the socket programs are
// attached to an empty cgroup; the test's sockets are outside it), load
// balanced per packet at the interfaces: a pod's requests to a ClusterIP at
// its veth, and a NodePort reached from another "node" namespace.
func TestPerPacketLB(t *testing.T) {
	cg := svctest.EmptyCgroup(t)
	bpffs := steertest.BPFFS(t)
	rng := svctest.NewRange(t)
	client := netns.NewPod(t, netns.Options{PodName: "client", IPv6: true})
	node2 := netns.NewPod(t, netns.Options{PodName: "node-2"})
	b0, b1 := svctest.NewBackend(t, "backend-0"), svctest.NewBackend(t, "backend-1")
	svctest.Forward(t, client, node2, b0.Pod, b1.Pod)
	for _, b := range []*svctest.Backend{b0, b1} {
		b.ServeHTTP(t, 8080)
		b.ServeEcho(t, 5353)
	}
	tbl, err := lb.Open(lb.Options{Cgroup: cg, BPFFS: bpffs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tbl.Cleanup() })
	for _, a := range []struct {
		pod   *netns.Pod
		where lb.Where
	}{{client, lb.PodInterface}, {node2, lb.ExternalInterface}} {
		l, err := netlink.LinkByName(a.pod.HostVeth)
		if err != nil {
			t.Fatal(err)
		}
		if err := tbl.AttachTC(l.Attrs().Index, a.where); err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) {
				cluster.SkipOrFail(t, "tcx: %v", err)
			}
			t.Fatal(err)
		}
	}
	vip := rng.VIP(false)
	set := func(s lb.Service, bs ...lb.Backend) {
		t.Helper()
		if err := tbl.UpsertService(s); err != nil {
			t.Fatal(err)
		}
		if err := tbl.SetBackends(s.Frontend, bs); err != nil {
			t.Fatal(err)
		}
	}
	http := lb.Service{Frontend: lb.Frontend{Addr: vip, Port: 80, Proto: lb.TCP}}
	udp := lb.Service{Frontend: lb.Frontend{Addr: vip, Port: 53, Proto: lb.UDP}}
	http6 := lb.Service{Frontend: lb.Frontend{Addr: rng.VIP(true), Port: 80, Proto: lb.TCP}}
	np := lb.Service{Frontend: lb.Frontend{Addr: node2.HostIP, Port: 30080, Proto: lb.TCP}, Type: lb.NodePort}
	set(http, be(b0, false, 8080), be(b1, false, 8080))
	set(udp, be(b0, false, 5353), be(b1, false, 5353))
	set(http6, be(b0, true, 8080))
	set(np, be(b0, false, 8080), be(b1, false, 8080))

	get := func(pod *netns.Pod, to netip.AddrPort, n int) []string {
		t.Helper()
		seen := map[string]int{}
		for range n {
			r := svctest.HTTPGet(pod, to, timeout)
			if r.Err != nil || r.Peer != to {
				t.Fatalf("GET %s from %s: %+v", to, pod.Name, r)
			}
			seen[r.Backend]++
		}
		return keys(seen)
	}
	if got := get(client, netip.AddrPortFrom(vip, 80), 30); !slices.Equal(got, names(b0, b1)) {
		t.Errorf("ClusterIP from a pod, per packet: reached %v", got)
	}
	for range 10 {
		r := svctest.UDPEcho(client, netip.AddrPortFrom(vip, 53), "ping", svctest.UDPOptions{}, timeout)
		if r.Err != nil || r.Peer != netip.AddrPortFrom(vip, 53) {
			t.Fatalf("UDP per packet: %+v", r)
		}
	}
	svctest.WaitIPv6(t, client, b0.Pod)
	if got := get(client, netip.AddrPortFrom(http6.Addr, 80), 5); !slices.Equal(got, names(b0)) {
		t.Errorf("IPv6 per packet: reached %v", got)
	}
	if got := get(node2, netip.AddrPortFrom(np.Addr, np.Port), 30); !slices.Equal(got, names(b0, b1)) {
		t.Errorf("NodePort from another node: reached %v", got)
	}
	st, _ := tbl.Stats()
	if st[lb.StatXlated] != 0 || st[lb.StatPktXlated] == 0 || st[lb.StatPktReversed] == 0 {
		t.Errorf("counters: %v (the socket programs must not have seen this traffic)", st)
	}
	if err := tbl.DetachTC(0); err != nil {
		t.Error(err)
	}
}

// TestMapFull: a full Service table is an error wrapping ErrMapFull, and
// the table stays consistent (the Service keeps what it had).
func TestMapFull(t *testing.T) {
	cg := svctest.EmptyCgroup(t)
	tbl, err := lb.Open(lb.Options{Cgroup: cg, BPFFS: steertest.BPFFS(t), MaxServiceEntries: 4, MaxBackends: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Cleanup()
	f := lb.Frontend{Addr: netip.MustParseAddr("10.200.254.1"), Port: 80, Proto: lb.TCP}
	if err := tbl.UpsertService(lb.Service{Frontend: f}); err != nil {
		t.Fatal(err)
	}
	two := []lb.Backend{{Addr: netip.MustParseAddrPort("10.244.8.1:80")}, {Addr: netip.MustParseAddrPort("10.244.8.2:80")}}
	if err := tbl.SetBackends(f, two); err != nil {
		t.Fatal(err)
	}
	var five []lb.Backend
	for i := range 5 {
		five = append(five, lb.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, 8, byte(10 + i)}), 80)})
	}
	err = tbl.SetBackends(f, five)
	if !errors.Is(err, lb.ErrMapFull) {
		t.Fatalf("5 backends in a 4-entry table: %v, want ErrMapFull", err)
	}
	if u := tbl.Usage(); u.ServiceEntries > 4 {
		t.Errorf("usage %+v", u)
	}
	// Still refusing nothing it had: a smaller set goes in again.
	if err := tbl.SetBackends(f, two[:1]); err != nil {
		t.Errorf("after the failure: %v", err)
	}
}
