package steer_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath/steer"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

// TestReverseOutlivesChurn: a long-lived connected UDP socket to the VIP
// keeps seeing the VIP as its peer (getpeername) and as the source of its
// replies (recvmsg) after far more short-lived steered sockets (each asking
// for its peer, so their entries are used, as a resolver's are) than the
// 65,536 entries the reverse state once had (an LRU map, which evicted the
// long-lived socket's entry); and the reverse state holds only open
// sockets: the churned ones leave nothing, the long-lived one's goes when
// it closes.
func TestReverseOutlivesChurn(t *testing.T) {
	cg := steertest.RequireBPF(t)
	tp := steertest.New(t)
	bpffs := steertest.BPFFS(t)
	cache := startFakeCache(t, tp.Pod.HostIP)
	vip := netip.AddrPortFrom(tp.VIP, 53)

	// The heartbeat outlasts the churn: steering stays on without beats.
	s, err := steer.Attach(steer.Options{Cgroup: cg, BPFFS: bpffs, HeartbeatTimeout: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Cleanup() })
	if err := s.SetTable([]steer.Rule{{VIP: vip, Proto: steer.UDP, Target: cache.addr}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Beat(); err != nil {
		t.Fatal(err)
	}
	sa := &unix.SockaddrInet4{Port: int(vip.Port()), Addr: vip.Addr().As4()}

	var long int
	if err := tp.Pod.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		long = fd
		return unix.Connect(fd, sa)
	}); err != nil {
		t.Fatalf("long-lived socket: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			unix.Close(long)
		}
	})
	tv := unix.NsecToTimeval(int64(2 * time.Second))
	if err := unix.SetsockoptTimeval(long, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	checkLong := func(when string) {
		t.Helper()
		peer, err := unix.Getpeername(long)
		if err != nil {
			t.Fatalf("%s: getpeername: %v", when, err)
		}
		if got := sockaddrPort(peer); got != vip {
			t.Errorf("%s: getpeername shows %s, want the VIP %s", when, got, vip)
		}
		r, from, err := connectedQuery(long, cacheName)
		if err != nil || !steertest.HasA(r, cacheAnswer) {
			t.Fatalf("%s: query on the long-lived socket: %v %v", when, err, r)
		}
		if from != vip {
			t.Errorf("%s: recvmsg shows the reply from %s, want the VIP %s", when, from, vip)
		}
	}
	// The reverse state of the pod's UDP sockets, counted from its namespace.
	revCount := func() (n int, err error) {
		if derr := tp.Pod.Do(func() error { n, err = s.ReverseUDPSockets(); return nil }); derr != nil {
			return 0, derr
		}
		return n, err
	}
	checkLong("before the churn")
	if n, err := revCount(); err != nil || n != 1 {
		t.Fatalf("reverse entries before the churn: %d, %v; want 1 (the long-lived socket)", n, err)
	}

	before, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// Three times the old LRU's 65,536 entries: with an LRU, the
	// long-lived socket's entry is long evicted by then.
	const churn = 3 * 65536
	const budget = 2 * time.Minute
	start := time.Now()
	if err := tp.Pod.Do(func() error {
		deadline := start.Add(budget)
		for i := range churn {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			err = unix.Connect(fd, sa)
			var peer unix.Sockaddr
			if err == nil {
				// As a resolver asking for the source of its reply does:
				// the reverse state is looked up, not only written.
				peer, err = unix.Getpeername(fd)
			}
			unix.Close(fd)
			if err != nil {
				return err
			}
			if got := sockaddrPort(peer); got != vip {
				return fmt.Errorf("churned socket %d: getpeername shows %s, want the VIP %s", i, got, vip)
			}
			if i%4096 == 0 && time.Now().After(deadline) {
				return fmt.Errorf("only %d sockets within %s", i, budget)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("churn: %v", err)
	}
	t.Logf("%d steered sockets connected, asked for their peer and closed in %s", churn, time.Since(start).Round(time.Millisecond))
	after, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if got := after[steer.StatSteered] - before[steer.StatSteered]; got < churn {
		t.Fatalf("only %d of %d churned sockets were steered (counters %v)", got, churn, after)
	}
	if after[steer.StatRevFail] != 0 {
		t.Errorf("%d reverse entries not stored", after[steer.StatRevFail])
	}

	checkLong("after the churn")

	// Closed sockets' entries go with them (freed after an RCU grace
	// period, hence the poll): only the long-lived socket's is left.
	var n int
	steertest.WaitFor(t, "the churned sockets' reverse entries freed", 30*time.Second, func() bool {
		n, err = revCount()
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	})
	unix.Close(long)
	closed = true
	steertest.WaitFor(t, "the long-lived socket's reverse entry freed with it", 30*time.Second, func() bool {
		n, err = revCount()
		if err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
}

// connectedQuery asks for name on a connected UDP socket and returns the
// answer and the source recvfrom reports.
func connectedQuery(fd int, name string) (*dns.Msg, netip.AddrPort, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	wire, err := m.Pack()
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	if _, err := unix.Write(fd, wire); err != nil {
		return nil, netip.AddrPort{}, err
	}
	buf := make([]byte, 4096)
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, netip.AddrPort{}, err
		}
		r := new(dns.Msg)
		if r.Unpack(buf[:n]) != nil || r.Id != m.Id {
			continue
		}
		return r, sockaddrPort(from), nil
	}
}

func sockaddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// TestAdoptReplacesChangedMap: a restart onto pins of an earlier version
// whose reverse map had another type and layout (the LRU hash keyed by
// socket cookie) replaces that map alone: the table and the heartbeat
// survive, and every link is adopted.
func TestAdoptReplacesChangedMap(t *testing.T) {
	cg := steertest.RequireBPF(t)
	bpffs := steertest.BPFFS(t)
	opts := steer.Options{Cgroup: cg, BPFFS: bpffs, HeartbeatTimeout: time.Minute}
	s1, err := steer.Attach(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { steer.Cleanup(bpffs) })
	rule := steer.Rule{VIP: netip.MustParseAddrPort("10.246.255.1:53"), Proto: steer.UDP, Target: netip.MustParseAddrPort("169.254.255.1:53")}
	if err := s1.SetTable([]steer.Rule{rule}); err != nil {
		t.Fatal(err)
	}
	if err := s1.Beat(); err != nil {
		t.Fatal(err)
	}
	beat, _ := s1.LastHeartbeat()
	s1.Close()

	// The earlier version's dnsa_rev, pinned where the current one was.
	pin := filepath.Join(bpffs, steer.PinDir, "dnsa_rev")
	if err := os.Remove(pin); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "dnsa_rev", Type: ebpf.LRUHash, KeySize: 32, ValueSize: 20, MaxEntries: 65536})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(pin); err != nil {
		t.Fatal(err)
	}

	s2, err := steer.Attach(opts)
	if err != nil {
		t.Fatalf("attach over an old-layout map: %v", err)
	}
	defer s2.Close()
	if got := s2.Replaced(); !slices.Equal(got, []string{"dnsa_rev"}) {
		t.Errorf("replaced %v, want [dnsa_rev]", got)
	}
	if s2.Adopted() != len(steer.ProgramNames) {
		t.Errorf("adopted %d links, want %d", s2.Adopted(), len(steer.ProgramNames))
	}
	if got, err := s2.Table(); err != nil || !slices.Equal(got, []steer.Rule{rule}) {
		t.Errorf("table after the upgrade: %v %v, want [%s]", got, err, rule)
	}
	if got, _ := s2.LastHeartbeat(); got != beat {
		t.Errorf("heartbeat after the upgrade: %d, want %d (kept)", got, beat)
	}
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Type() != ebpf.SkStorage {
		t.Errorf("pinned dnsa_rev is a %s, want the new socket storage", m.Type())
	}
}
