package netns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPodSetupAndClose(t *testing.T) {
	Require(t)
	ctx := ctxT(t)
	p, err := New(ctx, Options{Namespace: "team-a"})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			p.Close()
		}
	})
	if !PodCIDR.Contains(p.IP) || !HostCIDR.Contains(p.HostIP) {
		t.Errorf("addresses %s / %s outside %s / %s", p.IP, p.HostIP, PodCIDR, HostCIDR)
	}

	// ip netns sees it, eth0 has the address, the default route goes via the host side.
	list, _ := exec.Command("ip", "netns", "list").Output()
	if !strings.Contains(string(list), p.Name) {
		t.Errorf("ip netns list does not show %s:\n%s", p.Name, list)
	}
	out, err := p.Exec(ctx, "ip", "-o", "-4", "addr", "show", "dev", "eth0")
	if err != nil || !strings.Contains(string(out), p.IP.String()+"/32") {
		t.Errorf("eth0 addresses: %v\n%s", err, out)
	}
	out, err = p.Exec(ctx, "ip", "-4", "route", "show", "default")
	if err != nil || !strings.Contains(string(out), "default via "+p.HostIP.String()+" dev eth0") {
		t.Errorf("default route: %v\n%s", err, out)
	}
	out, err = p.Exec(ctx, "cat", "/etc/resolv.conf")
	want := "nameserver " + p.HostIP.String() + "\nsearch team-a.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if err != nil || string(out) != want || p.ResolvConf != want {
		t.Errorf("resolv.conf in pod: %v\n%q\nwant %q", err, out, want)
	}
	out, err = p.Exec(ctx, "getent", "hosts", p.PodName)
	if err != nil || !strings.HasPrefix(string(out), p.IP.String()) {
		t.Errorf("own name from /etc/hosts: %v %q", err, out)
	}

	// Host side: veth with the gateway address and a /32 route to the pod.
	host, err := netlink.LinkByName(p.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	routes, err := netlink.RouteGet(net.IP(p.IP.AsSlice()))
	if err != nil || len(routes) == 0 || routes[0].LinkIndex != host.Attrs().Index {
		t.Errorf("host route to %s: %v %+v", p.IP, err, routes)
	}

	// A failing command reports stderr.
	if _, err := p.Exec(ctx, "ls", "/nonexistent"); err == nil || !strings.Contains(err.Error(), "No such file") {
		t.Errorf("Exec error: %v", err)
	}

	// A leftover process does not keep anything alive.
	sleeper := p.Command(context.Background(), "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Error("process in the namespace not killed by Close")
	}
	assertGone(t, p)
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func assertGone(t *testing.T, p *Pod) {
	t.Helper()
	for _, f := range []string{p.Path(), filepath.Join(netnsEtcDir, p.Name), filepath.Join(stateDir, p.Name)} {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists (%v)", f, err)
		}
	}
	if _, err := netlink.LinkByName(p.HostVeth); err == nil {
		t.Errorf("link %s still exists", p.HostVeth)
	}
	if rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: hostNet(p.IP)}, netlink.RT_FILTER_DST); err == nil && len(rs) > 0 {
		t.Errorf("route to %s still exists: %+v", p.IP, rs)
	}
}

func TestDo(t *testing.T) {
	p := NewPod(t, Options{})
	hostNS, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer hostNS.Close()

	var inside []string
	if err := p.Do(func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			inside = append(inside, l.Attrs().Name)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(inside, ",") != "lo,eth0" {
		t.Errorf("links inside = %v, want lo,eth0", inside)
	}
	if _, err := netlink.LinkByName("eth0"); err != nil {
		t.Logf("host has no eth0 (%v)", err) // the host may or may not have one
	}
	if _, err := netlink.LinkByName(p.HostVeth); err != nil {
		t.Errorf("after Do the goroutine is not back in the host namespace: %v", err)
	}
	if err := p.Do(func() error { return errors.New("boom") }); err == nil || err.Error() != "boom" {
		t.Errorf("Do error = %v", err)
	}
	if err := p.Do(func() error { panic("oops") }); err == nil || !strings.Contains(err.Error(), "oops") {
		t.Errorf("Do panic = %v", err)
	}
}

// A pod reaches the host side through the veth over IPv4 and IPv6, and the
// host sees the pod's address as source.
func TestUDPToHost(t *testing.T) {
	p := NewPod(t, Options{IPv6: true})
	for _, pair := range [][2]netip.Addr{{p.IP, p.HostIP}, {p.IPv6, p.HostIPv6}} {
		podIP, hostIP := pair[0], pair[1]
		srv, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(hostIP, 0)))
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		from := make(chan netip.Addr, 1)
		go func() {
			buf := make([]byte, 512)
			n, addr, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			from <- addr.Addr()
			srv.WriteToUDPAddrPort(buf[:n], addr)
		}()
		var reply string
		err = p.Do(func() error {
			c, err := net.Dial("udp", srv.LocalAddr().String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("ping")); err != nil {
				return err
			}
			buf := make([]byte, 16)
			n, err := c.Read(buf)
			reply = string(buf[:n])
			return err
		})
		if err != nil || reply != "ping" {
			t.Fatalf("%s: echo via %s: %q, %v", podIP, srv.LocalAddr(), reply, err)
		}
		if got := <-from; got.Unmap() != podIP {
			t.Errorf("server saw source %s, want %s", got, podIP)
		}
	}
}

func TestSweep(t *testing.T) {
	Require(t)
	live := NewPod(t, Options{})

	// Fake the leftovers of a dead test binary: namespace, veth, /etc/netns, state file.
	ctx := ctxT(t)
	dead, err := New(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dead.Close() })
	if err := os.WriteFile(filepath.Join(stateDir, dead.Name), []byte("999999999 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Forget it without cleaning up, as a crash would.
	dead.nl.Close()
	dead.ns.Close()
	dead.closed = true

	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, dead)
	if _, err := os.Stat(live.Path()); err != nil {
		t.Errorf("Sweep removed a live pod: %v", err)
	}
	if _, err := netlink.LinkByName(live.HostVeth); err != nil {
		t.Errorf("Sweep removed a live veth: %v", err)
	}
}

func TestManyPods(t *testing.T) {
	seen := map[netip.Addr]bool{}
	for i := 0; i < 5; i++ {
		p := NewPod(t, Options{})
		if seen[p.IP] {
			t.Fatalf("duplicate IP %s", p.IP)
		}
		seen[p.IP] = true
	}
	// A fixed address already in use is an error, not silently shared.
	first := NewPod(t, Options{})
	_, err := New(ctxT(t), Options{IP: first.IP})
	if err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("second pod with %s: %v", first.IP, err)
	}
}
