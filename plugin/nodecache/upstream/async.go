package upstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// ExchangeAsync is Exchange for a query already in wire form, without a
// goroutine waiting for the answer: it returns as soon as the query is on
// its way, and done receives the answer (with wire's ID) or the error
// Exchange would return. done is called exactly once, from a goroutine of
// the pool — or before ExchangeAsync returns, when it fails at once (pool
// closed, MaxInflight reached, wire not a query). It must not block.
//
// This is the miss path of a UDP fast path running on a locked OS thread:
// when the first healthy upstream is reached over TCP and has a pipelined
// connection open, the query is written from the calling thread and the
// connection's reader hands the answer to done, so no goroutine is woken
// for it. In every other case (no connection open yet, UDP upstream, every
// upstream down) and when that first attempt fails, the exchange goes on
// as Exchange makes it, in a goroutine, until deadline.
func (p *Pool) ExchangeAsync(wire []byte, deadline time.Time, done func(*dns.Msg, error)) {
	q, err := questionOfWire(wire)
	if err != nil {
		done(nil, fmt.Errorf("upstream: %w", err))
		return
	}
	if p.closed.Load() {
		done(nil, ErrClosed)
		return
	}
	if !p.admit() {
		done(nil, ErrOverloaded)
		return
	}
	r := &request{wire: wire, q: q}
	id := binary.BigEndian.Uint16(wire)
	finish := func(m *dns.Msg, err error) {
		p.leave()
		if m != nil {
			m.Id = id
		}
		done(m, err)
	}
	cands, allDown := p.candidates(make([]*upstream, 0, len(p.ups)))
	// rest makes the attempts after the first from, as Exchange would.
	rest := func(from int, lastErr error) {
		ok := p.goOwned(func() {
			ctx, cancel := context.WithDeadline(p.ctx, deadline)
			defer cancel()
			finish(p.attempts(ctx, r, cands, from, allDown, lastErr))
		})
		if !ok {
			finish(nil, ErrClosed)
		}
	}

	timeout := min(p.cfg.Timeout, time.Until(deadline))
	if u := cands[0]; !allDown && u.proto == TransportTCP && timeout > 0 {
		a := &asyncAttempt{u: u, answered: func(m *dns.Msg) { finish(m, nil) }, failed: func(err error) { rest(1, err) }}
		if a.start(r, timeout) {
			return
		}
	}
	rest(0, nil)
}

// questionOfWire reads the question of a packed query.
func questionOfWire(wire []byte) (question, error) {
	if len(wire) < dnsHeaderLen || binary.BigEndian.Uint16(wire[4:]) != 1 {
		return question{}, errors.New("not a one-question query")
	}
	name, off, err := dns.UnpackDomainName(wire, dnsHeaderLen)
	if err != nil {
		return question{}, fmt.Errorf("query name: %w", err)
	}
	if off+4 > len(wire) {
		return question{}, errors.New("query truncated in its question")
	}
	if len(wire) > dns.MaxMsgSize {
		return question{}, fmt.Errorf("query of %d bytes is too large", len(wire))
	}
	return question{has: true, name: name, qtype: binary.BigEndian.Uint16(wire[off:]), class: binary.BigEndian.Uint16(wire[off+2:])}, nil
}

// asyncAttempt is the first attempt of an ExchangeAsync: a query written to
// a pipelined connection that nobody waits for. It ends exactly once, by
// the answer or the loss of the connection (complete, from the conn's
// reader) or by its timer (expire).
type asyncAttempt struct {
	u        *upstream
	answered func(*dns.Msg)
	failed   func(error) // the exchange goes on after this attempt

	w     waiter
	began time.Time

	mu      sync.Mutex // guards the four below against complete/expire racing start
	c       *conn
	id      uint16
	timer   *time.Timer
	settled bool
}

// start reserves an ID on a connection that is open now and writes the
// query; false means nothing was sent and the attempt is not made.
func (a *asyncAttempt) start(r *request, timeout time.Duration) bool {
	a.w = waiter{q: r.q, notify: a.complete}
	a.mu.Lock()
	c, id, ok := a.u.acquireReady(&a.w)
	if !ok {
		a.mu.Unlock()
		return false
	}
	a.c, a.id = c, id
	a.u.inflight.Add(1)
	a.u.mReqTCP.Inc()
	a.began = time.Now()
	a.timer = time.AfterFunc(timeout, a.expire)
	a.mu.Unlock()

	if err := c.send(makeFrame(r.wire, id, true)); err != nil {
		c.release(id, &a.w)
		a.end(&attemptError{to: a.u.addr.Host, reason: reasonConn, retry: true, blame: &c.blamed, err: fmt.Errorf("write: %w", err)})
	}
	return true
}

// settle marks the attempt ended; only its first caller goes on.
func (a *asyncAttempt) settle() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.settled {
		return false
	}
	a.settled = true
	if a.timer != nil {
		a.timer.Stop()
	}
	return true
}

// complete is the waiter's notify: the conn's reader delivers the answer,
// or fails the query when the connection is lost.
func (a *asyncAttempt) complete(res result) {
	if res.err != nil {
		a.end(res.err)
		return
	}
	if !a.settle() {
		return
	}
	a.u.inflight.Add(-1)
	a.u.mDurTCP.Observe(time.Since(a.began).Seconds())
	a.u.succeeded()
	a.answered(res.msg)
}

// expire is the attempt's timer.
func (a *asyncAttempt) expire() {
	a.mu.Lock()
	c, id := a.c, a.id
	a.mu.Unlock()
	c.release(id, &a.w)
	c.timedOut(&a.w)
	a.end(&attemptError{to: a.u.addr.Host, reason: reasonTimeout, err: ErrTimeout})
}

// end closes a failed attempt and lets the exchange go on.
func (a *asyncAttempt) end(err error) {
	if !a.settle() {
		return
	}
	a.u.inflight.Add(-1)
	a.u.p.noteFailure(a.u, err)
	a.failed(err)
}
