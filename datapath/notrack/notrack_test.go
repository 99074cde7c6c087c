package notrack

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/test/steertest"
)

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		addr  string
		dir   direction
		proto byte
		want  string
	}{
		{"169.254.20.10", toServer, unix.IPPROTO_UDP, "ip daddr 169.254.20.10 udp dport 53 notrack"},
		{"169.254.20.10", fromServer, unix.IPPROTO_TCP, "ip saddr 169.254.20.10 tcp sport 53 notrack"},
		{"fd00::53", toServer, unix.IPPROTO_TCP, "ip6 daddr fd00::53 tcp dport 53 notrack"},
		{"fd00::53", fromServer, unix.IPPROTO_UDP, "ip6 saddr fd00::53 udp sport 53 notrack"},
	} {
		if got := Describe(match(netip.MustParseAddr(tc.addr), 53, tc.dir, tc.proto)); got != tc.want {
			t.Errorf("%s %v %d: %q, want %q", tc.addr, tc.dir, tc.proto, got, tc.want)
		}
	}
	e := match(netip.MustParseAddr("10.0.0.1"), 53, toServer, unix.IPPROTO_UDP)
	if got := Describe(e[:8]); got != "?" {
		t.Errorf("a rule without notrack described as %q", got)
	}
}

// netNS is a network namespace the test created, with lo up.
type netNS struct{ h netns.NsHandle }

func newNetNS(t *testing.T) *netNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nftables)")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	h, err := netns.New() // and the thread is in it
	if err != nil {
		t.Skipf("cannot create a network namespace: %v", err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatalf("back to the test's namespace: %v", err)
	}
	// The namespace, and the tables, addresses and conntrack entries in
	// it, goes when its last reference (this handle) does.
	t.Cleanup(func() { h.Close() })
	n := &netNS{h: h}
	n.do(t, func() {
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			t.Fatalf("lo up: %v", err)
		}
	})
	return n
}

// do runs f on a thread in the namespace (sockets created there stay in it).
func (n *netNS) do(t *testing.T, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(n.h); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(fmt.Sprintf("cannot return to the test's network namespace: %v", err))
		}
	}()
	f()
}

func (n *netNS) addAddr(t *testing.T, a netip.Addr) {
	t.Helper()
	n.do(t, func() {
		lo, _ := netlink.LinkByName("lo")
		ad := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}}
		if a.Is6() {
			ad.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(lo, ad); err != nil {
			t.Fatalf("%s on lo: %v", a, err)
		}
	})
}

// flows are the namespace's conntrack entries, by original destination.
func (n *netNS) flows(t *testing.T) map[string]bool {
	t.Helper()
	h, err := netlink.NewHandleAt(n.h)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	out := map[string]bool{}
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		fl, err := h.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			t.Fatalf("conntrack list: %v", err)
		}
		for _, f := range fl {
			dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
			proto := map[uint8]string{unix.IPPROTO_UDP: "udp", unix.IPPROTO_TCP: "tcp"}[f.Forward.Protocol]
			out[proto+" "+netip.AddrPortFrom(dst.Unmap(), f.Forward.DstPort).String()] = true
		}
	}
	return out
}

// serve answers every UDP datagram and TCP connection to addr with an
// echo, from sockets in the namespace.
func (n *netNS) serve(t *testing.T, addr netip.AddrPort, tcp bool) {
	t.Helper()
	n.do(t, func() {
		if tcp {
			ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { defer c.Close(); io.Copy(c, c) }()
				}
			}()
			return
		}
		pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			b := make([]byte, 512)
			for {
				k, from, err := pc.ReadFromUDPAddrPort(b)
				if err != nil {
					return
				}
				pc.WriteToUDPAddrPort(b[:k], from)
			}
		}()
	})
}

// ask sends one query from a fresh socket in the namespace and waits for
// the echo.
func (n *netNS) ask(t *testing.T, to netip.AddrPort, tcp bool) {
	t.Helper()
	var err error
	n.do(t, func() {
		network := "udp"
		if tcp {
			network = "tcp"
		}
		var c net.Conn
		if c, err = net.DialTimeout(network, to.String(), 2*time.Second); err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err = c.Write([]byte("query")); err != nil {
			return
		}
		b := make([]byte, 16)
		var k int
		if k, err = c.Read(b); err == nil && string(b[:k]) != "query" {
			err = fmt.Errorf("echo %q", b[:k])
		}
	})
	if err != nil {
		t.Fatalf("%s query to %s: %v", map[bool]string{false: "udp", true: "tcp"}[tcp], to, err)
	}
}

