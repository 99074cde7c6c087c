// Package k8sautopath implements the k8s_autopath CoreDNS plugin: server-side
// search-path expansion for Kubernetes pods that works behind a node-local
// cache, because it runs in it.
//
// A pod with the default ndots:5 resolving "example.com" first asks for
// "example.com.<ns>.svc.cluster.local". When that query comes from a known
// pod of <ns> with the default search path, k8s_autopath resolves every
// candidate of the pod's search list concurrently through the rest of the
// server (so through the cache) and answers with a CNAME to the first one
// that exists: one round trip instead of one per search domain.
package k8sautopath

import (
	"context"
	"net"
	"net/netip"
	"strings"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/coredns/coredns/plugin/metrics"
	clog "github.com/coredns/coredns/plugin/pkg/log"
	"github.com/miekg/dns"
)

const pluginName = "k8s_autopath"

var log = clog.NewWithPlugin(pluginName)

// podLookup is what the handler needs of the pod index.
type podLookup interface {
	Lookup(ip netip.Addr) (PodInfo, bool)
	Synced() bool
}

// Autopath is the k8s_autopath handler.
type Autopath struct {
	Next plugin.Handler

	zone   string   // e.g. "cluster.local.", lower case, fully qualified
	svc    string   // "svc." + zone
	search []string // extra search domains after the cluster ones, fully qualified
	pods   podLookup
}

// Name implements plugin.Handler.
func (a *Autopath) Name() string { return pluginName }

// expandingKey marks the context of a candidate lookup, so the nested pass
// through the server does not expand again.
type expandingKey struct{}

// ServeDNS implements plugin.Handler.
func (a *Autopath) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	if ctx.Value(expandingKey{}) != nil || r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 ||
		r.Question[0].Qclass != dns.ClassINET {
		return plugin.NextOrFailure(a.Name(), a.Next, ctx, w, r)
	}
	qname := strings.ToLower(r.Question[0].Name)
	base, ns, ok := a.split(qname)
	if !ok {
		return plugin.NextOrFailure(a.Name(), a.Next, ctx, w, r)
	}
	server := metrics.WithServer(ctx)
	if reason := a.passReason(w, ns); reason != "" {
		passes.WithLabelValues(server, reason).Inc()
		return plugin.NextOrFailure(a.Name(), a.Next, ctx, w, r)
	}

	cands := a.candidates(r.Question[0].Name, base, ns)
	results := a.resolveAll(ctx, w, r, cands)

	first := <-results[0]
	if first.msg == nil || first.msg.Rcode != dns.RcodeNameError {
		// The name itself exists (or failed): that is the answer a client
		// searching on its own would get first.
		misses.WithLabelValues(server, "exists").Inc()
		return a.reply(w, r, first)
	}
	for i := 1; i < len(cands); i++ {
		res := <-results[i]
		switch {
		case res.msg == nil || !answerable(res.msg.Rcode):
			// A candidate failed: do not guess past it. The literal
			// NXDOMAIN is true; the client goes on searching by itself.
			misses.WithLabelValues(server, "failed").Inc()
			return a.reply(w, r, first)
		case res.msg.Rcode == dns.RcodeNameError:
			continue
		}
		hits.WithLabelValues(server).Inc()
		return a.reply(w, r, result{msg: cnameTo(res.msg, r.Question[0].Name, cands[i])})
	}
	misses.WithLabelValues(server, "nxdomain").Inc()
	return a.reply(w, r, first)
}

// answerable reports whether a candidate's rcode settles its existence.
func answerable(rcode int) bool {
	return rcode == dns.RcodeSuccess || rcode == dns.RcodeNameError
}

// split recognises "<base>.<ns>.svc.<zone>" and returns base and ns.
func (a *Autopath) split(qname string) (base, ns string, ok bool) {
	rest, found := strings.CutSuffix(qname, "."+a.svc)
	if !found {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '.')
	if i <= 0 || i == len(rest)-1 {
		return "", "", false // no base, or an empty label
	}
	return rest[:i], rest[i+1:], true
}

