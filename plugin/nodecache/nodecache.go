// Package nodecache is a CoreDNS plugin: a node-local DNS cache that keeps
// answers in wire format, coalesces concurrent misses, refreshes popular
// entries before they expire, serves stale answers while every upstream is
// down, and forwards misses over pipelined TCP connections. On Linux it also
// answers cache hits from a UDP fast path beside CoreDNS's own server loop.
package nodecache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/plugin/nodecache/upstream"
)

const pluginName = "nodecache"

var log = clog.NewWithPlugin(pluginName)

// Options is the parsed Corefile configuration of one nodecache block.
type Options struct {
	Upstreams      []upstream.Addr
	SuccessCap     int
	Success        ttlPolicy
	DenialCap      int
	Denial         ttlPolicy
	ServfailTTL    uint32
	Prefetch       int           // popularity threshold; 0 disables prefetch
	PrefetchWindow time.Duration // hits must come closer together than this
	PrefetchPct    int           // refresh when less than this % of the TTL is left
	ServeStale     time.Duration // 0 disables
	StaleTTL       uint32        // TTL of stale answers (RFC 8767 suggests 30 s)
	PreferUDP      bool
	MaxInflight    int
	HealthCheck    time.Duration
	Timeout        time.Duration // whole upstream resolution, all attempts
	FastPath       int           // UDP fast-path sockets per listener; 0 = off, -1 = one per CPU
	UpstreamMark   uint32        // SO_MARK of upstream sockets; 0 = none
	MaxBytes       int64         // bytes the entries of both caches may take together
}

// DefaultMaxBytes is the default byte budget of a nodecache block's
// entries: well below the 200 MiB memory limit node-local-dns DaemonSets
// commonly run with, whatever the entry capacities.
const DefaultMaxBytes = 64 << 20

// DefaultOptions are the values used for everything a Corefile leaves out.
func DefaultOptions() Options {
	return Options{
		SuccessCap:     10000,
		Success:        ttlPolicy{max: 3600, min: 5},
		DenialCap:      10000,
		Denial:         ttlPolicy{max: 1800, min: 0},
		ServfailTTL:    5,
		PrefetchWindow: time.Minute,
		PrefetchPct:    10,
		StaleTTL:       30,
		MaxInflight:    2000,
		HealthCheck:    500 * time.Millisecond,
		Timeout:        5 * time.Second,
		FastPath:       -1,
		MaxBytes:       DefaultMaxBytes,
	}
}

// NodeCache is the plugin handler.
type NodeCache struct {
	Next plugin.Handler
	opts Options

	pool    *upstream.Pool
	success *store
	denial  *store
	bytes   *budget // of success and denial together
	flights flightGroup

	// fastSafe is true when nothing before nodecache in its server block can
	// change an answer, so the fast path may answer for the block.
	fastSafe    bool
	fastFilters []FastPathFilter  // plugins in front that pass some answers only
	cfg         *dnsserver.Config // the server block's (nil outside CoreDNS setup)
	blocks      *instanceBlocks   // the instance's nodecache blocks (nil outside setup)

	bg     sync.WaitGroup // prefetch and background refreshes
	ctx    context.Context
	cancel context.CancelFunc
	clock  func() int64
}

var monoBase = time.Now()

// monotonic nanoseconds since process start: cheap, and immune to wall
// clock steps.
func monoNow() int64 { return int64(time.Since(monoBase)) }

