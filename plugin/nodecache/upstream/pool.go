package upstream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Errors returned by Exchange. Use errors.Is: they may be wrapped.
var (
	// ErrOverloaded: MaxInflight queries are already in flight.
	ErrOverloaded = errors.New("upstream: too many queries in flight")
	// ErrClosed: the pool is closed (or was closed during the Exchange).
	ErrClosed = errors.New("upstream: pool closed")
	// ErrNoHealthy: every upstream is marked down and the one attempt made
	// anyway failed too; the last attempt's error is wrapped as well.
	ErrNoHealthy = errors.New("upstream: no healthy upstream")
	// ErrTimeout: an attempt got no matching answer before its deadline.
	ErrTimeout = errors.New("upstream: timeout waiting for answer")
)

// attemptError is one failed attempt at one upstream.
type attemptError struct {
	to     string // ip:port
	reason string // a reason* constant: the failures_total label
	retry  bool   // the connection failed under the query: worth one more try
	// blame, if set, is shared by every attempt failed by the same broken
	// connection: only the first one counts against the upstream's health.
	blame *atomic.Bool
	err   error
}

func (e *attemptError) Error() string {
	return "upstream " + e.to + ": " + e.reason + ": " + e.err.Error()
}

func (e *attemptError) Unwrap() error { return e.err }

// Pool sends queries to a set of upstreams over pipelined TCP connections
// (or UDP). It is safe for concurrent use.
type Pool struct {
	cfg      Config
	ups      []*upstream
	rr       atomic.Uint32
	inflight atomic.Int64

	ctx    context.Context // cancelled by Close; parent of dials and probes
	cancel context.CancelFunc
	done   chan struct{} // closed by Close
	closed atomic.Bool

	mu       sync.Mutex // guards closing and wg.Add against wg.Wait
	isClosed bool
	wg       sync.WaitGroup // every goroutine the pool starts
}

// UpstreamStatus is a snapshot of one upstream, for health and metrics.
type UpstreamStatus struct {
	Address   string // ip:port
	Transport string // transport used by default for this upstream: "tcp" or "udp"
	Healthy   bool   // false while marked down
	OpenConns int    // open TCP connections, draining ones included
	Inflight  int    // attempts in progress
	Fails     int    // consecutive failed attempts
}

// New validates cfg (errors name the field), fills in defaults and returns a
// Pool. No connection is made before the first Exchange.
func New(cfg Config) (*Pool, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &Pool{cfg: cfg, done: make(chan struct{})}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	for _, a := range cfg.Upstreams {
		p.ups = append(p.ups, newUpstream(p, a))
	}
	return p, nil
}

// Exchange sends m to an upstream and returns the answer, with its ID set to
// m.Id. m is not modified. Healthy upstreams are tried in round-robin order,
// each attempt bounded by Config.Timeout and ctx; a failed attempt moves on
// to the next healthy upstream. A query lost because its connection failed
// under it is retried once more. When every upstream is marked down one of
// them is tried anyway (so that recovery is noticed early) and its failure
// is reported wrapped in ErrNoHealthy.
func (p *Pool) Exchange(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	if m == nil {
		return nil, errors.New("upstream: nil message")
	}
	if p.closed.Load() {
		return nil, ErrClosed
	}
	if !p.admit() {
		return nil, ErrOverloaded
	}
	defer p.leave()

	wire, err := packQuery(m)
	if err != nil {
		return nil, fmt.Errorf("upstream: packing query: %w", err)
	}
	resp, err := p.exchange(ctx, &request{wire: wire, q: questionOf(m)})
	if err != nil {
		return nil, err
	}
	resp.Id = m.Id
	return resp, nil
}

// admit counts a query in flight, or reports false when MaxInflight are.
func (p *Pool) admit() bool {
	if p.inflight.Add(1) > int64(p.cfg.MaxInflight) {
		p.inflight.Add(-1)
		overloadedTotal.Inc()
		return false
	}
	inflightGauge.Inc()
	return true
}

// leave ends what admit counted.
func (p *Pool) leave() {
	p.inflight.Add(-1)
	inflightGauge.Dec()
}

// exchange makes the attempts of one Exchange (see there) for r.
func (p *Pool) exchange(ctx context.Context, r *request) (*dns.Msg, error) {
	var buf [8]*upstream
	cands, allDown := p.candidates(buf[:0])
	return p.attempts(ctx, r, cands, 0, allDown, nil)
}

