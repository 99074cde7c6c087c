package upstream

import (
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// behaviour is what the fake upstream does with a query.
type behaviour int

const (
	bNormal         behaviour = iota // answer at once
	bDelay                           // answer after srv.delay, concurrently
	bReverse                         // hold answers until srv.batch queries were read on the conn, flush them reversed
	bWrongID                         // answer with another ID
	bWrongQuestion                   // answer with another question
	bMismatchThenOK                  // a wrong-ID, a wrong-question and a non-response answer, then the right one
	bGarbageFrame                    // a well-framed message too short to be DNS
	bGarbageStream                   // bytes that are not DNS framing at all
	bHang                            // read the query, never answer
	bCloseMidStream                  // the first connection closes (unanswered) on reading its closeAfter-th query
	bTruncate                        // UDP: TC=1 answer; TCP: normal
)

// testServer is a fake upstream on 127.0.0.1: TCP is served by hand (so
// that it can pipeline, reorder and misbehave), UDP by a miekg/dns server.
// Answers carry an A record 127.0.0.1 and a TXT record naming the transport.
type testServer struct {
	t    testing.TB
	addr string

	ln     net.Listener
	udpSrv *dns.Server

	mode       atomic.Int32
	delay      time.Duration
	batch      int
	closeAfter int

	accepted    atomic.Int64 // TCP connections accepted
	openConns   atomic.Int64 // TCP connections open now
	tcpQueries  atomic.Int64
	udpQueries  atomic.Int64
	inflight    atomic.Int64 // TCP queries read and not answered yet
	maxInflight atomic.Int64

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	perConn []int // queries read on each accepted conn

	done   chan struct{}
	wg     sync.WaitGroup
	closed bool
}

func newTestServer(t testing.TB, mode behaviour) *testServer {
	t.Helper()
	var lastErr error
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s, err := startTestServer(t, ln, mode)
		if err == nil {
			return s
		}
		lastErr = err // the UDP port was taken: try another one
	}
	t.Fatalf("could not start test server: %v", lastErr)
	return nil
}

// newTestServerAt starts a server on a given address (one freed earlier).
func newTestServerAt(t testing.TB, addr string, mode behaviour) *testServer {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			s, err2 := startTestServer(t, ln, mode)
			if err2 == nil {
				return s
			}
			err = err2
		}
		if time.Now().After(deadline) {
			t.Fatalf("listen on %s: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func startTestServer(t testing.TB, ln net.Listener, mode behaviour) (*testServer, error) {
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		ln.Close()
		return nil, err
	}
	s := &testServer{
		t:          t,
		addr:       ln.Addr().String(),
		ln:         ln,
		delay:      20 * time.Millisecond,
		batch:      10,
		closeAfter: 1,
		conns:      make(map[net.Conn]struct{}),
		done:       make(chan struct{}),
	}
	s.mode.Store(int32(mode))

	started := make(chan struct{})
	s.udpSrv = &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(s.serveUDP), NotifyStartedFunc: func() { close(started) }}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		_ = s.udpSrv.ActivateAndServe()
	}()
	go s.acceptLoop()
	<-started
	t.Cleanup(s.Close)
	return s, nil
}

func (s *testServer) setMode(b behaviour) { s.mode.Store(int32(b)) }

// Close stops the server, closes its connections and waits for its
// goroutines.
func (s *testServer) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.done)
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.ln.Close()
	_ = s.udpSrv.Shutdown()
	s.wg.Wait()
}

// closeConns drops every open TCP connection (the server stays up).
func (s *testServer) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

func (s *testServer) perConnQueries() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.perConn...)
}

func (s *testServer) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		idx := len(s.perConn)
		s.perConn = append(s.perConn, 0)
		s.wg.Add(1)
		s.mu.Unlock()
		s.accepted.Add(1)
		s.openConns.Add(1)
		go s.serveConn(c, idx)
	}
}

func answer(q *dns.Msg, proto string) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(q)
	if len(q.Question) > 0 {
		name := q.Question[0].Name
		m.Answer = append(m.Answer,
			&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: net.IPv4(127, 0, 0, 1)},
			&dns.TXT{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 30}, Txt: []string{proto}})
	}
	return m
}

