package nodecache

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/plugin/nodecache/upstream"
)

// Observer is told of every query the UDP fast path received and what
// became of it: the one hook for per-client accounting (node-cache's
// per-pod DNS metrics and query log, nodecache/dnsstats). Queries answered
// in the kernel never reach it, nor do queries CoreDNS's own sockets
// receive (TCP, and UDP where the fast path is off).
//
// Observe runs on the query path (fast-path threads, upstream readers): it
// must not block, and must copy Name if it keeps it.
type Observer interface {
	Observe(o Observation)
}

// Source is what answered a query.
type Source uint8

const (
	SourceCache    Source = iota // the cache (fast path or chain)
	SourceUpstream               // an upstream
	SourceNone                   // nobody: dropped, or no upstream answer before the deadline
)

// Observation is one query.
type Observation struct {
	Client netip.Addr
	Name   []byte // the question name in wire format as the client sent it (nil if unparsable)
	Qtype  uint16
	Rcode  int // of the answer sent (not with SourceNone)
	Source Source
	// Latency is from the query's arrival (the fast path's receive) to its
	// answer leaving.
	Latency time.Duration
	// Timeout: no answer in time, dropped (SourceNone) or answered
	// SERVFAIL because no upstream answered before the deadline.
	Timeout bool
}

type observerBox struct{ o Observer }

var observer atomic.Pointer[observerBox]

// SetObserver installs o for every nodecache instance of the process; nil
// removes it.
func SetObserver(o Observer) {
	if o == nil {
		observer.Store(nil)
		return
	}
	observer.Store(&observerBox{o: o})
}

func loadObserver() Observer {
	if b := observer.Load(); b != nil {
		return b.o
	}
	return nil
}

// chainObs follows one fast-path query handed to the chain: ServeDNS
// marks what it did through the context, the fastWriter reports when the
// answer leaves.
type chainObs struct {
	o        Observer
	client   netip.Addr
	name     []byte
	qtype    uint16
	start    int64 // monoNow at arrival
	upstream atomic.Bool
	timeout  atomic.Bool
	reported atomic.Bool
}

type chainObsKey struct{}

func chainObsFrom(ctx context.Context) *chainObs {
	co, _ := ctx.Value(chainObsKey{}).(*chainObs)
	return co
}

// reportMsg is report for an answer written as a message: a query the
// fast path could not parse gets its question from it.
func (co *chainObs) reportMsg(m *dns.Msg) {
	if co == nil {
		return
	}
	if co.name == nil && len(m.Question) == 1 {
		var buf [256]byte
		if n, err := dns.PackDomainName(dns.Fqdn(m.Question[0].Name), buf[:], 0, nil, false); err == nil {
			co.name, co.qtype = append([]byte(nil), buf[:n]...), m.Question[0].Qtype
		}
	}
	co.report(m.Rcode)
}

// report tells the observer the answer (rcode) left.
func (co *chainObs) report(rcode int) {
	if co == nil || !co.reported.CompareAndSwap(false, true) {
		return
	}
	src := SourceCache
	if co.upstream.Load() {
		src = SourceUpstream
	}
	co.o.Observe(Observation{Client: co.client, Name: co.name, Qtype: co.qtype, Rcode: rcode, Source: src,
		Latency: time.Duration(monoNow() - co.start), Timeout: co.timeout.Load()})
}

// dropped tells the observer the query got no answer.
func (co *chainObs) dropped() {
	if co == nil || !co.reported.CompareAndSwap(false, true) {
		return
	}
	co.o.Observe(Observation{Client: co.client, Name: co.name, Qtype: co.qtype, Source: SourceNone,
		Latency: time.Duration(monoNow() - co.start), Timeout: true})
}

// wentUpstream marks that the answer came (or was to come) from upstream.
func (co *chainObs) wentUpstream(err error) {
	if co == nil {
		return
	}
	co.upstream.Store(true)
	if err != nil && isTimeout(err) {
		co.timeout.Store(true)
	}
}

// isTimeout reports whether an upstream error means no answer came in time.
func isTimeout(err error) bool {
	return errors.Is(err, upstream.ErrTimeout) || errors.Is(err, context.DeadlineExceeded)
}

// udpAddrToNetip converts without allocating.
func udpAddrToNetip(a *net.UDPAddr) netip.Addr {
	if a == nil {
		return netip.Addr{}
	}
	ip, _ := netip.AddrFromSlice(a.IP)
	return ip.Unmap()
}