// passReason says why a query from w's client for a name in namespace ns is
// passed through, or "" when it is expanded.
func (a *Autopath) passReason(w dns.ResponseWriter, ns string) string {
	if !a.pods.Synced() {
		return "unsynced"
	}
	ip, ok := clientIP(w.RemoteAddr())
	if !ok {
		return "unknown_client"
	}
	pod, ok := a.pods.Lookup(ip)
	switch {
	case !ok:
		return "unknown_client"
	case !pod.DefaultSearch:
		return "custom_dns"
	case pod.Namespace != ns:
		return "other_namespace"
	}
	return ""
}

func clientIP(addr net.Addr) (netip.Addr, bool) {
	switch a := addr.(type) {
	case *net.UDPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	case *net.TCPAddr:
		ip, ok := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), ok
	}
	if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// candidates is the pod's search walk for base, in the kubelet's order:
// the literal name first, the bare name last. The first keeps the query's
// own spelling (0x20 case is the client's business).
func (a *Autopath) candidates(qname, base, ns string) []string {
	c := make([]string, 0, 4+len(a.search))
	c = append(c, qname, base+"."+a.svc, base+"."+a.zone)
	for _, s := range a.search {
		c = append(c, base+"."+s)
	}
	return append(c, base+".")
}

// FastPathOK implements nodecache.FastPathFilter: a cached answer may skip
// this plugin unless autopath could replace it, which it does only for
// NXDOMAIN answers to names under a namespace's search domain.
func (a *Autopath) FastPathOK(qname string, _ uint16, rcode int) bool {
	if rcode != dns.RcodeNameError {
		return true // the literal name wins its own search walk
	}
	_, _, expandable := a.split(strings.ToLower(qname))
	return !expandable
}

type result struct {
	msg *dns.Msg
}

// resolveAll starts one lookup per candidate through the server that
// received r (so each is routed to its own zone's block and cached there),
// and returns their results in candidate order.
func (a *Autopath) resolveAll(ctx context.Context, w dns.ResponseWriter, r *dns.Msg, cands []string) []chan result {
	ctx = context.WithValue(ctx, expandingKey{}, true)
	srv, _ := ctx.Value(dnsserver.Key{}).(*dnsserver.Server)
	local, remote := w.LocalAddr(), w.RemoteAddr() // w is not used after ServeDNS returns
	out := make([]chan result, len(cands))
	for i, name := range cands {
		out[i] = make(chan result, 1)
		sub := r.Copy()
		sub.Question[0].Name = name
		go func(ch chan<- result) {
			cw := &captureWriter{local: local, remote: remote}
			if srv != nil {
				srv.ServeDNS(ctx, cw, sub)
			} else {
				rcode, _ := plugin.NextOrFailure(a.Name(), a.Next, ctx, cw, sub)
				if cw.msg == nil && !plugin.ClientWrite(rcode) {
					m := new(dns.Msg)
					m.SetRcode(sub, rcode)
					cw.msg = m
				}
			}
			ch <- result{msg: cw.msg}
		}(out[i])
	}
	return out
}

// reply writes res as the answer to r.
func (a *Autopath) reply(w dns.ResponseWriter, r *dns.Msg, res result) (int, error) {
	if res.msg == nil {
		return dns.RcodeServerFailure, plugin.Error(pluginName, errNoAnswer)
	}
	m := res.msg.Copy()
	m.Id = r.Id
	m.Question = []dns.Question{r.Question[0]}
	if err := w.WriteMsg(m); err != nil {
		log.Debugf("writing reply: %v", err)
	}
	return m.Rcode, nil
}

// captureWriter keeps the reply of a candidate lookup instead of sending it.
// It carries the client's addresses, so plugins see the real client.
type captureWriter struct {
	local, remote net.Addr
	msg           *dns.Msg
}

func (c *captureWriter) LocalAddr() net.Addr       { return c.local }
func (c *captureWriter) RemoteAddr() net.Addr      { return c.remote }
func (c *captureWriter) WriteMsg(m *dns.Msg) error { c.msg = m; return nil }
func (c *captureWriter) Close() error              { return nil }
func (c *captureWriter) TsigStatus() error         { return nil }
func (c *captureWriter) TsigTimersOnly(bool)       {}
func (c *captureWriter) Hijack()                   {}
func (c *captureWriter) Write(b []byte) (int, error) {
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	c.msg = m
	return len(b), nil
}
