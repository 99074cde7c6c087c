package nodecache

import (
	"time"

	"github.com/coredns/coredns/plugin/metrics/vars"
	"github.com/coredns/coredns/request"
	"github.com/miekg/dns"
)

// The fast path's misses.
//
// Handing a miss to the chain costs more than the chain itself: a goroutine
// and the OS thread woken to run it, unpacking into a dns.Msg, a goroutine
// parked on the upstream answer and woken again, the answer packed twice.
// On a node that is most of what a miss adds over asking the upstream
// directly. So a plain miss whose route is known (see routes.go) never
// leaves the fast-path thread until the upstream answers: the thread joins
// or starts the key's flight and writes the query on a pipelined upstream
// connection itself (upstream.Pool.ExchangeAsync); the connection's reader
// stores the answer and replies to every client waiting for it, straight
// from the new entry. Anything unusual on the way back — an answer a
// plugin in front might change, one that cannot be cached as an entry —
// sends the client's query through the chain after all, where it is now a
// cache hit.

// missWaiter is a client of the fast path waiting for a flight.
type missWaiter struct {
	fe   *frontend
	nc   *NodeCache
	pkt  []byte // the query as received (for the chain, if it comes to that)
	name []byte // question name as the client spelled it
	id   uint16
	// query header bits and EDNS0 of the client's query
	flags  uint16
	qtype  uint16
	qclass uint16
	hasOPT bool
	do     bool
	limit  int
	w      *fastWriter
	start  time.Time
}

// asyncMissOK reports whether a question may be resolved without the
// chain: class IN, and none of the types the server's mux or nodecache
// treat apart (DS is routed to the parent zone; meta and zone-transfer
// types are never cached).
func asyncMissOK(q *query) bool {
	return q.qclass == dns.ClassINET && q.qtype != dns.TypeDS && q.qtype != typeOPT &&
		q.qtype < dns.TypeTKEY
}

// missAsync resolves the miss for q (key k, packet pkt from the client w
// replies to) without the chain, or returns false when the chain must
// serve it.
func (fe *frontend) missAsync(pkt []byte, q *query, k key, w *fastWriter) bool {
	if !asyncMissOK(q) || string(k.name) == probeWire {
		return false // the probe goes through the chain, by design
	}
	nc := fe.routes.Load().route(k.name)
	if nc == nil || nc.pool == nil {
		return false
	}
	if nc.lookup(k) != nil {
		// Stale, or fresh but not yet proven servable on this listener:
		// the chain knows what to do with it.
		return false
	}
	select {
	case fe.misses <- struct{}{}:
	default:
		w.obs.dropped()
		return true // over the bound: dropped, as a full socket buffer would
	}
	mw := &missWaiter{
		fe: fe, nc: nc, pkt: append([]byte(nil), pkt...),
		id: q.id, flags: q.flags, qtype: q.qtype, qclass: q.qclass,
		hasOPT: q.hasOPT, do: q.do, limit: int(q.udpSize), w: w, start: time.Now(),
	}
	mw.name = mw.pkt[headerLen : headerLen+len(q.name)]
	fe.mMisses.Inc() // before the reply can leave
	fe.mCacheMisses.Inc()
	f, started := nc.flights.join(k, mw.land)
	if !started {
		fe.mCoalesced.Inc()
		return true
	}
	if e := nc.lookup(k); e != nil && e.fresh(nc.clock()) {
		// A flight for k landed between the lookup above and join.
		nc.flights.land(f, result{e: e})
		return true
	}
	nc.fetchAsync(f, mw, fe.srv.Address())
	return true
}

// fetchAsync asks the upstreams for f's key, as fetch does, and lands f
// with what they answer.
func (c *NodeCache) fetchAsync(f *flight, mw *missWaiter, server string) {
	wire := upstreamQuery(mw.name, mw.qtype, mw.qclass, mw.flags&flagCD != 0, f.k.bits&1 != 0)
	deadline := time.Now().Add(c.opts.Timeout)
	c.pool.ExchangeAsync(wire, deadline, func(resp *dns.Msg, err error) {
		switch {
		case err != nil:
			c.flights.land(f, result{err: err})
		case !answersKey(resp, f.k):
			c.flights.land(f, result{err: errMismatch})
		default:
			c.flights.land(f, c.store(f.k, resp, server))
		}
	})
}

