// Package svctest builds what a Service load-balancing test needs, with
// real parts: a cgroup v2 of the test's own that the test process moves
// into (so every socket it opens, in whatever pod namespace, passes the
// attached programs, and no other process's), a blackhole route for the
// Service range under test (an untranslated packet dies on the node),
// backend "pods" (test/netns) running real servers (HTTP over TCP, an echo
// over UDP, DNS) and client operations run inside a pod with the system
// calls a real client makes.
//
// Addresses: Service ranges 10.200.X.0/24 and fd96:200:X::/64 (X random,
// taken by adding the blackhole route, which is unique), pods from
// test/netns.
package svctest

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

// CgroupPrefix starts the name of every cgroup this package creates, under
// the cgroup v2 mount: <prefix><pid>-<random>.
const CgroupPrefix = "dnsaccel-svc-test-"

// Cgroup creates a cgroup v2 directory for the test, moves the whole test
// process into it and back out (and removes it) when the test ends.
// Leftovers of test binaries that died are removed first. It skips the test
// where eBPF cannot run (fails under CI=true).
func Cgroup(t testing.TB) string {
	t.Helper()
	root := steertest.RequireBPF(t)
	sweepCgroups(root)
	orig, err := ownCgroup(root)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, fmt.Sprintf("%s%d-%s", CgroupPrefix, os.Getpid(), randHex(3)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("creating cgroup %s: %v", dir, err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0o644); err != nil {
		os.Remove(dir)
		t.Fatalf("moving the test process into %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(orig, "cgroup.procs"), pid, 0o644); err != nil {
			t.Errorf("moving the test process back to %s: %v", orig, err)
		}
		// Child processes the test started may still be leaving.
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("removing cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	return dir
}

// EmptyCgroup creates a cgroup v2 directory of the test's own with no
// process in it (for a program that must attach somewhere harmless),
// removed when the test ends.
func EmptyCgroup(t testing.TB) string {
	t.Helper()
	root := steertest.RequireBPF(t)
	sweepCgroups(root)
	dir := filepath.Join(root, fmt.Sprintf("%s%d-%s", CgroupPrefix, os.Getpid(), randHex(3)))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("creating cgroup %s: %v", dir, err)
	}
	t.Cleanup(func() { os.Remove(dir) })
	return dir
}

// ownCgroup is the cgroup v2 directory of this process.
func ownCgroup(root string) (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return filepath.Join(root, p), nil
		}
	}
	return "", errors.New("no cgroup v2 entry in /proc/self/cgroup")
}

func sweepCgroups(root string) {
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), CgroupPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pid, _, _ := strings.Cut(rest, "-")
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue
		}
		os.Remove(filepath.Join(root, e.Name()))
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// Range is a Service range of the test's own, blackholed on the node.
type Range struct {
	V4, V6 netip.Prefix
	next   atomic.Uint32
}

// NewRange takes a free 10.200.X.0/24 and fd96:200:X::/64 by adding
// blackhole routes for them (removed when the test ends).
func NewRange(t testing.TB) *Range { return NewRangeIn(t, 200) }

// NewRangeIn is NewRange in 10.<second>.X.0/24 (and fd96:<second>:X::/64):
// 96 for addresses in the test API server's Service CIDR (10.96.0.0/16),
// given to Services as explicit ClusterIPs.
func NewRangeIn(t testing.TB, second byte) *Range {
	t.Helper()
	r := &Range{}
	for i := 0; ; i++ {
		var b [1]byte
		rand.Read(b[:])
		if second == 96 && b[0] == 0 {
			continue // 10.96.0.x: the kubernetes and kube-dns Services of other tests
		}
		v4 := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, second, b[0], 0}), 24)
		v6 := netip.MustParsePrefix(fmt.Sprintf("fd96:%d:%x::/64", second, b[0]))
		err := addBlackhole(v4)
		if err == nil {
			if err = addBlackhole(v6); err != nil {
				delBlackhole(v4)
			}
		}
		if err == nil {
			r.V4, r.V6 = v4, v6
			t.Cleanup(func() { delBlackhole(v4); delBlackhole(v6) })
			return r
		}
		if !errors.Is(err, unix.EEXIST) || i > 20 {
			t.Fatalf("blackhole route for the Service range: %v", err)
		}
	}
}

func blackhole(p netip.Prefix) *netlink.Route {
	return &netlink.Route{Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Type: unix.RTN_BLACKHOLE}
}

