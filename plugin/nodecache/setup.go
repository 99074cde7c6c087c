package nodecache

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"

	"github.com/dnsaccel/dnsaccel/plugin/nodecache/upstream"
)

func init() { plugin.Register(pluginName, setup) }

func setup(c *caddy.Controller) error {
	opts, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}
	nc := New(opts)
	cfg := dnsserver.GetConfig(c)
	nc.cfg = cfg
	nc.blocks = blocksOf(c)
	nc.blocks.add(nc)

	c.OnStartup(func() error {
		if err := nc.Start(); err != nil {
			return plugin.Error(pluginName, err)
		}
		nc.fastSafe, nc.fastFilters = chainIsTransparent(cfg)
		return nil
	})
	c.OnShutdown(nc.Stop)

	if opts.FastPath != 0 {
		installFastPath(cfg, nc)
	}

	cfg.AddPlugin(func(next plugin.Handler) plugin.Handler {
		nc.Next = next
		return nc
	})
	return nil
}

// parse reads:
//
//	nodecache UPSTREAM... {
//	    success CAPACITY [MAXTTL [MINTTL]]
//	    denial CAPACITY [MAXTTL]
//	    prefetch AMOUNT [DURATION [PERCENTAGE%]]
//	    serve_stale [DURATION]
//	    prefer_udp
//	    max_inflight N
//	    health_check DURATION
//	    fastpath off|SOCKETS
//	    upstream_mark MARK
//	    max_bytes SIZE
//	}
func parse(c *caddy.Controller) (Options, error) {
	opts := DefaultOptions()
	seen := false
	for c.Next() {
		if seen {
			return opts, plugin.ErrOnce
		}
		seen = true
		args := c.RemainingArgs()
		if len(args) == 0 {
			return opts, c.Errf("at least one upstream is required")
		}
		for _, a := range args {
			u, err := upstream.ParseAddr(a)
			if err != nil {
				return opts, c.Errf("upstream %q: %v", a, err)
			}
			opts.Upstreams = append(opts.Upstreams, u)
		}
		for c.NextBlock() {
			if err := parseOption(c, &opts); err != nil {
				return opts, err
			}
		}
	}
	return opts, nil
}

func parseOption(c *caddy.Controller, o *Options) error {
	opt := c.Val()
	args := c.RemainingArgs()
	argc := func(lo, hi int) error {
		if len(args) < lo || len(args) > hi {
			return c.Errf("%s takes %d to %d arguments, got %d", opt, lo, hi, len(args))
		}
		return nil
	}
	switch opt {
	case "success", "denial":
		maxArgs := 3
		if opt == "denial" {
			maxArgs = 2
		}
		if err := argc(1, maxArgs); err != nil {
			return err
		}
		capacity, err := positiveInt(args[0])
		if err != nil {
			return c.Errf("%s CAPACITY: %v", opt, err)
		}
		p := &o.Success
		if opt == "denial" {
			p = &o.Denial
			o.DenialCap = capacity
		} else {
			o.SuccessCap = capacity
		}
		if len(args) > 1 {
			ttl, err := positiveInt(args[1])
			if err != nil {
				return c.Errf("%s MAXTTL: %v", opt, err)
			}
			p.max = uint32(ttl)
			if p.min > p.max {
				p.min = p.max
			}
		}
		if len(args) > 2 {
			ttl, err := strconv.Atoi(args[2])
			if err != nil || ttl < 0 {
				return c.Errf("%s MINTTL: %q is not a non-negative number", opt, args[2])
			}
			if uint32(ttl) > p.max {
				return c.Errf("%s MINTTL %d is larger than MAXTTL %d", opt, ttl, p.max)
			}
			p.min = uint32(ttl)
		}
	case "prefetch":
		if err := argc(1, 3); err != nil {
			return err
		}
		n, err := positiveInt(args[0])
		if err != nil {
			return c.Errf("prefetch AMOUNT: %v", err)
		}
		o.Prefetch = n
		if len(args) > 1 {
			d, err := positiveDuration(args[1])
			if err != nil {
				return c.Errf("prefetch DURATION: %v", err)
			}
			o.PrefetchWindow = d
		}
		if len(args) > 2 {
			pct, err := strconv.Atoi(strings.TrimSuffix(args[2], "%"))
			if err != nil || !strings.HasSuffix(args[2], "%") || pct < 10 || pct > 90 {
				return c.Errf("prefetch PERCENTAGE: %q must be 10%%..90%%", args[2])
			}
			o.PrefetchPct = pct
		}
	case "serve_stale":
		if err := argc(0, 1); err != nil {
			return err
		}
		o.ServeStale = time.Hour
		if len(args) == 1 {
			d, err := positiveDuration(args[0])
			if err != nil {
				return c.Errf("serve_stale DURATION: %v", err)
			}
			o.ServeStale = d
		}
	case "prefer_udp":
		if err := argc(0, 0); err != nil {
			return err
		}
		o.PreferUDP = true
	case "max_inflight":
		if err := argc(1, 1); err != nil {
			return err
		}
		n, err := positiveInt(args[0])
		if err != nil {
			return c.Errf("max_inflight: %v", err)
		}
		o.MaxInflight = n
	case "health_check":
		if err := argc(1, 1); err != nil {
			return err
		}
		d, err := positiveDuration(args[0])
		if err != nil {
			return c.Errf("health_check: %v", err)
		}
		o.HealthCheck = d
	case "fastpath":
		if err := argc(1, 1); err != nil {
			return err
		}
		if args[0] == "off" {
			o.FastPath = 0
			return nil
		}
		n, err := positiveInt(args[0])
		if err != nil || n > 64 {
			return c.Errf("fastpath: %q must be off or a socket count 1..64", args[0])
		}
		o.FastPath = n
	case "upstream_mark":
		if err := argc(1, 1); err != nil {
			return err
		}
		m, err := strconv.ParseUint(args[0], 0, 32)
		if err != nil {
			return c.Errf("upstream_mark: %q is not a 32-bit number (0x... or decimal)", args[0])
		}
		o.UpstreamMark = uint32(m)
	case "max_bytes":
		if err := argc(1, 1); err != nil {
			return err
		}
		n, err := ParseSize(args[0])
		if err != nil {
			return c.Errf("max_bytes: %v", err)
		}
		o.MaxBytes = n
	default:
		return c.Errf("unknown option %q", opt)
	}
	return nil
}

