package ecs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// LocalConfig configures --local-enis.
type LocalConfig struct {
	// Netns names the VPC's network namespace (default "vpc").
	Netns string
	// LinkPrefix starts the host-side ENI interface names: the prefix and
	// the last 8 characters of the ENI id (at most 7 characters; default "eni").
	LinkPrefix string
	// VPCAddresses are put on lo in the VPC namespace: hosts in the VPC
	// that every vSwitch reaches through its gateway.
	VPCAddresses []netip.Addr
}

// LocalVSwitch is a vSwitch's L3 facts.
type LocalVSwitch struct {
	ID      string
	CIDR    netip.Prefix
	Gateway netip.Addr
}

type localSwitch struct {
	LocalVSwitch
	bridge string
	index  int
}

type localENI struct {
	peer, mac, vsw string
}

// Local is the kernel side of --local-enis: the vpc namespace with one
// bridge per vSwitch (holding the gateway address, proxy-ARPing for the
// whole vSwitch as the VPC's virtual router does) and a veth per attached
// ENI whose host end carries the ENI's MAC.
type Local struct {
	cfg    LocalConfig
	vpc    netns.NsHandle
	host   netns.NsHandle
	nl     *netlink.Handle // in the vpc namespace
	hostNL *netlink.Handle
	mu     sync.Mutex
	sw     map[string]*localSwitch
	enis   map[string]localENI // ENI id
}

// NewLocal creates the vpc namespace and its bridges.
func NewLocal(cfg LocalConfig, vsws []LocalVSwitch) (_ *Local, err error) {
	if cfg.Netns == "" {
		cfg.Netns = "vpc"
	}
	if cfg.LinkPrefix == "" {
		cfg.LinkPrefix = "eni"
	}
	if len(cfg.LinkPrefix) > 7 {
		return nil, fmt.Errorf("--local-enis: link prefix %q longer than 7", cfg.LinkPrefix)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("--local-enis needs root (network namespaces, veth)")
	}
	if _, err := os.Stat(filepath.Join("/run/netns", cfg.Netns)); err == nil {
		return nil, fmt.Errorf("--local-enis: network namespace %q exists (a previous run's? `ip netns delete %s`)", cfg.Netns, cfg.Netns)
	}
	if out, err := exec.Command("ip", "netns", "add", cfg.Netns).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", cfg.Netns, err, strings.TrimSpace(string(out)))
	}
	l := &Local{cfg: cfg, sw: map[string]*localSwitch{}, enis: map[string]localENI{}, vpc: netns.None(), host: netns.None()}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	if l.vpc, err = netns.GetFromName(cfg.Netns); err != nil {
		return nil, fmt.Errorf("opening netns %s: %w", cfg.Netns, err)
	}
	if l.host, err = netns.GetFromPid(os.Getpid()); err != nil {
		return nil, err
	}
	if l.nl, err = netlink.NewHandleAt(l.vpc); err != nil {
		return nil, err
	}
	if l.hostNL, err = netlink.NewHandleAt(l.host); err != nil {
		return nil, err
	}
	lo, err := l.nl.LinkByName("lo")
	if err != nil {
		return nil, err
	}
	if err := l.nl.LinkSetUp(lo); err != nil {
		return nil, err
	}
	for _, a := range cfg.VPCAddresses {
		if err := l.nl.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			return nil, fmt.Errorf("VPC address %s: %w", a, err)
		}
	}
	sysctls := map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/send_redirects": "0", "net/ipv4/conf/default/send_redirects": "0", "net/ipv4/conf/all/rp_filter": "0"}
	for i, v := range vsws {
		// A fixed MAC: otherwise the bridge takes its ports' lowest MAC,
		// and each change flushes its neighbour table (static entries too).
		mac, _ := net.ParseMAC(fmt.Sprintf("0e:d5:ac:%02x:00:fe", i))
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("br%d", i), HardwareAddr: mac}}
		if err := l.nl.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("bridge for %s: %w", v.ID, err)
		}
		bl, err := l.nl.LinkByName(br.Name)
		if err != nil {
			return nil, err
		}
		if err := l.nl.AddrAdd(bl, &netlink.Addr{IPNet: &net.IPNet{IP: v.Gateway.AsSlice(), Mask: net.CIDRMask(v.CIDR.Bits(), 32)}}); err != nil {
			return nil, fmt.Errorf("gateway %s of %s: %w", v.Gateway, v.ID, err)
		}
		if err := l.nl.LinkSetUp(bl); err != nil {
			return nil, err
		}
		l.sw[v.ID] = &localSwitch{LocalVSwitch: v, bridge: br.Name, index: bl.Attrs().Index}
		for k, val := range map[string]string{"proxy_arp": "1", "proxy_arp_pvlan": "1", "send_redirects": "0", "rp_filter": "0"} {
			sysctls["net/ipv4/conf/"+br.Name+"/"+k] = val
		}
		sysctls["net/ipv4/neigh/"+br.Name+"/proxy_delay"] = "0"
	}
	if err := inNS(l.vpc, func() error {
		for k, v := range sysctls {
			if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
				return fmt.Errorf("sysctl %s in %s: %w", k, cfg.Netns, err)
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return l, nil
}

// inNS runs f inside the namespace h, on a locked thread (containernetworking's
// ns.Do, which throws the thread away if it cannot return).
func inNS(h netns.NsHandle, f func() error) error {
	target, err := ns.GetNS(fmt.Sprintf("/proc/self/fd/%d", int(h)))
	if err != nil {
		return err
	}
	defer target.Close()
	return target.Do(func(ns.NetNS) error { return f() })
}

// Netns is the VPC namespace's name.
func (l *Local) Netns() string { return l.cfg.Netns }

// LinkName is the host-side interface name of an ENI.
func (l *Local) LinkName(eniID string) string {
	id := eniID
	if len(id) > 8 {
		id = id[len(id)-8:]
	}
	return l.cfg.LinkPrefix + id
}

// Attach makes the ENI's interface: the host end (named LinkName, with the
// ENI's MAC, down) and the vpc end on the vSwitch's bridge; the VPC learns
// the ENI's addresses.
func (l *Local) Attach(eniID, mac, vswID string, ips []netip.Addr) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	sw := l.sw[vswID]
	if sw == nil {
		return "", fmt.Errorf("vSwitch %s has no bridge", vswID)
	}
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return "", err
	}
	name := l.LinkName(eniID)
	peer := "v" + strings.TrimPrefix(name, l.cfg.LinkPrefix)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: peer, MasterIndex: sw.index}, PeerName: name, PeerHardwareAddr: hw, PeerNamespace: netlink.NsFd(int(l.host))}
	if err := l.nl.LinkAdd(veth); err != nil {
		return "", fmt.Errorf("ENI %s: veth %s/%s: %w", eniID, name, peer, err)
	}
	pl, err := l.nl.LinkByName(peer)
	if err != nil {
		return "", err
	}
	if err := l.nl.LinkSetUp(pl); err != nil {
		return "", err
	}
	l.enis[eniID] = localENI{peer: peer, mac: mac, vsw: vswID}
	if err := l.neigh(sw, hw, ips, true); err != nil {
		return "", err
	}
	return name, nil
}