func addBlackhole(p netip.Prefix) error { return netlink.RouteAdd(blackhole(p)) }
func delBlackhole(p netip.Prefix)       { netlink.RouteDel(blackhole(p)) }

// VIP returns the next address of the range (IPv6 if v6).
func (r *Range) VIP(v6 bool) netip.Addr {
	n := r.next.Add(1)
	if v6 {
		a := r.V6.Addr().As16()
		a[14], a[15] = byte(n>>8), byte(n)
		return netip.AddrFrom16(a)
	}
	a := r.V4.Addr().As4()
	a[3] = byte(n%250) + 2
	return netip.AddrFrom4(a)
}

// Forward switches forwarding on for the host ends of the pods' veths only
// (IPv4 forwarding, IPv6 force_forwarding): pod-to-pod traffic through the
// node, as a CNI sets it up. It goes away with the veths.
func Forward(t testing.TB, pods ...*netns.Pod) {
	t.Helper()
	for _, p := range pods {
		for _, f := range []string{
			filepath.Join("/proc/sys/net/ipv4/conf", p.HostVeth, "forwarding"),
			filepath.Join("/proc/sys/net/ipv6/conf", p.HostVeth, "force_forwarding"),
		} {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil && !(strings.Contains(f, "ipv6") && errors.Is(err, os.ErrNotExist)) {
				t.Fatalf("forwarding on %s: %v", p.HostVeth, err)
			}
		}
	}
}

// WaitIPv6 waits until the IPv6 addresses of the pods and of their veths'
// host ends have left duplicate address detection (tentative addresses
// cannot be used yet: a connection would stall).
func WaitIPv6(t testing.TB, pods ...*netns.Pod) {
	t.Helper()
	tentative := func(h *netlink.Handle, ifname string) bool {
		var (
			l   netlink.Link
			err error
		)
		if h != nil {
			l, err = h.LinkByName(ifname)
		} else {
			l, err = netlink.LinkByName(ifname)
		}
		if err != nil {
			return false
		}
		var addrs []netlink.Addr
		if h != nil {
			addrs, err = h.AddrList(l, netlink.FAMILY_V6)
		} else {
			addrs, err = netlink.AddrList(l, netlink.FAMILY_V6)
		}
		if err != nil {
			return false
		}
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range pods {
		for tentative(p.Netlink(), netns.PodInterface) || tentative(nil, p.HostVeth) {
			if time.Now().After(deadline) {
				t.Fatalf("IPv6 addresses of %s still tentative after 10s", p.Name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// Backend is a pod running servers that answer with its name: HTTP on TCP
// ports (the body is the name), an echo on UDP ports (the reply is
// "<name> <payload>"), and DNS (a TXT record holding the name) on UDP/TCP
// ports given to ServeDNS.
type Backend struct {
	Name string
	Pod  *netns.Pod

	mu   sync.Mutex
	hits map[string]int
}

// NewBackend creates a backend pod (with IPv6 addresses too).
func NewBackend(t testing.TB, name string) *Backend {
	t.Helper()
	return &Backend{Name: name, Pod: netns.NewPod(t, netns.Options{PodName: name, IPv6: true}), hits: map[string]int{}}
}

func (b *Backend) hit(what string) {
	b.mu.Lock()
	b.hits[what]++
	b.mu.Unlock()
}

// Hits is how many requests the backend served on proto/port ("tcp/8080").
func (b *Backend) Hits(what string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hits[what]
}

// AddrPort is the backend's address (v4 or v6) with port.
func (b *Backend) AddrPort(v6 bool, port uint16) netip.AddrPort {
	if v6 {
		return netip.AddrPortFrom(b.Pod.IPv6, port)
	}
	return netip.AddrPortFrom(b.Pod.IP, port)
}

// ServeHTTP serves HTTP on port (both families) until the test ends.
func (b *Backend) ServeHTTP(t testing.TB, port uint16) {
	t.Helper()
	var ln net.Listener
	if err := b.Pod.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("%s: listen tcp/%d: %v", b.Name, port, err)
	}
	what := fmt.Sprintf("tcp/%d", port)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hit(what)
		io.WriteString(w, b.Name)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// ServeEcho answers UDP datagrams on port with "<name> <payload>".
func (b *Backend) ServeEcho(t testing.TB, port uint16) {
	t.Helper()
	var pc net.PacketConn
	if err := b.Pod.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("%s: listen udp/%d: %v", b.Name, port, err)
	}
	what := fmt.Sprintf("udp/%d", port)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			b.hit(what)
			pc.WriteTo(append([]byte(b.Name+" "), buf[:n]...), from)
		}
	}()
	t.Cleanup(func() { pc.Close() })
}

// ServeDNS answers every question on port (UDP and TCP, in the backend's
// pod) with a TXT record holding the backend's name.
func (b *Backend) ServeDNS(t testing.TB, port uint16) {
	t.Helper()
	var (
		pc net.PacketConn
		ln net.Listener
	)
	if err := b.Pod.Do(func() (err error) {
		if pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("%s: listen dns/%d: %v", b.Name, port, err)
	}
	b.serveDNS(t, pc, ln, port)
}

// ServeDNSOn is ServeDNS on addr in the host's namespace (b.Pod unused):
// a node-local DNS server.
func ServeDNSOn(t testing.TB, b *Backend, addr netip.AddrPort) {
	t.Helper()
	if b.hits == nil {
		b.hits = map[string]int{}
	}
	pc, err := net.ListenPacket("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	b.serveDNS(t, pc, ln, addr.Port())
}

func (b *Backend) serveDNS(t testing.TB, pc net.PacketConn, ln net.Listener, port uint16) {
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		b.hit(fmt.Sprintf("dns/%d", port))
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 5}, Txt: []string{b.Name}})
		}
		w.WriteMsg(m)
	})
	us, ts := &dns.Server{PacketConn: pc, Handler: h}, &dns.Server{Listener: ln, Handler: h}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	t.Cleanup(func() { us.Shutdown(); ts.Shutdown() })
}

