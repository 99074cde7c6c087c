//go:build linux

package reuseport_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath/reuseport"
	"github.com/dnsaccel/dnsaccel/test/cluster"
)

// closed marks the sockets a test closed itself, so that cleanup does not
// close their numbers again (by then possibly another file's).
var closed = map[int]bool{}

// group binds n+1 UDP sockets with SO_REUSEPORT to one loopback port: the
// first stands for a server's own socket, the other n for the ones the
// program steers to.
func group(t *testing.T, n int) (own int, chosen []int, port int) {
	t.Helper()
	bind := func(port int) int {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if !closed[fd] {
				unix.Close(fd)
			}
		})
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			t.Fatal(err)
		}
		return fd
	}
	own = bind(0)
	sa, err := unix.Getsockname(own)
	if err != nil {
		t.Fatal(err)
	}
	port = sa.(*unix.SockaddrInet4).Port
	for range n {
		chosen = append(chosen, bind(port))
	}
	return own, chosen, port
}

// spray sends one datagram from each of count fresh sockets (count flows)
// to port and returns how many each of fds received, once all arrived.
func spray(t *testing.T, port, count int, fds []int) []int {
	t.Helper()
	to := &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}
	for i := range count {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Sendto(fd, []byte(fmt.Sprint(i)), 0, to)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
	}
	got := make([]int, len(fds))
	buf := make([]byte, 64)
	deadline := time.Now().Add(5 * time.Second)
	for total := 0; total < count; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d datagrams arrived: %v", total, count, got)
		}
		pfds := make([]unix.PollFd, len(fds))
		for i, fd := range fds {
			pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
		}
		if _, err := unix.Poll(pfds, 100); err != nil && err != unix.EINTR {
			t.Fatal(err)
		}
		for i, fd := range fds {
			for {
				if _, _, err := unix.Recvfrom(fd, buf, 0); err != nil {
					break
				}
				got[i]++
				total++
			}
		}
	}
	return got
}

// TestAttach: without the program, datagrams of many flows spread over the
// whole group, the server's own socket included; with it, every datagram
// lands on a socket of the array, spread over all of them.
func TestAttach(t *testing.T) {
	if os.Geteuid() != 0 {
		cluster.SkipOrFail(t, "loading an SK_REUSEPORT program needs root (CAP_BPF, CAP_NET_ADMIN)")
	}
	const n, flows = 4, 400

	own, chosen, port := group(t, n)
	all := append([]int{own}, chosen...)
	before := spray(t, port, flows, all)
	t.Logf("without the program: own socket %d, others %v", before[0], before[1:])
	for i, c := range before {
		if c == 0 {
			t.Errorf("without the program, socket %d of the group got none of %d flows: %v", i, flows, before)
		}
	}

	g, err := reuseport.Attach(chosen)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	after := spray(t, port, flows, all)
	t.Logf("with the program: own socket %d, others %v", after[0], after[1:])
	if after[0] != 0 {
		t.Errorf("with the program, the group's own socket got %d of %d datagrams", after[0], flows)
	}
	for i, c := range after[1:] {
		if c == 0 {
			t.Errorf("with the program, socket %d of the array got none of %d flows: %v", i, flows, after[1:])
		}
	}

	// Closing the chosen sockets hands the port back to the rest of the
	// group: nothing is steered to a closed socket.
	g.Close()
	for _, fd := range chosen {
		unix.Close(fd)
		closed[fd] = true
	}
	if got := spray(t, port, 50, []int{own}); got[0] != 50 {
		t.Errorf("after the chosen sockets closed, the own socket got %d of 50", got[0])
	}
}

func TestAttachNoSockets(t *testing.T) {
	if _, err := reuseport.Attach(nil); err == nil {
		t.Fatal("Attach(nil) succeeded")
	}
}
