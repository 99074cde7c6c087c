package policy

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/steertest"
	"github.com/dnsaccel/dnsaccel/test/svctest"
)

func podIfindex(t *testing.T, p *netns.Pod) int {
	t.Helper()
	l, err := p.Netlink().LinkByName(netns.PodInterface)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

// TestPodSide: the programs on the pod's own interface (no host end, as
// IPVLAN): ingress to the server allowed from the client's identity on TCP
// 80 only; the other pod and port 81 are dropped; replies pass.
func TestPodSide(t *testing.T) {
	d := openTest(t)
	server, client, other := svctest.NewBackend(t, "pol-srv"), svctest.NewBackend(t, "pol-cli"), svctest.NewBackend(t, "pol-oth")
	for _, p := range []uint16{80, 81} {
		server.ServeHTTP(t, p)
	}
	svctest.Forward(t, server.Pod, client.Pod, other.Pod)
	if err := server.Pod.Do(func() error { return d.AttachTC(podIfindex(t, server.Pod), PodSide) }); err != nil {
		t.Fatalf("AttachTC in the pod: %v", err)
	}
	must(t, d.SetIdentity(client.Pod.IP, 500))
	must(t, d.SetIdentity(other.Pod.IP, 501))
	must(t, d.SetEndpoint(Endpoint{ID: 9, Identity: 502, Addrs: []netip.Addr{server.Pod.IP}, Ingress: true, Egress: true}))
	must(t, d.SetRules(9, []Rule{{Policy: 1, Dir: Ingress, Peers: []Peer{{Identity: 500}}, Ports: []PortRange{{Proto: TCP, Port: 80}}}}))
	for _, c := range []struct {
		from *svctest.Backend
		port uint16
		want bool
	}{{client, 80, true}, {client, 81, false}, {other, 80, false}} {
		r := svctest.HTTPGet(c.from.Pod, netip.AddrPortFrom(server.Pod.IP, c.port), time.Second)
		if (r.Err == nil) != c.want {
			t.Errorf("%s -> server:%d: err %v, want allowed=%v", c.from.Name, c.port, r.Err, c.want)
		}
	}
	must(t, d.DetachTC(podIfindex(t, server.Pod)))
	if r := svctest.HTTPGet(other.Pod, netip.AddrPortFrom(server.Pod.IP, 80), time.Second); r.Err != nil {
		t.Errorf("after DetachTC: %v", r.Err)
	}
}

// TestChurn: an allowed connection keeps working, every round trip, while
// the endpoint's other rules change 200 times (each a new revision, so the
// flow is decided again each time); then its own allow goes and the next
// round trip fails.
func TestChurn(t *testing.T) {
	d := openTest(t)
	server, client := svctest.NewBackend(t, "pol-srv"), svctest.NewBackend(t, "pol-cli")
	svctest.Forward(t, server.Pod, client.Pod)
	var ln net.Listener
	must(t, server.Pod.Do(func() (err error) { ln, err = net.Listen("tcp", ":7000"); return err }))
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					c.Write([]byte(l))
				}
			}()
		}
	}()
	for _, p := range []*svctest.Backend{server, client} {
		l, err := netlink.LinkByName(p.Pod.HostVeth)
		if err != nil {
			t.Fatal(err)
		}
		must(t, d.AttachTC(l.Attrs().Index, HostEnd))
	}
	must(t, d.SetIdentity(client.Pod.IP, 600))
	must(t, d.SetEndpoint(Endpoint{ID: 3, Identity: 601, Addrs: []netip.Addr{server.Pod.IP}, Ingress: true}))
	allow := Rule{Policy: 1, Dir: Ingress, Peers: []Peer{{Identity: 600}}, Ports: []PortRange{{Proto: TCP, Port: 7000}}}
	must(t, d.SetRules(3, []Rule{allow}))
	var c net.Conn
	must(t, client.Pod.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(server.Pod.IP, 7000).String(), 2*time.Second)
		return err
	}))
	defer c.Close()
	r := bufio.NewReader(c)
	rt := func(i int) error {
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := fmt.Fprintf(c, "%d\n", i); err != nil {
			return err
		}
		l, err := r.ReadString('\n')
		if err == nil && l != fmt.Sprintf("%d\n", i) {
			err = fmt.Errorf("echo %q", l)
		}
		return err
	}
	for i := range 200 {
		unrelated := Rule{Policy: 2, Dir: Ingress, Peers: []Peer{{CIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 32)}}, Ports: []PortRange{{Proto: UDP, Port: uint16(1000 + i)}}}
		must(t, d.SetRules(3, []Rule{allow, unrelated}))
		if err := rt(i); err != nil {
			t.Fatalf("round trip %d while unrelated rules change: %v", i, err)
		}
	}
	must(t, d.SetRules(3, nil))
	st0, _ := d.Stats()
	if err := rt(-1); err == nil {
		st, _ := d.Stats()
		t.Logf("stats %v -> %v", st0, st)
		t.Fatalf("the established connection still passes after its allow rule went")
	}
	st, _ := d.Stats()
	t.Logf("stats %v", st)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRestart: a second Open on the same pins keeps enforcing what the
// first left until Prune, which removes what the second did not set.
func TestRestart(t *testing.T) {
	dir := steertest.BPFFS(t) + "/policy"
	d1, err := Open(Options{PinDir: dir})
	if err != nil {
		t.Skipf("Open: %v", err)
	}
	setup(t, d1)
	must(t, d1.SetEndpoint(Endpoint{ID: 2, Addrs: []netip.Addr{peerAddr}, Egress: true}))
	must(t, d1.SetRules(2, []Rule{{Policy: 1, Dir: Egress, Ports: []PortRange{{Proto: UDP, Port: 53}}}}))
	d1.Close()
	d2, err := Open(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { d2.Close(); Cleanup(dir) }()
	// Still enforced by what d1 left.
	if ret, _ := run(t, d2.objs.DnsaPolFromPod, frame(epAddr, peerAddr, TCP, 1, 80)); ret != actUnspec {
		t.Errorf("after restart, before any sync: %#x, want the old allow", ret)
	}
	setup(t, d2) // endpoint 1 again; endpoint 2 is gone
	must(t, d2.Prune())
	if ret, _ := run(t, d2.objs.DnsaPolFromPod, frame(peerAddr, epAddr, TCP, 1, 80)); ret != actUnspec {
		t.Errorf("the pruned endpoint 2 is still enforced: %#x", ret)
	}
	if ret, _ := run(t, d2.objs.DnsaPolFromPod, frame(epAddr, peerAddr, TCP, 2, 81)); ret != actShot {
		t.Errorf("endpoint 1 after Prune: %#x, want drop", ret)
	}
}