// TestNotrack: in a namespace that tracks connections, Ensure's table
// keeps queries to the local address on the port (UDP, TCP, IPv4, IPv6)
// out of conntrack while other flows are tracked; a second Ensure takes
// the table over so that the first owner's Release leaves it; Release by
// the last owner and Remove leave no table.
func TestNotrack(t *testing.T) {
	n := newNetNS(t)
	local4, local6 := netip.MustParseAddr("169.254.20.10"), netip.MustParseAddr("fd00:53::10")
	other := netip.MustParseAddr("127.0.0.1")
	n.addAddr(t, local4)
	n.addAddr(t, local6)
	steertest.TrackConnections(t, int(n.h))
	tb := Table{Name: "dnsaccel-test", NetNS: int(n.h)}

	o1, err := tb.Ensure([]netip.Addr{local4, local6}, 53)
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("nftables not available: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if !o1.Created() {
		t.Error("the first Ensure did not report creating the table")
	}

	// The chains and rules, as the kernel lists them.
	c, err := nftables.New(nftables.WithNetNSFd(int(n.h)))
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	hooks := map[string]string{}
	for _, ch := range chains {
		if ch.Table.Name == tb.Name && ch.Hooknum != nil && ch.Priority != nil {
			hooks[ch.Name] = fmt.Sprintf("%s hook %d priority %d", ch.Type, *ch.Hooknum, *ch.Priority)
		}
	}
	wantHooks := map[string]string{
		ChainPrerouting: fmt.Sprintf("filter hook %d priority -300", unix.NF_INET_PRE_ROUTING),
		ChainOutput:     fmt.Sprintf("filter hook %d priority -300", unix.NF_INET_LOCAL_OUT),
	}
	if fmt.Sprint(hooks) != fmt.Sprint(wantHooks) {
		t.Errorf("base chains %v, want %v", hooks, wantHooks)
	}
	var want []string
	for _, ch := range []string{ChainPrerouting, ChainOutput} {
		for _, a := range []string{"ip %s 169.254.20.10", "ip6 %s fd00:53::10"} {
			for _, d := range [][2]string{{"daddr", "dport"}, {"saddr", "sport"}} {
				for _, p := range []string{"udp", "tcp"} {
					want = append(want, fmt.Sprintf("%s: %s %s %s 53 notrack", ch, fmt.Sprintf(a, d[0]), p, d[1]))
				}
			}
		}
	}
	rules, err := tb.Rules()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rules, want) {
		t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(rules, "\n"), strings.Join(want, "\n"))
	}

	// Traffic: the server's address and port untracked, the rest tracked.
	served := []struct {
		to  netip.AddrPort
		tcp bool
	}{
		{netip.AddrPortFrom(local4, 53), false},
		{netip.AddrPortFrom(local4, 53), true},
		{netip.AddrPortFrom(local6, 53), false},
		{netip.AddrPortFrom(local4, 5353), false}, // control: another port
		{netip.AddrPortFrom(other, 53), false},    // control: another address
		{netip.AddrPortFrom(other, 53), true},
	}
	for _, s := range served {
		n.serve(t, s.to, s.tcp)
	}
	for _, s := range served {
		n.ask(t, s.to, s.tcp)
	}
	flows := n.flows(t)
	t.Logf("conntrack entries: %v", slices.Sorted(func(yield func(string) bool) {
		for k := range flows {
			if !yield(k) {
				return
			}
		}
	}))
	for _, s := range served {
		key := map[bool]string{false: "udp ", true: "tcp "}[s.tcp] + s.to.String()
		tracked := s.to.Port() != 53 || s.to.Addr() == other
		if flows[key] != tracked {
			t.Errorf("%s: conntrack entry %v, want %v", key, flows[key], tracked)
		}
	}

	// A second Ensure (a successor) replaces the rules and owns the table:
	// the first owner's Release leaves it.
	o2, err := tb.Ensure([]netip.Addr{local4, local6}, 53)
	if err != nil {
		t.Fatal(err)
	}
	if o2.Created() {
		t.Error("the second Ensure reported creating an existing table")
	}
	if rules, _ := tb.Rules(); !slices.Equal(rules, want) {
		t.Errorf("rules after the second Ensure:\n%s", strings.Join(rules, "\n"))
	}
	if owners, err := tb.Owners(); err != nil || !slices.Equal(owners, []string{o2.Token()}) {
		t.Errorf("owners %v (err %v), want only the second's %s", owners, err, o2.Token())
	}
	if removed, err := o1.Release(); err != nil || removed {
		t.Fatalf("the replaced owner's Release: removed %v, err %v; want the table kept", removed, err)
	}
	if ok, err := tb.Exists(); err != nil || !ok {
		t.Fatalf("table gone after the replaced owner's Release (err %v)", err)
	}
	if removed, err := o2.Release(); err != nil || !removed {
		t.Fatalf("the owner's Release: removed %v, err %v", removed, err)
	}
	if ok, err := tb.Exists(); err != nil || ok {
		t.Fatalf("table still there after its owner's Release (err %v)", err)
	}
	if removed, err := o2.Release(); err != nil || removed {
		t.Errorf("Release of a table already gone: removed %v, err %v", removed, err)
	}

	// Remove, whoever owns it; twice is fine.
	if _, err := tb.Ensure([]netip.Addr{local4}, 53); err != nil {
		t.Fatal(err)
	}
	if removed, err := tb.Remove(); err != nil || !removed {
		t.Fatalf("Remove: removed %v, err %v", removed, err)
	}
	if removed, err := tb.Remove(); err != nil || removed {
		t.Errorf("second Remove: removed %v, err %v", removed, err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range tables {
		if x.Name == tb.Name {
			t.Errorf("table inet %s still listed after Remove", x.Name)
		}
	}
	// Without the table the server's traffic is tracked again.
	n.ask(t, netip.AddrPortFrom(local4, 53), false)
	if !n.flows(t)["udp "+netip.AddrPortFrom(local4, 53).String()] {
		t.Error("without the table a query to the local address left no conntrack entry: the test's control is broken")
	}
}