// upstreamQuery packs the query fetch would send: RD, the client's CD,
// EDNS0 with our UDP size and the client's DO.
func upstreamQuery(name []byte, qtype, qclass uint16, cd, do bool) []byte {
	flags := uint16(flagRD)
	if cd {
		flags |= flagCD
	}
	return packQuestion(0, flags, name, qtype, qclass, true, do)
}

// land answers the client with the flight's result. It runs on whatever
// goroutine landed the flight, so it never blocks.
func (mw *missWaiter) land(res result) {
	switch {
	case res.e != nil && mw.servable(res.e):
		mw.w.obs.wentUpstream(nil)
		mw.fe.addCache(mw.nc)
		res.e.fastOn.Or(mw.fe.bit)
		var buf [1232]byte
		a := answer{id: mw.id, rd: mw.flags&flagRD != 0, name: mw.name, hasOPT: mw.hasOPT, do: mw.do, limit: mw.limit}
		b := res.e.render(buf[:0], &a, mw.nc.clock())
		_ = mw.w.send(b, mw.w.remote)
		mw.w.obs.report(res.e.rcode)
		mw.report(res.e.rcode, len(b))
	case res.e != nil || res.msg != nil:
		// A plugin in front might change this answer, or it is not an
		// entry: the chain copes. The miss's slot goes with it.
		mw.w.obs.wentUpstream(nil)
		go func() {
			defer func() { <-mw.fe.misses }()
			mw.fe.serveMiss(mw.pkt, mw.w)
		}()
		return
	default:
		b := mw.servfail()
		_ = mw.w.send(b, mw.w.remote)
		mw.w.obs.wentUpstream(res.err)
		mw.w.obs.report(dns.RcodeServerFailure)
		mw.report(dns.RcodeServerFailure, len(b))
	}
	<-mw.fe.misses
}

// report counts the query in CoreDNS's own request metrics (the prometheus
// plugin's coredns_dns_*), as the chain would have: dashboards built on
// them see every miss. Done after the reply has left.
func (mw *missWaiter) report(rcode, size int) {
	m := new(dns.Msg)
	m.Id = mw.id
	m.Question = []dns.Question{{Name: ".", Qtype: mw.qtype, Qclass: mw.qclass}}
	if name, _, err := dns.UnpackDomainName(mw.name, 0); err == nil {
		m.Question[0].Name = name
	}
	if mw.hasOPT {
		m.SetEdns0(uint16(mw.limit), mw.do)
	}
	req := request.Request{W: mw.w, Req: m}
	vars.Report(mw.fe.srv.Address(), req, mw.nc.zone(), "", dns.RcodeToString[rcode], pluginName, size, mw.start, vars.WithOriginalReqSize(len(mw.pkt)))
}

// servable asks the plugins in front of the block, as allowFastPath does.
func (mw *missWaiter) servable(e *entry) bool {
	if len(mw.nc.fastFilters) == 0 {
		return true
	}
	name, _, err := dns.UnpackDomainName(mw.name, 0)
	if err != nil {
		return false
	}
	for _, f := range mw.nc.fastFilters {
		if !f.FastPathOK(name, mw.qtype, e.rcode) {
			return false
		}
	}
	return true
}

// servfail is the reply CoreDNS's server writes when a plugin fails:
// SERVFAIL echoing the question, RD and CD, with OPT if the query had one.
func (mw *missWaiter) servfail() []byte {
	return packQuestion(mw.id, flagQR|mw.flags&(flagRD|flagCD)|dns.RcodeServerFailure, mw.name, mw.qtype, mw.qclass, mw.hasOPT, mw.do)
}
