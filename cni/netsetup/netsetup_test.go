package netsetup

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/dnsaccel/dnsaccel/cni/api"
)

// recorder is a Netlink that records calls, with the namespace they were
// made in, against a tiny in-memory link table.
type recorder struct {
	ns    string
	calls []string
	links map[string]map[string]netlink.Link // ns -> name -> link
	next  int
	// rules are the host's policy rules; routes what RouteList answers.
	rules  []netlink.Rule
	routes []netlink.Route
}

func newRecorder() *recorder {
	r := &recorder{ns: "host", links: map[string]map[string]netlink.Link{"host": {}, "pod": {}}, next: 10}
	mac, _ := net.ParseMAC("00:16:3e:00:00:01")
	r.links["host"]["eni1"] = &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eni1", Index: 5, MTU: 1500, HardwareAddr: mac}}
	return r
}

func (r *recorder) rec(f string, a ...any) { r.calls = append(r.calls, r.ns+": "+fmt.Sprintf(f, a...)) }

type fakeNS struct {
	r    *recorder
	name string
	fd   uintptr
}

func (n fakeNS) Do(f func() error) error {
	prev := n.r.ns
	n.r.ns = n.name
	defer func() { n.r.ns = prev }()
	return f()
}
func (n fakeNS) Fd() uintptr  { return n.fd }
func (n fakeNS) Path() string { return "/run/netns/" + n.name }

func (r *recorder) LinkByName(name string) (netlink.Link, error) {
	if l, ok := r.links[r.ns][name]; ok {
		return l, nil
	}
	return nil, netlink.LinkNotFoundError{}
}
func (r *recorder) LinkList() ([]netlink.Link, error) {
	var out []netlink.Link
	for _, l := range r.links[r.ns] {
		out = append(out, l)
	}
	return out, nil
}
func (r *recorder) LinkAdd(l netlink.Link) error {
	r.next++
	switch v := l.(type) {
	case *netlink.IPVlan:
		r.rec("add ipvlan %s parent %d mode %d", v.Name, v.ParentIndex, v.Mode)
		v.Index = r.next
		r.links[r.ns][v.Name] = v
	case *netlink.Veth:
		r.rec("add veth %s peer %s", v.Name, v.PeerName)
		v.Index = r.next
		mac, _ := net.ParseMAC("02:00:00:00:00:99")
		r.links[r.ns][v.Name] = v
		r.links["host"][v.PeerName] = &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: v.PeerName, Index: r.next + 100, HardwareAddr: mac}}
	default:
		return errors.New("unexpected link type")
	}
	return nil
}
func (r *recorder) LinkDel(l netlink.Link) error {
	r.rec("del %s", l.Attrs().Name)
	delete(r.links[r.ns], l.Attrs().Name)
	return nil
}
func (r *recorder) LinkSetUp(l netlink.Link) error {
	r.rec("up %s", l.Attrs().Name)
	l.Attrs().Flags |= net.FlagUp
	return nil
}
func (r *recorder) LinkSetDown(l netlink.Link) error { r.rec("down %s", l.Attrs().Name); return nil }
func (r *recorder) LinkSetName(l netlink.Link, n string) error {
	r.rec("rename %s %s", l.Attrs().Name, n)
	delete(r.links[r.ns], l.Attrs().Name)
	l.Attrs().Name = n
	r.links[r.ns][n] = l
	return nil
}
func (r *recorder) LinkSetAlias(l netlink.Link, a string) error {
	r.rec("alias %s %s", l.Attrs().Name, a)
	l.Attrs().Alias = a
	return nil
}
func (r *recorder) LinkSetNsFd(l netlink.Link, fd int) error {
	to := map[int]string{1: "host", 2: "pod"}[fd]
	r.rec("move %s to %s", l.Attrs().Name, to)
	delete(r.links[r.ns], l.Attrs().Name)
	r.links[to][l.Attrs().Name] = l
	return nil
}
func (r *recorder) AddrAdd(l netlink.Link, a *netlink.Addr) error {
	r.rec("addr %s %s", l.Attrs().Name, a.IPNet)
	return nil
}
func (r *recorder) AddrList(netlink.Link) ([]netlink.Addr, error) { return nil, nil }
func (r *recorder) AddrDel(l netlink.Link, a *netlink.Addr) error {
	r.rec("addr del %s %s", l.Attrs().Name, a.IPNet)
	return nil
}
func (r *recorder) RouteReplace(rt *netlink.Route) error {
	r.rec("route %s", routeString(rt))
	return nil
}
func (r *recorder) RouteDel(rt *netlink.Route) error {
	r.rec("route del %s", routeString(rt))
	return nil
}
func (r *recorder) RouteList(netlink.Link) ([]netlink.Route, error) { return r.routes, nil }
func ruleString(ru *netlink.Rule) string {
	return fmt.Sprintf("prio %d from %v to %v iif %s table %d", ru.Priority, ru.Src, ru.Dst, ru.IifName, ru.Table)
}
func (r *recorder) RuleAdd(ru *netlink.Rule) error {
	r.rec("rule %s", ruleString(ru))
	r.rules = append(r.rules, *ru)
	return nil
}
func (r *recorder) RuleDel(ru *netlink.Rule) error {
	r.rec("rule del %s", ruleString(ru))
	r.rules = slices.DeleteFunc(r.rules, func(x netlink.Rule) bool { return ruleString(&x) == ruleString(ru) })
	return nil
}
func (r *recorder) RuleList() ([]netlink.Rule, error) { return slices.Clone(r.rules), nil }
func (r *recorder) NeighSet(n *netlink.Neigh) error {
	r.rec("neigh %s %s", n.IP, n.HardwareAddr)
	return nil
}
func (r *recorder) Sysctl(k, v string) error { r.rec("sysctl %s=%s", k, v); return nil }

