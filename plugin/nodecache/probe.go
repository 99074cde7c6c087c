package nodecache

import (
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Liveness of the serving path, for a program embedding the plugin that
// must know whether queries are answered (node-cache drives its steering
// heartbeat and readiness with it).

// ProbeName (class IN, type TXT) is answered by nodecache itself, through
// the chain, without any upstream and without caching it: a self-query
// that proves the listener, the server's mux and the plugin serve. The fast
// path never answers it or sends it upstream itself (it is never cached,
// and its miss handling leaves it to the chain), so a UDP probe goes
// fast-path socket -> fast-path thread -> chain. It is under .invalid (RFC
// 6761), so no real name is shadowed.
const ProbeName = "node-cache-probe.dnsaccel.invalid."

// ProbeAnswer is the TXT string of the answer to ProbeName.
const ProbeAnswer = "nodecache"

// probeWire is ProbeName in wire format, lower case (a key's name).
var probeWire = func() string {
	b := make([]byte, maxName+1)
	n, _ := dns.PackDomainName(ProbeName, b, 0, nil, false)
	return string(b[:n])
}()

// isProbe reports whether q is the liveness probe.
func isProbe(q *dns.Question) bool {
	return q.Qtype == dns.TypeTXT && q.Qclass == dns.ClassINET && strings.EqualFold(q.Name, ProbeName)
}

// answerProbe writes the probe's answer (never cached, no upstream).
func answerProbe(w dns.ResponseWriter, r *dns.Msg) (int, error) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.Answer = []dns.RR{&dns.TXT{
		Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 0},
		Txt: []string{ProbeAnswer},
	}}
	w.WriteMsg(m)
	return dns.RcodeSuccess, nil
}

// FastPathStalled returns the listeners (IP:PORT) of which a fast-path
// thread has not come back to its socket for longer than maxAge: it is
// stuck, and the datagrams the listener steers to it go unanswered. An
// idle thread comes back at least every 250 ms (its receive timeout), so
// maxAge should be well above that.
func FastPathStalled(maxAge time.Duration) []string {
	m := frontends.Load()
	if m == nil {
		return nil
	}
	now := monoNow()
	var out []string
	for addr, fe := range *m {
		for _, t := range fe.threads {
			if time.Duration(now-t.Load()) > maxAge {
				out = append(out, addr)
				break
			}
		}
	}
	return out
}

// Fault injection for tests of programs embedding the plugin (node-cache's
// hidden --debug-wedge): a wedged part blocks forever while the process
// lives, as a deadlock would. There is no way back.
var (
	wedgedChain, wedgedFastPath atomic.Bool
	wedge                       = make(chan struct{}) // never closed
)

// Wedge makes ServeDNS (chain) and/or every fast-path thread (fastPath)
// block forever from now on. For tests only.
func Wedge(chain, fastPath bool) {
	if chain {
		wedgedChain.Store(true)
	}
	if fastPath {
		wedgedFastPath.Store(true)
	}
}

// blockIfWedged blocks forever if the part is wedged.
func blockIfWedged(part *atomic.Bool) {
	if part.Load() {
		<-wedge
	}
}
