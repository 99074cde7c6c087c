package nodecache

import (
	"bytes"
	"net"
	"sync"

	"github.com/coredns/caddy"
	"github.com/coredns/caddy/caddyfile"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	coreparse "github.com/coredns/coredns/plugin/pkg/parse"
	"github.com/coredns/coredns/plugin/pkg/transport"
	"github.com/miekg/dns"
)

// Routes of the fast path's misses.
//
// A cache hit is answered by the fast path only once the chain has served
// that question on the listener (allowFastPath). A miss has no entry to
// carry that proof, so to send it upstream without the server's mux the
// fast path must know where the mux would send it: to which server block,
// by the longest zone of the listener's port that contains the name. The
// zones are read from the Corefile of the running instance, every server
// block of the port counted (whatever it binds: a conservative superset).
// A name goes the asynchronous way only if its zone belongs to exactly one
// block, and that block is a nodecache block on this listener with nothing
// in front that could change an answer (fastSafe). Everything else, and
// every miss until the instance has fully started, goes through the chain.

// instanceBlocks are the nodecache blocks of one CoreDNS instance (kept in
// the instance's storage) and, once it started, its Corefile's zones.
type instanceBlocks struct {
	mu     sync.Mutex
	blocks []*NodeCache
	zones  map[string]map[string]int // port → zone → server blocks (keys) with it; nil until started
}

type instanceBlocksKey struct{}

func init() { caddy.RegisterEventHook("nodecache-routes", onInstanceStartup) }

// blocksOf returns the record of c's instance, creating it.
func blocksOf(c *caddy.Controller) *instanceBlocks {
	if ib, ok := c.Get(instanceBlocksKey{}).(*instanceBlocks); ok {
		return ib
	}
	ib := &instanceBlocks{}
	c.Set(instanceBlocksKey{}, ib)
	return ib
}

func (ib *instanceBlocks) add(nc *NodeCache) {
	ib.mu.Lock()
	ib.blocks = append(ib.blocks, nc)
	ib.mu.Unlock()
}

// onInstanceStartup reads the zones of a started instance and gives its
// fast paths their routes.
func onInstanceStartup(ev caddy.EventName, info interface{}) error {
	if ev != caddy.InstanceStartupEvent {
		return nil
	}
	inst, ok := info.(*caddy.Instance)
	if !ok || inst.Caddyfile() == nil {
		return nil
	}
	inst.StorageMu.RLock()
	ib, ok := inst.Storage[instanceBlocksKey{}].(*instanceBlocks)
	inst.StorageMu.RUnlock()
	if !ok {
		return nil
	}
	in := inst.Caddyfile()
	zones, err := corefileZones(in.Path(), in.Body())
	if err != nil {
		// Not expected (the instance started from this text); the
		// misses just keep going through the chain.
		log.Warningf("fast path misses go through the plugin chain: reading the Corefile's zones: %v", err)
		return nil
	}
	ib.mu.Lock()
	ib.zones = zones
	blocks := append([]*NodeCache(nil), ib.blocks...)
	ib.mu.Unlock()

	frontMu.Lock()
	defer frontMu.Unlock()
	for _, nc := range blocks {
		for _, fe := range frontOwner[nc] {
			fe.routes.Store(ib.routesFor(fe.addr))
		}
	}
	return nil
}

// corefileZones returns, per port, the zones of the plain-DNS server
// blocks and how many block keys name each, normalised as CoreDNS does.
func corefileZones(path string, body []byte) (map[string]map[string]int, error) {
	blocks, err := caddyfile.Parse(path, bytes.NewReader(body), dnsserver.Directives)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]int{}
	for _, b := range blocks {
		for _, k := range b.Keys {
			trans, addr := coreparse.Transport(k)
			hosts, port, err := plugin.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			if trans != transport.DNS {
				continue // not served on a plain UDP listener
			}
			if port == "" {
				port = dnsserver.Port
			}
			if out[port] == nil {
				out[port] = map[string]int{}
			}
			for _, h := range hosts {
				out[port][plugin.Name(h).Normalize()]++
			}
		}
	}
	return out, nil
}

// routeTable maps the zones of a listener's port, as lower-case wire names,
// to the nodecache block that serves each on the listener, or to nil when
// the chain must decide.
type routeTable struct {
	zones map[string]*NodeCache
}

// routesFor builds the routes of the listener addr (host:port), or nil
// while the instance has not started.
func (ib *instanceBlocks) routesFor(addr string) *routeTable {
	host, port, err := net.SplitHostPort(addr)
	if ib == nil || err != nil {
		return nil
	}
	ib.mu.Lock()
	defer ib.mu.Unlock()
	if ib.zones == nil {
		return nil
	}
	rt := &routeTable{zones: map[string]*NodeCache{}}
	for zone, n := range ib.zones[port] {
		var owner *NodeCache
		if n == 1 {
			for _, nc := range ib.blocks {
				if nc.cfg != nil && nc.cfg.Zone == zone && nc.cfg.Port == port && nc.fastSafe && listensOn(nc.cfg, host) {
					owner = nc
				}
			}
		}
		wire := make([]byte, maxName+1)
		l, err := dns.PackDomainName(zone, wire, 0, nil, false)
		if err != nil {
			return nil
		}
		rt.zones[string(wire[:l])] = owner
	}
	return rt
}

func listensOn(cfg *dnsserver.Config, host string) bool {
	want := net.ParseIP(host)
	for _, h := range cfg.ListenHosts {
		if ip := net.ParseIP(h); ip != nil && want != nil && ip.Equal(want) {
			return true
		}
	}
	return false
}

// route returns the block the server's mux would hand the lower-cased wire
// name lname to, if that is a nodecache block the fast path may serve a
// miss for; nil means the chain decides.
func (rt *routeTable) route(lname []byte) *NodeCache {
	if rt == nil {
		return nil
	}
	for off := 0; off < len(lname); {
		if nc, ok := rt.zones[string(lname[off:])]; ok {
			return nc
		}
		if lname[off] == 0 {
			break
		}
		off += int(lname[off]) + 1
	}
	return nil
}
