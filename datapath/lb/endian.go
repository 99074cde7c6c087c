package lb

import (
	"encoding/binary"
	"net/netip"
)

// nativeEndian is the byte order of the maps' integers.
var nativeEndian = binary.NativeEndian

// toWords lays an address out as the hooks see it: network byte order in
// memory, IPv4 in the first word; family 4 or 6.
func toWords(a netip.Addr) (w [4]uint32, family uint8) {
	var b [16]byte
	if a.Is4() {
		a4 := a.As4()
		copy(b[:], a4[:])
		family = 4
	} else {
		b = a.As16()
		family = 6
	}
	for i := range w {
		w[i] = nativeEndian.Uint32(b[i*4:])
	}
	return w, family
}

func fromWords(w [4]uint32, family uint8) netip.Addr {
	var b [16]byte
	for i := range w {
		nativeEndian.PutUint32(b[i*4:], w[i])
	}
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// htons gives the uint16 whose in-memory bytes are p in network order.
func htons(p uint16) uint16 {
	var b [2]byte
	b[0], b[1] = byte(p>>8), byte(p)
	return nativeEndian.Uint16(b[:])
}

func ntohs(p uint16) uint16 {
	var b [2]byte
	nativeEndian.PutUint16(b[:], p)
	return uint16(b[0])<<8 | uint16(b[1])
}
