package nodecache

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// tcpMigrateReq is the sysctl (per network namespace, Linux 5.14+) that
// makes the kernel move the connections waiting in a closing SO_REUSEPORT
// listener's accept queue (and its half-open ones) to another listener of
// the same group instead of resetting them.
const tcpMigrateReq = "/proc/sys/net/ipv4/tcp_migrate_req"

// enableTCPMigrateReq sets net.ipv4.tcp_migrate_req=1 in node-cache's
// network namespace, so that when a node-cache hands over to its successor
// (both listen on the same addresses with SO_REUSEPORT) and closes its TCP
// listeners, the TCP queries in its accept queue go to the successor
// rather than being reset. The old value is not restored on exit: the next
// handover (this process's, from its successor's point of view) needs it
// as well, and it only changes what happens to a closing reuseport
// listener's queue. Where it cannot be set (older kernel, read-only
// /proc/sys) node-cache runs on, and says what that costs.
func enableTCPMigrateReq(log *slog.Logger) {
	old, err := os.ReadFile(tcpMigrateReq)
	if err != nil {
		msg := "net.ipv4.tcp_migrate_req unavailable: on a handover, TCP queries waiting in the old node-cache's accept queue are reset"
		if errors.Is(err, fs.ErrNotExist) {
			msg += " (the kernel has no tcp_migrate_req: Linux 5.14+)"
		}
		log.Warn(msg, "err", err)
		return
	}
	if strings.TrimSpace(string(old)) == "1" {
		log.Info("net.ipv4.tcp_migrate_req is 1: a closing TCP listener's queue moves to its successor")
		return
	}
	if err := os.WriteFile(tcpMigrateReq, []byte("1\n"), 0o644); err != nil {
		log.Warn("net.ipv4.tcp_migrate_req could not be set: on a handover, TCP queries waiting in the old node-cache's accept queue are reset",
			"was", strings.TrimSpace(string(old)), "err", fmt.Errorf("write %s: %w", tcpMigrateReq, err))
		return
	}
	log.Info("set net.ipv4.tcp_migrate_req=1 (left set on exit): a closing TCP listener's queue moves to its successor",
		"was", strings.TrimSpace(string(old)))
}

// stopAccepting shuts down this process's listening TCP sockets on port 53
// of addrs (CoreDNS's listeners for the steered local IPs). The kernel takes
// each out of its SO_REUSEPORT group and, with tcp_migrate_req, moves the
// connections waiting in its accept queue to the successor's listener; the
// connections already accepted are answered while the drain lasts. Without
// this, a connection accepted just before CoreDNS stops is closed unread
// (its query gets EOF). It returns how many listeners it shut.
func stopAccepting(addrs []netip.Addr, log *slog.Logger) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		log.Warn("handover: cannot list this process's sockets; TCP listeners close with CoreDNS", "err", err)
		return 0
	}
	n := 0
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || !listeningOn(fd, addrs) {
			continue
		}
		if err := unix.Shutdown(fd, unix.SHUT_RD); err != nil {
			log.Warn("handover: shutting a TCP listener", "fd", fd, "err", err)
			continue
		}
		n++
	}
	return n
}

// listeningOn reports whether fd is a listening TCP socket on port 53 of
// one of addrs.
func listeningOn(fd int, addrs []netip.Addr) bool {
	if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || typ != unix.SOCK_STREAM {
		return false
	}
	if acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || acc != 1 {
		return false
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return false
	}
	var ap netip.AddrPort
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		ap = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		ap = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	default:
		return false
	}
	return ap.Port() == 53 && slices.Contains(addrs, ap.Addr())
}
