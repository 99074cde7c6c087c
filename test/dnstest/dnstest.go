// Package dnstest has the pieces DNS tests and tools share: a free loopback
// address for UDP and TCP at once, and a real DNS server on loopback.
package dnstest

import (
	"fmt"
	"net"
	"testing"

	"github.com/miekg/dns"
)

// FreeAddr returns 127.0.0.1:PORT with PORT free for both UDP and TCP. A
// plain bind is refused on a port another process holds, even one bound
// with SO_REUSEPORT, which a server's own bind would silently share.
func FreeAddr() (string, error) {
	pc, ln, err := listenBoth()
	if err != nil {
		return "", err
	}
	pc.Close()
	ln.Close()
	return pc.LocalAddr().String(), nil
}

// listenBoth binds UDP and TCP on one loopback port; the TCP twin of a free
// UDP port may be held by some outgoing connection, so it tries a few.
func listenBoth() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for i := 0; i < 50; i++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
	}
	return nil, nil, fmt.Errorf("no loopback port free for UDP and TCP: %w", lastErr)
}

// Server is a real DNS server on loopback, UDP and TCP on one port.
type Server struct {
	Addr string
	udp  *dns.Server
	tcp  *dns.Server
}

// NewServer serves h on a free loopback port until Stop (or the test's end).
func NewServer(t testing.TB, h dns.Handler) *Server {
	t.Helper()
	pc, ln, err := listenBoth()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		Addr: pc.LocalAddr().String(),
		udp:  &dns.Server{PacketConn: pc, Handler: h},
		tcp:  &dns.Server{Listener: ln, Handler: h, MaxTCPQueries: -1},
	}
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	t.Cleanup(s.Stop)
	return s
}

// Stop shuts both listeners; calling it again is harmless.
func (s *Server) Stop() {
	s.udp.Shutdown()
	s.tcp.Shutdown()
}
