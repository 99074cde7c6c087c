package nodecache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dnsaccel/dnsaccel/datapath/notrack"
	"github.com/dnsaccel/dnsaccel/datapath/steer"
)

// Steering defaults.
const (
	DefaultLocalIP = "169.254.20.10"
	// DummyInterface is the device the local IPs go on where the kernel
	// has the dummy driver (node-local-dns's name); elsewhere lo.
	DummyInterface = "nodelocaldns"
	// DefaultUpstreamMark is the SO_MARK of the cache's upstream sockets,
	// which the steering programs never redirect. Bits outside those
	// kube-proxy (0x4000, 0x8000) and Cilium (0x0f00) use.
	DefaultUpstreamMark = 0x0d530000
	// DefaultHeartbeatTimeout is how long the kernel steers after the
	// cache's last heartbeat.
	DefaultHeartbeatTimeout = time.Second
)

// Steer configures the eBPF steering of the cluster DNS VIP(s) to the cache.
type Steer struct {
	Mode             string   // auto ("" too) | true | false
	LocalIPs         []string // the cache's addresses on Interface, served on port 53
	Interface        string   // "" = nodelocaldns (dummy) if possible, else lo
	ClusterDNS       []string // the VIPs to steer
	ClusterDNSFrom   string   // where ClusterDNS came from, for logs
	Cgroup           string   // cgroup v2 directory; "" = detected mount
	BPFFS            string   // bpf file system; pins under <BPFFS>/dnsaccel
	HeartbeatTimeout time.Duration
	UpstreamMark     uint32
	// Notrack keeps the cache's own traffic (to and from LocalIPs, port
	// 53) out of conntrack with an nftables table (datapath/notrack), so
	// steered queries skip the nat chains on a kube-proxy node.
	Notrack      bool
	NotrackTable string // inet table; "" = notrack.DefaultTable
	// LookupErr is why --steer=auto found no VIP through the API (it then
	// runs without steering: pods keep querying the cluster DNS).
	LookupErr error
}

// Enabled reports whether node-cache steers: not --steer=false, and a VIP
// to steer (--cluster-dns, or the kube-dns Service).
func (s *Steer) Enabled() bool { return s.Mode != "false" && len(s.ClusterDNS) > 0 }

// steerListen are the addresses the cache serves for steering: each local
// IP on port 53.
func (c *Config) steerListen() []string {
	if !c.Steer.Enabled() {
		return nil
	}
	var out []string
	for _, ip := range c.Steer.LocalIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			out = append(out, netip.AddrPortFrom(a, 53).String())
		}
	}
	return out
}

