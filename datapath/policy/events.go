package policy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/cilium/ebpf/ringbuf"
)

// Event is a packet dropped (or, in audit mode, one that would have been):
// at most 1000 per second per CPU are reported; Drops counts them all.
type Event struct {
	Src, Dst     netip.AddrPort
	Proto        uint8
	Dir          Direction
	Audit        bool
	Endpoint     uint32
	Policy       uint32
	PeerIdentity Identity
}

// ReadEvents calls fn for every drop event until ctx ends.
func (d *Datapath) ReadEvents(ctx context.Context, fn func(Event)) error {
	r, err := ringbuf.NewReader(d.objs.DnsaPolEvents)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); r.Close() }()
	for {
		rec, err := r.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		var e policyDnsaPolEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e); err != nil {
			continue
		}
		fn(Event{
			Src:          netip.AddrPortFrom(netip.AddrFrom16(e.Src).Unmap(), be16(e.Sport)),
			Dst:          netip.AddrPortFrom(netip.AddrFrom16(e.Dst).Unmap(), be16(e.Dport)),
			Proto:        e.Proto,
			Dir:          Direction(e.Dir),
			Audit:        e.Audit != 0,
			Endpoint:     e.Ep,
			Policy:       e.Policy,
			PeerIdentity: Identity(e.PeerIdentity),
		})
	}
}

// be16 turns a port in network byte order, read as a native integer, into
// its value.
func be16(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}
