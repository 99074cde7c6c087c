// Package steertest builds the network a steering test needs, with real
// namespaces: a client "pod" (test/netns) whose nameserver is a cluster DNS
// Service VIP, and a "cluster DNS" namespace that holds the VIP and runs
// bin/coredns on it, routed from the host as a Service's backends would be.
// Without steering, the pod's queries reach that CoreDNS; with it, they
// reach whatever the steering table says.
//
//	pod ns --veth--> host --(route VIP/32 via veth)--> cluster DNS ns (VIP on lo, coredns)
//
// The host does not forward in general (ip_forward stays as it is):
// forwarding is switched on for the two test veths only, and goes away with
// them. Everything is removed when the test ends.
package steertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/netns"
)

// ClusterName is a name only the cluster DNS knows; ClusterAnswer its A.
// Under WhoamiZone the cluster DNS answers with the client address it sees
// (CoreDNS whoami: an A/AAAA in the additional section).
const (
	ClusterName   = "cluster-only.steer.test."
	ClusterAnswer = "10.11.0.1"
	WhoamiZone    = "whoami.steer.test."
)

// Topology is a pod and a cluster DNS namespace holding VIP.
type Topology struct {
	Pod *netns.Pod // the client; nameserver VIP
	DNS *netns.Pod // the "cluster DNS" namespace
	VIP netip.Addr // the Service VIP, on DNS's lo, routed to it from the host
	// LocalIP is a free link-local address for a node cache (not set up).
	LocalIP netip.Addr

	coredns *exec.Cmd
	logs    bytes.Buffer
}

// New builds the topology and starts bin/coredns in the cluster DNS
// namespace (answering ClusterName on VIP:53, UDP and TCP). Skips without
// root (fails under CI=true).
func New(t testing.TB) *Topology {
	t.Helper()
	netns.Require(t)
	tp := &Topology{}
	tp.DNS = netns.NewPod(t, netns.Options{PodName: "cluster-dns", Namespace: "kube-system"})
	for i := 0; ; i++ {
		vip := randomAddr(netip.MustParsePrefix("10.246.0.0/16"))
		err := tp.routeVIP(vip)
		if err == nil {
			tp.VIP = vip
			break
		}
		if !errors.Is(err, unix.EEXIST) || i > 10 {
			t.Fatalf("routing VIP %s to the cluster DNS namespace: %v", vip, err)
		}
	}
	t.Cleanup(func() {
		netlink.RouteDel(tp.vipRoute())
	})
	// No search list: glibc asks for exactly the name it is given.
	tp.Pod = netns.NewPod(t, netns.Options{Nameservers: []string{tp.VIP.String()}, NoSearch: true, ResolvOptions: []string{"ndots:1"}})
	for _, veth := range []string{tp.Pod.HostVeth, tp.DNS.HostVeth} {
		p := filepath.Join("/proc/sys/net/ipv4/conf", veth, "forwarding")
		if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
			t.Fatalf("forwarding on %s: %v", veth, err)
		}
	}
	tp.LocalIP = FreeLinkLocal(t)
	tp.startCoreDNS(t)
	return tp
}

func (tp *Topology) vipRoute() *netlink.Route {
	l, _ := netlink.LinkByName(tp.DNS.HostVeth)
	idx := 0
	if l != nil {
		idx = l.Attrs().Index
	}
	return &netlink.Route{LinkIndex: idx, Dst: hostNet(tp.VIP), Scope: netlink.SCOPE_LINK}
}

// routeVIP puts vip on the DNS namespace's lo and routes it there.
func (tp *Topology) routeVIP(vip netip.Addr) error {
	l, err := netlink.LinkByName(tp.DNS.HostVeth)
	if err != nil {
		return err
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: hostNet(vip), Scope: netlink.SCOPE_LINK, Src: net.IP(tp.DNS.HostIP.AsSlice())}
	if err := netlink.RouteAdd(r); err != nil {
		return err
	}
	nl := tp.DNS.Netlink()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return err
	}
	return nl.AddrAdd(lo, &netlink.Addr{IPNet: hostNet(vip)})
}