// listenAddrs are --listen plus, when steering, the local IPs on port 53.
func (c *Config) listenAddrs() []string {
	out := slices.Clone(c.Listen)
	for _, l := range c.steerListen() {
		if !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	return out
}

// validateSteer checks the steering flags, naming the one at fault.
func (c *Config) validateSteer() error {
	s := &c.Steer
	switch s.Mode {
	case "", "auto", "true", "false": // "": auto, the zero value
	default:
		return fmt.Errorf("--steer %q: want auto, true or false", s.Mode)
	}
	locals := map[netip.Addr]bool{}
	var has4, has6 bool
	for _, l := range s.LocalIPs {
		a, err := parseHostIP(l)
		if err != nil {
			return fmt.Errorf("--local-ip %q: %v", l, err)
		}
		if locals[a] {
			return fmt.Errorf("--local-ip %s: given twice", a)
		}
		locals[a] = true
		has4, has6 = has4 || a.Is4(), has6 || a.Is6()
	}
	seen := map[netip.Addr]bool{}
	from := ""
	if s.ClusterDNSFrom != "" && s.ClusterDNSFrom != "--cluster-dns" {
		from = " (from " + s.ClusterDNSFrom + ")"
	}
	for _, v := range s.ClusterDNS {
		a, err := parseHostIP(v)
		if err != nil {
			return fmt.Errorf("--cluster-dns %q%s: %v", v, from, err)
		}
		if a.IsLoopback() {
			return fmt.Errorf("--cluster-dns %s%s: a loopback address is not a Service VIP", a, from)
		}
		if locals[a] {
			return fmt.Errorf("--cluster-dns %s%s is also a --local-ip: the cache would steer to itself", a, from)
		}
		if seen[a] {
			return fmt.Errorf("--cluster-dns %s%s: given twice", a, from)
		}
		seen[a] = true
		if s.Mode != "false" && (a.Is4() && !has4 || a.Is6() && !has6) {
			return fmt.Errorf("--cluster-dns %s%s: no --local-ip of its IP family to steer it to", a, from)
		}
	}
	if s.Mode == "true" && len(s.ClusterDNS) == 0 {
		return errors.New("--steer=true: no VIP to steer (give --cluster-dns, or run in Kubernetes mode with a kube-system/kube-dns Service)")
	}
	if !s.Enabled() {
		return nil
	}
	if len(s.LocalIPs) == 0 {
		return errors.New("--local-ip: steering needs at least one")
	}
	if s.HeartbeatTimeout <= 0 {
		return fmt.Errorf("--heartbeat-timeout %s: must be positive", s.HeartbeatTimeout)
	}
	if s.BPFFS == "" {
		return errors.New("--bpffs: empty")
	}
	return nil
}

// parseHostIP accepts a plain unicast IP (no port, zone or wildcard).
func parseHostIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		if _, perr := netip.ParseAddrPort(s); perr == nil {
			return a, errors.New("want an IP address without a port")
		}
		return a, errors.New("not an IP address")
	}
	switch {
	case a.Zone() != "":
		return a, errors.New("zoned addresses are not supported")
	case a.IsUnspecified():
		return a, errors.New("a wildcard address cannot be steered or served")
	case a.IsMulticast():
		return a, errors.New("a multicast address")
	}
	return a.Unmap(), nil
}

// ResolveSteering fills Steer.ClusterDNS from Service kube-system/kube-dns
// when --cluster-dns gave none, --steer is not false and an API server is
// configured. Not finding it (no Service, no API) is an error with
// --steer=true; with auto, node-cache runs without steering, which is what
// pods get anyway when it is off (Steer.LookupErr says why).
func (c *Config) ResolveSteering(ctx context.Context) error {
	s := &c.Steer
	if len(s.ClusterDNS) > 0 {
		if s.ClusterDNSFrom == "" {
			s.ClusterDNSFrom = "--cluster-dns"
		}
		return nil
	}
	if s.Mode == "false" || !c.Kube.Enabled() {
		return nil
	}
	cs, err := c.Kube.Client()
	if err != nil {
		err = fmt.Errorf("--cluster-dns not given, and no API client to look it up: %w", err)
	} else {
		ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
		defer cancel()
		var vips []string
		if vips, err = KubeDNSVIPs(ctx, cs); err == nil {
			if err = s.useServiceVIPs(vips); err == nil {
				return nil
			}
		}
		err = fmt.Errorf("--cluster-dns not given, and %w", err)
	}
	if s.Mode != "true" {
		s.LookupErr = err
		return nil
	}
	return err
}

// useServiceVIPs takes the kube-dns ClusterIPs as the VIPs to steer. Of a
// dual-stack Service it steers the families that have a --local-ip and
// says so (LookupErr), rather than refuse to start; none: an error.
func (s *Steer) useServiceVIPs(vips []string) error {
	var keep, skipped []string
	for _, v := range vips {
		if s.hasLocalFamily(v) {
			keep = append(keep, v)
		} else {
			skipped = append(skipped, v)
		}
	}
	var err error
	if len(skipped) > 0 {
		err = fmt.Errorf("Service kube-system/kube-dns ClusterIP(s) %v not steered: no --local-ip of their IP family", skipped)
	}
	if len(keep) == 0 {
		return err
	}
	s.ClusterDNS, s.ClusterDNSFrom, s.LookupErr = keep, "Service kube-system/kube-dns", err
	return nil
}