// Result of one client operation.
type Result struct {
	Backend string         // the name the server answered with
	Peer    netip.AddrPort // getpeername / the reply's source address
	Err     error
	Took    time.Duration
}

// HTTPGet connects from pod to to (a fresh TCP connection), sends one HTTP
// request and returns the body and getpeername of the socket.
func HTTPGet(pod *netns.Pod, to netip.AddrPort, timeout time.Duration) Result {
	start := time.Now()
	var (
		c   net.Conn
		res Result
	)
	res.Err = pod.Do(func() (err error) {
		d := net.Dialer{Timeout: timeout}
		c, err = d.Dial("tcp", to.String())
		return err
	})
	if res.Err != nil {
		res.Took = time.Since(start)
		return res
	}
	defer c.Close()
	res.Peer, res.Err = peerOf(c.(*net.TCPConn))
	if res.Err != nil {
		return res
	}
	c.SetDeadline(time.Now().Add(timeout))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", to)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		res.Err = err
		return res
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	res.Backend, res.Err, res.Took = string(body), err, time.Since(start)
	return res
}

// peerOf is getpeername(2) on the connection's socket.
func peerOf(c syscall.Conn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var (
		sa   unix.Sockaddr
		serr error
	)
	if err := rc.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("getpeername: %w", serr)
	}
	return fromSockaddr(sa), nil
}

func fromSockaddr(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

func toSockaddr(ap netip.AddrPort, fam int) unix.Sockaddr {
	if fam == unix.AF_INET {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// UDPOptions change how a UDP client socket is made.
type UDPOptions struct {
	Mark uint32 // SO_MARK (0: none)
	// DualStack: an AF_INET6 socket even for an IPv4 destination (sent
	// to the v4-mapped address), as dual-stack clients do.
	DualStack bool
}

func udpSocket(to netip.AddrPort, o UDPOptions, timeout time.Duration) (int, int, error) {
	fam := unix.AF_INET
	if to.Addr().Is6() || o.DualStack {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, err
	}
	if o.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark)); err != nil {
			unix.Close(fd)
			return -1, 0, err
		}
	}
	tv := unix.NsecToTimeval(int64(timeout))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	return fd, fam, nil
}

func destination(to netip.AddrPort, fam int) netip.AddrPort {
	if fam == unix.AF_INET6 && to.Addr().Is4() {
		return netip.AddrPortFrom(netip.AddrFrom16(to.Addr().As16()), to.Port())
	}
	return to
}