// attempts tries cands[from:] in turn until one answers. An attempt at
// cands[from-1] has already failed with lastErr when from > 0.
func (p *Pool) attempts(ctx context.Context, r *request, cands []*upstream, from int, allDown bool, lastErr error) (*dns.Msg, error) {
	retried := false
	retry := func(err error) bool {
		var ae *attemptError
		return !retried && errors.As(err, &ae) && ae.retry
	}
	if from > 0 && from == len(cands) && retry(lastErr) {
		retried = true
		from--
	}
	for i := from; i < len(cands); i++ {
		if ctx.Err() != nil {
			break
		}
		resp, err := p.attempt(ctx, cands[i], r)
		if err == nil {
			return resp, nil
		}
		if p.closed.Load() || errors.Is(err, ErrClosed) {
			return nil, ErrClosed
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
		if i == len(cands)-1 && retry(err) {
			// The connection died under the query and there is no other
			// upstream left to move to: once more on a fresh connection.
			retried = true
			i--
		}
	}
	if lastErr == nil { // ctx was done before the first attempt
		return nil, ctx.Err()
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(lastErr, ErrTimeout) {
		return nil, cerr
	}
	if allDown {
		return nil, fmt.Errorf("%w: %w", ErrNoHealthy, lastErr)
	}
	return nil, lastErr
}

// candidates returns the healthy upstreams in round-robin order, or, when
// none is, one upstream (allDown = true).
func (p *Pool) candidates(buf []*upstream) (cands []*upstream, allDown bool) {
	n := uint32(len(p.ups))
	start := (p.rr.Add(1) - 1) % n
	for k := uint32(0); k < n; k++ {
		if u := p.ups[(start+k)%n]; !u.down.Load() {
			buf = append(buf, u)
		}
	}
	if len(buf) > 0 {
		return buf, false
	}
	return append(buf, p.ups[start]), true
}

// attempt makes one attempt at u: one exchange over u's transport, plus a
// TCP one if a UDP answer was truncated. It updates u's health and the
// metrics.
func (p *Pool) attempt(ctx context.Context, u *upstream, r *request) (*dns.Msg, error) {
	u.inflight.Add(1)
	defer u.inflight.Add(-1)

	proto := u.proto
	resp, err := p.attemptProto(ctx, u, r, proto)
	if err == nil && resp.Truncated && proto == TransportUDP {
		proto = TransportTCP
		resp, err = p.attemptProto(ctx, u, r, proto)
	}
	if err == nil {
		u.succeeded()
		return resp, nil
	}
	if !errors.Is(ctx.Err(), context.Canceled) {
		p.noteFailure(u, err)
	}
	return nil, err
}

// noteFailure counts a failed attempt at u against its health (once per
// broken connection) and in the failure metrics.
func (p *Pool) noteFailure(u *upstream, err error) {
	var ae *attemptError
	if !errors.As(err, &ae) || p.closed.Load() {
		return
	}
	failuresTotal.WithLabelValues(u.addr.Host, ae.reason).Inc()
	if ae.blame == nil || ae.blame.CompareAndSwap(false, true) {
		u.failed()
	}
}

func (p *Pool) attemptProto(ctx context.Context, u *upstream, r *request, proto string) (*dns.Msg, error) {
	actx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	if proto == TransportUDP {
		u.mReqUDP.Inc()
		return u.udpAttempt(actx, r)
	}
	u.mReqTCP.Inc()
	return u.tcpAttempt(actx, r)
}

// ctxError converts the end of an attempt's context into an error: a
// deadline (the attempt's own or the caller's) is a timeout of upstream,
// a cancellation is the caller's business.
func (u *upstream) ctxError(ctx context.Context) error {
	if u.p.closed.Load() {
		return ErrClosed
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &attemptError{to: u.addr.Host, reason: reasonTimeout, err: ErrTimeout}
	}
	return ctx.Err()
}

// Close stops every goroutine of the pool and closes every connection.
// Exchanges in progress return ErrClosed. Close is idempotent.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.isClosed {
		p.mu.Unlock()
		return nil
	}
	p.isClosed = true
	p.closed.Store(true)
	close(p.done)
	p.cancel()
	p.mu.Unlock()

	for _, u := range p.ups {
		u.mu.Lock()
		for c := range u.all {
			c.kill(ErrClosed)
		}
		u.broadcastLocked()
		u.mu.Unlock()
	}
	p.wg.Wait()
	return nil
}

// Upstreams returns a snapshot of every upstream's state, in configuration
// order.
func (p *Pool) Upstreams() []UpstreamStatus {
	out := make([]UpstreamStatus, 0, len(p.ups))
	for _, u := range p.ups {
		out = append(out, UpstreamStatus{
			Address:   u.addr.Host,
			Transport: u.proto,
			Healthy:   !u.down.Load(),
			OpenConns: int(u.openConns.Load()),
			Inflight:  int(u.inflight.Load()),
			Fails:     int(u.fails.Load()),
		})
	}
	return out
}

// goOwned runs f in a goroutine that Close waits for; it returns false
// (and does not run f) once the pool is closed.
func (p *Pool) goOwned(f func()) bool {
	if !p.enter() {
		return false
	}
	go func() {
		defer p.wg.Done()
		f()
	}()
	return true
}