func (tp *Topology) startCoreDNS(t testing.TB) {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "Corefile")
	corefile := fmt.Sprintf(`.:53 {
    bind %[1]s
    hosts {
        %[2]s %[3]s
    }
}
%[4]s:53 {
    bind %[1]s
    whoami
}
`, tp.VIP, ClusterAnswer, strings.TrimSuffix(ClusterName, "."), strings.TrimSuffix(WhoamiZone, "."))
	if err := os.WriteFile(conf, []byte(corefile), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := tp.DNS.Command(context.Background(), Binary(t, "coredns"), "-conf", conf)
	cmd.Stdout, cmd.Stderr = &tp.logs, &tp.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	tp.coredns = cmd
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("cluster DNS (bin/coredns) log:\n%s", tp.logs.String())
		}
	})
	// Ready when it answers from inside its own namespace (nothing
	// steers there: the query goes to its own address).
	WaitFor(t, "cluster DNS answering", 30*time.Second, func() bool {
		var ok bool
		tp.DNS.Do(func() error {
			r, _, err := Query(netip.AddrPortFrom(tp.VIP, 53), ClusterName, false, 200*time.Millisecond)
			ok = err == nil && HasA(r, ClusterAnswer)
			return nil
		})
		return ok
	})
}

// Query sends one query for name (type A) from a fresh socket, as glibc
// does, and returns the answer and the address it came from. UDP uses an
// unconnected socket, so from is the datagram's real source as the
// application sees it; TCP reports getpeername.
func Query(to netip.AddrPort, name string, tcp bool, timeout time.Duration) (*dns.Msg, netip.AddrPort, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	wire, err := m.Pack()
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	deadline := time.Now().Add(timeout)
	if tcp {
		c, err := net.DialTimeout("tcp", to.String(), timeout)
		if err != nil {
			return nil, netip.AddrPort{}, err
		}
		defer c.Close()
		c.SetDeadline(deadline)
		from := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		dc := &dns.Conn{Conn: c}
		if err := dc.WriteMsg(m); err != nil {
			return nil, from, err
		}
		r, err := dc.ReadMsg()
		return r, from, err
	}
	pc, err := net.ListenUDP("udp", nil)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	defer pc.Close()
	pc.SetDeadline(deadline)
	if _, err := pc.WriteToUDPAddrPort(wire, to); err != nil {
		return nil, netip.AddrPort{}, err
	}
	buf := make([]byte, 4096)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return nil, netip.AddrPort{}, err
		}
		r := new(dns.Msg)
		if r.Unpack(buf[:n]) != nil || r.Id != m.Id {
			continue
		}
		return r, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
	}
}

// HasA reports whether r answers with an A record for ip.
func HasA(r *dns.Msg, ip string) bool {
	if r == nil {
		return false
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok && a.A.String() == ip {
			return true
		}
	}
	return false
}

// Seen returns the client address a whoami answer reports.
func Seen(r *dns.Msg) netip.Addr {
	if r == nil {
		return netip.Addr{}
	}
	for _, rr := range append(append([]dns.RR{}, r.Answer...), r.Extra...) {
		switch v := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(v.A.To4())
			return a
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(v.AAAA)
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

// WaitFor polls ok until it holds or the deadline passes (then fails t).
func WaitFor(t testing.TB, what string, within time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreeLinkLocal returns a random 169.254.X.Y that no interface holds (not
// 169.254.20.10, the production default, nor 169.254.169.254).
func FreeLinkLocal(t testing.TB) netip.Addr {
	t.Helper()
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	used := map[netip.Addr]bool{netip.MustParseAddr("169.254.20.10"): true, netip.MustParseAddr("169.254.169.254"): true}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			used[ip.Unmap()] = true
		}
	}
	for {
		a := randomAddr(netip.MustParsePrefix("169.254.0.0/16"))
		if !used[a] {
			return a
		}
	}
}

// HasAddr reports whether the host's interface ifname holds a.
func HasAddr(ifname string, a netip.Addr) (bool, error) {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return false, err
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return false, err
	}
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP); ok && ip.Unmap() == a {
			return true, nil
		}
	}
	return false, nil
}

// BPFFS mounts a private bpf file system for one test (PrivateBPFFS) and
// removes it (with every pin in it) when the test ends. The first call
// sweeps those of test binaries that died before their cleanup.
func BPFFS(t testing.TB) string {
	t.Helper()
	sweepOnce.Do(func() { SweepBPFFS(bpffsPrefix, nil) })
	dir, unmount, err := PrivateBPFFS(bpffsPrefix, "test")
	if err != nil {
		cluster.SkipOrFail(t, "%v", err)
	}
	t.Cleanup(unmount)
	return dir
}

const bpffsPrefix = "dnsaccel-bpffs-"

var sweepOnce sync.Once