// hasLocalFamily reports whether a --local-ip has the IP family of ip.
func (s *Steer) hasLocalFamily(ip string) bool {
	a, err := parseHostIP(ip)
	if err != nil {
		return true // validation names it
	}
	for _, l := range s.LocalIPs {
		if la, err := parseHostIP(l); err == nil && la.Is4() == a.Is4() {
			return true
		}
	}
	return false
}

var errNoKubeDNS = errors.New("Service kube-system/kube-dns does not exist")

// KubeDNSVIPs returns the ClusterIP(s) of Service kube-system/kube-dns, the
// address pods' resolv.conf points at.
func KubeDNSVIPs(ctx context.Context, cs kubernetes.Interface) ([]string, error) {
	svc, err := cs.CoreV1().Services(metav1.NamespaceSystem).Get(ctx, "kube-dns", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, errNoKubeDNS
	}
	if err != nil {
		return nil, fmt.Errorf("reading Service kube-system/kube-dns: %w", err)
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	ips = slices.DeleteFunc(slices.Clone(ips), func(s string) bool { return s == corev1.ClusterIPNone || s == "" })
	if len(ips) == 0 {
		return nil, errors.New("Service kube-system/kube-dns has no ClusterIP (headless?)")
	}
	return ips, nil
}

// rules are the steering table: each VIP, port 53, UDP and TCP, to the
// first local IP of its family, port 53.
func (s *Steer) rules() []steer.Rule {
	var out []steer.Rule
	for _, v := range s.ClusterDNS {
		vip, err := parseHostIP(v)
		if err != nil {
			continue
		}
		for _, l := range s.LocalIPs {
			local, err := parseHostIP(l)
			if err != nil || local.Is4() != vip.Is4() {
				continue
			}
			for _, p := range []steer.Proto{steer.UDP, steer.TCP} {
				out = append(out, steer.Rule{VIP: netip.AddrPortFrom(vip, 53), Proto: p, Target: netip.AddrPortFrom(local, 53)})
			}
			break
		}
	}
	return out
}

func (s *Steer) options() steer.Options {
	return steer.Options{Cgroup: s.Cgroup, BPFFS: s.BPFFS, HeartbeatTimeout: s.HeartbeatTimeout, SkipMark: s.UpstreamMark}
}

// interfaceLink returns the link the local IPs go on: --interface, or
// nodelocaldns (a dummy device, created if the kernel can) else lo.
func (s *Steer) interfaceLink(log *slog.Logger, create bool) (netlink.Link, error) {
	name := s.Interface
	if name != "" && name != DummyInterface {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("--interface %s: %w", name, err)
		}
		return l, nil
	}
	if l, err := netlink.LinkByName(DummyInterface); err == nil {
		return l, nil
	}
	if !create {
		return nil, nil
	}
	err := netlink.LinkAdd(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: DummyInterface}})
	if err == nil {
		l, err := netlink.LinkByName(DummyInterface)
		if err != nil {
			return nil, fmt.Errorf("--interface %s: %w", DummyInterface, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("--interface %s: up: %w", DummyInterface, err)
		}
		return l, nil
	}
	if name == DummyInterface {
		return nil, fmt.Errorf("--interface %s: creating a dummy device: %w", name, err)
	}
	log.Info("no dummy driver in this kernel: the local IPs go on lo", "err", err)
	l, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("--interface lo: %w", err)
	}
	return l, nil
}

func hostPrefix(a netip.Addr) *netlink.Addr {
	ad := &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
	if a.Is6() {
		ad.Flags = unix.IFA_F_NODAD
	}
	return ad
}

