package nodecache

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/dnstest"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

// TestKernelCachePodNetns: pods whose interface has no host end (IPVLAN;
// here MACVLAN, which this kernel has and the program treats alike) get
// the egress program inside their network namespace, found where the
// runtime bind-mounts it (--kernel-cache-netns-dir): for a namespace there
// at start and one added later, whose interface comes after its bind mount
// as a CNI plugin's does. A pod's query (to the VIP, steered to the cache's
// address) is answered in the kernel, back in on the pod's interface: the
// kernel hit counter rises, node-cache's sockets and the upstream see
// nothing, and without the program the query would leave through the
// uplink, where nothing answers. The program goes when the interface goes,
// and node-cache lets go of a namespace (no handle, no socket in it) when
// its bind mount goes.
func TestKernelCachePodNetns(t *testing.T) {
	s := newSteerSetup(t)
	up := newUplink(t)
	zone := dnstest.NewZone(t)
	zone.Add(t, "pod.kc.test. 300 IN A 10.13.0.9")
	metrics := freeAddr(t)
	conf := filepath.Join(t.TempDir(), "Corefile")
	os.WriteFile(conf, []byte(fmt.Sprintf(`.:53 {
    bind %s
    prometheus %s
    nodecache %s {
        success 1000 3600 1
    }
}
`, s.LocalIP, metrics, zone.Addr)), 0o644)
	dir := t.TempDir()

	// A pod that is there before node-cache starts.
	pod1 := up.newPod(t, dir, 2)
	pod1.addInterface(t)
	// --kernel-cache-interfaces matching no host interface: what the
	// program is on is the pods' interfaces alone.
	nc := startNodeCache(t, "node-cache", append(s.steerArgs(time.Second), "--conf", conf, "--metrics", metrics,
		"--kernel-cache", "--kernel-cache-interfaces", "^dnsa-none$", "--kernel-cache-netns-dir", dir)...)
	interfaces := func() float64 { return scrape(t, metrics, "dnsaccel_nodecache_kernel_cache_interfaces") }
	steertest.WaitFor(t, "the egress program on the first pod's interface", 10*time.Second, func() bool {
		return pod1.egressPrograms(t) > 0 && interfaces() == 1
	})

	// Hot: asked from the host until node-cache has offered it to the
	// kernel (the pod's misses would go out the uplink, unanswered).
	local := netip.AddrPortFrom(s.LocalIP, 53)
	q := wireQuery(t, "pod.kc.test.", dns.TypeA, 0x4242)
	steertest.WaitFor(t, "pod.kc.test in the kernel map", 10*time.Second, func() bool {
		c := &steertest.RawClient{To: local, Timeout: 2 * time.Second}
		if _, _, err := c.Exchange(q); err != nil {
			t.Fatalf("query from the host: %v", err)
		}
		return scrape(t, metrics, "dnsaccel_nodecache_kernel_cache_entries") > 0
	})

	kernelHits := func() float64 { return scrape(t, metrics, "coredns_nodecache_offload_hits_total") }
	askFrom := func(p *macvlanPod, n int) {
		t.Helper()
		hits, user, upstream := kernelHits(), userSpace(t, metrics), zone.Total()
		for i := 0; i < n; i++ {
			r := p.exchange(t, netip.AddrPortFrom(s.VIP, 53), q)
			var m dns.Msg
			if err := m.Unpack(r); err != nil || m.Id != 0x4242 || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "10.13.0.9" {
				t.Fatalf("pod %s: bad answer (%v): %v", p.addr, err, &m)
			}
		}
		if got := kernelHits() - hits; got != float64(n) {
			t.Errorf("pod %s: kernel hits moved by %v for %d queries", p.addr, got, n)
		}
		if got := userSpace(t, metrics) - user; got != 0 {
			t.Errorf("pod %s: node-cache saw %v of the %d queries", p.addr, got, n)
		}
		if zone.Total() != upstream {
			t.Errorf("pod %s: the upstream was asked", p.addr)
		}
	}
	askFrom(pod1, 10)

	// A pod that comes later: the file, the bind mount, then (CNI ADD)
	// the interface.
	pod2 := up.newPod(t, dir, 3)
	pod2.addInterface(t)
	steertest.WaitFor(t, "the egress program on the second pod's interface", 10*time.Second, func() bool {
		return pod2.egressPrograms(t) > 0 && interfaces() == 2
	})
	askFrom(pod2, 5)

	// The interface goes: so does the program.
	pod2.delInterface(t)
	steertest.WaitFor(t, "the program off the second pod's deleted interface", 10*time.Second, func() bool {
		return interfaces() == 1
	})

	// The first pod's bind mount goes (the runtime's sandbox removal):
	// node-cache detaches and keeps nothing of the namespace alive.
	pod1.unmount(t)
	steertest.WaitFor(t, "the program off the first pod's interface", 10*time.Second, func() bool {
		return interfaces() == 0
	})
	steertest.WaitFor(t, "node-cache to let go of the first pod's namespace", 10*time.Second, func() bool {
		return !holdsNetns(t, nc.cmd.Process.Pid, pod1.ino)
	})
	if !holdsNetns(t, nc.cmd.Process.Pid, pod2.ino) {
		t.Error("node-cache holds nothing of the second pod's namespace, whose bind mount is still there")
	}
}

// uplink is a namespace standing in for the node's network: the pods'
// MACVLAN interfaces hang off its up0, and its gw0 (10.250.0.1) answers
// ARP for their gateway, and nothing else.
type uplink struct {
	ns  netns.NsHandle
	nl  *netlink.Handle
	up0 int
}

