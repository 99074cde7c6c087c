//go:build linux

package upstream

import (
	"errors"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketMark: with SetSocketMark, dialed sockets carry the mark (what
// node-cache's eBPF steering skips); without it, they do not.
func TestSocketMark(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	markOf := func() (int, error) {
		c, err := dialer().Dial("tcp", ln.Addr().String())
		if err != nil {
			return 0, err
		}
		defer c.Close()
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			return 0, err
		}
		var mark int
		var gerr error
		rc.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
		return mark, gerr
	}
	defer SetSocketMark(0)
	SetSocketMark(0xd530000)
	m, err := markOf()
	if errors.Is(err, unix.EPERM) {
		if os.Getenv("CI") == "true" {
			t.Fatal("setting SO_MARK needs CAP_NET_ADMIN (CI=true: not skipping)")
		}
		t.Skip("setting SO_MARK needs CAP_NET_ADMIN")
	}
	if err != nil || m != 0xd530000 {
		t.Fatalf("marked dial: mark %#x, err %v", m, err)
	}
	SetSocketMark(0)
	if m, err := markOf(); err != nil || m != 0 {
		t.Fatalf("unmarked dial: mark %#x, err %v", m, err)
	}
}
