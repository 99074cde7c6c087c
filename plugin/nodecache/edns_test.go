package nodecache_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

// rudeUpstream answers by the first label of the name, with the answers a
// cache cannot keep as entries, and always with an OPT record of its own
// (UDP size 4096, DO set), whatever the query had.
func rudeUpstream(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	name := strings.ToLower(r.Question[0].Name)
	label := strings.SplitN(name, ".", 2)[0]
	switch label {
	case "refused":
		m.Rcode = dns.RcodeRefused
	case "nxnosoa":
		m.Rcode = dns.RcodeNameError
	case "nodatanosoa":
	case "formerr":
		m.Rcode = dns.RcodeFormatError
	case "notimp":
		m.Rcode = dns.RcodeNotImplemented
	case "servfail":
		m.Rcode = dns.RcodeServerFailure
	case "badcookie":
		m.Rcode = dns.RcodeBadCookie
	default:
		rr, _ := dns.NewRR(r.Question[0].Name + " 60 IN A 192.0.2.1")
		m.Answer = append(m.Answer, rr)
	}
	m.SetEdns0(4096, true)
	w.WriteMsg(m)
}

// TestRepliesFollowClientEDNS: every reply the cache writes, from an entry
// or not (uncacheable answers, queries forwarded as they are, SERVFAIL),
// carries an OPT record exactly when the query did (RFC 6891 section 7),
// ours (the client's DO), never the upstream's; and it is written once.
func TestRepliesFollowClientEDNS(t *testing.T) {
	up := dnstest.NewServer(t, dns.HandlerFunc(rudeUpstream))
	addr := startCache(t, "nodecache "+up.Addr)

	tests := []struct {
		name   string
		opcode int
		rcode  int
		// rcodeNoEDNS is the RCODE without EDNS, when it differs: an
		// extended RCODE cannot be sent without an OPT record.
		rcodeNoEDNS int
	}{
		{"refused.test.", dns.OpcodeQuery, dns.RcodeRefused, -1},
		{"nxnosoa.test.", dns.OpcodeQuery, dns.RcodeNameError, -1},
		{"nodatanosoa.test.", dns.OpcodeQuery, dns.RcodeSuccess, -1},
		{"formerr.test.", dns.OpcodeQuery, dns.RcodeFormatError, -1},
		{"notimp.test.", dns.OpcodeQuery, dns.RcodeNotImplemented, -1},
		{"servfail.test.", dns.OpcodeQuery, dns.RcodeServerFailure, -1},
		{"badcookie.test.", dns.OpcodeQuery, dns.RcodeBadCookie, dns.RcodeServerFailure},
		{"host.test.", dns.OpcodeQuery, dns.RcodeSuccess, -1},    // rendered from an entry
		{"notify.test.", dns.OpcodeNotify, dns.RcodeSuccess, -1}, // forwarded as it is
	}
	for _, proto := range []string{"udp", "tcp"} {
		for _, edns := range []string{"none", "edns", "edns+do"} {
			for i, tc := range tests {
				t.Run(fmt.Sprintf("%s/%s/%s", proto, edns, tc.name), func(t *testing.T) {
					co, err := dns.Dial(proto, addr)
					if err != nil {
						t.Fatal(err)
					}
					defer co.Close()
					q := new(dns.Msg)
					q.SetQuestion(strings.ToUpper(tc.name[:1])+tc.name[1:], dns.TypeA)
					q.Opcode = tc.opcode
					q.Id = uint16(100 + i)
					if edns != "none" {
						q.SetEdns0(1400, edns == "edns+do")
					}
					// Twice: a miss, then whatever the cache keeps.
					for round := 0; round < 2; round++ {
						r := exchangeOn(t, co, q)
						want := tc.rcode
						if edns == "none" && tc.rcodeNoEDNS >= 0 {
							want = tc.rcodeNoEDNS
						}
						if r.Rcode != want {
							t.Errorf("round %d: rcode %s, want %s", round, dns.RcodeToString[r.Rcode], dns.RcodeToString[want])
						}
						if len(r.Question) == 1 && r.Question[0].Name != q.Question[0].Name {
							t.Errorf("round %d: question %q, want the client's spelling %q", round, r.Question[0].Name, q.Question[0].Name)
						}
						checkOPT(t, round, q, r)
						// A second reply to q would come before the answer
						// to the next query on this connection.
						next := new(dns.Msg)
						next.SetQuestion("host.test.", dns.TypeA)
						next.Id = q.Id + 1000
						if nr := exchangeOn(t, co, next); nr.Rcode != dns.RcodeSuccess {
							t.Errorf("round %d: follow-up query: %s", round, dns.RcodeToString[nr.Rcode])
						}
					}
				})
			}
		}
	}
}

// exchangeOn writes q on co and reads one reply, which must be q's.
func exchangeOn(t *testing.T, co *dns.Conn, q *dns.Msg) *dns.Msg {
	t.Helper()
	co.SetDeadline(time.Now().Add(5 * time.Second))
	if err := co.WriteMsg(q); err != nil {
		t.Fatalf("write %s: %v", q.Question[0].Name, err)
	}
	r, err := co.ReadMsg()
	if err != nil {
		t.Fatalf("read the reply to %s: %v", q.Question[0].Name, err)
	}
	if r.Id != q.Id {
		t.Fatalf("reply with ID %d (%s %s) where the reply to %s (ID %d) was due: a reply written twice",
			r.Id, dns.RcodeToString[r.Rcode], fmt.Sprint(r.Question), q.Question[0].Name, q.Id)
	}
	return r
}

// checkOPT: an OPT record exactly when q had one, and then ours.
func checkOPT(t *testing.T, round int, q, r *dns.Msg) {
	t.Helper()
	n := 0
	for _, rr := range r.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			n++
		}
	}
	qo := q.IsEdns0()
	if qo == nil {
		if n != 0 {
			t.Errorf("round %d: %d OPT records in the reply to a query without one (RFC 6891 section 7)", round, n)
		}
		return
	}
	o := r.IsEdns0()
	if n != 1 || o == nil {
		t.Fatalf("round %d: %d OPT records in the reply to an EDNS query, want 1", round, n)
	}
	// Ours is 1232; CoreDNS's server, writing what went through the
	// plugin chain, sets the client's (request.ScrubWriter). Never the
	// upstream's.
	if o.UDPSize() != 1232 && o.UDPSize() != qo.UDPSize() {
		t.Errorf("round %d: OPT UDP size %d, want ours (1232) or the client's (%d)", round, o.UDPSize(), qo.UDPSize())
	}
	if o.Do() != qo.Do() {
		t.Errorf("round %d: OPT DO %v, want the client's %v", round, o.Do(), qo.Do())
	}
}