func newUplink(t *testing.T) *uplink {
	t.Helper()
	u := &uplink{ns: newNetns(t)}
	var err error
	if u.nl, err = netlink.NewHandleAt(u.ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.nl.Close)
	if err := u.nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "gw0"}); err != nil {
		t.Fatalf("veth in the uplink namespace: %v", err)
	}
	gw, err := u.nl.LinkByName("gw0")
	if err != nil {
		t.Fatal(err)
	}
	if err := u.nl.AddrAdd(gw, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 250, 0, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"gw0", "up0"} {
		l, err := u.nl.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := u.nl.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		u.up0 = l.Attrs().Index // up0 last
	}
	return u
}

// macvlanPod is a pod network namespace bind-mounted in the watched
// directory, as a container runtime does.
type macvlanPod struct {
	up   *uplink
	ns   netns.NsHandle
	ino  uint64
	path string
	addr net.IP
	nl   *netlink.Handle
}

// newPod creates the namespace and bind-mounts it at dir/cni-<random>: the
// file first, the mount after, as containerd does.
func (u *uplink) newPod(t *testing.T, dir string, host byte) *macvlanPod {
	t.Helper()
	p := &macvlanPod{up: u, ns: newNetns(t), addr: net.IPv4(10, 250, 0, host)}
	var st unix.Stat_t
	if err := unix.Fstat(int(p.ns), &st); err != nil {
		t.Fatal(err)
	}
	p.ino = st.Ino
	var b [6]byte
	rand.Read(b[:])
	p.path = filepath.Join(dir, fmt.Sprintf("cni-%x", b))
	if err := os.WriteFile(p.path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(p.path) })
	if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", p.ns), p.path, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount a network namespace: %v", err)
	}
	t.Cleanup(func() { p.unmount(t) })
	var err error
	if p.nl, err = netlink.NewHandleAt(p.ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.nl.Close)
	lo, err := p.nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return p
}

// addInterface does what an IPVLAN/MACVLAN CNI plugin does: a child of the
// uplink moved into the pod, named eth0, addressed, the default route.
func (p *macvlanPod) addInterface(t *testing.T) {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	mv := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("mv%x", b), ParentIndex: p.up.up0}, Mode: netlink.MACVLAN_MODE_BRIDGE}
	if err := p.up.nl.LinkAdd(mv); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) {
			cluster.SkipOrFail(t, "no macvlan in this kernel: %v", err)
		}
		t.Fatalf("macvlan: %v", err)
	}
	l, err := p.up.nl.LinkByName(mv.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.up.nl.LinkSetNsFd(l, int(p.ns)); err != nil {
		t.Fatal(err)
	}
	if l, err = p.nl.LinkByName(mv.Name); err != nil {
		t.Fatal(err)
	}
	if err := p.nl.LinkSetName(l, "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := p.nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.addr, Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := p.nl.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	if err := p.nl.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IPv4(10, 250, 0, 1)}); err != nil {
		t.Fatal(err)
	}
}

func (p *macvlanPod) delInterface(t *testing.T) {
	t.Helper()
	l, err := p.nl.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.nl.LinkDel(l); err != nil {
		t.Fatal(err)
	}
}

// unmount removes the bind mount and the file, as the runtime does when
// it removes the pod sandbox; the test's own handle keeps the namespace.
func (p *macvlanPod) unmount(t *testing.T) {
	if err := unix.Unmount(p.path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		t.Errorf("unmount %s: %v", p.path, err)
	}
	os.Remove(p.path)
}

// egressPrograms counts the tcx egress programs on the pod's eth0.
func (p *macvlanPod) egressPrograms(t *testing.T) int {
	t.Helper()
	n := 0
	p.do(t, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			return err
		}
		n = len(res.Programs)
		return nil
	})
	return n
}

// exchange sends wire from the pod to `to` and returns the answer, which
// must come from `to`.
func (p *macvlanPod) exchange(t *testing.T, to netip.AddrPort, wire []byte) []byte {
	t.Helper()
	var out []byte
	p.do(t, func() error {
		c := &steertest.RawClient{To: to, Timeout: 2 * time.Second}
		n, from, err := c.Exchange(wire)
		if err != nil {
			return err
		}
		if from != to {
			return fmt.Errorf("reply from %s, want %s", from, to)
		}
		out = append(out, c.Buf()[:n]...)
		return nil
	})
	return out
}

// do runs fn on a locked OS thread switched into the pod's namespace.
func (p *macvlanPod) do(t *testing.T, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(p.ns); err != nil {
			errc <- err
			return
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread() // else the thread ends with the goroutine
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in pod %s: %v", p.addr, err)
	}
}

// newNetns creates a network namespace that lives as long as the returned
// handle (closed when the test ends), on a thread that goes back to its own.
func newNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	type result struct {
		h   netns.NsHandle
		err error
	}
	rc := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			rc <- result{err: err}
			return
		}
		defer orig.Close()
		h, err := netns.New()
		if err == nil && netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		rc <- result{h, err}
	}()
	r := <-rc
	if r.err != nil {
		cluster.SkipOrFail(t, "network namespaces: %v", r.err)
	}
	t.Cleanup(func() { r.h.Close() })
	return r.h
}

// holdsNetns reports whether process pid holds the network namespace with
// inode ino: a descriptor of the namespace itself or of a socket in it.
func holdsNetns(t *testing.T, pid int, ino uint64) bool {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(pidfd)
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if target == fmt.Sprintf("net:[%d]", ino) {
			return true
		}
		if !strings.HasPrefix(target, "socket:[") {
			continue
		}
		n, _ := strconv.Atoi(e.Name())
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			continue
		}
		nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
		unix.Close(fd)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		err = unix.Fstat(nsfd, &st)
		unix.Close(nsfd)
		if err == nil && st.Ino == ino {
			return true
		}
	}
	return false
}
