// Package upstream is the upstream client of the nodecache plugin: it sends
// the queries the node-local cache cannot answer to the cluster DNS
// (normally the kube-dns Service IP) and returns the answers.
//
//	p, err := upstream.New(upstream.Config{Upstreams: []upstream.Addr{addr}})
//	...
//	resp, err := p.Exchange(ctx, req) // resp.Id == req.Id; req is not modified
//	...
//	p.Close()
//
// # Why pipelined TCP
//
// By default queries go over a few persistent TCP connections per upstream
// (Config.ConnsPerUpstream), each carrying many queries at once as RFC 7766
// (section 6.2.1.1) allows: every query is written with an ID unique among
// those in flight on its connection, one reader goroutine per connection
// matches the answers, in whatever order they come, back to the queries by
// ID and question, and the caller's ID is restored on the answer. Compared
// with a UDP exchange per query this
//
//   - makes no new conntrack entry per query, which in Kubernetes avoids
//     the UDP conntrack insertion races behind the well-known 5 s DNS
//     timeouts (kubernetes/kubernetes#56903);
//   - pays no handshake per query and bounds the number of sockets the node
//     opens to the cluster DNS whatever the query rate;
//   - never needs a truncation round trip: a TCP answer may be 64 KiB.
//
// Queries are forwarded as the client sent them (EDNS0 included): the
// plugin decides what to advertise.
//
// With Config.PreferUDP (or a "udp://" upstream) each query is instead sent
// from a fresh connected UDP socket, so with a random source port; an
// answer with TC=1 is retried over the TCP connections.
//
// # Why connections are rotated
//
// A Service IP is load-balanced per connection: kube-proxy (iptables, IPVS)
// or an eBPF datapath picks a backend when the connection is made. A
// connection that lives forever therefore pins all of this node's cache
// misses to one cluster DNS replica, while the other replicas idle; with a
// cache on every node the imbalance across replicas becomes large and
// sticky (coredns/coredns#6803 describes it for CoreDNS's forward plugin).
// So a connection is retired after Config.MaxQueriesPerConn queries or
// Config.MaxConnAge, whichever comes first: it takes no new query, a
// replacement is dialed (at once if the old one was busy, else by the next
// query) and may land on another backend, and the old one is closed when
// its last query in flight is answered or times out. Nothing in flight is
// lost to a rotation.
//
// # Head-of-line blocking
//
// CoreDNS (like every server built on miekg/dns's dns.Server) reads the
// pipelined queries of one TCP connection one at a time and answers each
// before reading the next: a slow query, say a recursion that takes a
// second, delays every query behind it on that connection. Three things
// keep that bounded: several connections per upstream; a new query goes to
// the connection with the fewest queries in flight; and a connection on
// which a query timed out with nothing at all answered since it was sent is
// presumed stuck and closed, its other queries being retried.
//
// # Failures
//
// Each attempt is bounded by Config.Timeout (and by the caller's ctx).
// Healthy upstreams are tried in round-robin order; a failed attempt moves
// on to the next one. An answer with an ID matching no query in flight, or
// with another question, or without QR set, is dropped and counted
// (upstream_mismatched_total): its query keeps waiting until its own
// timeout. A connection that closes or fails with queries in flight fails
// them; each is retried once more on another upstream or, with none left,
// on a fresh connection. A stream that is not valid DNS framing closes the
// connection the same way.
//
// Config.MaxFails failed attempts in a row (a broken connection counting
// once, however many queries it carried) mark an upstream down. Only then
// is it health-checked, every Config.HealthCheck, with ". IN NS" on a
// connection of its own; any answer marks it up again, as does any answered
// query. When every upstream is down one of them is still tried, so that
// recovery is noticed early; if that fails the error wraps ErrNoHealthy.
// Failed dials are retried with exponential backoff per upstream (from
// 25 ms, with jitter, capped at 1 s); during the backoff an attempt on that
// upstream fails at once instead of waiting.
//
// More than Config.MaxInflight Exchanges at once fail fast with
// ErrOverloaded.
//
// # Goroutines
//
// The pool owns every goroutine it starts: one per TCP connection (it dials,
// then reads the answers), one health loop per upstream marked down, and
// the connections' age-timer callbacks. Close stops them all, closes every
// connection and makes the Exchanges in flight return ErrClosed. Exchange
// itself runs in the caller's goroutine.
//
// # Metrics
//
// Registered on the default Prometheus registry (the one CoreDNS's
// prometheus plugin serves), with label to = the upstream's ip:port:
//
//	coredns_nodecache_upstream_requests_total{to,proto}
//	coredns_nodecache_upstream_request_duration_seconds{to,proto}
//	coredns_nodecache_upstream_failures_total{to,reason}   reason: dial, timeout, conn, protocol, network
//	coredns_nodecache_upstream_healthy{to}
//	coredns_nodecache_upstream_connections{to}
//	coredns_nodecache_upstream_inflight
//	coredns_nodecache_upstream_overloaded_total
//	coredns_nodecache_upstream_mismatched_total
package upstream
