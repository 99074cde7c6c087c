//go:build linux

package upstream

import (
	"errors"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketMark: with Config.Mark, dialed sockets carry the mark (what
// node-cache's eBPF steering skips); without it, they do not.
func TestSocketMark(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	markOf := func(want uint32) (int, error) {
		c, err := dialer(want).Dial("tcp", ln.Addr().String())
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
	m, err := markOf(0xd530000)
	if errors.Is(err, unix.EPERM) {
		if os.Getenv("CI") == "true" {
			t.Fatal("setting SO_MARK needs CAP_NET_ADMIN (CI=true: not skipping)")
		}
		t.Skip("setting SO_MARK needs CAP_NET_ADMIN")
	}
	if err != nil || m != 0xd530000 {
		t.Fatalf("marked dial: mark %#x, err %v", m, err)
	}
	if m, err := markOf(0); err != nil || m != 0 {
		t.Fatalf("unmarked dial: mark %#x, err %v", m, err)
	}
}
