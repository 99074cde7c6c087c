package svcagent

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath/lb"
)

// TCTable is what AttachInterfaces needs of datapath/lb's Table.
type TCTable interface {
	AttachTC(ifindex int, where lb.Where) error
}

// AttachInterfaces puts the per-packet load balancer (--lb-mode tc/both)
// on the host end of every veth (a pod's interface: its requests to
// Services) and on every interface holding a NodePort address (requests
// from other nodes), now and as interfaces appear, until ctx ends.
// nodePortAddrs returns the addresses NodePorts are open on.
func AttachInterfaces(ctx context.Context, tbl TCTable, nodePortAddrs func() []netip.Addr, log *slog.Logger) {
	done := map[int]lb.Where{}
	scan := func() {
		links, err := netlink.LinkList()
		if err != nil {
			log.Error("listing interfaces for the per-packet load balancer", "err", err)
			return
		}
		ext := map[netip.Addr]bool{}
		for _, a := range nodePortAddrs() {
			ext[a] = true
		}
		for _, l := range links {
			idx := l.Attrs().Index
			where, ok := lb.PodInterface, l.Type() == "veth"
			if addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL); err == nil {
				for _, ad := range addrs {
					if ip, ok2 := netip.AddrFromSlice(ad.IP); ok2 && ext[ip.Unmap()] && l.Type() != "veth" {
						where, ok = lb.ExternalInterface, true
					}
				}
			}
			if !ok {
				continue
			}
			if w, seen := done[idx]; seen && w == where {
				continue
			}
			if err := tbl.AttachTC(idx, where); err != nil {
				log.Error("attaching the per-packet load balancer", "interface", l.Attrs().Name, "err", err)
				continue
			}
			done[idx] = where
			log.Debug("per-packet load balancer attached", "interface", l.Attrs().Name, "external", where == lb.ExternalInterface)
		}
	}
	scan()
	updates := make(chan netlink.LinkUpdate, 64)
	stop := make(chan struct{})
	defer close(stop)
	if err := netlink.LinkSubscribeWithOptions(updates, stop, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) { log.Warn("interface watch", "err", err) },
	}); err != nil {
		log.Error("watching interfaces; rescanning every 10s instead", "err", err)
		updates = nil
	}
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-updates:
			if !ok {
				updates = nil
				continue
			}
			if u.Header.Type == unix.RTM_DELLINK {
				delete(done, int(u.Index))
				continue
			}
			scan()
		case <-tick.C:
			scan()
		}
	}
}
