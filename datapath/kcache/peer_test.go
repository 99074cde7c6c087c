package kcache

import (
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestPeerInOtherNetns: the host end of a veth gets the peer-redirect
// program only once its other end is in another namespace (as a pod's is);
// with both ends in one namespace the kernel would drop a peer redirect.
func TestPeerInOtherNetns(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	defer netns.Set(orig)
	// Two namespaces of the test's own: they and the veth go when the
	// handles close.
	pod, err := netns.New()
	if err != nil {
		t.Skipf("network namespaces: %v", err)
	}
	defer pod.Close()
	host, err := netns.New() // the calling thread is in it from here on
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "kc-host"}, PeerName: "kc-pod"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Skipf("veth: %v", err)
	}
	l, err := netlink.LinkByName("kc-host")
	if err != nil {
		t.Fatal(err)
	}
	if peerInOtherNetns(l.Attrs().Index) {
		t.Fatal("both ends in one namespace, yet the peer is reported elsewhere")
	}
	p, err := netlink.LinkByName("kc-pod")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(p, int(pod)); err != nil {
		t.Fatal(err)
	}
	if !peerInOtherNetns(l.Attrs().Index) {
		t.Fatal("the pod end moved to another namespace, yet the peer is reported here")
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if peerInOtherNetns(lo.Attrs().Index) {
		t.Fatal("lo has no peer")
	}
}
