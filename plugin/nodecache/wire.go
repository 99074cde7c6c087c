package nodecache

import (
	"encoding/binary"
	"errors"
)

// Wire-format helpers. The cache keeps responses as packed messages and the
// UDP fast path answers straight from them, so the hot path never unpacks a
// dns.Msg. Everything here treats its input as hostile: it bounds every
// offset and reports malformed data as an error, never a panic.

const (
	headerLen = 12
	maxName   = 255

	flagQR = 1 << 15
	flagTC = 1 << 9
	flagRD = 1 << 8
	flagCD = 1 << 4

	typeOPT = 41
	ednsDO  = 1 << 15

	// ednsAdvertise is the UDP payload size we advertise to clients, the
	// DNS Flag Day 2020 value that avoids IP fragmentation.
	ednsAdvertise = 1232
)

var (
	errShort     = errors.New("message too short")
	errNotQuery  = errors.New("not a plain query")
	errBadName   = errors.New("malformed name")
	errBadRecord = errors.New("malformed resource record")
)

// query is what the cache needs to know about a client's question, parsed
// from the wire without allocating.
type query struct {
	id      uint16
	flags   uint16
	name    []byte // question name in wire form as sent (original case), aliases the packet
	qtype   uint16
	qclass  uint16
	hasOPT  bool
	do      bool
	udpSize uint16 // client's EDNS0 UDP size; 512 without EDNS0
	end     int    // offset just past the question (and OPT, when present)
}

func (q *query) cd() bool { return q.flags&flagCD != 0 }

// parseQuery parses a query the fast path may answer: QR=0, opcode QUERY,
// one question with an uncompressed name, no answer or authority records,
// and at most one additional record which must be a plain EDNS0 OPT (version
// 0, no options). Anything else returns an error and is left to the full
// CoreDNS path, which knows how to answer it.
func parseQuery(b []byte, q *query) error {
	if len(b) < headerLen+5 {
		return errShort
	}
	q.id = binary.BigEndian.Uint16(b[0:])
	q.flags = binary.BigEndian.Uint16(b[2:])
	if q.flags&flagQR != 0 || (q.flags>>11)&0xF != 0 || q.flags&flagTC != 0 {
		return errNotQuery
	}
	qd := binary.BigEndian.Uint16(b[4:])
	an := binary.BigEndian.Uint16(b[6:])
	ns := binary.BigEndian.Uint16(b[8:])
	ar := binary.BigEndian.Uint16(b[10:])
	if qd != 1 || an != 0 || ns != 0 || ar > 1 {
		return errNotQuery
	}
	off, err := plainName(b, headerLen)
	if err != nil {
		return err
	}
	if off+4 > len(b) {
		return errShort
	}
	q.name = b[headerLen:off]
	q.qtype = binary.BigEndian.Uint16(b[off:])
	q.qclass = binary.BigEndian.Uint16(b[off+2:])
	off += 4
	q.hasOPT, q.do, q.udpSize = false, false, 512
	if ar == 1 {
		// A plain OPT: root owner, type 41, class = size, TTL = ext-rcode,
		// version, flags; RDLENGTH 0 (any option means the full path).
		if off+11 > len(b) || b[off] != 0 || binary.BigEndian.Uint16(b[off+1:]) != typeOPT {
			return errNotQuery
		}
		size := binary.BigEndian.Uint16(b[off+3:])
		version := b[off+6]
		flags := binary.BigEndian.Uint16(b[off+7:])
		rdlen := binary.BigEndian.Uint16(b[off+9:])
		if version != 0 || rdlen != 0 || b[off+5] != 0 {
			return errNotQuery
		}
		q.hasOPT = true
		q.do = flags&ednsDO != 0
		if size > 512 {
			q.udpSize = size
		}
		off += 11
	}
	if off != len(b) {
		return errNotQuery
	}
	q.end = off
	return nil
}

