// Package netns creates "pods" for tests: network namespaces wired to the host
// through a veth pair the way CNI plugins such as Calico or Cilium do it, with
// a pod-style /etc/resolv.conf, optionally registered as Pod objects in the
// test API server (see test/cluster). Linux only; needs root.
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
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

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/internal/owner"
)

// Naming of everything this package creates; Sweep removes leftovers by
// these prefixes.
const (
	// NamePrefix starts every network namespace name (/run/netns/dnsa-xxxxxx).
	NamePrefix = "dnsa-"
	// VethPrefix starts every host-side veth name (vethdnsaxxxxxx).
	VethPrefix = "vethdnsa"
	// PodInterface is the pod end of the veth pair.
	PodInterface = "eth0"
)

// Address ranges. A pod gets 10.244.X.Y/32 on eth0 and its host veth gets
// 10.245.X.Y/32 (same X.Y), which is also the pod's default gateway. With
// IPv6 the pair is fd00:10:244::X:Y/128 and fd00:10:245::X:Y/128.
var (
	PodCIDR    = netip.MustParsePrefix("10.244.0.0/16")
	HostCIDR   = netip.MustParsePrefix("10.245.0.0/16")
	PodCIDRv6  = netip.MustParsePrefix("fd00:10:244::/112")
	HostCIDRv6 = netip.MustParsePrefix("fd00:10:245::/112")
)

const (
	// stateDir holds one owner file (pid and start time of the test
	// binary) per pod; Sweep uses them to tell leftovers from live pods.
	stateDir    = "/run/dnsaccel-test/netns"
	netnsRunDir = "/run/netns"
	netnsEtcDir = "/etc/netns"
)

var (
	errNameInUse = errors.New("name already in use")
	errAddrInUse = errors.New("address already in use")
)

// ErrUnavailable is wrapped by errors about missing prerequisites (not root,
// no network namespace support, no iproute2, no veth driver). NewPod skips
// the test on them unless CI=true.
var ErrUnavailable = cluster.ErrUnavailable

// Options configures a pod. The zero value is a pod in namespace "default"
// with a random address whose resolver points at the host-side address.
type Options struct {
	// Namespace is the Kubernetes namespace: it goes into the search list
	// and into the registered Pod object. Default "default".
	Namespace string
	// PodName is the name of the Pod object and of the pod in /etc/hosts.
	// Default: the network namespace name.
	PodName string
	// IP is the pod's IPv4 address; default a free random one from PodCIDR.
	IP netip.Addr
	// HostIP is the host-side (gateway) address; default the HostCIDR
	// address with IP's last two bytes.
	HostIP netip.Addr
	// IPv6 also gives the pod and the host side IPv6 addresses (from
	// PodCIDRv6/HostCIDRv6 with the same last two bytes as IP) and an IPv6
	// default route.
	IPv6 bool

	// Nameservers for resolv.conf; default the pod's HostIP.
	Nameservers []string
	// Searches for resolv.conf; default "<ns>.svc.<domain> svc.<domain>
	// <domain>" as the kubelet writes it. Set NoSearch for none.
	Searches []string
	NoSearch bool
	// ClusterDomain defaults to "cluster.local".
	ClusterDomain string
	// ResolvOptions for resolv.conf; default ["ndots:5"].
	ResolvOptions []string
	// Hosts are extra lines for the pod's /etc/hosts (which otherwise has
	// localhost and the pod's own name, like a kubelet-managed one).
	Hosts []string

	// Client, if set, registers a Pod object (spec.nodeName NodeName,
	// status podIP(s)/hostIP set via UpdateStatus) and deletes it again
	// on Close.
	Client   kubernetes.Interface
	NodeName string // default cluster.DefaultNodeName
	NodeIP   string // status.hostIP; default HostIP
	Labels   map[string]string
	// DNSConfig goes into the registered Pod's spec. It does not change
	// resolv.conf: set Searches/ResolvOptions to match it.
	DNSConfig *corev1.PodDNSConfig
}