// enter registers the calling goroutine (a timer callback) with the pool's
// WaitGroup; the caller must call p.wg.Done. It returns false once the pool
// is closed.
func (p *Pool) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.isClosed {
		return false
	}
	p.wg.Add(1)
	return true
}

// request is a packed query shared by every attempt of one Exchange.
type request struct {
	wire []byte // packed, ID 0, no length prefix
	q    question
}

// upstream is one configured upstream server and its connections.
type upstream struct {
	p     *Pool
	addr  Addr
	proto string // default transport for this upstream

	mReqTCP, mReqUDP prometheus.Counter
	mDurTCP, mDurUDP prometheus.Observer
	mConns           prometheus.Gauge
	mHealthy         prometheus.Gauge

	fails     atomic.Int64
	down      atomic.Bool
	inflight  atomic.Int64
	openConns atomic.Int64

	mu        sync.Mutex
	slots     []slot             // persistent TCP connections, ConnsPerUpstream of them
	all       map[*conn]struct{} // every open conn, draining ones included
	rr        int
	dialFails int // consecutive dial failures
	nextDial  time.Time
	dialErr   error
	changed   chan struct{} // closed (and replaced) when a dial ends
	probing   bool          // a health loop is running
}

type slot struct {
	c       *conn
	dialing bool
}

func newUpstream(p *Pool, a Addr) *upstream {
	u := &upstream{
		p:       p,
		addr:    a,
		proto:   a.Transport,
		slots:   make([]slot, p.cfg.ConnsPerUpstream),
		all:     make(map[*conn]struct{}),
		changed: make(chan struct{}),
	}
	if u.proto == "" {
		u.proto = TransportTCP
		if p.cfg.PreferUDP {
			u.proto = TransportUDP
		}
	}
	u.mReqTCP = requestsTotal.WithLabelValues(a.Host, TransportTCP)
	u.mReqUDP = requestsTotal.WithLabelValues(a.Host, TransportUDP)
	u.mDurTCP = requestDuration.WithLabelValues(a.Host, TransportTCP)
	u.mDurUDP = requestDuration.WithLabelValues(a.Host, TransportUDP)
	u.mConns = connectionsGauge.WithLabelValues(a.Host)
	u.mHealthy = healthyGauge.WithLabelValues(a.Host)
	u.mHealthy.Set(1)
	return u
}

// succeeded records an answered attempt.
func (u *upstream) succeeded() {
	if u.fails.Load() != 0 {
		u.fails.Store(0)
	}
	if u.down.Load() {
		u.mu.Lock()
		u.markUpLocked()
		u.mu.Unlock()
	}
}

// failed records a failed attempt; MaxFails in a row mark u down and start
// its health checks.
func (u *upstream) failed() {
	if int(u.fails.Add(1)) < u.p.cfg.MaxFails || u.down.Load() {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.down.Load() {
		return
	}
	u.down.Store(true)
	u.mHealthy.Set(0)
	if !u.probing {
		u.probing = u.p.goOwned(u.healthLoop)
	}
}

func (u *upstream) markUpLocked() {
	u.fails.Store(0)
	u.dialFails = 0
	u.nextDial = time.Time{}
	if u.down.Load() {
		u.down.Store(false)
		u.mHealthy.Set(1)
	}
}

// healthLoop probes u every HealthCheck while it is marked down. It is the
// only health goroutine of u (u.probing) and ends when u is up again or the
// pool closes.
func (u *upstream) healthLoop() {
	t := time.NewTicker(u.p.cfg.HealthCheck)
	defer t.Stop()
	for {
		select {
		case <-u.p.done:
			return
		case <-t.C:
		}
		u.mu.Lock()
		if !u.down.Load() {
			u.probing = false
			u.mu.Unlock()
			return
		}
		u.mu.Unlock()
		if err := u.probe(); err != nil {
			continue
		}
		u.mu.Lock()
		u.markUpLocked()
		u.probing = false
		u.mu.Unlock()
		return
	}
}

// probe sends ". IN NS" over u's transport on a connection of its own; any
// answer means healthy.
func (u *upstream) probe() error {
	m := new(dns.Msg)
	m.SetQuestion(".", dns.TypeNS)
	m.RecursionDesired = false
	wire, err := packQuery(m)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(u.p.ctx, u.p.cfg.Timeout)
	defer cancel()
	if u.proto == TransportUDP {
		_, err = exchangeUDP(ctx, nil, u.p.cfg.Mark, u.addr.Host, wire, questionOf(m))
	} else {
		_, err = exchangeTCPOnce(ctx, u.p.cfg.Mark, u.addr.Host, wire, questionOf(m))
	}
	return err
}

// backoff is the delay before redialling after n consecutive dial failures:
// exponential from 25ms, capped at 1s, with jitter in [d/2, d].
func backoff(n int) time.Duration {
	d := 25 * time.Millisecond << min(max(n-1, 0), 6)
	d = min(d, time.Second)
	return d/2 + rand.N(d/2+1)
}
