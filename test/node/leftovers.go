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

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath"
)

type pinIDs struct{ progs, maps, links []uint32 }

// pinnedIDs are the kernel IDs of what node-cache pinned under bpffs.
func pinnedIDs(bpffs string) (pinIDs, error) {
	var ids pinIDs
	dir := filepath.Join(bpffs, datapath.PinDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return ids, err
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), "link_"):
			l, err := link.LoadPinnedLink(p, nil)
			if err != nil {
				return ids, err
			}
			info, err := l.Info()
			l.Close()
			if err != nil {
				return ids, err
			}
			ids.links = append(ids.links, uint32(info.ID))
		case strings.HasPrefix(e.Name(), "prog_"):
			pr, err := ebpf.LoadPinnedProgram(p, nil)
			if err != nil {
				return ids, err
			}
			info, err := pr.Info()
			pr.Close()
			if err != nil {
				return ids, err
			}
			if id, ok := info.ID(); ok {
				ids.progs = append(ids.progs, uint32(id))
			}
		default:
			m, err := ebpf.LoadPinnedMap(p, nil)
			if err != nil {
				return ids, err
			}
			info, err := m.Info()
			m.Close()
			if err != nil {
				return ids, err
			}
			if id, ok := info.ID(); ok {
				ids.maps = append(ids.maps, uint32(id))
			}
		}
	}
	return ids, nil
}

// SteerStats reads the steering programs' counters from the pinned map:
// operations steered to node-cache, and operations left alone because the
// heartbeat was stale (those went to the VIP, i.e. the central CoreDNS).
func (n *Node) SteerStats() (steered, stale uint64, err error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(n.BPFFS, datapath.PinDir, "dnsa_stats"), nil)
	if err != nil {
		return 0, 0, err
	}
	defer m.Close()
	sum := func(i datapath.Stat) (uint64, error) {
		var per []uint64
		if err := m.Lookup(uint32(i), &per); err != nil {
			return 0, err
		}
		var t uint64
		for _, v := range per {
			t += v
		}
		return t, nil
	}
	if steered, err = sum(datapath.StatSteered); err != nil {
		return 0, 0, err
	}
	stale, err = sum(datapath.StatStale)
	return steered, stale, err
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
	for _, id := range m.progIDs {
		if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id)); err == nil {
			p.Close()
			out = append(out, fmt.Sprintf("eBPF program %d", id))
		}
	}
	for _, id := range m.mapIDs {
		if p, err := ebpf.NewMapFromID(ebpf.MapID(id)); err == nil {
			p.Close()
			out = append(out, fmt.Sprintf("eBPF map %d", id))
		}
	}
	for _, id := range m.linkIDs {
		if l, err := link.NewFromID(link.ID(id)); err == nil {
			l.Close()
			out = append(out, fmt.Sprintf("eBPF link %d", id))
		}
	}
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
