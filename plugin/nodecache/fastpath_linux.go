//go:build linux

package nodecache

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath/reuseport"
)

const (
	batch   = 32   // datagrams per recvmmsg/sendmmsg
	pktSize = 4096 // queries larger than this are not plain queries
)

// start binds n SO_REUSEPORT sockets (n < 0: one per CPU) beside CoreDNS's
// and runs one locked OS thread per socket.
func (fe *frontend) start(n int) (func(), error) {
	if n < 0 {
		n = runtime.NumCPU()
	}
	ap, err := netip.ParseAddrPort(fe.addr)
	if err != nil {
		return nil, err
	}
	var fds []int
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	for i := 0; i < n; i++ {
		fd, err := bindUDP(ap)
		if err != nil {
			closeAll()
			return nil, err
		}
		fds = append(fds, fd)
	}
	// Every datagram to the port goes to a fast-path socket, none to
	// CoreDNS's own socket in the group; when the fast-path sockets close,
	// the group hashes over what is left, i.e. CoreDNS's socket.
	steer, err := reuseport.Attach(fds)
	if err != nil {
		// Correct without it, only slower: CoreDNS's own socket keeps a
		// share of the datagrams and serves them through the chain.
		log.Warningf("fast path on %s without reuseport steering: %v", fe.addr, err)
	}
	reserveProcs(n)
	var stopping atomic.Bool
	var wg sync.WaitGroup
	local := net.UDPAddrFromAddrPort(ap)
	threads := make([]*atomic.Int64, len(fds))
	for i := range threads {
		threads[i] = new(atomic.Int64)
		threads[i].Store(monoNow())
	}
	fe.threads = threads
	for i, fd := range fds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fe.loop(fd, local, &stopping, threads[i])
		}()
	}
	return func() {
		stopping.Store(true)
		if steer != nil {
			steer.Close()
		}
		for _, fd := range fds {
			// Wakes a blocked recvmmsg; SO_RCVTIMEO bounds it otherwise.
			unix.Shutdown(fd, unix.SHUT_RD)
		}
		wg.Wait()
		closeAll()
	}, nil
}

var (
	procsMu        sync.Mutex
	blockedThreads int
	baseProcs      int
)

// reserveProcs keeps a P free for everything else. A fast-path thread
// parked in recvmmsg holds its P in the syscall state; if every P were held
// that way, a miss handed to a goroutine would wait for sysmon to retake a
// P, up to 10 ms. The parked threads use no CPU, so one P per thread on top
// of the usual GOMAXPROCS costs nothing.
func reserveProcs(n int) {
	procsMu.Lock()
	defer procsMu.Unlock()
	if baseProcs == 0 {
		baseProcs = runtime.GOMAXPROCS(0)
	}
	blockedThreads += n
	if want := baseProcs + blockedThreads; runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}

func bindUDP(ap netip.AddrPort) (int, error) {
	family := unix.AF_INET
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		family = unix.AF_INET6
	}
	// Blocking on purpose: a thread parked in recvmmsg wakes straight into
	// the syscall's return, with no netpoller round trip.
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	fail := func(what string, err error) (int, error) {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: %w", what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("SO_REUSEADDR", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fail("SO_REUSEPORT", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	tv := unix.NsecToTimeval(int64(250 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fail("SO_RCVTIMEO", err)
	}
	if family == unix.AF_INET {
		sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		err = unix.Bind(fd, sa)
	} else {
		sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
		err = unix.Bind(fd, sa)
	}
	if err != nil {
		return fail("bind "+ap.String(), err)
	}
	return fd, nil
}

type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