func routeString(rt *netlink.Route) string {
	dst := "default"
	if rt.Dst != nil {
		dst = rt.Dst.String()
	}
	s := fmt.Sprintf("%s dev %d", dst, rt.LinkIndex)
	if rt.Gw != nil {
		s += " via " + rt.Gw.String()
	}
	if rt.Table != 0 {
		s += fmt.Sprintf(" table %d", rt.Table)
	}
	if rt.Scope == netlink.SCOPE_LINK {
		s += " scope link"
	}
	return s
}

func cfg(r *recorder, mode api.Mode) Config {
	return Config{Mode: mode, IfName: "eth0", ContainerID: "ctr1", NL: r,
		HostNS: fakeNS{r, "host", 1}, PodNS: fakeNS{r, "pod", 2},
		Alloc: api.Allocation{IP: "10.0.1.7", VSwitchCIDR: "10.0.1.0/24", Gateway: "10.0.1.253", MAC: "00:16:3e:00:00:01", ENIID: "eni-1", NodeIP: "10.0.1.2"},
	}
}

// TestIPVLANSequence: the netlink requests of ipvlan mode (the kernel here
// has no ipvlan driver, so this is how the mode is tested).
func TestIPVLANSequence(t *testing.T) {
	r := newRecorder()
	c := cfg(r, api.ModeIPVLAN)
	c.NodeLocalDNS = mustAddr("169.254.20.10")
	res, err := Setup(c)
	if err != nil {
		t.Fatal(err)
	}
	tmp := "ipvt" + strings.TrimPrefix(HostIfName("ctr1", "eth0"), HostVethPrefix)
	want := []string{
		"host: up eni1",
		"host: add ipvlan " + tmp + " parent 5 mode 0",
		"host: move " + tmp + " to pod",
		"host: add ipvlan ipvl_5 parent 5 mode 0",
		"host: up ipvl_5",
		"host: addr ipvl_5 169.254.20.10/32",
		"host: route 10.0.1.7/32 dev 12 scope link",
		"pod: rename " + tmp + " eth0",
		"pod: addr eth0 10.0.1.7/24",
		"pod: up eth0",
		"pod: route default dev 11 via 10.0.1.253",
		"pod: route 169.254.20.10/32 dev 11 scope link",
	}
	if got := strings.Join(r.calls, "\n"); got != strings.Join(want, "\n") {
		t.Fatalf("ipvlan sequence:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	if res.Addr.String() != "10.0.1.7/24" || res.Gateway.String() != "10.0.1.253" || res.Host.Name != "ipvl_5" {
		t.Fatalf("result %+v", res)
	}
	r.calls = nil
	if err := Teardown(c); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.calls, "\n"); !strings.Contains(got, "pod: del eth0") || !strings.Contains(got, "host: route del 10.0.1.7/32 dev 12 scope link") {
		t.Fatalf("ipvlan teardown:\n%s", got)
	}
}