// setupAddresses puts the local IPs on the interface; a predecessor's are
// kept. It returns the interface and an undo for the addresses it added.
func (s *Steer) setupAddresses(log *slog.Logger) (string, func(), error) {
	l, err := s.interfaceLink(log, true)
	if err != nil {
		return "", nil, err
	}
	var added []*netlink.Addr
	undo := func() {
		for _, a := range added {
			netlink.AddrDel(l, a)
		}
	}
	for _, ip := range s.LocalIPs {
		a, _ := parseHostIP(ip)
		err := netlink.AddrAdd(l, hostPrefix(a))
		switch {
		case err == nil:
			added = append(added, hostPrefix(a))
		case errors.Is(err, unix.EEXIST):
		default:
			undo()
			return "", nil, fmt.Errorf("--local-ip %s on %s: %w", a, l.Attrs().Name, err)
		}
	}
	return l.Attrs().Name, undo, nil
}

// localAddrs are the parsed --local-ip values.
func (s *Steer) localAddrs() []netip.Addr {
	var out []netip.Addr
	for _, ip := range s.LocalIPs {
		if a, err := parseHostIP(ip); err == nil {
			out = append(out, a)
		}
	}
	return out
}

func (s *Steer) notrackTable() notrack.Table {
	return notrack.Table{Name: cmp.Or(s.NotrackTable, notrack.DefaultTable)}
}

