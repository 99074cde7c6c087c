package node

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath/steer"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

// SteerStats reads the steering programs' counters from the pinned map:
// operations steered to node-cache, and operations left alone because the
// heartbeat was stale (those went to the VIP, i.e. the central CoreDNS).
func (n *Node) SteerStats() (steered, stale uint64, err error) {
	st, err := steer.PinnedStats(n.BPFFS)
	if err != nil {
		return 0, 0, err
	}
	return st[steer.StatSteered], st[steer.StatStale], nil
}

// Leftovers lists what the node made that still exists: network
// namespaces, interfaces, addresses, routes and rules, eBPF programs, maps
// and links, the bpf mount, processes, listening ports, files. After Down
// it must be empty.
func (n *Node) Leftovers() []string {
	var out []string
	m := n.made
	for _, name := range m.netns {
		if _, err := os.Stat(filepath.Join("/run/netns", name)); err == nil {
			out = append(out, "network namespace "+name)
		}
	}
	for _, name := range m.links {
		if _, err := netlink.LinkByName(name); err == nil {
			out = append(out, "interface "+name)
		}
	}
	mine := func(a netip.Addr) bool { return VPCCIDR.Contains(a) || slices.Contains(m.addrs, a) }
	if addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL); err == nil {
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && mine(ip.Unmap()) {
				out = append(out, fmt.Sprintf("address %s (interface index %d)", a.IPNet, a.LinkIndex))
			}
		}
	}
	inNet := func(p *net.IPNet) bool {
		if p == nil {
			return false
		}
		a, ok := netip.AddrFromSlice(p.IP)
		return ok && mine(a.Unmap())
	}
	if routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE); err == nil {
		for _, r := range routes {
			if inNet(r.Dst) || slices.Contains(m.tables, r.Table) {
				out = append(out, fmt.Sprintf("route %s (table %d)", r, r.Table))
			}
		}
	}
	if rules, err := netlink.RuleList(netlink.FAMILY_V4); err == nil {
		for _, r := range rules {
			if inNet(r.Src) || inNet(r.Dst) {
				out = append(out, fmt.Sprintf("rule %s", r))
			}
		}
	}
	out = append(out, steertest.Alive(m.pins)...)
	if mounts, err := os.ReadFile("/proc/self/mounts"); err == nil {
		for _, line := range strings.Split(string(mounts), "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[2] == "bpf" && strings.HasPrefix(filepath.Base(f[1]), bpffsPrefix+strconv.Itoa(os.Getpid())+"-") {
				out = append(out, "bpf file system "+f[1])
			}
		}
	}
	for _, pid := range m.pids {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(b), n.Opt.BinDir) {
			out = append(out, fmt.Sprintf("process %d (%s)", pid, strings.ReplaceAll(string(b), "\x00", " ")))
		}
	}
	for _, a := range m.listeners {
		l, err := net.Listen("tcp", a)
		if err != nil {
			out = append(out, "port "+a+" still bound")
			continue
		}
		l.Close()
	}
	for _, f := range m.files {
		if _, err := os.Stat(f); err == nil {
			out = append(out, "file "+f)
		}
	}
	return out
}
