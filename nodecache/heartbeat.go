package nodecache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	nodecacheplugin "github.com/dnsaccel/dnsaccel/plugin/nodecache"
)

// The heartbeat follows the serving path, not the process: every interval
// node-cache asks itself the plugin's ProbeName (TXT) on each address pods
// reach (the --local-ip:53 addresses when steering, else the --listen
// addresses), over UDP and over a new TCP connection, and checks that no
// fast-path thread is stuck. Only when every probe was answered in time
// does it refresh the kernel's heartbeat (steering) and its readiness. A
// wedged CoreDNS, nodecache plugin or fast path in a live process thus
// stops the heartbeat like a dead process does: the kernel falls back to
// the cluster DNS after --heartbeat-timeout, and /ready goes 503.
//
// The UDP probe lands on a fast-path socket (the listener's reuseport
// program picks one by the flow hash of a fresh source port), whose thread
// hands it to the chain (the probe never takes the fast path's own miss
// path), so it proves the socket, the thread, the server's mux and
// nodecache; the TCP probe proves CoreDNS's accept loop and the chain; the
// threads' own timestamps prove every fast-path thread, including those no
// probe landed on. The probes go to the local IP itself, which is not in
// the steering table, so the programs leave them alone.
type heartbeat struct {
	targets []netip.AddrPort
	// interval between probe rounds; deadline: a round answered later
	// counts as failed; stallLimit: a fast-path thread away from its
	// socket longer is stuck; fresh: readiness holds this long after the
	// last good round.
	interval, deadline, stallLimit, fresh time.Duration
	// beat is called after each good round (the kernel's heartbeat); an
	// error makes the round count as failed.
	beat func() error
	log  *slog.Logger

	lastOK atomic.Int64 // monotonic ns (since hbBase) of the last good round; 0: none
	cancel context.CancelFunc
	done   chan struct{}

	warnOnce sync.Once
}

var hbBase = time.Now()

func hbNow() int64 { return int64(time.Since(hbBase)) + 1 } // never 0

// newHeartbeat sets the probe timing from the heartbeat timeout: four
// rounds per timeout (10 ms to 1 s apart), each answered within half the
// timeout, fast-path threads back at their sockets within half the
// timeout but at least 1 s (an idle one comes back every 250 ms).
func newHeartbeat(targets []netip.AddrPort, timeout time.Duration, beat func() error, log *slog.Logger) *heartbeat {
	timeout = cmp.Or(timeout, DefaultHeartbeatTimeout)
	interval := min(max(timeout/4, 10*time.Millisecond), time.Second)
	return &heartbeat{
		targets:    targets,
		interval:   interval,
		deadline:   max(timeout/2, interval),
		stallLimit: max(timeout/2, time.Second),
		fresh:      timeout,
		beat:       beat,
		log:        log,
	}
}

// start runs the probe rounds until stop; the first one at once.
func (h *heartbeat) start(ctx context.Context) {
	ctx, h.cancel = context.WithCancel(ctx)
	h.done = make(chan struct{})
	go h.run(ctx)
}

// stop ends the rounds; no beat happens after it returns.
func (h *heartbeat) stop() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
	}
}

// alive reports whether the last good round is younger than the timeout.
func (h *heartbeat) alive() bool {
	last := h.lastOK.Load()
	return last != 0 && time.Duration(hbNow()-last) < h.fresh
}

func (h *heartbeat) run(ctx context.Context) {
	defer close(h.done)
	t := time.NewTicker(h.interval)
	defer t.Stop()
	state := "" // "ok", "failing"
	for {
		err := h.round(ctx)
		if ctx.Err() != nil {
			return // stopping: no beat after stop
		}
		if err == nil && h.beat != nil {
			err = h.beat()
		}
		if err == nil {
			h.lastOK.Store(hbNow())
			if state != "ok" {
				h.log.Info("serving probes answered: heartbeat on", "targets", h.targets, "interval", h.interval.String())
			}
			state = "ok"
		} else {
			if state != "failing" {
				h.log.Warn("serving probe failed: no heartbeat (the kernel stops steering and /ready fails once it is older than --heartbeat-timeout)",
					"err", err)
			}
			state = "failing"
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// round probes every target over UDP and TCP at once and checks the
// fast-path threads; nil when all of it was fine within the deadline.
func (h *heartbeat) round(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, h.deadline)
	defer cancel()
	errs := make([]error, 2*len(h.targets))
	var wg sync.WaitGroup
	for i, t := range h.targets {
		for j, proto := range []string{"udp", "tcp"} {
			wg.Go(func() { errs[2*i+j] = h.probe(ctx, proto, t) })
		}
	}
	wg.Wait()
	if stuck := nodecacheplugin.FastPathStalled(h.stallLimit); len(stuck) > 0 {
		errs = append(errs, fmt.Errorf("a fast-path thread of %s has not been back at its socket for %s", strings.Join(stuck, ", "), h.stallLimit))
	}
	return errors.Join(errs...)
}

// probe asks target the probe name over proto, from a new socket.
func (h *heartbeat) probe(ctx context.Context, proto string, target netip.AddrPort) error {
	m := new(dns.Msg)
	m.SetQuestion(nodecacheplugin.ProbeName, dns.TypeTXT)
	c := &dns.Client{Net: proto, UDPSize: dns.MinMsgSize}
	start := time.Now()
	r, _, err := c.ExchangeContext(ctx, m, target.String())
	if err != nil {
		return fmt.Errorf("probe %s %s: no answer in %s: %w", proto, target, time.Since(start).Round(time.Millisecond), err)
	}
	if !isProbeAnswer(r) {
		// Some other block than nodecache's answers the probe name (a
		// --conf Corefile): its answer still proves the listener serves.
		h.warnOnce.Do(func() {
			h.log.Warn("the serving probe is not answered by nodecache (the Corefile routes it elsewhere); any answer counts as alive",
				"name", nodecacheplugin.ProbeName, "target", target.String(), "rcode", dns.RcodeToString[r.Rcode])
		})
	}
	return nil
}

func isProbeAnswer(r *dns.Msg) bool {
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		return false
	}
	t, ok := r.Answer[0].(*dns.TXT)
	return ok && len(t.Txt) == 1 && t.Txt[0] == nodecacheplugin.ProbeAnswer
}

// probeTargets are the addresses the heartbeat probes: with steering the
// --local-ip:53 addresses pods reach; else the --listen addresses of the
// generated Corefile; with --conf and no steering none (node-cache does
// not know what the Corefile serves; readiness then only says it started).
func (c *Config) probeTargets() []netip.AddrPort {
	var addrs []string
	switch {
	case c.Steer.Enabled():
		addrs = c.steerListen()
	case c.Conf == "":
		addrs = c.listenAddrs()
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		if ap, err := netip.ParseAddrPort(a); err == nil && ap.Port() != 0 && !ap.Addr().IsUnspecified() {
			out = append(out, ap)
		}
	}
	return out
}
