// Package netsetup configures a pod's network namespace for each eni-cni
// mode (veth, exclusive, ipvlan) with netlink, the way
// containernetworking/plugins does: namespace work runs inside ns.Do on a
// locked OS thread. The kernel calls go through the Netlink interface so
// that sequences the kernel here cannot run (IPVLAN) are still tested, by
// recording them.
package netsetup

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Netlink is the subset of netlink calls the modes make. Every call acts in
// the network namespace of the calling thread.
type Netlink interface {
	LinkByName(name string) (netlink.Link, error)
	LinkList() ([]netlink.Link, error)
	LinkAdd(l netlink.Link) error
	LinkDel(l netlink.Link) error
	LinkSetUp(l netlink.Link) error
	LinkSetDown(l netlink.Link) error
	LinkSetName(l netlink.Link, name string) error
	LinkSetAlias(l netlink.Link, alias string) error
	LinkSetNsFd(l netlink.Link, fd int) error
	AddrAdd(l netlink.Link, a *netlink.Addr) error
	AddrList(l netlink.Link) ([]netlink.Addr, error)
	AddrDel(l netlink.Link, a *netlink.Addr) error
	RouteReplace(r *netlink.Route) error
	RouteDel(r *netlink.Route) error
	RouteList(l netlink.Link) ([]netlink.Route, error)
	RuleAdd(r *netlink.Rule) error
	RuleDel(r *netlink.Rule) error
	RuleList() ([]netlink.Rule, error)
	NeighSet(n *netlink.Neigh) error
	// Sysctl writes /proc/sys/<key> ("net/ipv4/conf/eth0/forwarding").
	Sysctl(key, value string) error
}

// NS is a network namespace the setup can enter.
type NS interface {
	Do(func() error) error
	Fd() uintptr
	Path() string
}

// Kernel is the real Netlink.
type Kernel struct{}

var _ Netlink = Kernel{}

func (Kernel) LinkByName(name string) (netlink.Link, error) { return netlinksafe.LinkByName(name) }
func (Kernel) LinkList() ([]netlink.Link, error)            { return netlinksafe.LinkList() }
func (Kernel) LinkAdd(l netlink.Link) error                 { return netlink.LinkAdd(l) }
func (Kernel) LinkDel(l netlink.Link) error                 { return netlink.LinkDel(l) }
func (Kernel) LinkSetUp(l netlink.Link) error               { return netlink.LinkSetUp(l) }
func (Kernel) LinkSetDown(l netlink.Link) error             { return netlink.LinkSetDown(l) }
func (Kernel) LinkSetName(l netlink.Link, n string) error   { return netlink.LinkSetName(l, n) }
func (Kernel) LinkSetAlias(l netlink.Link, a string) error  { return netlink.LinkSetAlias(l, a) }
func (Kernel) LinkSetNsFd(l netlink.Link, fd int) error     { return netlink.LinkSetNsFd(l, fd) }
func (Kernel) AddrAdd(l netlink.Link, a *netlink.Addr) error {
	return netlink.AddrAdd(l, a)
}
func (Kernel) AddrList(l netlink.Link) ([]netlink.Addr, error) {
	return netlinksafe.AddrList(l, netlink.FAMILY_V4)
}
func (Kernel) AddrDel(l netlink.Link, a *netlink.Addr) error { return netlink.AddrDel(l, a) }
func (Kernel) RouteReplace(r *netlink.Route) error           { return netlink.RouteReplace(r) }
func (Kernel) RouteDel(r *netlink.Route) error               { return netlink.RouteDel(r) }
func (Kernel) RouteList(l netlink.Link) ([]netlink.Route, error) {
	return netlinksafe.RouteList(l, netlink.FAMILY_V4)
}
func (Kernel) RuleAdd(r *netlink.Rule) error     { return netlink.RuleAdd(r) }
func (Kernel) RuleDel(r *netlink.Rule) error     { return netlink.RuleDel(r) }
func (Kernel) RuleList() ([]netlink.Rule, error) { return netlinksafe.RuleList(netlink.FAMILY_V4) }
func (Kernel) NeighSet(n *netlink.Neigh) error   { return netlink.NeighSet(n) }
func (Kernel) Sysctl(key, value string) error {
	p := filepath.Join("/proc/sys", filepath.Clean("/"+key))
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}

// nsAdapter wraps containernetworking's ns.NetNS.
type nsAdapter struct{ n ns.NetNS }

func (a nsAdapter) Do(f func() error) error { return a.n.Do(func(ns.NetNS) error { return f() }) }
func (a nsAdapter) Fd() uintptr             { return a.n.Fd() }
func (a nsAdapter) Path() string            { return a.n.Path() }

// OpenNS opens a network namespace by path. The caller closes it.
func OpenNS(path string) (NS, func() error, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		return nil, nil, err
	}
	return nsAdapter{n}, n.Close, nil
}

// CurrentNS is the namespace of the calling thread (the host, for a CNI
// plugin). The caller closes it.
func CurrentNS() (NS, func() error, error) {
	n, err := ns.GetCurrentNS()
	if err != nil {
		return nil, nil, err
	}
	return nsAdapter{n}, n.Close, nil
}

// IsNotFound reports whether err means a link/route/rule did not exist.
func IsNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ESRCH) ||
		errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EADDRNOTAVAIL)
}

// LinkByMAC finds the link with hardware address mac.
func LinkByMAC(nl Netlink, mac string) (netlink.Link, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return nil, fmt.Errorf("ENI MAC %q: %w", mac, err)
	}
	links, err := nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	for _, l := range links {
		if strings.EqualFold(l.Attrs().HardwareAddr.String(), hw.String()) {
			if _, ok := l.(*netlink.IPVlan); ok {
				continue // an IPVLAN slave shares its parent's MAC
			}
			return l, nil
		}
	}
	return nil, netlink.LinkNotFoundError{}
}
