// Package nodecache is the node agent behind bin/node-cache: it runs the
// embedded CoreDNS server with dnsaccel's plugins on the node's cache
// addresses, and serves health, readiness and metrics.
package nodecache

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Config is what the agent runs with; cmd/node-cache fills it from flags.
type Config struct {
	Listen    []string // ADDR:PORT the cache answers on
	Upstreams []string // ADDR:PORT of the node's resolvers
	Conf      string   // a Corefile that replaces the generated one
	Metrics   string   // ADDR of /metrics
	Health    string   // ADDR of /health and /ready
}

// Validate checks the configuration, naming the field at fault.
func (c *Config) Validate() error {
	if c.Conf != "" {
		if _, err := os.Stat(c.Conf); err != nil {
			return fmt.Errorf("--conf: %w", err)
		}
		return nil
	}
	if len(c.Listen) == 0 {
		return fmt.Errorf("--listen: at least one address is required")
	}
	listen := map[netip.AddrPort]bool{}
	for _, l := range c.Listen {
		ap, err := netip.ParseAddrPort(l)
		if err != nil {
			return fmt.Errorf("--listen %q: want IP:PORT: %v", l, err)
		}
		if ap.Addr().IsUnspecified() {
			return fmt.Errorf("--listen %q: an explicit address is required, not a wildcard", l)
		}
		listen[ap] = true
	}
	if len(c.Upstreams) == 0 {
		return fmt.Errorf("--upstream: none given and none found in /etc/resolv.conf")
	}
	for _, u := range c.Upstreams {
		ap, err := netip.ParseAddrPort(u)
		if err != nil {
			return fmt.Errorf("--upstream %q: want IP:PORT: %v", u, err)
		}
		if listen[ap] {
			return fmt.Errorf("--upstream %s is also a --listen address: the cache would forward to itself", u)
		}
	}
	return nil
}

// ResolvConfUpstreams returns the nameservers of a resolv.conf as IP:53.
func ResolvConfUpstreams(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if ip, err := netip.ParseAddr(fields[1]); err == nil {
				out = append(out, netip.AddrPortFrom(ip.WithZone(""), 53).String())
			}
		}
	}
	return out, sc.Err()
}

// Corefile renders the configuration CoreDNS runs when no --conf is given:
// one server block per listening port, bound to exactly the listen
// addresses, with the cache forwarding to the upstreams.
func (c *Config) Corefile() string {
	byPort := map[int][]string{}
	for _, l := range c.Listen {
		host, port, _ := net.SplitHostPort(l)
		p, _ := strconv.Atoi(port)
		byPort[p] = append(byPort[p], host)
	}
	ports := make([]int, 0, len(byPort))
	for p := range byPort {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	var b strings.Builder
	for _, p := range ports {
		fmt.Fprintf(&b, ".:%d {\n", p)
		fmt.Fprintf(&b, "    bind %s\n", strings.Join(byPort[p], " "))
		b.WriteString("    errors\n")
		if c.Metrics != "" {
			fmt.Fprintf(&b, "    prometheus %s\n", c.Metrics)
		}
		fmt.Fprintf(&b, "    nodecache %s {\n", strings.Join(c.Upstreams, " "))
		b.WriteString("        success 9984\n        denial 9984 30\n        prefetch 10 1m 10%\n        serve_stale 1h\n")
		b.WriteString("    }\n}\n")
	}
	return b.String()
}
