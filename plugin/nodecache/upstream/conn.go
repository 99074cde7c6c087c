package upstream

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Causes of a connection being closed on our side.
var (
	errRetired = errors.New("connection retired")
	errStalled = errors.New("no answer on the connection since the query was sent")
)

// conn is one persistent TCP connection carrying pipelined queries
// (RFC 7766 section 6.2.1.1). Writers queue their frames (see send); one
// reader goroutine (readLoop) matches answers to waiters by ID and question.
type conn struct {
	u       *upstream
	nc      net.Conn
	created time.Time
	// ageTimer retires the conn at MaxConnAge; set before readLoop starts
	// and only touched by the conn's goroutine afterwards.
	ageTimer *time.Timer

	wmu      sync.Mutex // guards the write queue
	wbuf     []byte     // frames queued for writing
	spare    []byte     // the other write buffer
	flushing bool       // a sender is writing wbuf out
	werr     error      // the write that failed

	mu         sync.Mutex
	pending    map[uint16]*waiter // queries in flight, by wire ID
	queries    int                // queries ever assigned
	retiring   bool               // takes no new query; closed once drained
	closed     bool               // readLoop has ended; pending is nil
	cause      error              // why we closed it, if we did: takes no new query
	lastAnswer time.Time          // last matched answer

	// blamed is set by the first failed attempt that counts the loss of
	// this conn against the upstream's health: one broken connection is one
	// failure, however many queries it carried.
	blamed atomic.Bool
}

// waiter is one query in flight on a conn.
type waiter struct {
	q    question
	sent time.Time   // when registered; guarded by the conn's mu
	ch   chan result // buffered; receives exactly one result (nil if notify is set)
	// notify, if set, takes the result instead of ch: the query of an
	// ExchangeAsync, which has no goroutine waiting for it.
	notify func(result)
}

// complete hands w its one result. It never blocks.
func (w *waiter) complete(res result) {
	if w.notify != nil {
		w.notify(res)
		return
	}
	w.ch <- res
}

type result struct {
	msg *dns.Msg
	err error
}

func newConn(u *upstream, nc net.Conn) *conn {
	return &conn{u: u, nc: nc, created: time.Now(), pending: make(map[uint16]*waiter)}
}

// load returns the number of queries in flight; usable is false if the conn
// takes no new query, dead if it never will again.
func (c *conn) load() (n int, usable, dead bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.retiring || c.cause != nil {
		return 0, false, true
	}
	return len(c.pending), len(c.pending) < maxPendingPerConn, false
}

// reserve registers w under a fresh ID, one not in flight on this conn.
// retire reports that the conn has now carried MaxQueriesPerConn queries.
func (c *conn) reserve(w *waiter) (id uint16, ok, retire bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.retiring || c.cause != nil || len(c.pending) >= maxPendingPerConn {
		return 0, false, false
	}
	for {
		id = uint16(rand.Uint32())
		if _, busy := c.pending[id]; !busy {
			break
		}
	}
	c.pending[id] = w
	w.sent = time.Now()
	c.queries++
	if c.queries >= c.u.p.cfg.MaxQueriesPerConn {
		c.retiring = true
		retire = true
	}
	return id, true, retire
}

// release forgets w (timed out or abandoned). A retiring conn is closed
// once its last query is gone.
func (c *conn) release(id uint16, w *waiter) {
	c.mu.Lock()
	if c.pending[id] == w {
		delete(c.pending, id)
	}
	drained := c.retiring && !c.closed && len(c.pending) == 0
	c.mu.Unlock()
	if drained {
		c.kill(errRetired)
	}
}

// timedOut is called when w got no answer in time. If nothing at all was
// answered on the conn since w was sent, the conn is presumed stuck (a hung
// or desynchronised stream, or a server that handles pipelined queries one
// at a time behind a slow one) and is closed: its other queries are retried
// elsewhere.
func (c *conn) timedOut(w *waiter) {
	c.mu.Lock()
	stuck := !c.closed && c.lastAnswer.Before(w.sent)
	c.mu.Unlock()
	if stuck {
		c.kill(errStalled)
	}
}