// recvReply reads one datagram; EAGAIN is a timeout.
func recvReply(fd int, buf []byte, timeout time.Duration) (int, netip.AddrPort, error) {
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return 0, netip.AddrPort{}, fmt.Errorf("no reply within %s", timeout)
		}
		if err != nil {
			return 0, netip.AddrPort{}, err
		}
		return n, fromSockaddr(from), nil
	}
}

// UDPEcho sends payload from a fresh unconnected socket in pod (sendto) and
// returns the echo server's name and the reply's source address (recvfrom),
// as glibc's and musl's resolvers check it.
func UDPEcho(pod *netns.Pod, to netip.AddrPort, payload string, o UDPOptions, timeout time.Duration) Result {
	start := time.Now()
	var res Result
	res.Err = pod.Do(func() error {
		fd, fam, err := udpSocket(to, o, timeout)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Sendto(fd, []byte(payload), 0, toSockaddr(destination(to, fam), fam)); err != nil {
			return fmt.Errorf("sendto: %w", err)
		}
		buf := make([]byte, 2048)
		n, from, err := recvReply(fd, buf, timeout)
		if err != nil {
			return err
		}
		res.Peer = from
		name, rest, _ := strings.Cut(string(buf[:n]), " ")
		if rest != payload {
			return fmt.Errorf("echo %q, sent %q", rest, payload)
		}
		res.Backend = name
		return nil
	})
	res.Took = time.Since(start)
	return res
}

// DNSQuery asks to (UDP, a fresh unconnected socket) for a TXT record and
// returns the name in the answer and the reply's source.
func DNSQuery(pod *netns.Pod, to netip.AddrPort, o UDPOptions, timeout time.Duration) Result {
	start := time.Now()
	var res Result
	res.Err = pod.Do(func() error {
		fd, fam, err := udpSocket(to, o, timeout)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		q := new(dns.Msg)
		q.SetQuestion("svc.test.", dns.TypeTXT)
		wire, _ := q.Pack()
		if err := unix.Sendto(fd, wire, 0, toSockaddr(destination(to, fam), fam)); err != nil {
			return fmt.Errorf("sendto: %w", err)
		}
		buf := make([]byte, 4096)
		for {
			n, from, err := recvReply(fd, buf, timeout)
			if err != nil {
				return err
			}
			r := new(dns.Msg)
			if r.Unpack(buf[:n]) != nil || r.Id != q.Id {
				continue
			}
			res.Peer = from
			for _, rr := range r.Answer {
				if txt, ok := rr.(*dns.TXT); ok && len(txt.Txt) > 0 {
					res.Backend = txt.Txt[0]
				}
			}
			return nil
		}
	})
	res.Took = time.Since(start)
	return res
}

// UDPConn is a connected UDP socket of a pod (connect(2) to a Service).
type UDPConn struct {
	fd      int
	fam     int
	timeout time.Duration
}

// DialUDP connects a UDP socket in pod to to.
func DialUDP(pod *netns.Pod, to netip.AddrPort, o UDPOptions, timeout time.Duration) (*UDPConn, error) {
	c := &UDPConn{fd: -1, timeout: timeout}
	err := pod.Do(func() error {
		fd, fam, err := udpSocket(to, o, timeout)
		if err != nil {
			return err
		}
		if err := unix.Connect(fd, toSockaddr(destination(to, fam), fam)); err != nil {
			unix.Close(fd)
			return fmt.Errorf("connect: %w", err)
		}
		c.fd, c.fam = fd, fam
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Peer is getpeername(2).
func (c *UDPConn) Peer() (netip.AddrPort, error) {
	sa, err := unix.Getpeername(c.fd)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getpeername: %w", err)
	}
	return fromSockaddr(sa), nil
}

// Echo sends payload on the connected socket and reads the reply.
func (c *UDPConn) Echo(payload string) Result {
	start := time.Now()
	var res Result
	if _, err := unix.Write(c.fd, []byte(payload)); err != nil {
		res.Err = fmt.Errorf("send: %w", err)
		return res
	}
	buf := make([]byte, 2048)
	n, from, err := recvReply(c.fd, buf, c.timeout)
	res.Took = time.Since(start)
	if err != nil {
		res.Err = err
		return res
	}
	res.Peer = from
	res.Backend, _, _ = strings.Cut(string(buf[:n]), " ")
	return res
}

// Fd is the socket.
func (c *UDPConn) Fd() int { return c.fd }

// Close closes the socket.
func (c *UDPConn) Close() error { return unix.Close(c.fd) }