// Pod is a network namespace set up like a Kubernetes pod.
type Pod struct {
	// Name of the network namespace (`ip netns exec <Name> ...`).
	Name string
	// HostVeth is the name of the host end of the veth pair.
	HostVeth string
	// IP is the pod's IPv4 address (on eth0); HostIP the host-side one.
	IP, HostIP netip.Addr
	// IPv6 and HostIPv6 are set if Options.IPv6.
	IPv6, HostIPv6 netip.Addr
	// Namespace and PodName as in Options (defaults applied).
	Namespace, PodName string
	// ResolvConf is the content of the pod's /etc/resolv.conf.
	ResolvConf string
	// Object is the registered Pod object (nil without Options.Client).
	Object *corev1.Pod

	client   kubernetes.Interface
	mu       sync.Mutex
	cmds     []*exec.Cmd
	ns       netns.NsHandle
	nl       *netlink.Handle
	cleanups []func() error
	closed   bool
}

// NewPod creates a pod for test t and removes it when the test ends, also if
// it fails. Missing prerequisites skip the test (fail it when CI=true).
func NewPod(t testing.TB, o Options) *Pod {
	t.Helper()
	Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := New(ctx, o)
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			cluster.SkipOrFail(t, "%v", err)
		}
		t.Fatalf("creating netns pod: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("removing netns pod %s: %v", p.Name, err)
		}
	})
	return p
}

// New creates a pod. The caller must Close it.
func New(ctx context.Context, o Options) (*Pod, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	sweepOnce()
	var last error
	for attempt := 0; attempt < 8; attempt++ {
		p, err := create(ctx, o)
		if err == nil {
			return p, nil
		}
		retry := errors.Is(err, errNameInUse) || (errors.Is(err, errAddrInUse) && !o.IP.IsValid())
		if !retry || ctx.Err() != nil {
			return nil, err
		}
		last = err
	}
	return nil, fmt.Errorf("no free name/address after several attempts: %w", last)
}

func randomID() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func randomIn(p netip.Prefix) netip.Addr {
	var b [2]byte
	for {
		rand.Read(b[:])
		if b[1] != 0 && b[1] != 255 {
			break
		}
	}
	a := p.Addr().As4()
	a[2], a[3] = b[0], b[1]
	return netip.AddrFrom4(a)
}

func withLow16(p netip.Prefix, from netip.Addr) netip.Addr {
	var low [2]byte
	if from.Is4() {
		a := from.As4()
		low = [2]byte{a[2], a[3]}
	} else {
		a := from.As16()
		low = [2]byte{a[14], a[15]}
	}
	if p.Addr().Is4() {
		a := p.Addr().As4()
		a[2], a[3] = low[0], low[1]
		return netip.AddrFrom4(a)
	}
	a := p.Addr().As16()
	a[14], a[15] = low[0], low[1]
	return netip.AddrFrom16(a)
}