func (l *Local) neigh(sw *localSwitch, hw net.HardwareAddr, ips []netip.Addr, add bool) error {
	for _, a := range ips {
		n := &netlink.Neigh{LinkIndex: sw.index, IP: a.AsSlice(), HardwareAddr: hw, State: netlink.NUD_PERMANENT, Family: unix.AF_INET}
		var err error
		if add {
			err = l.nl.NeighSet(n)
		} else if err = l.nl.NeighDel(n); errors.Is(err, unix.ENOENT) {
			err = nil
		}
		if err != nil {
			return fmt.Errorf("VPC neighbour %s: %w", a, err)
		}
	}
	return nil
}

// AddAddrs tells the VPC that the ENI with mac now holds ips.
func (l *Local) AddAddrs(mac string, ips []netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.enis {
		if e.mac == mac {
			hw, _ := net.ParseMAC(mac)
			return l.neigh(l.sw[e.vsw], hw, ips, true)
		}
	}
	return fmt.Errorf("no local ENI with MAC %s", mac)
}

// DelAddrs forgets addresses.
func (l *Local) DelAddrs(ips []netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for _, a := range ips {
		for _, sw := range l.sw {
			if sw.CIDR.Contains(a) {
				errs = append(errs, l.neigh(sw, nil, []netip.Addr{a}, false))
			}
		}
	}
	return errors.Join(errs...)
}

// Detach removes the ENI's interface (wherever its host end is now) and
// its addresses from the VPC.
func (l *Local) Detach(eniID string, ips []netip.Addr) error {
	l.mu.Lock()
	e, ok := l.enis[eniID]
	delete(l.enis, eniID)
	l.mu.Unlock()
	if !ok {
		return nil
	}
	var errs []error
	if pl, err := l.nl.LinkByName(e.peer); err == nil {
		if err := l.nl.LinkDel(pl); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, l.DelAddrs(ips))
	return errors.Join(errs...)
}

// ConfigureHost gives the primary ENI's host interface its address, as the
// instance's OS does for eth0.
func (l *Local) ConfigureHost(link string, addr netip.Prefix) error {
	hl, err := l.hostNL.LinkByName(link)
	if err != nil {
		return err
	}
	if err := l.hostNL.AddrAdd(hl, &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}}); err != nil {
		return fmt.Errorf("primary ENI address %s: %w", addr, err)
	}
	return l.hostNL.LinkSetUp(hl)
}

// Close deletes the vpc namespace: every ENI veth goes with it.
func (l *Local) Close() error {
	var errs []error
	if l.nl != nil {
		for _, e := range l.enis {
			if pl, err := l.nl.LinkByName(e.peer); err == nil {
				_ = l.nl.LinkDel(pl)
			}
		}
		l.nl.Close()
	}
	if l.hostNL != nil {
		l.hostNL.Close()
	}
	if l.vpc != netns.None() {
		l.vpc.Close()
	}
	if l.host != netns.None() {
		l.host.Close()
	}
	if _, err := os.Stat(filepath.Join("/run/netns", l.cfg.Netns)); err == nil {
		if out, err := exec.Command("ip", "netns", "delete", l.cfg.Netns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns delete %s: %v: %s", l.cfg.Netns, err, strings.TrimSpace(string(out))))
		}
	}
	return errors.Join(errs...)
}
