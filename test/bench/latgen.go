package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// latResult is what the rate-paced latency generator measured.
type latResult struct {
	Sent    int           `json:"sent"`
	Answers int           `json:"answers"` // NOERROR with at least one answer RR
	Bad     int           `json:"bad"`     // responses that were not a positive answer
	Lost    int           `json:"lost"`    // no response within the timeout
	Rate    float64       `json:"rate"`    // achieved send rate, queries/s
	P50     time.Duration `json:"p50"`
	P99     time.Duration `json:"p99"`
	P999    time.Duration `json:"p999"`
	Max     time.Duration `json:"max"`

	lats []time.Duration // sorted samples
}

// setPercentiles sorts r.lats and derives the percentiles from them.
func (r *latResult) setPercentiles() {
	if len(r.lats) == 0 {
		return
	}
	slices.Sort(r.lats)
	pct := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(r.lats)))) - 1 // nearest rank
		return r.lats[max(0, min(i, len(r.lats)-1))]
	}
	r.P50, r.P99, r.P999, r.Max = pct(0.50), pct(0.99), pct(0.999), r.lats[len(r.lats)-1]
}

// mergeLat combines runs of the same kind (e.g. interleaved blocks).
func mergeLat(rs ...latResult) latResult {
	var m latResult
	var dur float64
	for _, r := range rs {
		m.Sent += r.Sent
		m.Answers += r.Answers
		m.Bad += r.Bad
		m.Lost += r.Lost
		if r.Rate > 0 {
			dur += float64(r.Sent) / r.Rate
		}
		m.lats = append(m.lats, r.lats...)
	}
	if dur > 0 {
		m.Rate = float64(m.Sent) / dur
	}
	m.setPercentiles()
	return m
}

// packQueries packs one A query per name (IDs are overwritten when sent).
func packQueries(names []string) ([][]byte, error) {
	out := make([][]byte, len(names))
	for i, n := range names {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(n), dns.TypeA)
		b, err := m.Pack()
		if err != nil {
			return nil, err
		}
		out[i] = b
	}
	return out, nil
}

// positiveAnswer reports whether the message b (at least a header) is a
// response with NOERROR and at least one answer record.
func positiveAnswer(b []byte) bool {
	return b[2]&0x80 != 0 && b[3]&0x0f == dns.RcodeSuccess && binary.BigEndian.Uint16(b[6:]) != 0
}

// runLatGen sends total queries to addr at a fixed rate, cycling through the
// pre-packed queries, spread over nsock connected UDP sockets, and measures the
// latency of every response. It is a small, open-loop (rate-paced, not
// window-limited) generator: a slow server cannot slow down the send schedule,
// so queueing shows up in the percentiles.
func runLatGen(ctx context.Context, addr string, queries [][]byte, total int, rate float64, nsock int, timeout time.Duration) (latResult, error) {
	var res latResult
	if total <= 0 || rate <= 0 || len(queries) == 0 {
		return res, errors.New("latgen: nothing to send")
	}
	if nsock < 1 {
		nsock = 1
	}
	raddr, err := net.ResolveUDPAddr("udp4", addr)
	if err != nil {
		return res, err
	}
	type sock struct {
		c     *net.UDPConn
		slots [65536]atomic.Int64 // send time (ns since base) + 1, by DNS ID
		lats  []time.Duration
		bad   int
		buf   []byte
	}
	socks := make([]*sock, nsock)
	for i := range socks {
		c, err := net.DialUDP("udp4", nil, raddr)
		if err != nil {
			for _, s := range socks[:i] {
				s.c.Close()
			}
			return res, err
		}
		_ = c.SetReadBuffer(4 << 20)
		_ = c.SetWriteBuffer(4 << 20)
		socks[i] = &sock{c: c, lats: make([]time.Duration, 0, total/nsock+1), buf: make([]byte, 512)}
	}
	base := time.Now()
	var recvd atomic.Int64
	var wg sync.WaitGroup
	for _, s := range socks {
		wg.Add(1)
		go func(s *sock) {
			defer wg.Done()
			buf := make([]byte, 4096)
			for {
				n, err := s.c.Read(buf)
				if err != nil {
					if errors.Is(err, net.ErrClosed) {
						return
					}
					continue // e.g. ECONNREFUSED from an ICMP error
				}
				now := int64(time.Since(base))
				if n < 12 {
					s.bad++
					continue
				}
				id := binary.BigEndian.Uint16(buf)
				t := s.slots[id].Swap(0)
				if t == 0 {
					continue // duplicate or unexpected response
				}
				recvd.Add(1)
				if !positiveAnswer(buf) {
					s.bad++
					continue
				}
				s.lats = append(s.lats, time.Duration(now-(t-1)))
			}
		}(s)
	}
	closeAll := func() {
		for _, s := range socks {
			s.c.Close()
		}
		wg.Wait()
	}

	// Send schedule: query i is due at base + i/rate. The sender wakes up
	// at least every tick and sends everything that is due.
	tick := 100 * time.Microsecond
	if iv := time.Duration(float64(time.Second) / rate); iv > tick {
		tick = iv
	}
	sent := 0
	seqs := make([]uint16, nsock)
	for sent < total {
		if ctx.Err() != nil {
			closeAll()
			return res, ctx.Err()
		}
		due := int(time.Since(base).Seconds()*rate) + 1
		if due > total {
			due = total
		}
		for ; sent < due; sent++ {
			s := socks[sent%nsock]
			q := queries[sent%len(queries)]
			id := seqs[sent%nsock]
			seqs[sent%nsock]++
			buf := append(s.buf[:0], q...)
			binary.BigEndian.PutUint16(buf, id)
			s.buf = buf
			// A previous query with this ID that never came back is
			// simply forgotten (it counts as lost).
			s.slots[id].Store(int64(time.Since(base)) + 1)
			if _, err := s.c.Write(buf); err != nil {
				s.slots[id].Store(0)
			}
		}
		time.Sleep(tick)
	}
	sendDur := time.Since(base)
	deadline := time.Now().Add(timeout)
	for recvd.Load() < int64(sent) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	closeAll()
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	var lats []time.Duration
	for _, s := range socks {
		lats = append(lats, s.lats...)
		res.Bad += s.bad
	}
	res.Sent = sent
	res.Answers = len(lats)
	res.Lost = sent - int(recvd.Load())
	res.Rate = float64(sent) / sendDur.Seconds()
	if len(lats) == 0 {
		return res, fmt.Errorf("latgen: no answers from %s (%d sent, %d bad)", addr, sent, res.Bad)
	}
	res.lats = lats
	res.setPercentiles()
	return res, nil
}