func create(ctx context.Context, o Options) (_ *Pod, retErr error) {
	id := randomID()
	p := &Pod{Name: NamePrefix + id, HostVeth: VethPrefix + id, ns: netns.None()}
	defer func() {
		if retErr != nil {
			if err := p.Close(); err != nil {
				retErr = fmt.Errorf("%w (and cleaning up: %v)", retErr, err)
			}
		}
	}()
	p.Namespace = o.Namespace
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	p.PodName = o.PodName
	if p.PodName == "" {
		p.PodName = p.Name
	}
	p.IP = o.IP
	if !p.IP.IsValid() {
		p.IP = randomIn(PodCIDR)
	}
	if !p.IP.Is4() {
		return nil, fmt.Errorf("Options.IP %s is not IPv4", p.IP)
	}
	p.HostIP = o.HostIP
	if !p.HostIP.IsValid() {
		p.HostIP = withLow16(HostCIDR, p.IP)
	}
	if o.IPv6 {
		p.IPv6 = withLow16(PodCIDRv6, p.IP)
		p.HostIPv6 = withLow16(HostCIDRv6, p.IP)
	}

	// Ownership first, so a concurrent Sweep in another test binary leaves
	// the pod alone; it is removed last by Close.
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, err
	}
	ownerPath := filepath.Join(stateDir, p.Name)
	if err := owner.Write(ownerPath); err != nil {
		return nil, err
	}
	p.addCleanup(func() error { return rmIfExists(ownerPath) })

	// Network namespace, created with iproute2 so `ip netns` sees it.
	if out, err := ipNetns("add", p.Name); err != nil {
		if strings.Contains(out, "File exists") {
			return nil, fmt.Errorf("netns %s: %w", p.Name, errNameInUse)
		}
		return nil, fmt.Errorf("ip netns add %s: %v: %s", p.Name, err, out)
	}
	p.addCleanup(func() error { return deleteNetns(p.Name) })
	p.addCleanup(func() error { p.killCommands(); return killNetnsProcesses(p.Name) })
	nsh, err := netns.GetFromName(p.Name)
	if err != nil {
		return nil, fmt.Errorf("opening netns %s: %w", p.Name, err)
	}
	p.ns = nsh
	p.addCleanup(func() error { p.ns.Close(); p.ns = netns.None(); return nil })
	nlh, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", p.Name, err)
	}
	p.nl = nlh
	p.addCleanup(func() error { p.nl.Close(); p.nl = nil; return nil })

	// veth pair, the pod end created directly inside the namespace.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.HostVeth},
		PeerName:      PodInterface,
		PeerNamespace: netlink.NsFd(int(nsh)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		switch {
		case errors.Is(err, unix.EEXIST):
			return nil, fmt.Errorf("link %s: %w", p.HostVeth, errNameInUse)
		case errors.Is(err, unix.EOPNOTSUPP):
			return nil, fmt.Errorf("%w: creating veth %s: %v (veth driver missing?)", ErrUnavailable, p.HostVeth, err)
		}
		return nil, fmt.Errorf("creating veth %s: %w", p.HostVeth, err)
	}
	p.addCleanup(func() error { return delLinkIfExists(p.HostVeth) })
	host, err := netlink.LinkByName(p.HostVeth)
	if err != nil {
		return nil, err
	}
	eth0, err := nlh.LinkByName(PodInterface)
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", PodInterface, p.Name, err)
	}
	lo, err := nlh.LinkByName("lo")
	if err != nil {
		return nil, err
	}

	// Host side: gateway address, up, /32 route to the pod. The route is
	// the arbiter of address uniqueness between concurrent test binaries.
	if err := netlink.AddrAdd(host, hostAddr(p.HostIP)); err != nil {
		return nil, fmt.Errorf("adding %s to %s: %w", p.HostIP, p.HostVeth, err)
	}
	if p.HostIPv6.IsValid() {
		if err := netlink.AddrAdd(host, hostAddr(p.HostIPv6)); err != nil {
			return nil, fmt.Errorf("adding %s to %s: %w", p.HostIPv6, p.HostVeth, err)
		}
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return nil, err
	}
	routes := []*netlink.Route{{LinkIndex: host.Attrs().Index, Dst: hostNet(p.IP), Scope: netlink.SCOPE_LINK, Src: net.IP(p.HostIP.AsSlice())}}
	if p.IPv6.IsValid() {
		routes = append(routes, &netlink.Route{LinkIndex: host.Attrs().Index, Dst: hostNet(p.IPv6), Src: net.IP(p.HostIPv6.AsSlice())})
	}
	for _, r := range routes {
		if err := netlink.RouteAdd(r); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return nil, fmt.Errorf("host route to %s: %w (by another test pod?)", r.Dst, errAddrInUse)
			}
			return nil, fmt.Errorf("host route to %s via %s: %w", r.Dst, p.HostVeth, err)
		}
		p.addCleanup(func() error { return delRouteIfExists(r) })
	}

	// Pod side: lo and eth0 up, address, device route to the gateway and
	// the default route through it.
	if err := nlh.LinkSetUp(lo); err != nil {
		return nil, err
	}
	if err := nlh.AddrAdd(eth0, hostAddr(p.IP)); err != nil {
		return nil, fmt.Errorf("adding %s to %s in %s: %w", p.IP, PodInterface, p.Name, err)
	}
	if p.IPv6.IsValid() {
		if err := nlh.AddrAdd(eth0, hostAddr(p.IPv6)); err != nil {
			return nil, fmt.Errorf("adding %s to %s in %s: %w", p.IPv6, PodInterface, p.Name, err)
		}
	}
	if err := nlh.LinkSetUp(eth0); err != nil {
		return nil, err
	}
	gws := []netip.Addr{p.HostIP}
	if p.HostIPv6.IsValid() {
		gws = append(gws, p.HostIPv6)
	}
	for _, gw := range gws {
		if err := nlh.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: hostNet(gw), Scope: netlink.SCOPE_LINK}); err != nil {
			return nil, fmt.Errorf("pod route to %s: %w", gw, err)
		}
		def := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.IP(gw.AsSlice()), Flags: int(netlink.FLAG_ONLINK)}
		if gw.Is4() {
			def.Dst = &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		} else {
			def.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		if err := nlh.RouteAdd(def); err != nil {
			return nil, fmt.Errorf("pod default route via %s: %w", gw, err)
		}
	}

	// /etc/netns/<name>/{resolv.conf,hosts}: `ip netns exec` bind-mounts
	// them over /etc/resolv.conf and /etc/hosts.
	etc := filepath.Join(netnsEtcDir, p.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return nil, err
	}
	p.addCleanup(func() error { return os.RemoveAll(etc) })
	p.ResolvConf = resolvConf(o, p)
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte(p.ResolvConf), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte(hostsFile(o, p)), 0o644); err != nil {
		return nil, err
	}

	if o.Client != nil {
		if err := p.register(ctx, o); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func (p *Pod) register(ctx context.Context, o Options) error {
	ips := []string{p.IP.String()}
	if p.IPv6.IsValid() {
		ips = append(ips, p.IPv6.String())
	}
	nodeIP := o.NodeIP
	if nodeIP == "" {
		nodeIP = p.HostIP.String()
	}
	obj, err := cluster.CreatePod(ctx, o.Client, cluster.PodOptions{
		Namespace: p.Namespace,
		Name:      p.PodName,
		Labels:    o.Labels,
		NodeName:  o.NodeName,
		PodIPs:    ips,
		HostIP:    nodeIP,
		DNSConfig: o.DNSConfig,
	})
	if err != nil {
		return err
	}
	p.Object = obj
	p.client = o.Client
	p.addCleanup(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return cluster.DeletePod(ctx, p.client, p.Namespace, p.PodName)
	})
	return nil
}