// plainName returns the offset past an uncompressed wire name starting at off.
func plainName(b []byte, off int) (int, error) {
	start := off
	for {
		if off >= len(b) {
			return 0, errShort
		}
		l := int(b[off])
		if l == 0 {
			off++
			break
		}
		if l&0xC0 != 0 {
			return 0, errBadName
		}
		off += l + 1
		if off-start > maxName {
			return 0, errBadName
		}
	}
	if off-start > maxName {
		return 0, errBadName
	}
	return off, nil
}

// skipName returns the offset past a possibly compressed name at off. It
// does not follow pointers: a pointer ends the name in place.
func skipName(b []byte, off int) (int, error) {
	start := off
	for {
		if off >= len(b) {
			return 0, errShort
		}
		l := int(b[off])
		switch {
		case l == 0:
			return off + 1, nil
		case l&0xC0 == 0xC0:
			if off+2 > len(b) {
				return 0, errShort
			}
			return off + 2, nil
		case l&0xC0 != 0:
			return 0, errBadName
		}
		off += l + 1
		if off-start > maxName {
			return 0, errBadName
		}
	}
}

// lowerName writes the lower-cased copy of wire name src into dst (which
// must be at least as long) and returns it. Only ASCII letters change: DNS
// names compare case-insensitively in ASCII alone (RFC 4343).
func lowerName(dst, src []byte) []byte {
	dst = dst[:len(src)]
	for i, c := range src {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst[i] = c
	}
	return dst
}

// appendOPT appends our EDNS0 OPT record: UDP size ednsAdvertise, version 0,
// the DO bit as given, no options.
func appendOPT(b []byte, do bool) []byte {
	var ext uint16
	if do {
		ext = ednsDO
	}
	return append(b, 0, 0, typeOPT, byte(ednsAdvertise>>8), byte(ednsAdvertise&0xFF), 0, 0, byte(ext>>8), byte(ext), 0, 0)
}

// packQuestion packs a message of a header (id, flags), the one question
// (name in wire form) and, if opt, our OPT record.
func packQuestion(id, flags uint16, name []byte, qtype, qclass uint16, opt, do bool) []byte {
	b := make([]byte, headerLen, headerLen+len(name)+4+11)
	binary.BigEndian.PutUint16(b[0:], id)
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint16(b[4:], 1) // QDCOUNT
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, qtype)
	b = binary.BigEndian.AppendUint16(b, qclass)
	if opt {
		binary.BigEndian.PutUint16(b[10:], 1) // ARCOUNT
		b = appendOPT(b, do)
	}
	return b
}

// ttlOffsets walks a packed response and returns the offset of the TTL field
// of every resource record in the answer, authority and additional sections,
// skipping OPT. It is the one full parse an entry costs, done at insert.
func ttlOffsets(b []byte) ([]uint16, error) {
	if len(b) < headerLen {
		return nil, errShort
	}
	if len(b) > 0xFFFF {
		return nil, errBadRecord
	}
	qd := int(binary.BigEndian.Uint16(b[4:]))
	rr := int(binary.BigEndian.Uint16(b[6:])) + int(binary.BigEndian.Uint16(b[8:])) + int(binary.BigEndian.Uint16(b[10:]))
	off := headerLen
	var err error
	for i := 0; i < qd; i++ {
		if off, err = skipName(b, off); err != nil {
			return nil, err
		}
		off += 4
		if off > len(b) {
			return nil, errShort
		}
	}
	offs := make([]uint16, 0, rr)
	for i := 0; i < rr; i++ {
		if off, err = skipName(b, off); err != nil {
			return nil, err
		}
		if off+10 > len(b) {
			return nil, errShort
		}
		typ := binary.BigEndian.Uint16(b[off:])
		rdlen := int(binary.BigEndian.Uint16(b[off+8:]))
		if typ != typeOPT {
			offs = append(offs, uint16(off+4))
		}
		off += 10 + rdlen
		if off > len(b) {
			return nil, errBadRecord
		}
	}
	if off != len(b) {
		return nil, errBadRecord
	}
	return offs, nil
}