// runLatSerial measures latency with one query at a time from one blocking
// UDP socket on the calling goroutine's OS thread (locked for the run): query
// i is sent at its slot, base + i/rate, and timed from that slot. It is for
// paths whose latency is near the cost of a wake-up. The open-loop generator
// above parks its readers in Go's netpoller, so each of its samples also holds
// the time until some thread polls and runs the reader — tens of µs, more in
// its tail than a kernel-answered query takes in all. Here the reply of a
// path answered within the sender's own syscall (a tc program at the pod's
// veth) is already queued when recvfrom is called, and a reply from another
// core wakes the blocked thread directly. A query is timed from when it is
// sent, except when the previous reply came after this query's slot: then
// from the slot, so the wait for a slow reply counts and the closed loop
// does not flatter a slow path (while the generator's own wake-up, late by
// a few µs, does not count against any path). A lost query (no reply
// within timeout) moves the schedule on by the time waited. Replies to an
// earlier, timed-out query are skipped by ID.
// serialClient is one blocking UDP socket connected to a server, for a
// generator that owns its OS thread and asks one query at a time.
type serialClient struct {
	fd   int
	sbuf []byte
	rbuf []byte
}

// newSerialClient locks the calling goroutine to its OS thread (the
// socket's namespace is the thread's, and the generator's timing is that
// thread's) and connects to addr (IPv4 "IP:PORT"); reads give up after
// timeout. close closes the socket and unlocks the thread.
func newSerialClient(addr string, timeout time.Duration) (*serialClient, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().Is4() {
		return nil, fmt.Errorf("latgen: %q is not an IPv4 address:port", addr)
	}
	runtime.LockOSThread()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("latgen: socket: %w", err)
	}
	c := &serialClient{fd: fd, sbuf: make([]byte, 0, 512), rbuf: make([]byte, 4096)}
	tv := unix.NsecToTimeval(int64(timeout))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		c.close()
		return nil, fmt.Errorf("latgen: SO_RCVTIMEO: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}); err != nil {
		c.close()
		return nil, fmt.Errorf("latgen: connect %s: %w", addr, err)
	}
	return c, nil
}

func (c *serialClient) close() {
	unix.Close(c.fd)
	runtime.UnlockOSThread()
}