// kill closes the socket (the conn takes no new query from now on);
// readLoop then fails the queries in flight.
func (c *conn) kill(cause error) {
	c.mu.Lock()
	if c.cause == nil {
		c.cause = cause
	}
	c.mu.Unlock()
	c.nc.Close()
}

// send queues frame for writing. The first sender to find no write in
// progress writes out everything queued meanwhile, so that concurrent
// queries share syscalls; the others return at once. A failed write kills
// the conn: the queries it carried are then failed (and retried) by
// readLoop.
func (c *conn) send(frame []byte) error {
	c.wmu.Lock()
	if c.werr != nil {
		err := c.werr
		c.wmu.Unlock()
		return err
	}
	c.wbuf = append(c.wbuf, frame...)
	if c.flushing {
		c.wmu.Unlock()
		return nil
	}
	c.flushing = true
	for len(c.wbuf) > 0 {
		buf := c.wbuf
		c.wbuf = c.spare[:0]
		c.wmu.Unlock()
		err := c.nc.SetWriteDeadline(time.Now().Add(c.u.p.cfg.Timeout))
		if err == nil {
			_, err = c.nc.Write(buf)
		}
		c.wmu.Lock()
		if cap(buf) <= 64<<10 {
			c.spare = buf[:0]
		}
		if err != nil {
			c.werr = err
			c.wbuf, c.spare = nil, nil
			c.flushing = false
			c.wmu.Unlock()
			c.kill(err)
			return err
		}
	}
	c.flushing = false
	c.wmu.Unlock()
	return nil
}

// readLoop reads answers until the connection ends, then cleans up.
func (c *conn) readLoop() {
	br := bufio.NewReader(c.nc)
	hdr := make([]byte, 2)
	var err error
	for {
		var b []byte
		if b, err = readFrame(br, hdr); err != nil {
			break
		}
		m, perr := parseResponse(b)
		if perr != nil {
			// The framing is intact (the length prefix covered the whole
			// message), so the stream is still in step: only this answer
			// is lost, not the connection and the queries in flight on it.
			c.reject(b, perr)
			continue
		}
		c.deliver(m)
	}
	c.shutdown(err)
}

// reject drops an answer that does not parse. The query it answers, if its
// ID and question say which, fails now (and fails over) instead of waiting
// for its timeout; the others keep waiting.
func (c *conn) reject(b []byte, perr error) {
	id, ok := unparsedAnswerTo(b)
	c.mu.Lock()
	w := c.pending[id]
	if !ok || w == nil || !w.q.matchesWire(b) {
		c.mu.Unlock()
		mismatchedTotal.Inc()
		return
	}
	delete(c.pending, id)
	// The upstream is answering: the conn is not stuck.
	c.lastAnswer = time.Now()
	drained := c.retiring && len(c.pending) == 0
	c.mu.Unlock()
	w.complete(result{err: &attemptError{to: c.u.addr.Host, reason: reasonProtocol, err: fmt.Errorf("unparsable answer: %w", perr)}})
	if drained {
		c.kill(errRetired)
	}
}

// deliver hands m to the query it answers. An answer whose ID matches no
// query in flight, or whose question is not the query's, is dropped: that
// query keeps waiting.
func (c *conn) deliver(m *dns.Msg) {
	c.mu.Lock()
	w := c.pending[m.Id]
	if w == nil || !w.q.matches(m) {
		c.mu.Unlock()
		mismatchedTotal.Inc()
		return
	}
	delete(c.pending, m.Id)
	c.lastAnswer = time.Now()
	drained := c.retiring && len(c.pending) == 0
	c.mu.Unlock()
	w.complete(result{msg: m})
	if drained {
		c.kill(errRetired)
	}
}

