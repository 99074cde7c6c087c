package nodecache

import (
	"context"
	"net"
	"sync"
	"sync/atomic"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin/pkg/transport"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// The UDP fast path.
//
// CoreDNS spends most of a cached answer's cost outside any plugin: waking a
// goroutine from the netpoller, unpacking the query into a dns.Msg, the
// server mux, the plugin chain, packing the reply. The fast path skips all
// of that for cache hits: beside the UDP socket CoreDNS serves, it binds
// SO_REUSEPORT sockets on the same address, read by OS threads in blocking
// batched syscalls, steers the listener's datagrams to them with an
// SK_REUSEPORT eBPF program, and answers hits straight from the wire-format
// cache. Everything else — misses, queries it does not fully understand —
// is handed to the CoreDNS server's ServeDNS, exactly as CoreDNS's own loop
// would, with a ResponseWriter that replies through the fast-path socket.
//
// The fast path never decides routing itself. An entry becomes servable on
// a listener only after the plugin chain has served that very question on
// that listener through a nodecache block with nothing in front that could
// change the answer (see chainIsTransparent and FastPathFilter). So zones, blocks and plugin
// order keep their CoreDNS meaning.

// frontend is the fast path of one UDP listener address.
type frontend struct {
	addr    string // host:port
	bit     uint64
	srv     *dnsserver.Server
	caches  atomic.Pointer[[]*NodeCache] // blocks seen serving this listener
	routes  atomic.Pointer[routeTable]   // where misses go; nil: all through the chain
	mMisses prometheus.Counter           // fastpath_misses_total of the listener
	// misses_total and coalesced_total of the server, counted per fast-path
	// miss without a label lookup
	mCacheMisses, mCoalesced prometheus.Counter

	misses chan struct{} // bounds concurrent hand-offs to the chain
	stop   func()
	// threads: per fast-path thread, when it last came back to its socket
	// (monoNow), for FastPathStalled; set by start, before fe is published.
	threads []*atomic.Int64
}

var (
	frontMu    sync.Mutex                           // serialises changes to the three below
	frontends  atomic.Pointer[map[string]*frontend] // by listener address; copy on write, read lock-free per query
	frontBits  uint64                               // bits in use
	frontOwner = map[*NodeCache][]*frontend{}
)

// frontendFor returns the fast path of a listener address, if any.
func frontendFor(addr string) *frontend {
	if m := frontends.Load(); m != nil {
		return (*m)[addr]
	}
	return nil
}

// setFrontend replaces (fe != nil) or removes the fast path of addr;
// frontMu must be held.
func setFrontend(addr string, fe *frontend) {
	next := map[string]*frontend{}
	if m := frontends.Load(); m != nil {
		for k, v := range *m {
			next[k] = v
		}
	}
	if fe == nil {
		delete(next, addr)
	} else {
		next[addr] = fe
	}
	frontends.Store(&next)
}

// installFastPath hooks the server's UDP start: CoreDNS calls
// UDPDecorateWriterFunc with the *Server when it starts serving a plain DNS
// UDP listener, which is the moment the fast path can bind beside it.
func installFastPath(cfg *dnsserver.Config, nc *NodeCache) {
	if cfg.Transport != "" && cfg.Transport != transport.DNS {
		return
	}
	prev := cfg.UDPDecorateWriterFunc
	cfg.UDPDecorateWriterFunc = func(s *dnsserver.Server) dns.DecorateWriter {
		startFrontend(s, nc)
		if prev != nil {
			return prev(s)
		}
		return nil
	}
}

func startFrontend(s *dnsserver.Server, nc *NodeCache) {
	addr := s.Address()
	if len(addr) > len(transport.DNS+"://") && addr[:len(transport.DNS)+3] == transport.DNS+"://" {
		addr = addr[len(transport.DNS)+3:]
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "0" {
		return // an ephemeral port is only known to CoreDNS's own socket
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		// A wildcard listener would have to choose each reply's source
		// address (IP_PKTINFO); node-cache always binds explicit addresses.
		log.Infof("fast path off for %s: it needs an explicit listen address (use bind)", addr)
		return
	}
	frontMu.Lock()
	defer frontMu.Unlock()
	if frontendFor(addr) != nil {
		return // multisocket: one fast path per address is enough
	}
	bit := uint64(0)
	for i := 0; i < 64; i++ {
		if frontBits&(1<<i) == 0 {
			bit = 1 << i
			break
		}
	}
	if bit == 0 {
		log.Warningf("fast path off for %s: too many listeners", addr)
		return
	}
	fe := &frontend{addr: addr, bit: bit, srv: s, misses: make(chan struct{}, 4096), mMisses: fastMisses.WithLabelValues(addr),
		mCacheMisses: misses.WithLabelValues(s.Address()), mCoalesced: coalesced.WithLabelValues(s.Address())}
	fe.caches.Store(&[]*NodeCache{})
	stop, err := fe.start(nc.opts.FastPath)
	if err != nil {
		log.Warningf("fast path off for %s: %v", addr, err)
		return
	}
	fe.stop = stop
	fe.routes.Store(nc.blocks.routesFor(addr))
	frontBits |= bit
	setFrontend(addr, fe)
	frontOwner[nc] = append(frontOwner[nc], fe)
	log.Infof("fast path on for %s", addr)
}

// stopFrontends stops the fast paths nc started (on shutdown or reload).
func stopFrontends(nc *NodeCache) {
	frontMu.Lock()
	list := frontOwner[nc]
	delete(frontOwner, nc)
	for _, fe := range list {
		if frontendFor(fe.addr) == fe {
			setFrontend(fe.addr, nil)
		}
		frontBits &^= fe.bit
	}
	frontMu.Unlock()
	for _, fe := range list {
		fe.stop()
	}
}

// allowFastPath records, after the chain served e on this listener, that
// the fast path of the listener may serve e itself.
func (c *NodeCache) allowFastPath(ctx context.Context, e *entry, q *dns.Question) {
	if !c.fastSafe {
		return
	}
	s, ok := ctx.Value(dnsserver.Key{}).(*dnsserver.Server)
	if !ok {
		return
	}
	fe := frontendFor(trimScheme(s.Address()))
	if fe == nil {
		return
	}
	fe.addCache(c)
	if e.fastOn.Load()&fe.bit != 0 {
		return
	}
	for _, f := range c.fastFilters {
		if !f.FastPathOK(q.Name, q.Qtype, e.rcode) {
			return
		}
	}
	e.fastOn.Or(fe.bit)
}

func trimScheme(addr string) string {
	if p := transport.DNS + "://"; len(addr) > len(p) && addr[:len(p)] == p {
		return addr[len(p):]
	}
	return addr
}

func (fe *frontend) addCache(c *NodeCache) {
	for {
		cur := fe.caches.Load()
		for _, x := range *cur {
			if x == c {
				return
			}
		}
		next := append(append([]*NodeCache(nil), *cur...), c)
		if fe.caches.CompareAndSwap(cur, &next) {
			return
		}
	}
}

// answerFromCache renders the cached answer for the raw query pkt into dst,
// or returns nil when the chain must handle it. It parses pkt into q and,
// when that succeeds (parsed), returns its key, whose name aliases low.
func (fe *frontend) answerFromCache(dst, pkt []byte, now int64, q *query, low *[maxName + 1]byte) (resp []byte, k key, parsed bool) {
	if parseQuery(pkt, q) != nil {
		return nil, k, false
	}
	k = makeKey(lowerName(low[:], q.name), q.qtype, q.qclass, q.do, q.cd())
	for _, c := range *fe.caches.Load() {
		e := c.lookup(k)
		if e == nil || e.fastOn.Load()&fe.bit == 0 || !e.fresh(now) {
			continue
		}
		c.notePopularRaw(k, q, e, now)
		c.noteHot(k, e, now)
		limit := int(q.udpSize)
		a := answer{id: q.id, rd: q.flags&flagRD != 0, name: q.name, hasOPT: q.hasOPT, do: q.do, limit: limit}
		return e.render(dst, &a, now), k, true
	}
	return nil, k, true
}

// notePopularRaw is notePopular for a query the fast path parsed: the
// refresh needs a dns.Msg, built only when a prefetch actually starts.
func (c *NodeCache) notePopularRaw(k key, q *query, e *entry, now int64) {
	if c.opts.Prefetch <= 0 {
		return
	}
	var r *dns.Msg
	lazy := func() *dns.Msg {
		if r == nil {
			r = new(dns.Msg)
			name, _, err := dns.UnpackDomainName(q.name, 0)
			if err != nil {
				name = "."
			}
			r.Question = []dns.Question{{Name: name, Qtype: q.qtype, Qclass: q.qclass}}
			r.CheckingDisabled = q.cd()
		}
		return r
	}
	c.maybePrefetch(k, e, now, "", lazy)
}

// fastWriter is the dns.ResponseWriter for queries the fast path hands to
// the chain: replies leave through the fast-path socket they came in on.
type fastWriter struct {
	local  net.Addr
	remote *net.UDPAddr
	send   func(b []byte, to *net.UDPAddr) error
	obs    *chainObs // nil: no observer
}

func (w *fastWriter) LocalAddr() net.Addr  { return w.local }
func (w *fastWriter) RemoteAddr() net.Addr { return w.remote }
func (w *fastWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	err = w.send(b, w.remote)
	w.obs.reportMsg(m)
	return err
}
func (w *fastWriter) Write(b []byte) (int, error) {
	if err := w.send(b, w.remote); err != nil {
		return 0, err
	}
	if len(b) >= 4 {
		w.obs.report(int(b[3] & 0xf))
	}
	return len(b), nil
}
func (w *fastWriter) Close() error        { return nil }
func (w *fastWriter) TsigStatus() error   { return nil }
func (w *fastWriter) TsigTimersOnly(bool) {}
func (w *fastWriter) Hijack()             {}

// serveMiss runs one query the fast path could not answer through the
// CoreDNS server, as CoreDNS's own UDP loop would.
func (fe *frontend) serveMiss(pkt []byte, w *fastWriter) {
	m := new(dns.Msg)
	if err := m.Unpack(pkt); err != nil {
		// As miekg/dns's server: a readable header gets FORMERR, garbage
		// is dropped.
		if len(pkt) >= headerLen && pkt[2]&0x80 == 0 {
			h := new(dns.Msg)
			h.Id = uint16(pkt[0])<<8 | uint16(pkt[1])
			h.Response = true
			h.Rcode = dns.RcodeFormatError
			w.WriteMsg(h)
		}
		return
	}
	ctx := context.WithValue(context.Background(), dnsserver.Key{}, fe.srv)
	ctx = context.WithValue(ctx, dnsserver.LoopKey{}, 0)
	if w.obs != nil {
		ctx = context.WithValue(ctx, chainObsKey{}, w.obs)
	}
	fe.srv.ServeDNS(ctx, w, m)
}