// New builds a NodeCache; Start must be called before it serves.
func New(opts Options) *NodeCache {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	b := newBudget(opts.MaxBytes)
	c := &NodeCache{
		opts:    opts,
		success: newStore("success", opts.SuccessCap, b, dropped),
		denial:  newStore("denial", opts.DenialCap, b, dropped),
		bytes:   b,
		clock:   monoNow,
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c
}

// Start opens the upstream pool.
func (c *NodeCache) Start() error {
	p, err := upstream.New(upstream.Config{
		Upstreams:   c.opts.Upstreams,
		PreferUDP:   c.opts.PreferUDP,
		MaxInflight: c.opts.MaxInflight,
		HealthCheck: c.opts.HealthCheck,
		Mark:        c.opts.UpstreamMark,
	})
	if err != nil {
		return err
	}
	c.pool = p
	c.bytes.register()
	return nil
}

// Stop ends background work and closes upstream connections.
func (c *NodeCache) Stop() error {
	stopFrontends(c)
	c.cancel()
	c.withdrawAll() // after cancel: a stopped cache offers nothing more
	c.bg.Wait()
	c.bytes.unregister()
	if c.pool != nil {
		return c.pool.Close()
	}
	return nil
}

// Name implements plugin.Handler.
func (c *NodeCache) Name() string { return pluginName }

// ServeDNS implements plugin.Handler.
func (c *NodeCache) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	blockIfWedged(&wedgedChain)
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		return c.forwardUncached(ctx, w, r)
	}
	state := request.Request{W: w, Req: r}
	server := metrics.WithServer(ctx)
	q := r.Question[0]

	var nameBuf, lowBuf [maxName + 1]byte
	n, err := dns.PackDomainName(q.Name, nameBuf[:], 0, nil, false)
	if err != nil {
		return dns.RcodeFormatError, err
	}
	orig := nameBuf[:n]
	k := makeKey(lowerName(lowBuf[:], orig), q.Qtype, q.Qclass, state.Do(), r.CheckingDisabled)
	if q.Qtype == dns.TypeTXT && isProbe(&q) {
		c.lookup(k) // through the cache's lock, as a query would
		return answerProbe(w, r)
	}
	a := answer{id: r.Id, rd: r.RecursionDesired, name: orig, hasOPT: r.IsEdns0() != nil, do: state.Do()}

	requests.WithLabelValues(server).Inc()
	now := c.clock()
	e := c.lookup(k)
	if e != nil && e.fresh(now) {
		hits.WithLabelValues(server, cacheType(e)).Inc()
		c.maybePrefetch(k, e, now, server, func() *dns.Msg { return r })
		c.allowFastPath(ctx, e, &q)
		c.noteHot(k, e, now)
		return c.write(w, e, &a, now)
	}
	misses.WithLabelValues(server).Inc()

	stale := c.usableStale(e, now)
	if stale != nil && c.allUpstreamsDown() {
		// Serve at once and refresh behind: waiting for upstreams known to be
		// down would only add their timeout to every answer. One refresh
		// per entry at a time: at thousands of queries a second for stale
		// entries, a refresh per query would pile up goroutines, each
		// waiting out the upstream timeout.
		if stale.refreshing.CompareAndSwap(false, true) {
			c.refreshAsync(k, stale, r, server)
		}
		return c.writeStale(w, server, stale, &a, now)
	}

	res := c.resolve(ctx, k, r)
	if res.err != nil {
		if stale != nil {
			return c.writeStale(w, server, stale, &a, now)
		}
		chainObsFrom(ctx).wentUpstream(res.err)
		return dns.RcodeServerFailure, plugin.Error(pluginName, res.err)
	}
	chainObsFrom(ctx).wentUpstream(nil)
	if res.e != nil {
		c.allowFastPath(ctx, res.e, &q)
		return c.write(w, res.e, &a, c.clock())
	}
	return c.writeMsg(w, r, res.msg)
}

// zone is the server block's zone, "." outside CoreDNS setup.
func (c *NodeCache) zone() string {
	if c.cfg == nil {
		return "."
	}
	return c.cfg.Zone
}

func cacheType(e *entry) string {
	if e.denial {
		return "denial"
	}
	return "success"
}

func (c *NodeCache) lookup(k key) *entry {
	if e := c.success.get(k); e != nil {
		return e
	}
	return c.denial.get(k)
}

func (c *NodeCache) usableStale(e *entry, now int64) *entry {
	if e == nil || c.opts.ServeStale <= 0 || e.rcode == dns.RcodeServerFailure {
		return nil
	}
	if now-e.expires > int64(c.opts.ServeStale) {
		return nil
	}
	return e
}

func (c *NodeCache) allUpstreamsDown() bool {
	for _, u := range c.pool.Upstreams() {
		if u.Healthy {
			return false
		}
	}
	return true
}