// shutdown runs once, at the end of readLoop: it fails the queries in
// flight (they may be retried) and removes the conn from its upstream.
func (c *conn) shutdown(readErr error) {
	c.mu.Lock()
	cause := c.cause
	if cause == nil {
		cause = readErr
	}
	c.closed = true
	pending := c.pending
	c.pending = nil
	c.mu.Unlock()
	c.ageTimer.Stop()
	c.nc.Close()

	// Out of the upstream first, so that retries do not find it.
	u := c.u
	u.mu.Lock()
	for i := range u.slots {
		if u.slots[i].c == c {
			u.slots[i].c = nil
		}
	}
	delete(u.all, c)
	u.mu.Unlock()
	u.openConns.Add(-1)
	u.mConns.Dec()

	if len(pending) > 0 {
		reason := reasonConn
		if errors.Is(cause, errProtocol) {
			reason = reasonProtocol
		}
		err := &attemptError{to: u.addr.Host, reason: reason, retry: true, blame: &c.blamed, err: fmt.Errorf("connection lost with query in flight: %w", cause)}
		for _, w := range pending {
			w.complete(result{err: err})
		}
	}
}

// expire is the MaxConnAge timer's callback.
func (c *conn) expire() {
	if !c.u.p.enter() {
		return
	}
	defer c.u.p.wg.Done()
	c.u.mu.Lock()
	c.u.retireLocked(c)
	c.u.mu.Unlock()
}

// retireLocked takes c out of rotation: it gets no new query and is closed
// once its queries in flight are answered or time out. A busy conn is
// replaced right away; an idle one is not (the next query will dial).
func (u *upstream) retireLocked(c *conn) {
	c.mu.Lock()
	c.retiring = true
	idle := !c.closed && len(c.pending) == 0
	c.mu.Unlock()
	for i := range u.slots {
		if u.slots[i].c != c {
			continue
		}
		u.slots[i].c = nil
		if !idle && !u.slots[i].dialing && !time.Now().Before(u.nextDial) {
			u.startDialLocked(i)
		}
	}
	if idle {
		c.kill(errRetired)
	}
}

// broadcastLocked wakes the queries waiting for a connection.
func (u *upstream) broadcastLocked() {
	close(u.changed)
	u.changed = make(chan struct{})
}

func (u *upstream) startDialLocked(i int) {
	u.slots[i].dialing = true
	if !u.p.goOwned(func() { u.dialAndServe(i) }) {
		u.slots[i].dialing = false
	}
}

// dialAndServe connects slot i and, on success, becomes the new
// connection's reader.
func (u *upstream) dialAndServe(i int) {
	ctx, cancel := context.WithTimeout(u.p.ctx, u.p.cfg.Timeout)
	d := dialer(u.p.cfg.Mark)
	nc, err := d.DialContext(ctx, "tcp", u.addr.Host)
	cancel()

	u.mu.Lock()
	u.slots[i].dialing = false
	u.broadcastLocked()
	if err == nil && u.p.closed.Load() {
		nc.Close()
		err = ErrClosed
	}
	if err != nil {
		u.dialFails++
		u.dialErr = err
		u.nextDial = time.Now().Add(backoff(u.dialFails))
		u.mu.Unlock()
		return
	}
	u.dialFails, u.dialErr, u.nextDial = 0, nil, time.Time{}
	c := newConn(u, nc)
	u.slots[i].c = c
	u.all[c] = struct{}{}
	u.openConns.Add(1)
	u.mConns.Inc()
	c.ageTimer = time.AfterFunc(u.p.cfg.MaxConnAge, c.expire)
	u.mu.Unlock()

	c.readLoop()
}

// acquire finds (or dials) a connection of u and reserves an ID on it for w.
// Among usable connections the least loaded wins (ties: round-robin), so
// a connection stuck behind a slow query gets fewer new ones.
func (u *upstream) acquire(ctx context.Context, w *waiter) (*conn, uint16, error) {
	for {
		u.mu.Lock()
		if u.p.closed.Load() {
			u.mu.Unlock()
			return nil, 0, ErrClosed
		}
		now := time.Now()
		best, dialing, occupied := u.pickLocked(now)
		if best != nil {
			id, ok, retire := best.reserve(w)
			if ok && retire {
				u.retireLocked(best)
			}
			u.mu.Unlock()
			if ok {
				return best, id, nil
			}
			continue // lost a race with the conn closing: look again
		}
		n := len(u.slots)
		if !dialing && !now.Before(u.nextDial) {
			dialing = u.dialFreeSlotLocked()
		}
		if !dialing {
			dialErr := u.dialErr
			u.mu.Unlock()
			if occupied == n {
				// Every slot holds a conn with maxPendingPerConn queries.
				return nil, 0, ErrOverloaded
			}
			if dialErr == nil {
				dialErr = errors.New("reconnect backoff")
			}
			return nil, 0, &attemptError{to: u.addr.Host, reason: reasonDial, err: dialErr}
		}
		ch := u.changed
		u.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, 0, u.ctxError(ctx)
		case <-u.p.done:
			return nil, 0, ErrClosed
		}
	}
}

