package kcache

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/test/cluster"
)

// Test packets: a pod at podIP sends to the cache at cacheIP:53.
var (
	podIP4   = netip.MustParseAddr("10.244.1.2")
	cacheIP4 = netip.MustParseAddr("169.254.20.10")
	podIP6   = netip.MustParseAddr("fd00:10:244::2")
	cacheIP6 = netip.MustParseAddr("fd00::a9fe:140a")
	podMAC   = []byte{0x02, 0, 0, 0, 0, 0x02}
	hostMAC  = []byte{0x02, 0, 0, 0, 0, 0x01}
)

const (
	actUnspec   = 0xffffffff // TC_ACT_UNSPEC (-1): pass on
	actRedirect = 7          // TC_ACT_REDIRECT
)

// openCache loads the program or skips the test where the kernel or the
// privileges do not allow it (a failure when CI=true).
func openCache(t testing.TB, opts Options) *Cache {
	t.Helper()
	if os.Geteuid() != 0 {
		cluster.SkipOrFail(t, "the in-kernel cache needs root (CAP_BPF, CAP_NET_ADMIN)")
	}
	if len(opts.Addrs) == 0 {
		opts.Addrs = []netip.Addr{cacheIP4, cacheIP6}
	}
	c, err := Open(opts)
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, os.ErrPermission) {
			cluster.SkipOrFail(t, "kernel without what the in-kernel cache needs: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// frame wraps a DNS payload in Ethernet + IPv4/IPv6 + UDP from the pod to
// dst:port, with correct checksums.
func frame(payload []byte, src, dst netip.Addr, sport, dport uint16) []byte {
	udp := udpDatagram(payload, sport, dport)
	binary.BigEndian.PutUint16(udp[6:], udpChecksum(src, dst, udp))

	eth := append(append(append([]byte{}, hostMAC...), podMAC...), 0, 0)
	if src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		ip[8] = 64
		ip[9] = 17
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], ^onesSum(0, ip))
		return append(append(eth, ip...), udp...)
	}
	binary.BigEndian.PutUint16(eth[12:], 0x86dd)
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
	ip[6] = 17
	ip[7] = 64
	s, d := src.As16(), dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(append(eth, ip...), udp...)
}

// onesSum adds b to sum in ones' complement, 16 bits at a time.
func onesSum(sum uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// udpDatagram is payload behind a UDP header without a checksum.
func udpDatagram(payload []byte, sport, dport uint16) []byte {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	return udp
}

// udpChecksum is the checksum field a sender puts in udp: the computed
// checksum, 0xffff where that is 0.
func udpChecksum(src, dst netip.Addr, udp []byte) uint16 {
	if c := udpChecksumRaw(src, dst, udp); c != 0 {
		return c
	}
	return 0xffff
}

// udpChecksumRaw computes the checksum of udp (its checksum field taken as
// 0) without mapping 0 to 0xffff.
func udpChecksumRaw(src, dst netip.Addr, udp []byte) uint16 {
	var pseudo []byte
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		pseudo = append(append(pseudo, s[:]...), d[:]...)
		pseudo = append(pseudo, 0, 17, byte(len(udp)>>8), byte(len(udp)))
	} else {
		s, d := src.As16(), dst.As16()
		pseudo = append(append(pseudo, s[:]...), d[:]...)
		pseudo = append(pseudo, 0, 0, byte(len(udp)>>8), byte(len(udp)), 0, 0, 0, 17)
	}
	saved := binary.BigEndian.Uint16(udp[6:])
	binary.BigEndian.PutUint16(udp[6:], 0)
	sum := onesSum(uint32(onesSum(0, pseudo)), udp)
	binary.BigEndian.PutUint16(udp[6:], saved)
	return ^sum
}

// parsed is a frame taken apart again.
type parsed struct {
	src, dst     netip.Addr
	sport, dport uint16
	srcMAC       []byte
	payload      []byte
}

// parseFrame checks the frame's lengths and checksums and returns its parts.
func parseFrame(t *testing.T, b []byte) parsed {
	t.Helper()
	var p parsed
	p.srcMAC = b[6:12]
	var udp []byte
	switch binary.BigEndian.Uint16(b[12:]) {
	case 0x0800:
		ip := b[14:34]
		if onesSum(0, ip) != 0xffff {
			t.Fatalf("IPv4 header checksum wrong: % x", ip)
		}
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if 14+total != len(b) {
			t.Fatalf("IPv4 total length %d, frame has %d bytes after Ethernet", total, len(b)-14)
		}
		p.src = netip.AddrFrom4([4]byte(ip[12:16]))
		p.dst = netip.AddrFrom4([4]byte(ip[16:20]))
		udp = b[34:]
	case 0x86dd:
		ip := b[14:54]
		if plen := int(binary.BigEndian.Uint16(ip[4:])); 54+plen != len(b) {
			t.Fatalf("IPv6 payload length %d, frame has %d bytes after the header", plen, len(b)-54)
		}
		p.src = netip.AddrFrom16([16]byte(ip[8:24]))
		p.dst = netip.AddrFrom16([16]byte(ip[24:40]))
		udp = b[54:]
	default:
		t.Fatalf("not IP: % x", b[:14])
	}
	if int(binary.BigEndian.Uint16(udp[4:])) != len(udp) {
		t.Fatalf("UDP length %d, datagram has %d bytes", binary.BigEndian.Uint16(udp[4:]), len(udp))
	}
	if got, want := binary.BigEndian.Uint16(udp[6:]), udpChecksum(p.src, p.dst, udp); got != want {
		t.Fatalf("UDP checksum %#04x, want %#04x", got, want)
	}
	p.sport = binary.BigEndian.Uint16(udp[0:])
	p.dport = binary.BigEndian.Uint16(udp[2:])
	p.payload = udp[8:]
	return p
}