// Cleanup removes everything steering set up: every program, link, map and
// pin under <bpffs>/dnsaccel, the NOTRACK table, the local IPs from the
// interface, and the nodelocaldns dummy device if there is one. Nothing to
// remove is fine.
func Cleanup(s Steer, log *slog.Logger) error {
	var errs []error
	if err := steer.Cleanup(s.BPFFS); err != nil {
		errs = append(errs, err)
	}
	if removed, err := s.notrackTable().Remove(); err != nil {
		errs = append(errs, err)
	} else if removed {
		log.Info("removed", "nftables-table", "inet "+s.notrackTable().Name)
	}
	links := []string{"lo"}
	if s.Interface != "" {
		links = []string{s.Interface}
	}
	if l, err := netlink.LinkByName(DummyInterface); err == nil && l.Type() == "dummy" && (s.Interface == "" || s.Interface == DummyInterface) {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("deleting %s: %w", DummyInterface, err))
		} else {
			log.Info("removed", "interface", DummyInterface)
		}
	}
	for _, name := range links {
		l, err := netlink.LinkByName(name)
		if err != nil {
			continue
		}
		for _, ip := range s.LocalIPs {
			a, err := parseHostIP(ip)
			if err != nil {
				continue
			}
			err = netlink.AddrDel(l, hostPrefix(a))
			switch {
			case err == nil:
				log.Info("removed", "address", a, "interface", name)
			case errors.Is(err, unix.EADDRNOTAVAIL), errors.Is(err, unix.ENOENT), errors.Is(err, unix.ESRCH):
			default:
				errs = append(errs, fmt.Errorf("removing %s from %s: %w", a, name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// steering is the running steering of an agent.
type steering struct {
	dp    *steer.Steering
	cfg   Steer
	iface string
	log   *slog.Logger
	// beating: this process has beaten (steered) at least once.
	beating atomic.Bool
	// nt is this process's hold on the NOTRACK table (nil: none);
	// notrackOn mirrors it for the metrics.
	nt        *notrack.Owner
	notrackOn atomic.Bool
	// expired: handover ended with the heartbeat expired (no successor).
	expired bool
}

// startSteering sets up the addresses and attaches (or adopts) the eBPF
// programs with the steering table. Steering itself starts with the first
// heartbeat, after CoreDNS serves (beat).
func startSteering(cfg Steer, log *slog.Logger) (*steering, error) {
	// Missing kernel features fail here, before anything is changed.
	if _, _, err := steer.Preflight(cfg.options()); err != nil {
		return nil, err
	}
	iface, undo, err := cfg.setupAddresses(log)
	if err != nil {
		return nil, err
	}
	dp, err := steer.Attach(cfg.options())
	if err != nil {
		undo()
		return nil, err
	}
	if err := dp.SetTable(cfg.rules()); err != nil {
		dp.Close()
		undo()
		return nil, err
	}
	if dp.MountedBPFFS() {
		log.Info("mounted a bpf file system", "bpffs", cfg.BPFFS)
	}
	log.Info("steering attached", "cluster-dns", cfg.ClusterDNS, "from", cfg.ClusterDNSFrom, "local-ip", cfg.LocalIPs,
		"interface", iface, "cgroup", dp.Options().Cgroup, "pins", dp.Dir(), "adopted-links", dp.Adopted(),
		"heartbeat-timeout", cfg.HeartbeatTimeout)
	s := &steering{dp: dp, cfg: cfg, iface: iface, log: log}
	s.startNotrack()
	return s, nil
}

// startNotrack writes (or takes over from a predecessor) the NOTRACK table
// for the local IPs, before the first heartbeat. Without nftables the
// cache still steers and serves; its queries are then tracked.
func (s *steering) startNotrack() {
	tb := s.cfg.notrackTable()
	if !s.cfg.Notrack {
		// A table a predecessor left goes: the flags say no NOTRACK.
		if removed, err := tb.Remove(); err != nil {
			s.log.Warn("--notrack=false: could not remove the NOTRACK table a previous node-cache left", "table", "inet "+tb.Name, "err", err)
		} else if removed {
			s.log.Info("--notrack=false: removed the NOTRACK table a previous node-cache left", "table", "inet "+tb.Name)
		}
		return
	}
	nt, err := tb.Ensure(s.cfg.localAddrs(), 53)
	switch {
	case errors.Is(err, notrack.ErrUnavailable):
		s.log.Warn("no NOTRACK table: nftables is not available (kernel or permission); steering works, but on a node that tracks connections each steered query is a new conntrack flow (--notrack=false silences this)",
			"table", "inet "+tb.Name, "err", err)
	case err != nil:
		s.log.Warn("no NOTRACK table; steering works, but on a node that tracks connections each steered query is a new conntrack flow", "table", "inet "+tb.Name, "err", err)
	default:
		s.nt = nt
		s.notrackOn.Store(true)
		s.log.Info("conntrack: NOTRACK for the cache's own traffic", "table", "inet "+tb.Name, "local-ip", s.cfg.LocalIPs,
			"port", 53, "took-over", !nt.Created())
	}
}

// releaseNotrack removes the NOTRACK table when no node-cache needs it any
// more: after a handover that found no successor (the heartbeat expired),
// or if this process created it and never got as far as a handover (its
// start failed). A successor that called Ensure since owns the table, and
// Release then leaves it (checked in the same transaction as the removal).
// After a handover to a successor, or a SIGKILL, the table stays, like the
// pins and the addresses.
func (s *steering) releaseNotrack() {
	if s.nt == nil {
		return
	}
	nt := s.nt
	s.nt = nil
	s.notrackOn.Store(false)
	neverServed := !s.beating.Load()
	if !s.expired && !(neverServed && nt.Created()) {
		return
	}
	removed, err := nt.Release()
	table := "inet " + s.cfg.notrackTable().Name
	switch {
	case err != nil:
		s.log.Warn("removing the NOTRACK table", "table", table, "err", err)
	case removed:
		s.log.Info("removed the NOTRACK table: no node-cache serves after this one", "table", table)
	default:
		s.log.Info("NOTRACK table kept: another node-cache has taken it over", "table", table)
	}
}

// beat refreshes the kernel's heartbeat: the kernel steers for another
// --heartbeat-timeout. The agent's heartbeat calls it after each round of
// serving probes that were all answered (heartbeat.go), never from a
// plain timer: a process that lives but does not serve stops beating.
func (s *steering) beat() error {
	s.beating.Store(true)
	return s.dp.Beat()
}

// handover, called once the agent's heartbeat has stopped, waits until
// pods no longer need this process: a successor beats (it serves the same
// addresses with SO_REUSEPORT and, with the fast path, has taken the UDP
// traffic), or the heartbeat has expired and the kernel sends pods to the
// cluster DNS. Only then may the caller stop serving.
func (s *steering) handover() {
	deadline := time.Now().Add(s.cfg.HeartbeatTimeout + time.Second)
	for time.Now().Before(deadline) {
		if s.dp.BeatenByOther() && s.dp.Fresh() {
			n := stopAccepting(s.cfg.localAddrs(), s.log)
			s.log.Info("handover: another node-cache keeps the heartbeat; draining", "for", drainTime.String(), "tcp_listeners_handed_over", n)
			time.Sleep(drainTime)
			return
		}
		if !s.dp.Fresh() {
			s.log.Info("handover: heartbeat expired, pods query the cluster DNS; draining", "for", drainTime.String())
			s.expired = true
			time.Sleep(drainTime)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.log.Warn("handover: heartbeat neither taken over nor expired; stopping anyway")
}

// drainTime is how long a node-cache keeps serving after pods stopped being
// sent to it (successor or expired heartbeat) and before it closes its
// sockets: datagrams already queued on them, and queries it is still
// resolving upstream, get their answers. (The successor's fast path has
// taken the UDP reuseport group over when it started; with it, nothing new
// arrives here.)
const drainTime = 300 * time.Millisecond

// close releases the handles; the pins and addresses stay for a successor
// (or --cleanup). The NOTRACK table goes if no node-cache needs it
// (releaseNotrack). Called once the cache has stopped serving.
func (s *steering) close() {
	s.releaseNotrack()
	s.dp.Close()
}

// current is the agent's steering for the metrics (nil: none).
var current atomic.Pointer[steering]

type steerCollector struct{}

var (
	descAttached = prometheus.NewDesc("dnsaccel_nodecache_steering_attached",
		"1 while this node-cache has the eBPF steering of the cluster DNS VIP attached.", nil, nil)
	descAge = prometheus.NewDesc("dnsaccel_nodecache_steering_heartbeat_age_seconds",
		"Age of the steering heartbeat (written by this or another node-cache); the kernel steers while it is below --heartbeat-timeout.", nil, nil)
	descEntries = prometheus.NewDesc("dnsaccel_nodecache_steering_table_entries",
		"Entries (VIP, port, protocol) in the steering table.", nil, nil)
	descNotrack = prometheus.NewDesc("dnsaccel_nodecache_steering_notrack",
		"1 while this node-cache keeps its nftables NOTRACK table for --local-ip (its queries skip conntrack), 0 without (--notrack=false, or no nftables).", nil, nil)
	descPackets = prometheus.NewDesc("dnsaccel_nodecache_steering_operations_total",
		"Socket operations on steered VIPs seen by the eBPF programs, by result.", []string{"result"}, nil)
)

func (steerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descAttached
	ch <- descAge
	ch <- descEntries
	ch <- descNotrack
	ch <- descPackets
}

func (steerCollector) Collect(ch chan<- prometheus.Metric) {
	s := current.Load()
	if s == nil {
		ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descAttached, prometheus.GaugeValue, 1)
	nt := 0.0
	if s.notrackOn.Load() {
		nt = 1
	}
	ch <- prometheus.MustNewConstMetric(descNotrack, prometheus.GaugeValue, nt)
	if age := s.dp.HeartbeatAge(); age >= 0 {
		ch <- prometheus.MustNewConstMetric(descAge, prometheus.GaugeValue, age.Seconds())
	}
	if t, err := s.dp.Table(); err == nil {
		ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(len(t)))
	}
	if st, err := s.dp.Stats(); err == nil {
		for k, name := range map[steer.Stat]string{
			steer.StatSteered: "steered", steer.StatStale: "stale_heartbeat",
			steer.StatSkipMark: "own_socket", steer.StatReversed: "reply_from_vip",
		} {
			ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(st[k]), name)
		}
	}
}

func init() { prometheus.MustRegister(steerCollector{}) }
