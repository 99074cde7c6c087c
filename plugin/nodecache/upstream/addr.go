package upstream

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Transports accepted in Addr.Transport.
const (
	TransportTCP = "tcp"
	TransportUDP = "udp"
)

const defaultPort = "53"

// Addr is one upstream server.
type Addr struct {
	// Host is "ip:port" (IPv6 in brackets), normalised by ParseAddr.
	Host string
	// Transport is "tcp" or "udp"; "" means the pool default (see
	// Config.PreferUDP).
	Transport string
}

// String returns the address in the form ParseAddr accepts.
func (a Addr) String() string {
	if a.Transport == "" {
		return a.Host
	}
	return a.Transport + "://" + a.Host
}

// ParseAddr parses "host:port", "tcp://host:port" or "udp://host:port".
// "dns://" is accepted as a synonym of no scheme. The port defaults to 53.
// IPv6 addresses go in brackets when a port is given ("[::1]:53"); a bare
// IPv6 address without a port ("::1", "[::1]") is accepted too.
//
// The host must be an IP literal: a node-local cache must not resolve the
// name of its own upstream through the system resolver (which is, most
// likely, itself).
func ParseAddr(s string) (Addr, error) {
	orig := s
	s = strings.TrimSpace(s)
	var a Addr
	if i := strings.Index(s, "://"); i >= 0 {
		switch scheme := strings.ToLower(s[:i]); scheme {
		case TransportTCP, TransportUDP:
			a.Transport = scheme
		case "dns":
		default:
			return Addr{}, fmt.Errorf("upstream address %q: unsupported scheme %q (want tcp://, udp:// or none)", orig, scheme)
		}
		s = s[i+3:]
	}
	if s == "" {
		return Addr{}, fmt.Errorf("upstream address %q: empty host", orig)
	}

	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// No port: "1.2.3.4", "::1" or "[::1]".
		host, port = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"), defaultPort
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return Addr{}, fmt.Errorf("upstream address %q: host must be an IP address: %v", orig, err)
	}
	if ip.Zone() != "" {
		return Addr{}, fmt.Errorf("upstream address %q: IPv6 zones are not supported", orig)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return Addr{}, fmt.Errorf("upstream address %q: invalid port %q", orig, port)
	}
	a.Host = netip.AddrPortFrom(ip.Unmap(), uint16(n)).String()
	return a, nil
}