func resolvConf(o Options, p *Pod) string {
	domain := o.ClusterDomain
	if domain == "" {
		domain = "cluster.local"
	}
	ns := o.Nameservers
	if len(ns) == 0 {
		ns = []string{p.HostIP.String()}
	}
	search := o.Searches
	if len(search) == 0 && !o.NoSearch {
		search = []string{p.Namespace + ".svc." + domain, "svc." + domain, domain}
	}
	opts := o.ResolvOptions
	if opts == nil {
		opts = []string{"ndots:5"}
	}
	var b strings.Builder
	for _, n := range ns {
		fmt.Fprintf(&b, "nameserver %s\n", n)
	}
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	if len(opts) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(opts, " "))
	}
	return b.String()
}

func hostsFile(o Options, p *Pod) string {
	var b strings.Builder
	b.WriteString("# Kubernetes-managed hosts file (dnsaccel test pod).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	fmt.Fprintf(&b, "%s\t%s\n", p.IP, p.PodName)
	if p.IPv6.IsValid() {
		fmt.Fprintf(&b, "%s\t%s\n", p.IPv6, p.PodName)
	}
	for _, l := range o.Hosts {
		b.WriteString(l + "\n")
	}
	return b.String()
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// hostAddr is a /32 (/128 without duplicate address detection) address.
func hostAddr(a netip.Addr) *netlink.Addr {
	ad := &netlink.Addr{IPNet: hostNet(a)}
	if a.Is6() {
		ad.Flags = unix.IFA_F_NODAD
	}
	return ad
}

func (p *Pod) addCleanup(f func() error) { p.cleanups = append(p.cleanups, f) }

// Close removes everything the pod created, in reverse order: the Pod
// object, processes still running in the namespace, the veth pair (with its
// addresses and routes), the namespace and its bind mount, /etc/netns/<name>.
// It is safe to call more than once.
func (p *Pod) Close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	var errs []error
	for i := len(p.cleanups) - 1; i >= 0; i-- {
		if err := p.cleanups[i](); err != nil {
			errs = append(errs, err)
		}
	}
	p.cleanups = nil
	return errors.Join(errs...)
}

// Path is the namespace's bind mount, /run/netns/<Name>.
func (p *Pod) Path() string { return filepath.Join(netnsRunDir, p.Name) }

// Netlink returns a netlink handle operating inside the pod's namespace
// (valid until Close).
func (p *Pod) Netlink() *netlink.Handle { return p.nl }

// NsHandle returns the open namespace handle (valid until Close).
func (p *Pod) NsHandle() netns.NsHandle { return p.ns }

// Command returns a command that runs inside the pod with `ip netns exec`,
// so it sees the pod's /etc/resolv.conf and /etc/hosts. Processes still
// running when the pod is closed are killed.
func (p *Pod) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	c := p.command(ctx, name, args...)
	p.mu.Lock()
	p.cmds = append(p.cmds, c)
	p.mu.Unlock()
	return c
}