func randomAddr(p netip.Prefix) netip.Addr {
	var b [2]byte
	for {
		rand.Read(b[:])
		if b[1] != 0 && b[1] != 255 && !(b[0] == 20 && b[1] == 10) && !(b[0] == 169 && b[1] == 254) {
			break
		}
	}
	a := p.Addr().As4()
	a[2], a[3] = b[0], b[1]
	return netip.AddrFrom4(a)
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
	tmpDir  string
)

// Binary builds cmd/<name> of this module once per test binary into a
// temporary directory (removed by Cleanup) and returns its path.
func Binary(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if tmpDir == "" {
		if tmpDir, err = os.MkdirTemp("", "dnsaccel-steertest-bin-"); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(tmpDir, name)
	cmd := exec.Command("go", "build", "-o", out, "./cmd/"+name)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, b)
	}
	built[name] = out
	return out
}

// RemoveBinaries deletes what Binary built; call it from TestMain.
func RemoveBinaries() {
	buildMu.Lock()
	defer buildMu.Unlock()
	if tmpDir != "" {
		os.RemoveAll(tmpDir)
	}
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// RawClient sends queries from a fresh blocking socket each, with plain
// system calls (no Go netpoller), as glibc's resolver does: for load
// generators and latency measurements run on a thread locked into a pod's
// namespace (netns.Pod.Do). Not safe for concurrent use.
type RawClient struct {
	To      netip.AddrPort
	Timeout time.Duration
	buf     [4096]byte
	wire    []byte
	id      uint16
}

// Query asks for name (type A) from a fresh unconnected UDP socket and
// returns the answer and the source address of the reply.
func (c *RawClient) Query(name string) (*dns.Msg, netip.AddrPort, error) {
	c.id++
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	m.Id = c.id
	wire, err := m.PackBuffer(c.wire)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	c.wire = wire
	n, from, err := c.Exchange(wire)
	if err != nil {
		return nil, from, err
	}
	r := new(dns.Msg)
	if err := r.Unpack(c.buf[:n]); err != nil {
		return nil, from, err
	}
	return r, from, nil
}

// Exchange sends wire from a fresh socket and waits for a datagram with
// the same ID; it returns its length (in Buf) and source.
func (c *RawClient) Exchange(wire []byte) (int, netip.AddrPort, error) {
	fam := unix.AF_INET
	if c.To.Addr().Is6() {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(c.Timeout))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, netip.AddrPort{}, err
	}
	var sa unix.Sockaddr
	if fam == unix.AF_INET {
		sa = &unix.SockaddrInet4{Port: int(c.To.Port()), Addr: c.To.Addr().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(c.To.Port()), Addr: c.To.Addr().As16()}
	}
	if err := unix.Sendto(fd, wire, 0, sa); err != nil {
		return 0, netip.AddrPort{}, err
	}
	deadline := time.Now().Add(c.Timeout)
	for {
		n, from, err := unix.Recvfrom(fd, c.buf[:], 0)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return 0, netip.AddrPort{}, fmt.Errorf("no answer within %s", c.Timeout)
		}
		if err != nil {
			return 0, netip.AddrPort{}, err
		}
		var src netip.AddrPort
		switch f := from.(type) {
		case *unix.SockaddrInet4:
			src = netip.AddrPortFrom(netip.AddrFrom4(f.Addr), uint16(f.Port))
		case *unix.SockaddrInet6:
			src = netip.AddrPortFrom(netip.AddrFrom16(f.Addr).Unmap(), uint16(f.Port))
		}
		if n >= 2 && len(wire) >= 2 && c.buf[0] == wire[0] && c.buf[1] == wire[1] {
			return n, src, nil
		}
		if time.Now().After(deadline) {
			return 0, netip.AddrPort{}, fmt.Errorf("no answer within %s", c.Timeout)
		}
	}
}

// Buf is the receive buffer of the last Exchange.
func (c *RawClient) Buf() []byte { return c.buf[:] }

// RequireBPF skips the test (fails it under CI=true) where eBPF steering
// cannot run, with the reason datapath.Check gives, and returns the cgroup
// v2 mount.
func RequireBPF(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		cluster.SkipOrFail(t, "steering needs root (BPF, cgroups, network namespaces)")
	}
	cg, err := datapath.DetectCgroup2()
	if err != nil {
		cluster.SkipOrFail(t, "%v", err)
	}
	if err := datapath.Check(cg); err != nil {
		cluster.SkipOrFail(t, "%v", err)
	}
	return cg
}
