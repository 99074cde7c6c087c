package nodecache

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
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
