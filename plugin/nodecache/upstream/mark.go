package upstream

import (
	"net"
	"sync/atomic"
)

// socketMark is the SO_MARK of every socket the package dials; 0: none.
var socketMark atomic.Uint32

// SetSocketMark makes the connections dialed from now on (TCP and UDP, to
// upstreams and for health probes) carry SO_MARK mark; 0 turns it off. The
// node agent sets it when it steers the cluster DNS VIP to this cache: its
// eBPF programs leave sockets with this mark alone, so the cache's own
// queries reach the VIP even when it is the upstream. Linux only; a no-op
// elsewhere.
func SetSocketMark(mark uint32) { socketMark.Store(mark) }

// dialer returns the net.Dialer for upstream sockets.
func dialer() *net.Dialer {
	d := &net.Dialer{}
	if m := socketMark.Load(); m != 0 {
		d.Control = markControl(m)
	}
	return d
}