// maxSize bounds ParseSize: far above any memory a cache is given, far
// below overflow.
const maxSize = 1 << 40

// ParseSize reads a byte size: a positive number of bytes, optionally with
// a K, M or G suffix (powers of 1024: 64M is 64 MiB), as max_bytes and
// node-cache's --cache-max-bytes take it.
func ParseSize(s string) (int64, error) {
	num, mult := s, int64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		}
		if mult != 1 {
			num = s[:n-1]
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v <= 0 || num[0] == '+' {
		return 0, fmt.Errorf("%q is not a size (a positive number of bytes, or with a K, M or G suffix)", s)
	}
	if v > maxSize/mult {
		return 0, fmt.Errorf("%q is more than 1T", s)
	}
	return v * mult, nil
}

func positiveInt(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive number", s)
	}
	return n, nil
}

func positiveDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q must be positive", s)
	}
	return d, nil
}

// transparentPlugins can run before nodecache without changing any answer,
// so a cache hit may skip them. Anything else in front of nodecache (log,
// rewrite, acl, autopath...) sends every query through the full chain,
// unless it implements FastPathFilter.
var transparentPlugins = map[string]bool{
	"errors": true, "debug": true, "prometheus": true, "cancel": true,
	"loop": true, "metadata": true, "trace": true, pluginName: true,
}

// FastPathFilter is implemented by a plugin that runs before nodecache and
// changes the answers to some questions only (k8s_autopath does: it
// rewrites NXDOMAIN answers for names under a namespace's search domain).
// The fast path answers a cached question without running the chain only
// if every such plugin in front of nodecache reports that it would pass
// the cached answer through unchanged, whoever the client is.
type FastPathFilter interface {
	FastPathOK(qname string, qtype uint16, rcode int) bool
}

// chainIsTransparent reports whether the fast path may answer for cfg's
// block, and which filters it must consult per cached question.
func chainIsTransparent(cfg *dnsserver.Config) (bool, []FastPathFilter) {
	if len(cfg.FilterFuncs) > 0 || cfg.ViewName != "" {
		return false, nil // routing depends on the client: never skip the server's mux
	}
	order := map[string]int{}
	for i, d := range dnsserver.Directives {
		order[d] = i
	}
	me := order[pluginName]
	var filters []FastPathFilter
	for _, h := range cfg.Handlers() {
		i, ok := order[h.Name()]
		if !ok || i >= me || transparentPlugins[h.Name()] {
			continue
		}
		f, ok := h.(FastPathFilter)
		if !ok {
			return false, nil
		}
		filters = append(filters, f)
	}
	return true, filters
}
