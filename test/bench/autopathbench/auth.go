package main

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/bench"
)

// The external name a pod looks up, and its addresses.
const (
	extName = "www.example.com."
	extA    = "192.0.2.10"
	extAAAA = "2001:db8::10"
	authTTL = 300 // long enough that nothing expires during the run
)

// authServer is the stand-in for the cluster DNS and the outside world behind
// nodecache: www.example.com has A and AAAA, everything else is NXDOMAIN
// (with an SOA, so it is negatively cached). It counts the questions.
type authServer struct {
	addr     string
	udp, tcp *dns.Server
	asked    atomic.Int64
}

func startAuth(ports *bench.Ports) (*authServer, error) {
	var last error
	for range 5 {
		port, err := ports.Get()
		if err != nil {
			return nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		pc, err := net.ListenPacket("udp4", addr)
		if err != nil {
			last = err
			continue
		}
		ln, err := net.Listen("tcp4", addr)
		if err != nil {
			pc.Close()
			last = err
			continue
		}
		s := &authServer{addr: addr}
		s.udp = &dns.Server{PacketConn: pc, Handler: s}
		s.tcp = &dns.Server{Listener: ln, Handler: s, MaxTCPQueries: -1}
		go s.udp.ActivateAndServe()
		go s.tcp.ActivateAndServe()
		return s, nil
	}
	return nil, fmt.Errorf("authoritative server: no free loopback port: %w", last)
}

func (s *authServer) stop() {
	err := errors.Join(s.udp.Shutdown(), s.tcp.Shutdown())
	if err != nil {
		logf("authoritative server shutdown: %v", err)
	}
}

// ServeDNS implements dns.Handler.
func (s *authServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	s.asked.Add(1)
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: authTTL}
	switch {
	case name == extName && q.Qtype == dns.TypeA:
		m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.ParseIP(extA)})
	case name == extName && q.Qtype == dns.TypeAAAA:
		m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.ParseIP(extAAAA)})
	case name == extName || name == ".":
		m.Ns = append(m.Ns, soa(name)) // NODATA
	default:
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, soa(name))
	}
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), false)
	}
	w.WriteMsg(m)
}

func soa(name string) dns.RR {
	apex := "."
	for _, z := range []string{"cluster.local.", "in-addr.arpa.", "example.com."} {
		if dns.IsSubDomain(z, name) {
			apex = z
		}
	}
	return &dns.SOA{Hdr: dns.RR_Header{Name: apex, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: authTTL},
		Ns: "ns.dns." + strings.TrimPrefix(apex, "."), Mbox: "hostmaster.example.", Serial: 1,
		Refresh: 3600, Retry: 600, Expire: 86400, Minttl: authTTL}
}