// write sends e rendered for a. Through the plugin chain the response goes
// out as a dns.Msg so that plugins wrapping the writer (metrics, log,
// autopath) see it; the server's scrub writer truncates for UDP clients.
func (c *NodeCache) write(w dns.ResponseWriter, e *entry, a *answer, now int64) (int, error) {
	var buf [1232]byte
	b := e.render(buf[:0], a, now)
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return dns.RcodeServerFailure, plugin.Error(pluginName, err)
	}
	w.WriteMsg(m)
	return written(m.Rcode), nil
}

func (c *NodeCache) writeStale(w dns.ResponseWriter, server string, e *entry, a *answer, now int64) (int, error) {
	servedStale.WithLabelValues(server).Inc()
	a.staleTTL = c.opts.StaleTTL
	return c.write(w, e, a, now)
}

// result is the outcome of one upstream resolution, shared by every client
// that asked for the same key while it was in flight.
type result struct {
	e   *entry   // the response as an entry (cached or not)
	msg *dns.Msg // set instead of e when the response could not be packed as one
	err error
}

// resolve asks the upstreams once per key however many clients ask at the
// same time, and caches what may be cached.
func (c *NodeCache) resolve(ctx context.Context, k key, r *dns.Msg) result {
	res, shared := c.flights.do(k, func() result {
		// The client missed the cache, but a flight for k may have landed
		// since: its answer is cached, and asking upstream again would
		// break coalescing.
		if e := c.lookup(k); e != nil && e.fresh(c.clock()) {
			return result{e: e}
		}
		return c.fetch(k, r, metrics.WithServer(ctx))
	}, ctx.Done())
	if shared {
		coalesced.WithLabelValues(metrics.WithServer(ctx)).Inc()
	}
	return res
}

var (
	errMismatch = errors.New("upstream answer does not match the question")
	errGaveUp   = errors.New("client gave up waiting for the upstream answer")
)

// fetch queries upstream and stores the answer. It runs detached from the
// asking client's context: other clients may be waiting for it.
func (c *NodeCache) fetch(k key, r *dns.Msg, server string) result {
	q := r.Question[0]
	uq := new(dns.Msg)
	uq.Id = dns.Id()
	uq.RecursionDesired = true
	uq.CheckingDisabled = r.CheckingDisabled
	uq.Question = []dns.Question{{Name: q.Name, Qtype: q.Qtype, Qclass: q.Qclass}}
	uq.SetEdns0(ednsAdvertise, k.bits&1 != 0)

	ctx, cancel := context.WithTimeout(c.ctx, c.opts.Timeout)
	defer cancel()
	resp, err := c.pool.Exchange(ctx, uq)
	if err != nil {
		return result{err: err}
	}
	if !answersKey(resp, k) {
		return result{err: errMismatch}
	}
	return c.store(k, resp, server)
}

// answersKey reports whether resp's one question is k's: name (in any
// letter case), type and class.
func answersKey(resp *dns.Msg, k key) bool {
	if len(resp.Question) != 1 || resp.Question[0].Qtype != k.qtype || resp.Question[0].Qclass != k.qclass {
		return false
	}
	var buf, low [maxName + 1]byte
	n, err := dns.PackDomainName(resp.Question[0].Name, buf[:], 0, nil, false)
	return err == nil && string(lowerName(low[:], buf[:n])) == string(k.name)
}

// store turns an upstream response into an entry, caching it when allowed.
func (c *NodeCache) store(k key, resp *dns.Msg, server string) result {
	now := c.clock()
	ttl, isDenial, ok := classify(resp, c.opts.Success, c.opts.Denial, c.opts.ServfailTTL)
	if !ok {
		return result{msg: resp}
	}
	e, err := newEntry(resp, ttl, isDenial, now)
	if err != nil {
		return result{msg: resp}
	}
	if ttl == 0 {
		return result{e: e}
	}
	in, other := c.success, c.denial
	if isDenial {
		in, other = c.denial, c.success
	}
	if prev := other.get(k); prev != nil {
		other.remove(k, prev)
	}
	old := in.peek(k)
	if old != nil && old.rcode == e.rcode {
		// Same question, same kind of answer: the listeners that could
		// serve the old one on their fast path can serve this one.
		e.fastOn.Store(old.fastOn.Load())
	}
	e.live.Store(true)
	if !in.add(k, e) {
		// Larger than the whole byte budget: served, not kept, and the
		// answer it replaces goes too.
		e.live.Store(false)
		if old != nil {
			in.remove(k, old)
		}
		return result{e: e}
	}
	c.replaced(k, old, e)
	entries.WithLabelValues(server, "success").Set(float64(c.success.len()))
	entries.WithLabelValues(server, "denial").Set(float64(c.denial.len()))
	return result{e: e}
}