func (p *Pod) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.Name, name}, args...)...)
}

// killCommands kills the processes started from Command (by pid, through
// os.Process, so an already reaped one is never confused with another).
// `ip netns pids` alone can miss a process that has not entered the
// namespace yet.
func (p *Pod) killCommands() {
	p.mu.Lock()
	cmds := p.cmds
	p.cmds = nil
	p.mu.Unlock()
	for _, c := range cmds {
		if c.Process != nil {
			c.Process.Kill()
		}
	}
}

// Exec runs a command inside the pod and returns its standard output. On
// failure the error contains the exit status and standard error.
func (p *Pod) Exec(ctx context.Context, cmd ...string) ([]byte, error) {
	if len(cmd) == 0 {
		return nil, errors.New("Exec: no command")
	}
	c := p.command(ctx, cmd[0], cmd[1:]...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("ip netns exec %s %s: %w; stderr: %s", p.Name, strings.Join(cmd, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Do runs fn on an OS thread switched into the pod's network namespace
// (DoIn). Sockets created in fn stay in the pod's namespace and may be used
// after Do returns; goroutines started by fn run in the host namespace. The
// file system view is the host's (no resolv.conf bind mount): use Exec for
// glibc resolution.
func (p *Pod) Do(fn func() error) error {
	if p.closed || p.ns == netns.None() {
		return fmt.Errorf("pod %s is closed", p.Name)
	}
	return DoIn(p.ns, fn)
}

// DoIn runs fn inside the network namespace h, with containernetworking's
// ns.Do: on a locked OS thread, which is thrown away rather than reused if
// it cannot return to the host namespace. The one way tests enter a
// namespace. A panic in fn is returned as an error, so a failing check
// cannot leave a test binary's thread behind in the wrong namespace.
func DoIn(h netns.NsHandle, fn func() error) error {
	target, err := ns.GetNS(fmt.Sprintf("/proc/self/fd/%d", int(h)))
	if err != nil {
		return err
	}
	defer target.Close()
	return target.Do(func(ns.NetNS) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic inside the namespace: %v", r)
			}
		}()
		return fn()
	})
}

func rmIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func delLinkIfExists(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("deleting link %s: %w", name, err)
	}
	return nil
}

func delRouteIfExists(r *netlink.Route) error {
	if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("deleting route %s: %w", r.Dst, err)
	}
	return nil
}

// ipNetns runs `ip netns <args>`. Adds and deletes are serialised across
// processes: iproute2 sets up the shared /run/netns mount on first use and
// that is racy.
func ipNetns(args ...string) (string, error) {
	unlock, err := lockState()
	if err != nil {
		return "", err
	}
	defer unlock()
	out, err := exec.Command("ip", append([]string{"netns"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func lockState() (func(), error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(stateDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

func deleteNetns(name string) error {
	path := filepath.Join(netnsRunDir, name)
	// Under the lock, so that concurrent Sweeps of other test binaries do
	// not trip over each other.
	unlock, err := lockState()
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput()
	if err == nil {
		return nil
	}
	// Fall back to doing what iproute2 does.
	if uerr := unix.Unmount(path, unix.MNT_DETACH); uerr != nil && !errors.Is(uerr, unix.EINVAL) && !errors.Is(uerr, unix.ENOENT) {
		return fmt.Errorf("ip netns delete %s: %v: %s; unmount: %v", name, err, strings.TrimSpace(string(out)), uerr)
	}
	return rmIfExists(path)
}

// killNetnsProcesses SIGKILLs processes left running in the namespace (a
// test's servers started with Command), which would keep it alive.
func killNetnsProcesses(name string) error {
	if _, err := os.Stat(filepath.Join(netnsRunDir, name)); err != nil {
		return nil
	}
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return nil
	}
	for _, f := range strings.Fields(string(out)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	return nil
}