// exchange sends query with the given ID and waits for the reply with that
// ID, skipping late replies to earlier queries and garbage. answered is
// false when the send failed or the read timed out; positive tells a
// positive answer from any other reply.
func (c *serialClient) exchange(query []byte, id uint16) (answered, positive bool) {
	c.sbuf = append(c.sbuf[:0], query...)
	binary.BigEndian.PutUint16(c.sbuf, id)
	if _, err := unix.Write(c.fd, c.sbuf); err != nil {
		return false, false
	}
	for {
		n, err := unix.Read(c.fd, c.rbuf)
		if err == unix.EINTR {
			continue
		}
		if err != nil { // SO_RCVTIMEO
			return false, false
		}
		if n >= 12 && binary.BigEndian.Uint16(c.rbuf) == id {
			return true, positiveAnswer(c.rbuf[:n])
		}
	}
}

// closedLoopResult is what runClosedLoop measured.
type closedLoopResult struct {
	Sent    int           `json:"sent"`
	Answers int           `json:"answers"` // positive answers
	Bad     int           `json:"bad"`
	Lost    int           `json:"lost"`
	Wall    time.Duration `json:"wall_ns"`
	// User and Sys are the generator thread's own CPU time
	// (getrusage(RUSAGE_THREAD)).
	User time.Duration `json:"user_ns"`
	Sys  time.Duration `json:"sys_ns"`
}

// runClosedLoop asks total queries one after the other, each as soon as
// the previous one is answered, from one blocking socket on the calling
// goroutine's OS thread: what a pod's stub resolver does for one lookup
// after another (send, then wait on the same socket). It measures the
// thread's own CPU time, so that a caller can take it out of the machine's.
func runClosedLoop(ctx context.Context, addr string, queries [][]byte, total int, timeout time.Duration) (closedLoopResult, error) {
	var res closedLoopResult
	if total <= 0 || len(queries) == 0 {
		return res, errors.New("latgen: nothing to send")
	}
	c, err := newSerialClient(addr, timeout)
	if err != nil {
		return res, err
	}
	defer c.close()
	var ru0, ru1 unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru0); err != nil {
		return res, fmt.Errorf("latgen: getrusage: %w", err)
	}
	start := time.Now()
	for i := 0; i < total; i++ {
		if i%256 == 0 && ctx.Err() != nil {
			return res, ctx.Err()
		}
		res.Sent++
		switch answered, positive := c.exchange(queries[i%len(queries)], uint16(i)); {
		case !answered:
			res.Lost++
		case positive:
			res.Answers++
		default:
			res.Bad++
		}
	}
	res.Wall = time.Since(start)
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru1); err != nil {
		return res, fmt.Errorf("latgen: getrusage: %w", err)
	}
	res.User = time.Duration(ru1.Utime.Nano() - ru0.Utime.Nano())
	res.Sys = time.Duration(ru1.Stime.Nano() - ru0.Stime.Nano())
	return res, nil
}

func runLatSerial(ctx context.Context, addr string, queries [][]byte, total int, rate float64, timeout time.Duration) (latResult, error) {
	var res latResult
	if total <= 0 || rate <= 0 || len(queries) == 0 {
		return res, errors.New("latgen: nothing to send")
	}
	c, err := newSerialClient(addr, timeout)
	if err != nil {
		return res, err
	}
	defer c.close()

	res.lats = make([]time.Duration, 0, total)
	base := time.Now()
	var lastReply time.Time
	for i := 0; i < total; i++ {
		if i%256 == 0 && ctx.Err() != nil {
			return res, ctx.Err()
		}
		due := base.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		behind := lastReply.After(due)
		// Sleep most of the way on the thread itself (nanosleep: a Go
		// timer would wake the goroutine up to a millisecond late), spin
		// the rest: even a thread's wake-up is late by tens of µs, which
		// would end up in the sample.
		if d := time.Until(due); d > 150*time.Microsecond {
			ts := unix.NsecToTimespec(int64(d - 100*time.Microsecond))
			_ = unix.Nanosleep(&ts, nil)
		}
		for time.Now().Before(due) {
		}
		res.Sent++
		start := time.Now()
		if behind {
			start = due
		}
		answered, positive := c.exchange(queries[i%len(queries)], uint16(i))
		if !answered {
			// The wait was the generator's: the schedule resumes from now
			// rather than charging it to the queries after.
			res.Lost++
			base = base.Add(time.Since(due))
			lastReply = time.Time{}
			continue
		}
		lastReply = time.Now()
		if !positive {
			res.Bad++
		} else {
			res.lats = append(res.lats, lastReply.Sub(start))
		}
	}
	res.Answers = len(res.lats)
	res.Rate = float64(res.Sent) / time.Since(base).Seconds()
	if res.Answers == 0 {
		return res, fmt.Errorf("latgen: no answers from %s (%d sent, %d bad, %d lost)", addr, res.Sent, res.Bad, res.Lost)
	}
	res.setPercentiles()
	return res, nil
}