// acquireReady is acquire without waiting: it reserves an ID for w on a
// connection that is open now, or returns ok = false (having started a
// dial, if one is due, for the queries that follow).
func (u *upstream) acquireReady(w *waiter) (c *conn, id uint16, ok bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.p.closed.Load() {
		return nil, 0, false
	}
	now := time.Now()
	best, dialing, _ := u.pickLocked(now)
	if best == nil {
		if !dialing && !now.Before(u.nextDial) {
			u.dialFreeSlotLocked()
		}
		return nil, 0, false
	}
	id, ok, retire := best.reserve(w)
	if ok && retire {
		u.retireLocked(best)
	}
	return best, id, ok
}

// pickLocked returns the least loaded usable connection of u (nil if none),
// whether a dial is in progress, and how many slots hold a connection. It
// starts the round-robin slot's dial when that slot is empty, and retires
// connections past MaxConnAge.
func (u *upstream) pickLocked(now time.Time) (best *conn, dialing bool, occupied int) {
	n := len(u.slots)
	first := u.rr % n
	u.rr++
	if s := &u.slots[first]; s.c == nil && !s.dialing && !now.Before(u.nextDial) {
		u.startDialLocked(first)
	}
	bestLoad := 0
	for k := range n {
		s := &u.slots[(first+k)%n]
		if s.c != nil && now.Sub(s.c.created) >= u.p.cfg.MaxConnAge {
			u.retireLocked(s.c) // the timer has not fired yet
		}
		if s.dialing {
			dialing = true
		}
		if s.c == nil {
			continue
		}
		load, usable, dead := s.c.load()
		if dead { // closing: its reader will remove it
			s.c = nil
			continue
		}
		occupied++
		if usable && (best == nil || load < bestLoad) {
			best, bestLoad = s.c, load
		}
	}
	return best, dialing, occupied
}

// dialFreeSlotLocked starts dialling the first empty slot; it reports
// whether a dial is now in progress.
func (u *upstream) dialFreeSlotLocked() bool {
	for i := range u.slots {
		if u.slots[i].c == nil && !u.slots[i].dialing {
			u.startDialLocked(i)
			return u.slots[i].dialing
		}
	}
	return false
}

// tcpAttempt sends r on a pipelined connection and waits for its answer
// until ctx (which carries the attempt's deadline) ends.
func (u *upstream) tcpAttempt(ctx context.Context, r *request) (*dns.Msg, error) {
	w := &waiter{q: r.q, ch: make(chan result, 1)}
	c, id, err := u.acquire(ctx, w)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := c.send(makeFrame(r.wire, id, true)); err != nil {
		c.release(id, w)
		if ctx.Err() != nil {
			return nil, u.ctxError(ctx)
		}
		return nil, &attemptError{to: u.addr.Host, reason: reasonConn, retry: true, blame: &c.blamed, err: fmt.Errorf("write: %w", err)}
	}
	select {
	case res := <-w.ch:
		if res.err != nil {
			if ctx.Err() != nil {
				// Out of time anyway: a timeout, not a retry. (This
				// query may well be the one the conn stalled on.)
				return nil, u.ctxError(ctx)
			}
			return nil, res.err
		}
		u.mDurTCP.Observe(time.Since(start).Seconds())
		return res.msg, nil
	case <-ctx.Done():
		c.release(id, w)
		select {
		case res := <-w.ch: // raced with the answer
			if res.err == nil {
				u.mDurTCP.Observe(time.Since(start).Seconds())
				return res.msg, nil
			}
		default:
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			c.timedOut(w)
		}
		return nil, u.ctxError(ctx)
	case <-u.p.done:
		return nil, ErrClosed
	}
}