func (s *testServer) serveConn(c net.Conn, idx int) {
	var wg sync.WaitGroup // answers written late
	defer func() {
		c.Close()
		wg.Wait()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.openConns.Add(-1)
		s.wg.Done()
	}()
	var wmu sync.Mutex
	write := func(b []byte) {
		wmu.Lock()
		defer wmu.Unlock()
		_, _ = c.Write(b)
	}
	writeMsg := func(m *dns.Msg) {
		b, err := m.Pack()
		if err != nil {
			panic(err)
		}
		if len(m.Question) == 1 && strings.HasPrefix(m.Question[0].Name, "poison.") {
			b = poison(b)
		}
		write(append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...))
	}
	answered := func() { s.inflight.Add(-1) }

	var held []*dns.Msg
	n := 0
	hdr := make([]byte, 2)
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		b := make([]byte, binary.BigEndian.Uint16(hdr))
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		q := new(dns.Msg)
		if err := q.Unpack(b); err != nil {
			return
		}
		n++
		s.tcpQueries.Add(1)
		s.mu.Lock()
		s.perConn[idx]++
		s.mu.Unlock()
		cur := s.inflight.Add(1)
		for {
			m := s.maxInflight.Load()
			if cur <= m || s.maxInflight.CompareAndSwap(m, cur) {
				break
			}
		}

		ans := answer(q, "tcp")
		switch behaviour(s.mode.Load()) {
		case bNormal, bTruncate:
			answered()
			writeMsg(ans)
		case bDelay:
			wg.Add(1)
			go func() {
				defer wg.Done()
				t := time.NewTimer(s.delay)
				defer t.Stop()
				select {
				case <-t.C:
					answered()
					writeMsg(ans)
				case <-s.done:
				}
			}()
		case bReverse:
			held = append(held, ans)
			if len(held) == s.batch {
				for i := len(held) - 1; i >= 0; i-- {
					answered()
					writeMsg(held[i])
				}
				held = nil
			}
		case bWrongID:
			ans.Id++
			writeMsg(ans)
		case bWrongQuestion:
			ans.Question[0].Name = "wrong." + ans.Question[0].Name
			writeMsg(ans)
		case bMismatchThenOK:
			bad := ans.Copy()
			bad.Id++
			writeMsg(bad)
			bad = ans.Copy()
			bad.Question[0].Qtype = dns.TypeMX
			writeMsg(bad)
			bad = ans.Copy()
			bad.Response = false
			writeMsg(bad)
			answered()
			writeMsg(ans)
		case bGarbageFrame:
			write([]byte{0, 4, 'j', 'u', 'n', 'k'})
		case bGarbageStream:
			write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
		case bHang:
		case bCloseMidStream:
			if idx == 0 && n >= s.closeAfter {
				return
			}
			answered()
			writeMsg(ans)
		}
	}
}

// poison turns a packed answer into one that keeps its header and
// question but does not parse: one more answer record, whose owner name is
// a compression pointer to itself. Names starting "poison." get it on TCP.
func poison(b []byte) []byte {
	b = append([]byte(nil), b...)
	binary.BigEndian.PutUint16(b[6:], binary.BigEndian.Uint16(b[6:])+1)
	self := len(b)
	return append(b, 0xC0|byte(self>>8), byte(self), 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 1)
}

func (s *testServer) serveUDP(w dns.ResponseWriter, q *dns.Msg) {
	s.udpQueries.Add(1)
	ans := answer(q, "udp")
	switch behaviour(s.mode.Load()) {
	case bHang:
		return
	case bTruncate:
		ans.Answer = nil
		ans.Truncated = true
	case bWrongID:
		ans.Id++
	case bWrongQuestion:
		ans.Question[0].Name = "wrong." + ans.Question[0].Name
	case bMismatchThenOK:
		bad := ans.Copy()
		bad.Id++
		_ = w.WriteMsg(bad)
		_, _ = w.Write([]byte("garbage"))
	case bDelay:
		t := time.NewTimer(s.delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.done:
			return
		}
	}
	_ = w.WriteMsg(ans)
}

// closedAddr returns a loopback address nothing listens on (for now).
func closedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// checkGoroutines fails the test if goroutines started during it are still
// running once its other cleanups (registered later, so run earlier) are done.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutine leak: %d before the test, %d after\n%s", before, n, buf)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func newPool(t testing.TB, cfg Config) *Pool {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func mustAddr(t testing.TB, s string) Addr {
	t.Helper()
	a, err := ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func query(name string) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	return m
}

// checkAnswer verifies that resp answers q (same ID and question) and
// returns the transport recorded in its TXT record.
func checkAnswer(t testing.TB, q, resp *dns.Msg) string {
	t.Helper()
	if resp.Id != q.Id {
		t.Errorf("answer ID %d, want the query's %d", resp.Id, q.Id)
	}
	if len(resp.Question) != 1 || !strings.EqualFold(resp.Question[0].Name, q.Question[0].Name) {
		t.Errorf("answer question %v, want %v", resp.Question, q.Question)
	}
	for _, rr := range resp.Answer {
		if txt, ok := rr.(*dns.TXT); ok {
			if !strings.EqualFold(txt.Hdr.Name, q.Question[0].Name) {
				t.Errorf("answer for %s carries a record of %s", q.Question[0].Name, txt.Hdr.Name)
			}
			return txt.Txt[0]
		}
	}
	return ""
}

func metricValue(t testing.TB, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("unsupported metric %v", c.Desc())
	return 0
}

// pendingTotal counts the queries registered on the pool's connections.
func pendingTotal(p *Pool) int {
	n := 0
	for _, u := range p.ups {
		u.mu.Lock()
		for c := range u.all {
			c.mu.Lock()
			n += len(c.pending)
			c.mu.Unlock()
		}
		u.mu.Unlock()
	}
	return n
}
