package upstream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/miekg/dns"
)

// errProtocol marks bad framing, after which the stream cannot be trusted
// any more (the connection is closed), or an answer that does not parse
// (dropped: its query fails, the connection stays).
var errProtocol = errors.New("protocol error")

// readFrame reads one RFC 1035 section 4.2.2 length-prefixed message from r.
// hdr is a 2-byte scratch buffer. The returned slice is freshly allocated
// (the parsed message may keep references into it). A zero length or a
// length too short for a DNS header is a protocol error: the stream is
// desynchronised or garbage.
func readFrame(r io.Reader, hdr []byte) ([]byte, error) {
	if _, err := io.ReadFull(r, hdr[:2]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(hdr[:2]))
	if n < dnsHeaderLen {
		return nil, fmt.Errorf("%w: frame of %d bytes", errProtocol, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}

const dnsHeaderLen = 12

// parseResponse unpacks one DNS message read from an upstream. Messages
// that do not parse are protocol errors. It does not check that the message
// answers anything: see matches.
func parseResponse(b []byte) (*dns.Msg, error) {
	if len(b) < dnsHeaderLen {
		return nil, fmt.Errorf("%w: message of %d bytes", errProtocol, len(b))
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return nil, fmt.Errorf("%w: %v", errProtocol, err)
	}
	return m, nil
}

// unparsedAnswerTo reads the ID of a message that did not parse as a
// whole; ok is false if it is no response at all (QR clear, or shorter than
// a header).
func unparsedAnswerTo(b []byte) (id uint16, ok bool) {
	if len(b) < dnsHeaderLen || b[2]&0x80 == 0 {
		return 0, false
	}
	return binary.BigEndian.Uint16(b), true
}

// matchesWire is matches for a message that did not parse as a whole: if
// its question section can be read it must be q; if it cannot, the ID
// alone decides (the caller's), so that the query fails at once rather
// than at its timeout.
func (q question) matchesWire(b []byte) bool {
	if len(b) < dnsHeaderLen {
		return false
	}
	if qd := binary.BigEndian.Uint16(b[4:]); qd != 1 {
		return qd == 0 && !q.has
	}
	name, off, err := dns.UnpackDomainName(b, dnsHeaderLen)
	if err != nil || off+4 > len(b) {
		return true
	}
	return q.has && binary.BigEndian.Uint16(b[off:]) == q.qtype &&
		binary.BigEndian.Uint16(b[off+2:]) == q.class && strings.EqualFold(name, q.name)
}

// question is the part of a query an answer must echo.
type question struct {
	has   bool
	name  string
	qtype uint16
	class uint16
}

func questionOf(m *dns.Msg) question {
	if len(m.Question) == 0 {
		return question{}
	}
	q := m.Question[0]
	return question{has: true, name: q.Name, qtype: q.Qtype, class: q.Qclass}
}

// matches reports whether resp is an answer to a query with question q: QR
// set, and the same question (name compared case-insensitively, as servers
// may randomise or normalise case). The ID is checked by the caller.
func (q question) matches(resp *dns.Msg) bool {
	if !resp.Response {
		return false
	}
	if !q.has {
		return len(resp.Question) == 0
	}
	if len(resp.Question) != 1 {
		return false
	}
	rq := resp.Question[0]
	return rq.Qtype == q.qtype && rq.Qclass == q.class && strings.EqualFold(rq.Name, q.name)
}

// packQuery packs a copy of m with ID 0 (the caller's message is not
// touched: packing may write to its OPT record). It returns the wire form
// without any length prefix.
func packQuery(m *dns.Msg) ([]byte, error) {
	c := m.Copy()
	c.Id = 0
	b, err := c.Pack()
	if err != nil {
		return nil, err
	}
	if len(b) > dns.MaxMsgSize {
		return nil, fmt.Errorf("query of %d bytes is too large", len(b))
	}
	return b, nil
}
