package netsetup

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/cni/api"
)

// Routing constants (the layout Terway's veth policy routing uses).
const (
	// LinkLocalGateway is the pod's next hop on its veth: a permanent
	// neighbour entry maps it to the host end's MAC.
	LinkLocalGateway = "169.254.1.1"
	// PrioToPod is the rule sending traffic to a pod through the main
	// table (its /32 route on the host veth), ahead of any ENI table.
	PrioToPod = 512
	// PrioFromPod is the rule sending a pod's egress to its ENI's table.
	PrioFromPod = 2048
	// TableBase + ENI ifindex is an ENI's route table.
	TableBase = 1000
	// AliasPrefix marks an ENI moved into a pod (exclusive mode); the rest
	// of the alias is its host-side name.
	AliasPrefix = "dnsaccel-eni:"
	// HostVethPrefix starts host-side interface names (enip + 11 hex).
	HostVethPrefix = "enip"
)

var linkLocalGW = netip.MustParseAddr(LinkLocalGateway)

// Config is one pod interface to set up or tear down.
type Config struct {
	Mode   api.Mode
	IfName string
	// ContainerID names the host-side interfaces.
	ContainerID string
	Alloc       api.Allocation
	// NodeLocalDNS is made reachable from the pod (invalid: none).
	NodeLocalDNS netip.Addr
	HostNS       NS
	PodNS        NS // nil on teardown when the namespace is gone
	NL           Netlink
	// ENIWait bounds the wait for the ENI's interface to appear (default 10 s).
	ENIWait time.Duration
	// Addr says, on teardown, whose Alloc.IP is now: host objects keyed by
	// the address alone (the rule to the pod, the IPVLAN host route) are
	// only removed while it is still this attachment's.
	Addr AddrOwner
}

// AddrOwner is what the agent knows about a torn-down attachment's address.
type AddrOwner int

const (
	// AddrOurs: the address is (or was last) this attachment's and nobody
	// else's.
	AddrOurs AddrOwner = iota
	// AddrUnknown: the agent could not be asked. Address-keyed objects are
	// removed only where the host shows no other owner (veth, exclusive).
	AddrUnknown
	// AddrTaken: the address now belongs to another attachment (a late
	// DEL after the address was reassigned, a dropped duplicate record):
	// only what is keyed by this container goes.
	AddrTaken
)

// Iface describes an interface the setup made or used.
type Iface struct {
	Name    string
	MAC     string
	Sandbox string // pod namespace path; "" on the host
}

// Route is a route inside the pod.
type Route struct {
	Dst netip.Prefix
	GW  netip.Addr
}

// Result is what Setup configured.
type Result struct {
	Host    *Iface // host-side veth/slave (nil in none)
	Pod     Iface
	Addr    netip.Prefix
	Gateway netip.Addr
	Routes  []Route
}

// HostIfName is the host-side interface name of an attachment.
func HostIfName(containerID, ifName string) string {
	h := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostVethPrefix + hex.EncodeToString(h[:])[:11]
}

// podHostLink is the pod-side name of the node link in exclusive mode.
func podHostLink(ifName string) string {
	n := ifName + "-h"
	if len(n) > 15 {
		n = n[:15]
	}
	return n
}

// IPVLANHostSlave is the host-side IPVLAN slave name of a parent ENI.
func IPVLANHostSlave(parentIndex int) string { return "ipvl_" + strconv.Itoa(parentIndex) }

type parsed struct {
	ip   netip.Addr
	cidr netip.Prefix
	gw   netip.Addr
	node netip.Addr
}

