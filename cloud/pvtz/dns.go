package pvtz

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// ServeDNS answers queries for the store's zones from their enabled records,
// as PrivateZone does inside a bound VPC (authoritative, AA set; names
// outside every zone → REFUSED).
func (s *Store) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	if len(q.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	qn := strings.ToLower(dns.Fqdn(q.Question[0].Name))
	qt := q.Question[0].Qtype
	s.mu.RLock()
	defer s.mu.RUnlock()
	// Most specific zone name wins; zones with the same name are merged.
	best := ""
	for _, z := range s.zones {
		zn := dns.Fqdn(z.ZoneName)
		if dns.IsSubDomain(zn, qn) && len(zn) > len(best) {
			best = zn
		}
	}
	if best == "" {
		m.Rcode = dns.RcodeRefused
		_ = w.WriteMsg(m)
		return
	}
	rr := "@"
	if qn != best {
		rr = strings.TrimSuffix(qn, "."+best)
	}
	exists := false
	for _, z := range s.zones {
		if dns.Fqdn(z.ZoneName) != best {
			continue
		}
		for _, rec := range z.Records {
			if rec.Rr != rr || rec.Status != "ENABLE" {
				continue
			}
			exists = true
			if t := dns.StringToType[rec.Type]; t == qt || qt == dns.TypeANY || rec.Type == "CNAME" {
				if a, err := toRR(qn, rec); err == nil {
					m.Answer = append(m.Answer, a)
				}
			}
		}
	}
	if !exists {
		m.Rcode = dns.RcodeNameError
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: best, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60},
			Ns: "ns1." + best, Mbox: "hostmaster." + best, Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: 60}}
	}
	_ = w.WriteMsg(m)
}

func toRR(name string, r *Record) (dns.RR, error) {
	v := r.Value
	switch r.Type {
	case "CNAME", "PTR", "MX":
		v = dns.Fqdn(v)
	case "TXT":
		v = strconv.Quote(v)
	case "SRV":
		f := strings.Fields(v)
		if len(f) == 4 {
			f[3] = dns.Fqdn(f[3])
		}
		v = strings.Join(f, " ")
	}
	if r.Type == "MX" {
		v = strconv.Itoa(r.Priority) + " " + v
	}
	return dns.NewRR(fmt.Sprintf("%s %d IN %s %s", name, r.Ttl, r.Type, v))
}

// DNSServer answers the store's zones on one address, UDP and TCP.
type DNSServer struct {
	udp, tcp *dns.Server
	addr     string
}

// ListenDNS binds addr (UDP and TCP on the same port; port 0 picks one) and
// serves until Close.
func (s *Store) ListenDNS(addr string) (*DNSServer, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("dns listen udp %s: %w", addr, err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("dns listen tcp %s: %w", addr, err)
	}
	d := &DNSServer{udp: &dns.Server{PacketConn: pc, Handler: s}, tcp: &dns.Server{Listener: ln, Handler: s}, addr: pc.LocalAddr().String()}
	go func() { _ = d.udp.ActivateAndServe() }()
	go func() { _ = d.tcp.ActivateAndServe() }()
	return d, nil
}

// Addr is the bound address.
func (d *DNSServer) Addr() string { return d.addr }

// Close stops both listeners.
func (d *DNSServer) Close() error {
	_ = d.udp.PacketConn.Close()
	_ = d.tcp.Listener.Close()
	return nil
}
