package upstream

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fuzzIDs are the IDs of the queries in flight in FuzzReadResponse, all
// asking fuzzQuestion.
var fuzzIDs = []uint16{0x0102, 0x0304}

const fuzzQuestion = "example.org."

// fuzzSeeds returns streams worth starting from: answers in and out of
// order, mismatches, broken framing.
func fuzzSeeds(t testing.TB) [][]byte {
	frame := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...)
	}
	ans := func(id uint16, name string) *dns.Msg {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		q.Id = id
		a := answer(q, "tcp")
		a.SetEdns0(1232, true)
		return a
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	a1, a2 := frame(ans(fuzzIDs[0], fuzzQuestion)), frame(ans(fuzzIDs[1], "EXAMPLE.org."))
	wrongQ := frame(ans(fuzzIDs[0], "other.org."))
	wrongID := frame(ans(0x9999, fuzzQuestion))
	notResp := ans(fuzzIDs[0], fuzzQuestion)
	notResp.Response = false
	return [][]byte{
		a1,
		cat(a2, a1),
		cat(wrongID, wrongQ, frame(notResp), a1, a2),
		cat(a1, a1),
		a1[:len(a1)-3],             // truncated frame
		{0, 4, 'j', 'u', 'n', 'k'}, // too short for DNS
		{0, 0},
		[]byte("HTTP/1.1 400 Bad Request\r\n\r\n"),
		cat(a1, []byte{0xff, 0xff, 1, 2, 3}),
		// A header claiming records that are not there.
		{0, 12, 0x01, 0x02, 0x80, 0, 0, 1, 0, 1, 0, 0, 0, 0},
		// A compression pointer pointing at itself.
		{0, 19, 0x01, 0x02, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1, 0},
	}
}

// FuzzReadResponse feeds arbitrary bytes, as an upstream's TCP stream, to a
// connection's reader with two queries in flight. It must not panic, must
// settle every query exactly once, and must never hand a query an answer
// with another ID or question.
func FuzzReadResponse(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	p, err := New(Config{Upstreams: []Addr{{Host: "127.0.0.1:53"}}})
	if err != nil {
		f.Fatal(err)
	}
	defer p.Close()
	u := p.ups[0]

	f.Fuzz(func(t *testing.T, data []byte) {
		// The framing and parsing functions on their own.
		br := bufio.NewReader(bytes.NewReader(data))
		hdr := make([]byte, 2)
		for {
			b, err := readFrame(br, hdr)
			if err != nil {
				break
			}
			if len(b) < dnsHeaderLen {
				t.Fatalf("readFrame returned %d bytes", len(b))
			}
			if m, err := parseResponse(b); err == nil {
				questionOf(m).matches(m)
			}
		}

		// The whole reader.
		c := newConn(u, &bytesConn{r: bytes.NewReader(data)})
		c.ageTimer = time.AfterFunc(time.Hour, func() {})
		u.mu.Lock()
		u.all[c] = struct{}{}
		u.mu.Unlock()
		u.openConns.Add(1)
		u.mConns.Inc()
		q := question{has: true, name: fuzzQuestion, qtype: dns.TypeA, class: dns.ClassINET}
		ws := make([]*waiter, len(fuzzIDs))
		for i, id := range fuzzIDs {
			ws[i] = &waiter{q: q, ch: make(chan result, 1)}
			c.pending[id] = ws[i]
		}
		c.readLoop() // returns at the end of data

		for i, w := range ws {
			select {
			case res := <-w.ch:
				if (res.msg == nil) == (res.err == nil) {
					t.Fatalf("query %d: result %+v", i, res)
				}
				if res.msg != nil && (res.msg.Id != fuzzIDs[i] || !q.matches(res.msg)) {
					t.Fatalf("query %d (ID %d) got an answer with ID %d: %v", i, fuzzIDs[i], res.msg.Id, res.msg)
				}
			default:
				t.Fatalf("query %d not settled", i)
			}
			select {
			case res := <-w.ch:
				t.Fatalf("query %d settled twice: %+v", i, res)
			default:
			}
		}
		if !c.closed || len(c.pending) != 0 {
			t.Fatal("connection not shut down")
		}
		u.mu.Lock()
		_, still := u.all[c]
		u.mu.Unlock()
		if still {
			t.Fatal("connection still registered")
		}
	})
}

// TestFuzzSeedsAnswer checks that the seeds do exercise the answer path.
func TestFuzzSeedsAnswer(t *testing.T) {
	seeds := fuzzSeeds(t)
	br := bufio.NewReader(bytes.NewReader(seeds[1]))
	hdr := make([]byte, 2)
	var ids []uint16
	for {
		b, err := readFrame(br, hdr)
		if err != nil {
			break
		}
		m, err := parseResponse(b)
		if err != nil {
			t.Fatal(err)
		}
		if !(question{has: true, name: fuzzQuestion, qtype: dns.TypeA, class: dns.ClassINET}).matches(m) {
			t.Fatalf("seed answer %v does not match", m)
		}
		ids = append(ids, m.Id)
	}
	if len(ids) != 2 || ids[0] != fuzzIDs[1] || ids[1] != fuzzIDs[0] {
		t.Fatalf("seed 1 IDs = %v", ids)
	}
}

// bytesConn is a net.Conn reading from a byte slice.
type bytesConn struct {
	r *bytes.Reader
}

func (c *bytesConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *bytesConn) Write(b []byte) (int, error)      { return len(b), nil }
func (c *bytesConn) Close() error                     { return nil }
func (c *bytesConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *bytesConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *bytesConn) SetDeadline(time.Time) error      { return nil }
func (c *bytesConn) SetReadDeadline(time.Time) error  { return nil }
func (c *bytesConn) SetWriteDeadline(time.Time) error { return nil }