func parse(a api.Allocation) (parsed, error) {
	var p parsed
	var err error
	if p.ip, err = netip.ParseAddr(a.IP); err != nil || !p.ip.Is4() {
		return p, fmt.Errorf("allocation %s: bad IP %q", a.Key, a.IP)
	}
	if p.cidr, err = netip.ParsePrefix(a.VSwitchCIDR); err != nil {
		return p, fmt.Errorf("allocation %s: bad vSwitch CIDR %q", a.Key, a.VSwitchCIDR)
	}
	if p.gw, err = netip.ParseAddr(a.Gateway); err != nil {
		return p, fmt.Errorf("allocation %s: bad gateway %q", a.Key, a.Gateway)
	}
	if a.NodeIP != "" {
		if p.node, err = netip.ParseAddr(a.NodeIP); err != nil {
			return p, fmt.Errorf("allocation %s: bad node IP %q", a.Key, a.NodeIP)
		}
	}
	return p, nil
}

func host32(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(32, 32)}
}

func ipnet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(bits, 32)}
}

func (c *Config) eniWait() time.Duration {
	if c.ENIWait > 0 {
		return c.ENIWait
	}
	return 10 * time.Second
}

// waitENI finds the ENI's interface by MAC; a freshly attached ENI may
// appear a moment after the API says InUse.
func (c *Config) waitENI() (netlink.Link, error) {
	deadline := time.Now().Add(c.eniWait())
	for {
		l, err := LinkByMAC(c.NL, c.Alloc.MAC)
		if err == nil {
			return l, nil
		}
		if !IsNotFound(err) {
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no interface with ENI %s's MAC %s after %s", c.Alloc.ENIID, c.Alloc.MAC, c.eniWait())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *Config) ifaceFree() error {
	_, err := c.NL.LinkByName(c.IfName)
	if err == nil {
		return fmt.Errorf("interface %s already exists in %s", c.IfName, c.PodNS.Path())
	}
	if !IsNotFound(err) {
		return fmt.Errorf("looking up %s: %w", c.IfName, err)
	}
	return nil
}

func (c *Config) delLinkByName(name string) error {
	l, err := c.NL.LinkByName(name)
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return err
	}
	if err := c.NL.LinkDel(l); err != nil && !IsNotFound(err) {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	return nil
}

func (c *Config) ifSysctls(name string, kv ...string) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if err := c.NL.Sysctl("net/ipv4/conf/"+name+"/"+kv[i], kv[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// Setup configures the pod's interface for c.Mode. On failure what was done
// is undone.
func Setup(c Config) (_ *Result, err error) {
	if c.PodNS == nil || c.HostNS == nil || c.NL == nil {
		return nil, errors.New("netsetup: HostNS, PodNS and NL are required")
	}
	p, err := parse(c.Alloc)
	if err != nil {
		return nil, err
	}
	// Checked before anything is done, so that the undo below never
	// removes an interface that was there before.
	if err := c.PodNS.Do(c.ifaceFree); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if terr := Teardown(c); terr != nil {
				err = fmt.Errorf("%w (undoing: %v)", err, terr)
			}
		}
	}()
	switch c.Mode {
	case api.ModeVeth:
		return setupVeth(c, p)
	case api.ModeExclusive:
		return setupExclusive(c, p)
	case api.ModeIPVLAN:
		return setupIPVLAN(c, p)
	}
	return nil, fmt.Errorf("unknown mode %q", c.Mode)
}

func setupVeth(c Config, p parsed) (*Result, error) {
	hostName := HostIfName(c.ContainerID, c.IfName)
	var eniIdx, mtu int
	if err := c.HostNS.Do(func() error {
		eni, err := c.waitENI()
		if err != nil {
			return err
		}
		eniIdx, mtu = eni.Attrs().Index, eni.Attrs().MTU
		if err := c.ensureENITable(eni, p.gw); err != nil {
			return err
		}
		return c.delLinkByName(hostName) // a leftover of an earlier, failed ADD
	}); err != nil {
		return nil, err
	}
	res := &Result{Addr: netip.PrefixFrom(p.ip, 32), Gateway: linkLocalGW}
	var podIdx int
	if err := c.PodNS.Do(func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: c.IfName, MTU: mtu}, PeerName: hostName, PeerNamespace: netlink.NsFd(int(c.HostNS.Fd()))}
		if err := c.NL.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth %s/%s: %w", c.IfName, hostName, err)
		}
		l, err := c.NL.LinkByName(c.IfName)
		if err != nil {
			return err
		}
		podIdx = l.Attrs().Index
		res.Pod = Iface{Name: c.IfName, MAC: l.Attrs().HardwareAddr.String(), Sandbox: c.PodNS.Path()}
		if err := c.NL.AddrAdd(l, &netlink.Addr{IPNet: host32(p.ip)}); err != nil {
			return fmt.Errorf("adding %s to %s: %w", p.ip, c.IfName, err)
		}
		if err := c.NL.LinkSetUp(l); err != nil {
			return err
		}
		if err := c.NL.RouteReplace(&netlink.Route{LinkIndex: podIdx, Dst: host32(linkLocalGW), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("pod route to %s: %w", linkLocalGW, err)
		}
		if err := c.NL.RouteReplace(&netlink.Route{LinkIndex: podIdx, Gw: net.IP(linkLocalGW.AsSlice()), Flags: int(netlink.FLAG_ONLINK)}); err != nil {
			return fmt.Errorf("pod default route: %w", err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	res.Routes = []Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: linkLocalGW}}
	var hostMAC net.HardwareAddr
	if err := c.HostNS.Do(func() error {
		hv, err := c.NL.LinkByName(hostName)
		if err != nil {
			return fmt.Errorf("host veth %s: %w", hostName, err)
		}
		hostMAC = hv.Attrs().HardwareAddr
		res.Host = &Iface{Name: hostName, MAC: hostMAC.String()}
		if err := c.ifSysctls(hostName, "forwarding", "1", "rp_filter", "0"); err != nil {
			return err
		}
		if err := c.NL.LinkSetUp(hv); err != nil {
			return err
		}
		if err := c.NL.RouteReplace(&netlink.Route{LinkIndex: hv.Attrs().Index, Dst: host32(p.ip), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("host route to %s: %w", p.ip, err)
		}
		// Earlier holders of the address are gone (the agent gave it to
		// this pod): their rules are stale.
		c.delRules(p.ip)
		to := netlink.NewRule()
		to.Dst, to.Table, to.Priority = host32(p.ip), unix.RT_TABLE_MAIN, PrioToPod
		if err := c.NL.RuleAdd(to); err != nil {
			return fmt.Errorf("rule to %s: %w", p.ip, err)
		}
		from := netlink.NewRule()
		from.Src, from.IifName, from.Table, from.Priority = host32(p.ip), hostName, TableBase+eniIdx, PrioFromPod
		if err := c.NL.RuleAdd(from); err != nil {
			return fmt.Errorf("rule from %s: %w", p.ip, err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := c.PodNS.Do(func() error {
		return c.NL.NeighSet(&netlink.Neigh{LinkIndex: podIdx, IP: net.IP(linkLocalGW.AsSlice()), HardwareAddr: hostMAC, State: netlink.NUD_PERMANENT, Family: unix.AF_INET})
	}); err != nil {
		return nil, fmt.Errorf("pod neighbour %s: %w", linkLocalGW, err)
	}
	return res, nil
}

// ensureENITable sets up the ENI's interface and its route table (default
// via the vSwitch gateway), idempotently: every pod on the ENI shares it.
func (c *Config) ensureENITable(eni netlink.Link, gw netip.Addr) error {
	name := eni.Attrs().Name
	if err := c.ifSysctls(name, "forwarding", "1", "rp_filter", "0"); err != nil {
		return err
	}
	if eni.Attrs().Flags&net.FlagUp == 0 {
		if err := c.NL.LinkSetUp(eni); err != nil {
			return fmt.Errorf("setting ENI %s up: %w", name, err)
		}
	}
	r := &netlink.Route{LinkIndex: eni.Attrs().Index, Gw: net.IP(gw.AsSlice()), Table: TableBase + eni.Attrs().Index, Flags: int(netlink.FLAG_ONLINK)}
	if err := c.NL.RouteReplace(r); err != nil {
		return fmt.Errorf("default route of ENI table %d via %s: %w", r.Table, gw, err)
	}
	return nil
}

// delRules removes every policy rule to or from ip (any number of copies).
func (c *Config) delRules(ip netip.Addr) {
	c.delRulesWhere(func(r *netlink.Rule) bool {
		return isToPod(r, ip) || (r.Priority == PrioFromPod && r.Src != nil && r.Src.IP.Equal(net.IP(ip.AsSlice())) && isHost(r.Src))
	})
}

func (c *Config) delRulesWhere(match func(r *netlink.Rule) bool) {
	rules, err := c.NL.RuleList()
	if err != nil {
		return
	}
	for i := range rules {
		if match(&rules[i]) {
			_ = c.NL.RuleDel(&rules[i])
		}
	}
}

// isToPod matches the rule sending traffic to ip through the main table.
func isToPod(r *netlink.Rule, ip netip.Addr) bool {
	return r.Priority == PrioToPod && r.Dst != nil && r.Dst.IP.Equal(net.IP(ip.AsSlice())) && isHost(r.Dst)
}

// routedElsewhere reports whether the main table still routes ip/32 to an
// interface (run after this attachment's host interface, and with it its
// route, is gone): another pod on the node holds the address.
func (c *Config) routedElsewhere(ip netip.Addr) bool {
	routes, err := c.NL.RouteList(nil)
	if err != nil {
		return true // unsure: keep the rule, a stale one only shadows main
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.IP.Equal(net.IP(ip.AsSlice())) && isHost(r.Dst) && (r.Table == 0 || r.Table == unix.RT_TABLE_MAIN) {
			return true
		}
	}
	return false
}

func isHost(n *net.IPNet) bool { o, b := n.Mask.Size(); return o == b }

func setupExclusive(c Config, p parsed) (*Result, error) {
	hostName := HostIfName(c.ContainerID, c.IfName)
	var origName string
	var mac net.HardwareAddr
	if err := c.HostNS.Do(func() error {
		eni, err := c.waitENI()
		if err != nil {
			return err
		}
		origName, mac = eni.Attrs().Name, eni.Attrs().HardwareAddr
		if err := c.delLinkByName(hostName); err != nil {
			return err
		}
		if err := c.NL.LinkSetDown(eni); err != nil {
			return err
		}
		if err := c.NL.LinkSetAlias(eni, AliasPrefix+origName); err != nil {
			return fmt.Errorf("marking ENI %s: %w", origName, err)
		}
		if err := c.NL.LinkSetNsFd(eni, int(c.PodNS.Fd())); err != nil {
			return fmt.Errorf("moving ENI %s into %s: %w", origName, c.PodNS.Path(), err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	res := &Result{Addr: netip.PrefixFrom(p.ip, p.cidr.Bits()), Gateway: p.gw,
		Pod: Iface{Name: c.IfName, MAC: mac.String(), Sandbox: c.PodNS.Path()}}
	hlName := podHostLink(c.IfName)
	var hlIdx int
	if err := c.PodNS.Do(func() error {
		l, err := c.NL.LinkByName(origName)
		if err != nil {
			return fmt.Errorf("ENI %s in pod: %w", origName, err)
		}
		if err := c.NL.LinkSetName(l, c.IfName); err != nil {
			return fmt.Errorf("renaming ENI %s to %s: %w", origName, c.IfName, err)
		}
		if err := c.NL.AddrAdd(l, &netlink.Addr{IPNet: ipnet(p.ip, p.cidr.Bits())}); err != nil {
			return fmt.Errorf("adding %s/%d: %w", p.ip, p.cidr.Bits(), err)
		}
		if err := c.NL.LinkSetUp(l); err != nil {
			return err
		}
		if err := c.NL.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(p.gw.AsSlice())}); err != nil {
			return fmt.Errorf("pod default route via %s: %w", p.gw, err)
		}
		// The node link: a veth to the host for node-local traffic.
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hlName}, PeerName: hostName, PeerNamespace: netlink.NsFd(int(c.HostNS.Fd()))}
		if err := c.NL.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating node link %s/%s: %w", hlName, hostName, err)
		}
		hl, err := c.NL.LinkByName(hlName)
		if err != nil {
			return err
		}
		hlIdx = hl.Attrs().Index
		if err := c.NL.LinkSetUp(hl); err != nil {
			return err
		}
		return c.NL.RouteReplace(&netlink.Route{LinkIndex: hlIdx, Dst: host32(linkLocalGW), Scope: netlink.SCOPE_LINK, Src: net.IP(p.ip.AsSlice())})
	}); err != nil {
		return nil, err
	}
	res.Routes = []Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: p.gw}}
	var hostMAC net.HardwareAddr
	if err := c.HostNS.Do(func() error {
		hv, err := c.NL.LinkByName(hostName)
		if err != nil {
			return err
		}
		hostMAC = hv.Attrs().HardwareAddr
		res.Host = &Iface{Name: hostName, MAC: hostMAC.String()}
		if err := c.ifSysctls(hostName, "rp_filter", "0"); err != nil {
			return err
		}
		if err := c.NL.LinkSetUp(hv); err != nil {
			return err
		}
		return c.NL.RouteReplace(&netlink.Route{LinkIndex: hv.Attrs().Index, Dst: host32(p.ip), Scope: netlink.SCOPE_LINK})
	}); err != nil {
		return nil, err
	}
	if err := c.PodNS.Do(func() error {
		if err := c.NL.NeighSet(&netlink.Neigh{LinkIndex: hlIdx, IP: net.IP(linkLocalGW.AsSlice()), HardwareAddr: hostMAC, State: netlink.NUD_PERMANENT, Family: unix.AF_INET}); err != nil {
			return err
		}
		for _, dst := range []netip.Addr{p.node, c.NodeLocalDNS} {
			if !dst.IsValid() {
				continue
			}
			if err := c.NL.RouteReplace(&netlink.Route{LinkIndex: hlIdx, Dst: host32(dst), Gw: net.IP(linkLocalGW.AsSlice()), Flags: int(netlink.FLAG_ONLINK), Src: net.IP(p.ip.AsSlice())}); err != nil {
				return fmt.Errorf("pod route to %s via the node link: %w", dst, err)
			}
			res.Routes = append(res.Routes, Route{Dst: netip.PrefixFrom(dst, 32), GW: linkLocalGW})
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return res, nil
}

func setupIPVLAN(c Config, p parsed) (*Result, error) {
	tmp := "ipvt" + strings.TrimPrefix(HostIfName(c.ContainerID, c.IfName), HostVethPrefix)
	slaveName := ""
	var mac net.HardwareAddr
	if err := c.HostNS.Do(func() error {
		parent, err := c.waitENI()
		if err != nil {
			return err
		}
		mac = parent.Attrs().HardwareAddr
		if err := c.NL.LinkSetUp(parent); err != nil {
			return err
		}
		if err := c.delLinkByName(tmp); err != nil {
			return err
		}
		pa := parent.Attrs()
		if err := c.NL.LinkAdd(&netlink.IPVlan{LinkAttrs: netlink.LinkAttrs{Name: tmp, ParentIndex: pa.Index, MTU: pa.MTU}, Mode: netlink.IPVLAN_MODE_L2}); err != nil {
			return fmt.Errorf("creating ipvlan slave of %s: %w", pa.Name, err)
		}
		l, err := c.NL.LinkByName(tmp)
		if err != nil {
			return err
		}
		if err := c.NL.LinkSetNsFd(l, int(c.PodNS.Fd())); err != nil {
			return fmt.Errorf("moving %s into %s: %w", tmp, c.PodNS.Path(), err)
		}
		// Host-side slave: node -> pod traffic, and the node-local DNS
		// address, which IPVLAN then delivers to the host stack.
		slaveName = IPVLANHostSlave(pa.Index)
		slave, err := c.NL.LinkByName(slaveName)
		if IsNotFound(err) {
			if err := c.NL.LinkAdd(&netlink.IPVlan{LinkAttrs: netlink.LinkAttrs{Name: slaveName, ParentIndex: pa.Index, MTU: pa.MTU}, Mode: netlink.IPVLAN_MODE_L2}); err != nil {
				return fmt.Errorf("creating host slave %s: %w", slaveName, err)
			}
			slave, err = c.NL.LinkByName(slaveName)
		}
		if err != nil {
			return err
		}
		if err := c.NL.LinkSetUp(slave); err != nil {
			return err
		}
		if c.NodeLocalDNS.IsValid() {
			if err := c.NL.AddrAdd(slave, &netlink.Addr{IPNet: host32(c.NodeLocalDNS)}); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("node-local DNS %s on %s: %w", c.NodeLocalDNS, slaveName, err)
			}
		}
		return c.NL.RouteReplace(&netlink.Route{LinkIndex: slave.Attrs().Index, Dst: host32(p.ip), Scope: netlink.SCOPE_LINK})
	}); err != nil {
		return nil, err
	}
	res := &Result{Host: &Iface{Name: slaveName, MAC: mac.String()}, Addr: netip.PrefixFrom(p.ip, p.cidr.Bits()), Gateway: p.gw,
		Pod: Iface{Name: c.IfName, MAC: mac.String(), Sandbox: c.PodNS.Path()}}
	if err := c.PodNS.Do(func() error {
		l, err := c.NL.LinkByName(tmp)
		if err != nil {
			return err
		}
		if err := c.NL.LinkSetName(l, c.IfName); err != nil {
			return err
		}
		if err := c.NL.AddrAdd(l, &netlink.Addr{IPNet: ipnet(p.ip, p.cidr.Bits())}); err != nil {
			return err
		}
		if err := c.NL.LinkSetUp(l); err != nil {
			return err
		}
		if err := c.NL.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(p.gw.AsSlice())}); err != nil {
			return fmt.Errorf("pod default route via %s: %w", p.gw, err)
		}
		if c.NodeLocalDNS.IsValid() {
			if err := c.NL.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: host32(c.NodeLocalDNS), Scope: netlink.SCOPE_LINK}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	res.Routes = []Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: p.gw}}
	if c.NodeLocalDNS.IsValid() {
		res.Routes = append(res.Routes, Route{Dst: netip.PrefixFrom(c.NodeLocalDNS, 32)})
	}
	return res, nil
}

// Teardown removes what Setup made, best effort and idempotently: missing
// pieces are not errors. c.PodNS may be nil (namespace gone); c.Alloc may
// be partial (unknown IP: only what is named after the container goes).
// What is keyed by the address alone goes only while c.Addr says the
// address is still this attachment's: a late DEL must not cut off the pod
// the address was given to since.
func Teardown(c Config) error {
	var errs []error
	ip, _ := netip.ParseAddr(c.Alloc.IP)
	hostName := HostIfName(c.ContainerID, c.IfName)
	switch c.Mode {
	case api.ModeExclusive:
		if c.PodNS != nil {
			errs = append(errs, c.PodNS.Do(func() error {
				var errs []error
				l, err := c.findExclusiveENI()
				if err == nil {
					errs = append(errs, c.returnENI(l))
				} else if !IsNotFound(err) {
					errs = append(errs, err)
				}
				errs = append(errs, c.delLinkByName(podHostLink(c.IfName)))
				return errors.Join(errs...)
			}))
		}
	default:
		if c.PodNS != nil {
			errs = append(errs, c.PodNS.Do(func() error { return c.delLinkByName(c.IfName) }))
		}
	}
	errs = append(errs, c.HostNS.Do(func() error {
		var errs []error
		errs = append(errs, c.delLinkByName(hostName))
		errs = append(errs, c.delLinkByName("ipvt"+strings.TrimPrefix(hostName, HostVethPrefix)))
		// The egress rule names this attachment's host veth: it is ours
		// whoever holds the address now.
		c.delRulesWhere(func(r *netlink.Rule) bool { return r.Priority == PrioFromPod && r.IifName == hostName })
		if !ip.IsValid() {
			return errors.Join(errs...)
		}
		switch {
		case c.Mode == api.ModeIPVLAN:
			// The host slave's route names only the address.
			if c.Addr == AddrOurs {
				c.delRulesWhere(func(r *netlink.Rule) bool { return isToPod(r, ip) })
				errs = append(errs, c.delIPVLANRoute(ip))
			}
		case c.Addr != AddrTaken && !c.routedElsewhere(ip):
			c.delRulesWhere(func(r *netlink.Rule) bool { return isToPod(r, ip) })
		}
		return errors.Join(errs...)
	}))
	return errors.Join(errs...)
}

func (c *Config) delIPVLANRoute(ip netip.Addr) error {
	if c.Alloc.MAC == "" {
		return nil
	}
	parent, err := LinkByMAC(c.NL, c.Alloc.MAC)
	if err != nil {
		return nil
	}
	slave, err := c.NL.LinkByName(IPVLANHostSlave(parent.Attrs().Index))
	if err != nil {
		return nil
	}
	if err := c.NL.RouteDel(&netlink.Route{LinkIndex: slave.Attrs().Index, Dst: host32(ip), Scope: netlink.SCOPE_LINK}); err != nil && !IsNotFound(err) {
		return fmt.Errorf("host route to %s on %s: %w", ip, slave.Attrs().Name, err)
	}
	return nil
}

func (c *Config) findExclusiveENI() (netlink.Link, error) {
	if c.Alloc.MAC != "" {
		if l, err := LinkByMAC(c.NL, c.Alloc.MAC); err == nil {
			return l, nil
		}
	}
	l, err := c.NL.LinkByName(c.IfName)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(l.Attrs().Alias, AliasPrefix) {
		return nil, netlink.LinkNotFoundError{}
	}
	return l, nil
}

// returnENI gives an exclusive ENI back to the host under its old name
// (runs in the pod namespace).
func (c *Config) returnENI(l netlink.Link) error {
	orig := strings.TrimPrefix(l.Attrs().Alias, AliasPrefix)
	if orig == "" || orig == l.Attrs().Alias {
		orig = l.Attrs().Name
	}
	_ = c.NL.LinkSetDown(l)
	if addrs, err := c.NL.AddrList(l); err == nil {
		for i := range addrs {
			_ = c.NL.AddrDel(l, &addrs[i])
		}
	}
	if l.Attrs().Name != orig {
		if err := c.NL.LinkSetName(l, orig); err != nil {
			return fmt.Errorf("renaming ENI back to %s: %w", orig, err)
		}
	}
	if err := c.NL.LinkSetNsFd(l, int(c.HostNS.Fd())); err != nil {
		return fmt.Errorf("moving ENI %s back to the host: %w", orig, err)
	}
	return nil
}

// Check verifies the pod's interface and its host side are as Setup left
// them.
func Check(c Config) error {
	p, err := parse(c.Alloc)
	if err != nil {
		return err
	}
	if c.PodNS == nil {
		return errors.New("no pod namespace")
	}
	wantBits := p.cidr.Bits()
	if c.Mode == api.ModeVeth {
		wantBits = 32
	}
	if err := c.PodNS.Do(func() error {
		l, err := c.NL.LinkByName(c.IfName)
		if err != nil {
			return fmt.Errorf("pod interface %s: %w", c.IfName, err)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("pod interface %s is down", c.IfName)
		}
		if c.Mode != api.ModeVeth && !strings.EqualFold(l.Attrs().HardwareAddr.String(), c.Alloc.MAC) {
			return fmt.Errorf("pod interface %s has MAC %s, want the ENI's %s", c.IfName, l.Attrs().HardwareAddr, c.Alloc.MAC)
		}
		addrs, err := c.NL.AddrList(l)
		if err != nil {
			return err
		}
		found := false
		for _, a := range addrs {
			ones, _ := a.Mask.Size()
			if a.IP.Equal(net.IP(p.ip.AsSlice())) && ones == wantBits {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("pod interface %s lacks %s/%d", c.IfName, p.ip, wantBits)
		}
		routes, err := c.NL.RouteList(l)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				return nil
			}
		}
		return fmt.Errorf("pod interface %s has no default route", c.IfName)
	}); err != nil {
		return err
	}
	return c.HostNS.Do(func() error { return c.checkHost(p) })
}

// checkHost checks the host side of the mode: the link the node reaches
// the pod through, up, with the route to the pod, and for veth the two
// policy rules.
func (c *Config) checkHost(p parsed) error {
	hostName := HostIfName(c.ContainerID, c.IfName)
	what := "host veth"
	if c.Mode == api.ModeIPVLAN {
		parent, err := LinkByMAC(c.NL, c.Alloc.MAC)
		if err != nil {
			return fmt.Errorf("ENI %s (MAC %s): %w", c.Alloc.ENIID, c.Alloc.MAC, err)
		}
		hostName, what = IPVLANHostSlave(parent.Attrs().Index), "host IPVLAN slave"
	}
	hl, err := c.NL.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, hostName, err)
	}
	if hl.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("%s %s is down", what, hostName)
	}
	routes, err := c.NL.RouteList(hl)
	if err != nil {
		return fmt.Errorf("routes of %s: %w", hostName, err)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return r.Dst != nil && r.Dst.IP.Equal(net.IP(p.ip.AsSlice())) && isHost(r.Dst)
	}) {
		return fmt.Errorf("no host route to %s on %s", p.ip, hostName)
	}
	if c.Mode == api.ModeIPVLAN && c.NodeLocalDNS.IsValid() {
		addrs, err := c.NL.AddrList(hl)
		if err != nil {
			return fmt.Errorf("addresses of %s: %w", hostName, err)
		}
		if !slices.ContainsFunc(addrs, func(a netlink.Addr) bool { return a.IP.Equal(net.IP(c.NodeLocalDNS.AsSlice())) }) {
			return fmt.Errorf("%s lacks the node-local DNS address %s", hostName, c.NodeLocalDNS)
		}
	}
	if c.Mode != api.ModeVeth {
		return nil
	}
	rules, err := c.NL.RuleList()
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(rules, func(r netlink.Rule) bool { return isToPod(&r, p.ip) }) {
		return fmt.Errorf("no policy rule to %s", p.ip)
	}
	if !slices.ContainsFunc(rules, func(r netlink.Rule) bool {
		return r.Priority == PrioFromPod && r.IifName == hostName && r.Src != nil && r.Src.IP.Equal(net.IP(p.ip.AsSlice()))
	}) {
		return fmt.Errorf("no policy rule for %s's egress from %s", p.ip, hostName)
	}
	return nil
}

// IPVLANSupported reports whether the kernel has the ipvlan driver. It asks
// for an ipvlan on lo: without the driver the kind is unknown (EOPNOTSUPP);
// with it the request fails for lo (EINVAL) and nothing is created.
func IPVLANSupported() (bool, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return false, err
	}
	err = netlink.LinkAdd(&netlink.IPVlan{LinkAttrs: netlink.LinkAttrs{Name: "dnsaipvlprobe", ParentIndex: lo.Attrs().Index}, Mode: netlink.IPVLAN_MODE_L2})
	if err == nil {
		_ = netlink.LinkDel(&netlink.IPVlan{LinkAttrs: netlink.LinkAttrs{Name: "dnsaipvlprobe"}})
		return true, nil
	}
	if errors.Is(err, unix.EOPNOTSUPP) {
		return false, nil
	}
	return true, nil
}