// loop serves one socket on a locked OS thread until stopping.
// alive is set each time the thread comes back to its socket.
func (fe *frontend) loop(fd int, local *net.UDPAddr, stopping *atomic.Bool, alive *atomic.Int64) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	var (
		rbufs   [batch][pktSize]byte
		rnames  [batch]unix.RawSockaddrInet6
		riov    [batch]unix.Iovec
		rmsgs   [batch]mmsghdr
		sbufs   [batch][]byte
		siov    [batch]unix.Iovec
		smsgs   [batch]mmsghdr
		scratch [batch][1232]byte
	)
	for i := range rmsgs {
		riov[i].Base = &rbufs[i][0]
		riov[i].SetLen(pktSize)
		rmsgs[i].hdr.Iov = &riov[i]
		rmsgs[i].hdr.SetIovlen(1)
		rmsgs[i].hdr.Name = (*byte)(unsafe.Pointer(&rnames[i]))
	}
	hits := fastHits.WithLabelValues(fe.addr)
	passed := fastPassed.WithLabelValues(fe.addr)
	var (
		q   query
		low [maxName + 1]byte
	)
	send := func(b []byte, to *net.UDPAddr) error { return sendTo(fd, b, to) }

	for !stopping.Load() {
		alive.Store(monoNow())
		blockIfWedged(&wedgedFastPath)
		for i := range rmsgs {
			rmsgs[i].hdr.Namelen = unix.SizeofSockaddrInet6
			rmsgs[i].hdr.Flags = 0
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&rmsgs[0])), batch, unix.MSG_WAITFORONE, 0, 0)
		if errno != 0 {
			if errno == unix.EAGAIN || errno == unix.EINTR {
				continue
			}
			if !stopping.Load() {
				log.Errorf("fast path %s: recvmmsg: %v", fe.addr, errno)
			}
			return
		}
		if n == 0 {
			continue // shutdown
		}
		now := monoNow()
		ob := loadObserver()
		out := 0
		for i := 0; i < int(n); i++ {
			pkt := rbufs[i][:rmsgs[i].n]
			if rmsgs[i].hdr.Flags&unix.MSG_TRUNC != 0 {
				continue
			}
			resp, k, parsed := fe.answerFromCache(scratch[out][:0], pkt, now, &q, &low)
			if resp != nil {
				if ob != nil {
					ob.Observe(Observation{Client: rawAddr(&rnames[i]), Name: k.name, Qtype: q.qtype,
						Rcode: int(resp[3] & 0xf), Source: SourceCache, Latency: time.Duration(monoNow() - now)})
				}
				sbufs[out] = resp
				smsgs[out].hdr.Name = rmsgs[i].hdr.Name
				smsgs[out].hdr.Namelen = rmsgs[i].hdr.Namelen
				// Replies leave before the next recvmmsg, so pointing at
				// the receive buffer's source address is safe.
				out++
				continue
			}
			to := sockaddrToUDP(&rnames[i])
			if to == nil {
				continue
			}
			w := &fastWriter{local: local, remote: to, send: send}
			if ob != nil && (!parsed || string(k.name) != probeWire) {
				w.obs = &chainObs{o: ob, client: udpAddrToNetip(to), start: now}
				if parsed {
					w.obs.name, w.obs.qtype = append([]byte(nil), q.name...), q.qtype
				}
			}
			if parsed && fe.missAsync(pkt, &q, k, w) {
				continue
			}
			if !parsed || string(k.name) != probeWire {
				// node-cache's own liveness probes are not pods' queries.
				passed.Inc()
			}
			select {
			case fe.misses <- struct{}{}:
				cp := append([]byte(nil), pkt...)
				go func() {
					defer func() { <-fe.misses }()
					fe.serveMiss(cp, w)
				}()
			default:
				// Over the bound the query is dropped, like a full socket
				// buffer would: the client retries.
				w.obs.dropped()
			}
		}
		if out > 0 {
			hits.Add(float64(out))
			for i := 0; i < out; i++ {
				siov[i].Base = &sbufs[i][0]
				siov[i].SetLen(len(sbufs[i]))
				smsgs[i].hdr.Iov = &siov[i]
				smsgs[i].hdr.SetIovlen(1)
			}
			for sent := 0; sent < out; {
				m, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&smsgs[sent])), uintptr(out-sent), 0, 0, 0)
				if errno != 0 {
					if errno == unix.EINTR {
						continue
					}
					break // a reply lost to a full buffer is a client retry
				}
				sent += int(m)
			}
		}
	}
}

// rawAddr is the address of a received datagram's source, without
// allocating.
func rawAddr(sa *unix.RawSockaddrInet6) netip.Addr {
	switch sa.Family {
	case unix.AF_INET:
		return netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(sa)).Addr)
	case unix.AF_INET6:
		return netip.AddrFrom16(sa.Addr).Unmap()
	}
	return netip.Addr{}
}

func sockaddrToUDP(sa *unix.RawSockaddrInet6) *net.UDPAddr {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		p := (*[2]byte)(unsafe.Pointer(&sa4.Port))
		return &net.UDPAddr{IP: net.IP(append([]byte(nil), sa4.Addr[:]...)), Port: int(p[0])<<8 | int(p[1])}
	case unix.AF_INET6:
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return &net.UDPAddr{IP: net.IP(append([]byte(nil), sa.Addr[:]...)), Port: int(p[0])<<8 | int(p[1])}
	}
	return nil
}

var errNoAddr = errors.New("no destination address")

func sendTo(fd int, b []byte, to *net.UDPAddr) error {
	if to == nil {
		return errNoAddr
	}
	if ip4 := to.IP.To4(); ip4 != nil {
		sa := &unix.SockaddrInet4{Port: to.Port}
		copy(sa.Addr[:], ip4)
		return unix.Sendto(fd, b, 0, sa)
	}
	sa := &unix.SockaddrInet6{Port: to.Port}
	copy(sa.Addr[:], to.IP.To16())
	return unix.Sendto(fd, b, 0, sa)
}
