package policy

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/dnsaccel/dnsaccel/datapath/lb"
	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/steertest"
	"github.com/dnsaccel/dnsaccel/test/svctest"
)

// TestWithPacketLB: the per-packet Service load balancer (datapath/lb) and
// the policy programs on the same veth (tcx, LB attached first): the pod's
// egress policy still decides every packet (it runs first: lb.c's
// TC_ACT_OK would end the chain before it).
func TestWithPacketLB(t *testing.T) {
	cg := svctest.EmptyCgroup(t)
	bpffs := steertest.BPFFS(t)
	rng := svctest.NewRange(t)
	client := netns.NewPod(t, netns.Options{PodName: "pol-lb-client"})
	b0 := svctest.NewBackend(t, "pol-lb-backend")
	svctest.Forward(t, client, b0.Pod)
	b0.ServeHTTP(t, 8080)
	b0.ServeHTTP(t, 8081)
	tbl, err := lb.Open(lb.Options{Cgroup: cg, BPFFS: bpffs})
	if err != nil {
		t.Skipf("lb.Open: %v", err)
	}
	t.Cleanup(func() { tbl.Cleanup() })
	l, err := netlink.LinkByName(client.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	must(t, tbl.AttachTC(l.Attrs().Index, lb.PodInterface))
	vip := rng.VIP(false)
	svc := lb.Service{Frontend: lb.Frontend{Addr: vip, Port: 80, Proto: lb.TCP}}
	must(t, tbl.UpsertService(svc))
	must(t, tbl.SetBackends(svc.Frontend, []lb.Backend{{Addr: netip.AddrPortFrom(b0.Pod.IP, 8080)}}))

	d := openTest(t)
	must(t, d.AttachTC(l.Attrs().Index, HostEnd))
	must(t, d.SetIdentity(b0.Pod.IP, 700))
	must(t, d.SetEndpoint(Endpoint{ID: 4, Identity: 701, Addrs: []netip.Addr{client.IP}, Egress: true}))
	must(t, d.SetRules(4, []Rule{{Policy: 1, Dir: Egress, Peers: []Peer{{Identity: 700}}, Ports: []PortRange{{Proto: TCP, Port: 8080}}}}))

	if r := svctest.HTTPGet(client, netip.AddrPortFrom(b0.Pod.IP, 8080), 2*time.Second); r.Err != nil {
		t.Errorf("allowed backend port: %v", r.Err)
	}
	if r := svctest.HTTPGet(client, netip.AddrPortFrom(b0.Pod.IP, 8081), time.Second); r.Err == nil {
		t.Errorf("port 8081 passed: the policy program did not run beside the load balancer")
	}
	r := svctest.HTTPGet(client, netip.AddrPortFrom(vip, 80), time.Second)
	t.Logf("Service address through the per-packet LB (decided before the LB today, see datapath/README.md): err=%v", r.Err)
}