// udpAttempt sends r in a datagram from a fresh socket (a random source
// port) and waits for the matching answer.
func (u *upstream) udpAttempt(ctx context.Context, r *request) (*dns.Msg, error) {
	start := time.Now()
	m, err := exchangeUDP(ctx, u.p.ctx, u.p.cfg.Mark, u.addr.Host, r.wire, r.q)
	if err != nil {
		switch {
		case u.p.closed.Load():
			return nil, ErrClosed
		case errors.Is(ctx.Err(), context.Canceled):
			return nil, ctx.Err()
		case ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded):
			// The socket's deadline is the context's: it may fire first.
			return nil, &attemptError{to: u.addr.Host, reason: reasonTimeout, err: ErrTimeout}
		}
		return nil, &attemptError{to: u.addr.Host, reason: reasonNetwork, err: err}
	}
	u.mDurUDP.Observe(time.Since(start).Seconds())
	return m, nil
}

// makeFrame returns a copy of wire with its ID set, behind a 2-byte length
// prefix if tcp.
func makeFrame(wire []byte, id uint16, tcp bool) []byte {
	off := 0
	if tcp {
		off = 2
	}
	b := make([]byte, off+len(wire))
	if tcp {
		binary.BigEndian.PutUint16(b, uint16(len(wire)))
	}
	copy(b[off:], wire)
	binary.BigEndian.PutUint16(b[off:], id)
	return b
}

var longAgo = time.Unix(1, 0)

// interruptWhenDone makes nc's pending I/O fail when ctx ends. The returned
// func undoes that, waiting for the callback if it has already started, so
// no goroutine outlives the caller.
func interruptWhenDone(ctx context.Context, nc net.Conn) (stop func()) {
	if ctx == nil {
		return func() {}
	}
	done := make(chan struct{})
	stopAF := context.AfterFunc(ctx, func() {
		defer close(done)
		_ = nc.SetDeadline(longAgo)
	})
	return func() {
		if !stopAF() {
			<-done
		}
	}
}

var udpBufs = sync.Pool{New: func() any { b := make([]byte, dns.MaxMsgSize); return &b }}

// exchangeUDP sends wire (ID replaced by a random one) from a fresh
// connected UDP socket to host and returns the first datagram answering it;
// others (wrong ID or question, unparseable) are dropped and counted. It
// gives up when ctx or abort (may be nil) ends.
func exchangeUDP(ctx, abort context.Context, mark uint32, host string, wire []byte, q question) (*dns.Msg, error) {
	d := dialer(mark)
	nc, err := d.DialContext(ctx, "udp", host)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	defer interruptWhenDone(ctx, nc)()
	defer interruptWhenDone(abort, nc)()

	id := uint16(rand.Uint32())
	if _, err := nc.Write(makeFrame(wire, id, false)); err != nil {
		return nil, err
	}
	bp := udpBufs.Get().(*[]byte)
	defer udpBufs.Put(bp)
	buf := *bp
	for {
		n, err := nc.Read(buf)
		if err != nil {
			return nil, err
		}
		m, err := parseResponse(append([]byte(nil), buf[:n]...))
		if err != nil || m.Id != id || !q.matches(m) {
			mismatchedTotal.Inc()
			continue
		}
		return m, nil
	}
}

// exchangeTCPOnce does one query on a connection of its own (health
// probes).
func exchangeTCPOnce(ctx context.Context, mark uint32, host string, wire []byte, q question) (*dns.Msg, error) {
	d := dialer(mark)
	nc, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	defer interruptWhenDone(ctx, nc)()

	id := uint16(rand.Uint32())
	if _, err := nc.Write(makeFrame(wire, id, true)); err != nil {
		return nil, err
	}
	br := bufio.NewReader(nc)
	hdr := make([]byte, 2)
	for {
		b, err := readFrame(br, hdr)
		if err != nil {
			return nil, err
		}
		m, err := parseResponse(b)
		if err != nil {
			return nil, err
		}
		if m.Id == id && q.matches(m) {
			return m, nil
		}
	}
}