// run runs the ingress program on a frame and returns its verdict and the
// frame as the program left it.
func run(t testing.TB, c *Cache, in []byte) (uint32, []byte) {
	t.Helper()
	return runProg(t, c.objs.KcIngress, in)
}

// runProg runs prog on a frame (see run).
func runProg(t testing.TB, prog *ebpf.Program, in []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, 2048)
	opts := &ebpf.RunOptions{Data: in, DataOut: out}
	ret, err := prog.Run(opts)
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret, opts.DataOut
}

// entryFor turns a response into the key and kernel entry the user-space
// cache would offer: ID 0, name lower-cased, no OPT, compressed.
func entryFor(t testing.TB, resp *dns.Msg, do, cd bool, age, remaining time.Duration) (Key, *Entry) {
	t.Helper()
	m := resp.Copy()
	m.Id = 0
	m.RecursionDesired = false
	m.Question[0].Name = strings.ToLower(m.Question[0].Name)
	m.Compress = true
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	name := make([]byte, 256)
	n, err := dns.PackDomainName(m.Question[0].Name, name, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	qend := 12 + n + 4
	e := &Entry{
		Flags:     binary.BigEndian.Uint16(b[2:]),
		Ancount:   binary.BigEndian.Uint16(b[6:]),
		Nscount:   binary.BigEndian.Uint16(b[8:]),
		Arcount:   binary.BigEndian.Uint16(b[10:]),
		Data:      b[qend:],
		Age:       age,
		Remaining: remaining,
	}
	for off := qend; off < len(b); {
		end, err := skipName(b, off)
		if err != nil {
			t.Fatal(err)
		}
		e.TTLOffsets = append(e.TTLOffsets, uint16(end+4-qend))
		e.TTLs = append(e.TTLs, binary.BigEndian.Uint32(b[end+4:]))
		off = end + 10 + int(binary.BigEndian.Uint16(b[end+8:]))
	}
	return Key{Name: name[:n], Qtype: m.Question[0].Qtype, DO: do, CD: cd}, e
}

func skipName(b []byte, off int) (int, error) {
	for off < len(b) {
		l := int(b[off])
		switch {
		case l == 0:
			return off + 1, nil
		case l&0xC0 == 0xC0:
			return off + 2, nil
		}
		off += l + 1
	}
	return 0, errors.New("name runs past the message")
}

func query(name string, qtype uint16, id uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	return m
}

func pack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sizedEntry is the entry for q whose response to q is exactly size bytes
// (q's OPT record included): a TXT record padded to fit.
func sizedEntry(t testing.TB, q *dns.Msg, size int) (Key, *Entry) {
	t.Helper()
	name := make([]byte, 256)
	n, err := dns.PackDomainName(q.Question[0].Name, name, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	opt := 0
	if q.IsEdns0() != nil {
		opt = 11
	}
	// Header, question, the record's compressed owner, type, class, TTL
	// and RDLENGTH, then the strings.
	rdlen := size - opt - (12 + n + 4) - (2 + 10)
	if rdlen < 1 {
		t.Fatalf("a %d-byte response cannot hold a TXT record for %s", size, q.Question[0].Name)
	}
	txt := &dns.TXT{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300}}
	for rdlen > 0 {
		l := min(rdlen-1, 255)
		txt.Txt = append(txt.Txt, strings.Repeat("x", l))
		rdlen -= l + 1
	}
	r := answerFor(q)
	r.Answer = append(r.Answer, txt)
	k, e := entryFor(t, r, q.IsEdns0() != nil && q.IsEdns0().Do(), false, 0, time.Minute)
	if got := 12 + len(k.Name) + 4 + len(e.Data) + opt; got != size {
		t.Fatalf("sized response of %d bytes, want %d", got, size)
	}
	return k, e
}

func answerFor(q *dns.Msg, rrs ...string) *dns.Msg {
	r := new(dns.Msg)
	r.SetReply(q)
	r.RecursionAvailable = true
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		r.Answer = append(r.Answer, rr)
	}
	return r
}

// expected is the response the user-space cache renders for q from e at age.
func expected(t *testing.T, q []byte, k Key, e *Entry, age uint32, hasOPT bool) []byte {
	t.Helper()
	qend := 12 + len(k.Name) + 4
	out := append([]byte{}, q[:qend]...)
	binary.BigEndian.PutUint16(out[2:], e.Flags|binary.BigEndian.Uint16(q[2:])&0x0100)
	binary.BigEndian.PutUint16(out[6:], e.Ancount)
	binary.BigEndian.PutUint16(out[8:], e.Nscount)
	ar := e.Arcount
	if hasOPT {
		ar++
	}
	binary.BigEndian.PutUint16(out[10:], ar)
	data := append([]byte{}, e.Data...)
	for i, o := range e.TTLOffsets {
		binary.BigEndian.PutUint32(data[o:], e.TTLs[i]-min(age, e.TTLs[i]))
	}
	out = append(out, data...)
	if hasOPT {
		var ext byte
		if k.DO {
			ext = 0x80
		}
		out = append(out, 0, 0, 41, 1232>>8, 1232&0xff, 0, 0, ext, 0, 0, 0)
	}
	return out
}