// maybePrefetch counts hits and starts a prefetch when a popular entry is
// close to expiry: one refresh per entry at a time, so prefetch load scales
// with the number of popular names, not the query rate.
func (c *NodeCache) maybePrefetch(k key, e *entry, now int64, server string, query func() *dns.Msg) {
	if c.opts.Prefetch <= 0 {
		return
	}
	last := e.lastHit.Swap(now)
	var n uint32
	if last != 0 && now-last > int64(c.opts.PrefetchWindow) {
		e.hits.Store(1)
		n = 1
	} else {
		n = e.hits.Add(1)
	}
	if int(n) < c.opts.Prefetch {
		return
	}
	if left := e.expires - now; left*100 > int64(c.opts.PrefetchPct)*int64(e.ttl)*1e9 {
		return
	}
	if !e.refreshing.CompareAndSwap(false, true) {
		return
	}
	prefetches.Inc()
	c.refreshAsync(k, e, query(), server)
}

// refreshAsync re-resolves k in the background (prefetch, stale refresh)
// for e, whose refreshing flag the caller has set: it is cleared when the
// refresh ends, so a failed one may be tried again.
func (c *NodeCache) refreshAsync(k key, e *entry, r *dns.Msg, server string) {
	k.name = append([]byte(nil), k.name...)
	r = r.Copy()
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		defer e.refreshing.Store(false)
		if c.ctx.Err() != nil {
			return
		}
		c.flights.do(k, func() result { return c.fetch(k, r, server) }, c.ctx.Done())
	}()
}

// forwardUncached passes anything that is not a plain one-question query
// straight to the upstreams.
func (c *NodeCache) forwardUncached(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	resp, err := c.pool.Exchange(ctx, r)
	chainObsFrom(ctx).wentUpstream(err)
	if err != nil {
		return dns.RcodeServerFailure, plugin.Error(pluginName, err)
	}
	return c.writeMsg(w, r, resp)
}

// writeMsg answers r with an upstream response that is not rendered from
// an entry (uncacheable answers, queries forwarded as they are), made to
// look as a rendered entry would: r's ID, RD bit and letter case, and the
// upstream's OPT record replaced by ours when r has one and dropped when it
// has none (RFC 6891 section 7). resp is not modified: other clients may be
// answered from it.
func (c *NodeCache) writeMsg(w dns.ResponseWriter, r, resp *dns.Msg) (int, error) {
	m := resp.Copy()
	m.Id = r.Id
	m.RecursionDesired = r.RecursionDesired
	if len(m.Question) == 1 && len(r.Question) == 1 && strings.EqualFold(m.Question[0].Name, r.Question[0].Name) {
		m.Question[0].Name = r.Question[0].Name
	}
	m.Extra = stripOPT(m.Extra)
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(ednsAdvertise, o.Do())
	} else if m.Rcode > 0xF {
		// An extended RCODE lives in the OPT record, which this client
		// cannot be sent.
		m.Rcode = dns.RcodeServerFailure
	}
	w.WriteMsg(m)
	return written(m.Rcode), nil
}

// written is what ServeDNS returns for a reply it has written: an RCODE
// for which CoreDNS's server writes nothing more. For SERVFAIL, REFUSED,
// FORMERR and NOTIMP the server would write an error reply of its own
// after ours (plugin.ClientWrite); the metrics plugin reads the RCODE from
// the reply written anyway.
func written(rcode int) int {
	if plugin.ClientWrite(rcode) {
		return rcode
	}
	return dns.RcodeSuccess
}