func TestVethSequence(t *testing.T) {
	r := newRecorder()
	c := cfg(r, api.ModeVeth)
	if _, err := Setup(c); err != nil {
		t.Fatal(err)
	}
	host := HostIfName("ctr1", "eth0")
	got := strings.Join(r.calls, "\n")
	for _, want := range []string{
		"host: sysctl net/ipv4/conf/eni1/forwarding=1",
		"host: route default dev 5 via 10.0.1.253 table 1005",
		"pod: add veth eth0 peer " + host,
		"pod: addr eth0 10.0.1.7/32",
		"pod: route default dev 11 via 169.254.1.1",
		"host: route 10.0.1.7/32 dev 111 scope link",
		"host: rule prio 512 from <nil> to 10.0.1.7/32 iif  table 254",
		"host: rule prio 2048 from 10.0.1.7/32 to <nil> iif " + host + " table 1005",
		"pod: neigh 169.254.1.1 02:00:00:00:00:99",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("veth sequence lacks %q:\n%s", want, got)
		}
	}
}

// TestTeardownOwner: a teardown removes what names its container (the host
// veth, the egress rule on it) always, and what names only the address
// (the rule to the pod, the IPVLAN host route) only while the address is
// still its own: a late DEL must not cut off the pod it was given to since.
func TestTeardownOwner(t *testing.T) {
	ip := mustAddr("10.0.1.7")
	hostB := HostIfName("ctr2", "eth0")
	for _, tc := range []struct {
		name     string
		mode     api.Mode
		owner    AddrOwner
		routedB  bool // B's host veth routes the address
		wantGone []string
		wantKept []string
	}{
		{"veth ours", api.ModeVeth, AddrOurs, false, []string{"rule del prio 512", "rule del prio 2048 from 10.0.1.7/32 to <nil> iif " + HostIfName("ctr1", "eth0")}, nil},
		{"veth taken", api.ModeVeth, AddrTaken, true, []string{"rule del prio 2048 from 10.0.1.7/32 to <nil> iif " + HostIfName("ctr1", "eth0")}, []string{"prio 512", "iif " + hostB}},
		{"veth taken, no route seen", api.ModeVeth, AddrTaken, false, nil, []string{"prio 512", "iif " + hostB}},
		{"veth unknown, B routed", api.ModeVeth, AddrUnknown, true, nil, []string{"prio 512", "iif " + hostB}},
		{"veth unknown, nobody routed", api.ModeVeth, AddrUnknown, false, []string{"rule del prio 512"}, nil},
		{"ipvlan ours", api.ModeIPVLAN, AddrOurs, false, []string{"host: route del 10.0.1.7/32 dev 12 scope link"}, nil},
		{"ipvlan taken", api.ModeIPVLAN, AddrTaken, false, nil, nil},
		{"ipvlan unknown", api.ModeIPVLAN, AddrUnknown, false, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRecorder()
			c := cfg(r, tc.mode)
			if _, err := Setup(c); err != nil {
				t.Fatal(err)
			}
			if tc.mode == api.ModeVeth {
				// Pod B's rules for the same address (its ADD came after A
				// was released; A's namespace is gone).
				to := netlink.NewRule()
				to.Dst, to.Table, to.Priority = host32(ip), 254, PrioToPod
				from := netlink.NewRule()
				from.Src, from.IifName, from.Table, from.Priority = host32(ip), hostB, 1005, PrioFromPod
				r.rules = []netlink.Rule{r.rules[1], *to, *from} // A's egress rule, B's two
			}
			if tc.routedB {
				r.routes = []netlink.Route{{LinkIndex: 300, Dst: host32(ip), Table: 254}}
			}
			c.Addr, c.PodNS = tc.owner, nil
			r.calls = nil
			if err := Teardown(c); err != nil {
				t.Fatal(err)
			}
			got := strings.Join(r.calls, "\n")
			for _, w := range tc.wantGone {
				if !strings.Contains(got, w) {
					t.Errorf("teardown lacks %q:\n%s", w, got)
				}
			}
			if tc.mode == api.ModeIPVLAN && len(tc.wantGone) == 0 && strings.Contains(got, "route del") {
				t.Errorf("teardown removed the host route of an address that is not its own:\n%s", got)
			}
			var left []string
			for i := range r.rules {
				left = append(left, ruleString(&r.rules[i]))
			}
			for _, w := range tc.wantKept {
				if !strings.Contains(strings.Join(left, "\n"), w) {
					t.Errorf("teardown removed %q; rules left:\n%s\ncalls:\n%s", w, strings.Join(left, "\n"), got)
				}
			}
		})
	}
}

