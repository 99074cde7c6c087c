package upstream

import (
	"errors"
	"fmt"
	"time"
)

// Defaults applied by New to zero-valued Config fields.
const (
	DefaultMaxInflight       = 2000
	DefaultHealthCheck       = 500 * time.Millisecond
	DefaultConnsPerUpstream  = 2
	DefaultMaxQueriesPerConn = 1000
	DefaultMaxConnAge        = 30 * time.Second
	DefaultTimeout           = 2 * time.Second
	DefaultMaxFails          = 2
)

// maxPendingPerConn bounds the queries in flight on one TCP connection. IDs
// are drawn at random among the free ones, so the table is never allowed to
// fill up completely.
const maxPendingPerConn = 60000

// Config configures a Pool. Zero values mean "use the default".
type Config struct {
	Upstreams []Addr
	// PreferUDP makes UDP the default transport (a TC=1 answer is retried
	// over TCP); otherwise TCP, the default.
	PreferUDP bool
	// MaxInflight bounds the queries in flight across all upstreams; over it
	// Exchange fails fast with ErrOverloaded (default 2000).
	MaxInflight int
	// HealthCheck is the interval of the health probes (". IN NS"; any
	// reply is healthy) of an upstream marked down (default 500ms).
	HealthCheck time.Duration
	// ConnsPerUpstream is the number of persistent, pipelined TCP
	// connections per upstream (default 2).
	ConnsPerUpstream int
	// MaxQueriesPerConn retires a TCP connection (drained, closed, replaced)
	// after this many queries (default 1000).
	MaxQueriesPerConn int
	// MaxConnAge is the absolute lifetime of a TCP connection (default 30s).
	MaxConnAge time.Duration
	// Timeout bounds each attempt (default 2s).
	Timeout time.Duration
	// MaxFails is the number of consecutive failures that marks an upstream
	// down (default 2).
	MaxFails int
	// Mark is the SO_MARK of every socket the pool dials (TCP and UDP, to
	// upstreams and for health probes); 0: none. Linux only. node-cache
	// sets it (Corefile upstream_mark) when it steers the cluster DNS VIP
	// to itself: its eBPF programs leave marked sockets alone, so the
	// cache's own queries reach the VIP even when it is the upstream.
	Mark uint32
}

// withDefaults validates c and returns a copy with defaults filled in. Errors
// name the offending field.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if len(c.Upstreams) == 0 {
		errs = append(errs, errors.New("Upstreams: at least one upstream is required"))
	}
	ups := make([]Addr, len(c.Upstreams))
	seen := make(map[Addr]bool, len(c.Upstreams))
	for i, a := range c.Upstreams {
		switch a.Transport {
		case "", TransportTCP, TransportUDP:
		default:
			errs = append(errs, fmt.Errorf("Upstreams[%d].Transport: %q is neither %q nor %q", i, a.Transport, TransportTCP, TransportUDP))
		}
		// Normalise (and validate) the host part.
		pa, err := ParseAddr(a.Host)
		if err != nil || pa.Transport != "" || a.Host == "" {
			errs = append(errs, fmt.Errorf("Upstreams[%d].Host: %q is not an ip:port address", i, a.Host))
		}
		a.Host = pa.Host
		if seen[a] {
			errs = append(errs, fmt.Errorf("Upstreams[%d]: duplicate upstream %s", i, a))
		}
		seen[a] = true
		ups[i] = a
	}
	c.Upstreams = ups

	intField := func(name string, v *int, def int) {
		switch {
		case *v < 0:
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %d", name, *v))
		case *v == 0:
			*v = def
		}
	}
	durField := func(name string, v *time.Duration, def time.Duration) {
		switch {
		case *v < 0:
			errs = append(errs, fmt.Errorf("%s: must not be negative, got %v", name, *v))
		case *v == 0:
			*v = def
		}
	}
	intField("MaxInflight", &c.MaxInflight, DefaultMaxInflight)
	intField("ConnsPerUpstream", &c.ConnsPerUpstream, DefaultConnsPerUpstream)
	intField("MaxQueriesPerConn", &c.MaxQueriesPerConn, DefaultMaxQueriesPerConn)
	intField("MaxFails", &c.MaxFails, DefaultMaxFails)
	durField("HealthCheck", &c.HealthCheck, DefaultHealthCheck)
	durField("MaxConnAge", &c.MaxConnAge, DefaultMaxConnAge)
	durField("Timeout", &c.Timeout, DefaultTimeout)
	if c.ConnsPerUpstream > 64 {
		errs = append(errs, fmt.Errorf("ConnsPerUpstream: %d is more than 64", c.ConnsPerUpstream))
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, fmt.Errorf("upstream config: %w", err)
	}
	return c, nil
}