// TestCheckHost: CHECK's host side per mode: the link to the pod up with
// its route, and for veth both rules.
func TestCheckHost(t *testing.T) {
	for _, mode := range []api.Mode{api.ModeVeth, api.ModeExclusive, api.ModeIPVLAN} {
		t.Run(string(mode), func(t *testing.T) {
			r := newRecorder()
			c := cfg(r, mode)
			res, err := Setup(c)
			if err != nil {
				t.Fatal(err)
			}
			p, _ := parse(c.Alloc)
			host, _ := r.links["host"][res.Host.Name]
			r.routes = []netlink.Route{{LinkIndex: host.Attrs().Index, Dst: host32(p.ip), Table: 254}}
			check := func() error { return c.HostNS.Do(func() error { return c.checkHost(p) }) }
			if err := check(); err != nil {
				t.Fatalf("CHECK after ADD: %v", err)
			}
			if mode == api.ModeVeth {
				rules := r.rules
				r.rules = rules[1:] // the rule to the pod gone
				if err := check(); err == nil || !strings.Contains(err.Error(), "no policy rule to") {
					t.Errorf("CHECK without the rule to the pod: %v", err)
				}
				r.rules = rules
			}
			r.routes = nil
			if err := check(); err == nil || !strings.Contains(err.Error(), "no host route") {
				t.Errorf("CHECK without the host route: %v", err)
			}
			host.Attrs().Flags &^= net.FlagUp
			if err := check(); err == nil || !strings.Contains(err.Error(), "is down") {
				t.Errorf("CHECK with the host link down: %v", err)
			}
			delete(r.links["host"], res.Host.Name)
			if err := check(); err == nil {
				t.Error("CHECK without the host link succeeded")
			}
		})
	}
}

func TestSetupFailsOnExistingInterface(t *testing.T) {
	r := newRecorder()
	r.links["pod"]["eth0"] = &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Index: 3}}
	for _, m := range []api.Mode{api.ModeVeth, api.ModeIPVLAN, api.ModeExclusive} {
		if _, err := Setup(cfg(r, m)); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("%s: %v", m, err)
		}
		if _, ok := r.links["pod"]["eth0"]; !ok {
			t.Fatalf("%s: the failed ADD removed the existing eth0", m)
		}
	}
}

func TestHostIfName(t *testing.T) {
	a, b := HostIfName("c1", "eth0"), HostIfName("c2", "eth0")
	if a == b || len(a) > 15 || !strings.HasPrefix(a, HostVethPrefix) {
		t.Fatalf("%q %q", a, b)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
