package lb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/test/steertest"
	"github.com/dnsaccel/dnsaccel/test/svctest"
)

// Frames for BPF_PROG_TEST_RUN: Ethernet + IPv4/IPv6 + TCP/UDP with
// correct checksums, and a parser mirroring what the program accepts.

const (
	protoTCP = 6
	protoUDP = 17
	synFlag  = 0x02
	ackFlag  = 0x10
)

type flow struct {
	proto    uint8
	src, dst netip.AddrPort
	flags    uint8 // TCP flags
	payload  []byte
	noCsum   bool // UDP over IPv4 with checksum 0
}

func onesSum(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

func pseudo(src, dst netip.Addr, proto uint8, l4len int) uint32 {
	var sum uint32
	sum = onesSum(sum, src.AsSlice())
	sum = onesSum(sum, dst.AsSlice())
	return sum + uint32(proto) + uint32(l4len)
}

func (f flow) frame() []byte {
	var l4 []byte
	if f.proto == protoTCP {
		l4 = make([]byte, 20, 20+len(f.payload))
		binary.BigEndian.PutUint16(l4[0:], f.src.Port())
		binary.BigEndian.PutUint16(l4[2:], f.dst.Port())
		binary.BigEndian.PutUint32(l4[4:], 1000)
		l4[12] = 5 << 4
		l4[13] = f.flags
		binary.BigEndian.PutUint16(l4[14:], 65535)
		l4 = append(l4, f.payload...)
	} else {
		l4 = make([]byte, 8, 8+len(f.payload))
		binary.BigEndian.PutUint16(l4[0:], f.src.Port())
		binary.BigEndian.PutUint16(l4[2:], f.dst.Port())
		binary.BigEndian.PutUint16(l4[4:], uint16(8+len(f.payload)))
		l4 = append(l4, f.payload...)
	}
	csumOff := 6
	if f.proto == protoTCP {
		csumOff = 16
	}
	if !(f.noCsum && f.proto == protoUDP && f.src.Addr().Is4()) {
		c := ^fold(onesSum(pseudo(f.src.Addr(), f.dst.Addr(), f.proto, len(l4)), l4))
		if c == 0 && f.proto == protoUDP {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(l4[csumOff:], c)
	}
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(eth[6:12], []byte{2, 0, 0, 0, 0, 2})
	var ip []byte
	if f.src.Addr().Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		ip[8] = 64
		ip[9] = f.proto
		s, d := f.src.Addr().As4(), f.dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], ^fold(onesSum(0, ip)))
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
		ip[6] = f.proto
		ip[7] = 64
		s, d := f.src.Addr().As16(), f.dst.Addr().As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
	}
	return append(append(eth, ip...), l4...)
}

// parsed is a frame as the program reads it.
type parsed struct {
	ok          bool
	proto       uint8
	src, dst    netip.AddrPort
	l3, l4, end int
}

// parseFrame accepts exactly what the program's parse() accepts.
func parseFrame(b []byte) parsed {
	var p parsed
	if len(b) < 14 {
		return p
	}
	p.l3 = 14
	switch binary.BigEndian.Uint16(b[12:]) {
	case 0x0800:
		if len(b) < p.l3+20 {
			return p
		}
		ip := b[p.l3:]
		ihl := int(ip[0]&0x0f) * 4
		tot := int(binary.BigEndian.Uint16(ip[2:]))
		if ip[0]>>4 != 4 || ihl < 20 || tot < ihl || p.l3+tot > len(b) {
			return p
		}
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return p
		}
		p.proto = ip[9]
		p.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[12:16])), 0)
		p.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip[16:20])), 0)
		p.l4, p.end = p.l3+ihl, p.l3+tot
	case 0x86dd:
		if len(b) < p.l3+40 {
			return p
		}
		ip := b[p.l3:]
		plen := int(binary.BigEndian.Uint16(ip[4:]))
		if ip[0]>>4 != 6 || p.l3+40+plen > len(b) {
			return p
		}
		p.proto = ip[6]
		p.src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(ip[8:24])), 0)
		p.dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(ip[24:40])), 0)
		p.l4, p.end = p.l3+40, p.l3+40+plen
	default:
		return p
	}
	switch p.proto {
	case protoTCP:
		if len(b) < p.l4+14 {
			return p
		}
		doff := int(b[p.l4+12]>>4) * 4
		if doff < 20 || p.l4+doff > p.end {
			return p
		}
	case protoUDP:
		if len(b) < p.l4+8 {
			return p
		}
		ulen := int(binary.BigEndian.Uint16(b[p.l4+4:]))
		if ulen < 8 || p.l4+ulen > p.end {
			return p
		}
	default:
		return p
	}
	p.src = netip.AddrPortFrom(p.src.Addr(), binary.BigEndian.Uint16(b[p.l4:]))
	p.dst = netip.AddrPortFrom(p.dst.Addr(), binary.BigEndian.Uint16(b[p.l4+2:]))
	p.ok = true
	return p
}

// checksumsOK verifies the IPv4 header and the L4 checksums of a parsed
// frame (a UDP/IPv4 checksum of 0 means none).
func checksumsOK(b []byte, p parsed) (ip, l4 bool) {
	ip = true
	if p.src.Addr().Is4() {
		ip = fold(onesSum(0, b[p.l3:p.l4])) == 0xffff
	}
	seg := b[p.l4:p.end]
	if p.proto == protoUDP {
		seg = seg[:binary.BigEndian.Uint16(seg[4:])]
		if p.src.Addr().Is4() && binary.BigEndian.Uint16(seg[6:]) == 0 {
			return ip, true
		}
	}
	return ip, fold(onesSum(pseudo(p.src.Addr(), p.dst.Addr(), p.proto, len(seg)), seg)) == 0xffff
}

func runProg(t testing.TB, prog *ebpf.Program, in []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(in)+256)
	opts := &ebpf.RunOptions{Data: in, DataOut: out}
	ret, err := prog.Run(opts)
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret, opts.DataOut
}

// tcTable opens a Table with its socket programs on an empty cgroup of the
// test's own and loads the per-packet programs.
func tcTable(t testing.TB) (*Table, *tcObjects) {
	t.Helper()
	cg := svctest.EmptyCgroup(t)
	tbl, err := Open(Options{Cgroup: cg, BPFFS: steertest.BPFFS(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tbl.Cleanup() })
	o, err := tbl.tcPrograms()
	if err != nil {
		t.Fatal(err)
	}
	return tbl, o
}

var (
	fe4     = Frontend{Addr: netip.MustParseAddr("10.200.255.1"), Port: 80, Proto: TCP}
	fe4u    = Frontend{Addr: netip.MustParseAddr("10.200.255.1"), Port: 53, Proto: UDP}
	fe6     = Frontend{Addr: netip.MustParseAddr("fd96:200:ff::1"), Port: 80, Proto: TCP}
	feNo    = Frontend{Addr: netip.MustParseAddr("10.200.255.2"), Port: 80, Proto: TCP}
	feNP    = Frontend{Addr: netip.MustParseAddr("192.0.2.10"), Port: 30080, Proto: TCP}
	be4a    = netip.MustParseAddrPort("10.244.9.1:8080")
	be4b    = netip.MustParseAddrPort("10.244.9.2:8080")
	be4u    = netip.MustParseAddrPort("10.244.9.3:5353")
	be6     = netip.MustParseAddrPort("[fd00:10:244::9:1]:8080")
	client4 = netip.MustParseAddrPort("10.244.7.7:40000")
	client6 = netip.MustParseAddrPort("[fd00:10:244::7:7]:40000")
)

func fill(t testing.TB, tbl *Table) {
	t.Helper()
	set := func(s Service, bs ...Backend) {
		if err := tbl.UpsertService(s); err != nil {
			t.Fatal(err)
		}
		if err := tbl.SetBackends(s.Frontend, bs); err != nil {
			t.Fatal(err)
		}
	}
	set(Service{Frontend: fe4}, Backend{Addr: be4a}, Backend{Addr: be4b})
	set(Service{Frontend: fe4u}, Backend{Addr: be4u})
	set(Service{Frontend: fe6}, Backend{Addr: be6})
	set(Service{Frontend: feNo})
	set(Service{Frontend: feNP, Type: NodePort, TrafficLocal: true}, Backend{Addr: be4a, Local: true}, Backend{Addr: be4b})
}

func ap(f Frontend) netip.AddrPort { return netip.AddrPortFrom(f.Addr, f.Port) }

// TestPacketLB runs the per-packet programs on crafted frames.
func TestPacketLB(t *testing.T) {
	tbl, o := tcTable(t)
	fill(t, tbl)
	xlate := func(t *testing.T, prog *ebpf.Program, f flow) parsed {
		t.Helper()
		in := f.frame()
		ret, out := runProg(t, prog, in)
		if ret != 0 {
			t.Fatalf("verdict %d, want TC_ACT_OK", ret)
		}
		p := parseFrame(out)
		if !p.ok || len(out) != len(in) {
			t.Fatalf("output not a valid frame: % x", out)
		}
		if ip, l4 := checksumsOK(out, p); !ip || !l4 {
			t.Fatalf("checksums after translation: ip %v l4 %v", ip, l4)
		}
		return p
	}
	t.Run("TCP: a flow keeps its backend, the reply shows the frontend", func(t *testing.T) {
		p := xlate(t, o.In, flow{proto: protoTCP, src: client4, dst: ap(fe4), flags: synFlag})
		if p.dst != be4a && p.dst != be4b || p.src != client4 {
			t.Fatalf("SYN went to %s from %s", p.dst, p.src)
		}
		for range 5 {
			q := xlate(t, o.In, flow{proto: protoTCP, src: client4, dst: ap(fe4), flags: ackFlag, payload: []byte("GET /")})
			if q.dst != p.dst {
				t.Fatalf("the flow moved from %s to %s", p.dst, q.dst)
			}
		}
		r := xlate(t, o.Out, flow{proto: protoTCP, src: p.dst, dst: client4, flags: synFlag | ackFlag})
		if r.src != ap(fe4) || r.dst != client4 {
			t.Fatalf("reply %s -> %s, want from %s", r.src, r.dst, ap(fe4))
		}
	})
	t.Run("new flows spread", func(t *testing.T) {
		seen := map[netip.AddrPort]bool{}
		for i := range 40 {
			c := netip.AddrPortFrom(client4.Addr(), uint16(41000+i))
			seen[xlate(t, o.In, flow{proto: protoTCP, src: c, dst: ap(fe4), flags: synFlag}).dst] = true
		}
		if !seen[be4a] || !seen[be4b] {
			t.Errorf("40 flows reached %v", seen)
		}
	})
	t.Run("UDP with and without a checksum", func(t *testing.T) {
		for _, nc := range []bool{false, true} {
			in := flow{proto: protoUDP, src: client4, dst: ap(fe4u), payload: []byte("query"), noCsum: nc}
			p := xlate(t, o.In, in)
			out := in
			out.dst = p.dst
			if p.dst != be4u {
				t.Fatalf("went to %s", p.dst)
			}
			_, b := runProg(t, o.In, in.frame())
			if nc && binary.BigEndian.Uint16(b[p.l4+6:]) != 0 {
				t.Errorf("a zero UDP checksum was filled in")
			}
			r := xlate(t, o.Out, flow{proto: protoUDP, src: be4u, dst: client4, payload: []byte("answer"), noCsum: nc})
			if r.src != ap(fe4u) {
				t.Errorf("UDP reply from %s", r.src)
			}
		}
	})
	t.Run("IPv6", func(t *testing.T) {
		p := xlate(t, o.In, flow{proto: protoTCP, src: client6, dst: ap(fe6), flags: synFlag})
		if p.dst != be6 {
			t.Fatalf("went to %s", p.dst)
		}
		r := xlate(t, o.Out, flow{proto: protoTCP, src: be6, dst: client6, flags: synFlag | ackFlag})
		if r.src != ap(fe6) {
			t.Fatalf("reply from %s", r.src)
		}
	})
	t.Run("left alone", func(t *testing.T) {
		frag := flow{proto: protoTCP, src: client4, dst: ap(fe4), flags: synFlag}.frame()
		frag[14+6] = 0x20 // MF
		for name, in := range map[string][]byte{
			"not a frontend":       flow{proto: protoTCP, src: client4, dst: netip.MustParseAddrPort("10.200.255.1:81"), flags: synFlag}.frame(),
			"a fragment":           frag,
			"truncated":            flow{proto: protoTCP, src: client4, dst: ap(fe4), flags: synFlag}.frame()[:40],
			"a reply with no flow": flow{proto: protoTCP, src: be4b, dst: netip.MustParseAddrPort("10.244.7.8:1"), flags: ackFlag}.frame(),
		} {
			for _, prog := range []*ebpf.Program{o.In, o.Out} {
				ret, out := runProg(t, prog, in)
				if ret != 0 || !bytes.Equal(out, in) {
					t.Errorf("%s: verdict %d, changed: %v", name, ret, !bytes.Equal(out, in))
				}
			}
		}
	})
	t.Run("no endpoints: dropped", func(t *testing.T) {
		ret, _ := runProg(t, o.In, flow{proto: protoTCP, src: client4, dst: ap(feNo), flags: synFlag}.frame())
		if ret != 2 {
			t.Errorf("verdict %d, want TC_ACT_SHOT", ret)
		}
	})
	t.Run("externalTrafficPolicy Local from outside the node", func(t *testing.T) {
		ext, pod := map[netip.AddrPort]bool{}, map[netip.AddrPort]bool{}
		for i := range 40 {
			c := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), uint16(42000+i))
			ext[xlate(t, o.ExtIn, flow{proto: protoTCP, src: c, dst: ap(feNP), flags: synFlag}).dst] = true
			pod[xlate(t, o.In, flow{proto: protoTCP, src: netip.AddrPortFrom(client4.Addr(), uint16(42000+i)), dst: ap(feNP), flags: synFlag}).dst] = true
		}
		if len(ext) != 1 || !ext[be4a] {
			t.Errorf("from outside: %v, want only the local %s", ext, be4a)
		}
		if len(pod) != 2 {
			t.Errorf("from a pod: %v, want both", pod)
		}
	})
	t.Run("a removed backend: the flow is balanced again", func(t *testing.T) {
		c := netip.MustParseAddrPort("10.244.7.9:43000")
		var first netip.AddrPort
		for i := 0; ; i++ {
			c = netip.AddrPortFrom(c.Addr(), c.Port()+1)
			if first = xlate(t, o.In, flow{proto: protoTCP, src: c, dst: ap(fe4), flags: synFlag}).dst; first == be4b || i > 50 {
				break
			}
		}
		if err := tbl.SetBackends(fe4, []Backend{{Addr: be4a}}); err != nil {
			t.Fatal(err)
		}
		defer tbl.SetBackends(fe4, []Backend{{Addr: be4a}, {Addr: be4b}})
		if p := xlate(t, o.In, flow{proto: protoTCP, src: c, dst: ap(fe4), flags: ackFlag}); p.dst != be4a {
			t.Errorf("after %s left, the flow went to %s", be4b, p.dst)
		}
	})
	st, _ := tbl.Stats()
	if st[StatPktXlated] == 0 || st[StatPktReversed] == 0 || st[StatPktDropped] == 0 {
		t.Errorf("counters: %v", st)
	}
}

// FuzzPacketLB runs dnsa_lb_pkt_in on mutated frames (BPF_PROG_TEST_RUN):
// a frame it changes must be one the reference parser accepts, to a
// frontend, and come out with only the destination changed to one of its
// backends and the checksums as valid as they were; any other frame passes
// byte for byte. The verdict is always TC_ACT_OK (every fuzzed frontend has
// backends).
func FuzzPacketLB(f *testing.F) {
	for _, fl := range []flow{
		{proto: protoTCP, src: client4, dst: ap(fe4), flags: synFlag},
		{proto: protoTCP, src: client4, dst: ap(fe4), flags: ackFlag, payload: []byte("GET / HTTP/1.1\r\n\r\n")},
		{proto: protoUDP, src: client4, dst: ap(fe4u), payload: []byte("q")},
		{proto: protoUDP, src: client4, dst: ap(fe4u), payload: []byte("q"), noCsum: true},
		{proto: protoTCP, src: client6, dst: ap(fe6), flags: synFlag},
		{proto: protoUDP, src: client4, dst: netip.MustParseAddrPort("10.200.255.9:53"), payload: []byte("x")},
	} {
		f.Add(fl.frame())
	}
	f.Add([]byte{})
	f.Add(make([]byte, 14))
	tbl, o := tcTable(f)
	// No frontend without backends here: see TestPacketLB for drops.
	for _, s := range []struct {
		f  Frontend
		bs []Backend
	}{{fe4, []Backend{{Addr: be4a}, {Addr: be4b}}}, {fe4u, []Backend{{Addr: be4u}}}, {fe6, []Backend{{Addr: be6}}}} {
		if err := tbl.UpsertService(Service{Frontend: s.f}); err != nil {
			f.Fatal(err)
		}
		if err := tbl.SetBackends(s.f, s.bs); err != nil {
			f.Fatal(err)
		}
	}
	backends := map[Frontend][]netip.AddrPort{fe4: {be4a, be4b}, fe4u: {be4u}, fe6: {be6}}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 || len(in) > 1500 {
			return // BPF_PROG_TEST_RUN needs an Ethernet header
		}
		buf := make([]byte, len(in)+256)
		opts := &ebpf.RunOptions{Data: in, DataOut: buf}
		ret, err := o.In.Run(opts)
		if errors.Is(err, unix.EINVAL) {
			return // the kernel's test harness refuses the frame (e.g. an IP header shorter than 20 bytes)
		}
		if err != nil {
			t.Fatal(err)
		}
		out := opts.DataOut
		if ret != 0 {
			t.Fatalf("verdict %d", ret)
		}
		if bytes.Equal(out, in) {
			return
		}
		p := parseFrame(in)
		if !p.ok {
			t.Fatalf("a malformed frame was changed:\n in % x\nout % x", in, out)
		}
		proto := TCP
		if p.proto == protoUDP {
			proto = UDP
		}
		fe := Frontend{Addr: p.dst.Addr(), Port: p.dst.Port(), Proto: proto}
		q := parseFrame(out)
		if !q.ok || len(out) != len(in) || !contains(backends[fe], q.dst) || q.src != p.src {
			t.Fatalf("%s -> %s became %s -> %s (frontend %s)", p.src, p.dst, q.src, q.dst, fe)
		}
		ip1, l41 := checksumsOK(in, p)
		ip2, l42 := checksumsOK(out, q)
		if ip1 != ip2 || l41 != l42 {
			t.Fatalf("checksum validity changed: ip %v->%v, l4 %v->%v", ip1, ip2, l41, l42)
		}
		// Only the destination address, port and the checksums differ.
		mask := func(b []byte, p parsed) []byte {
			c := bytes.Clone(b)
			if p.src.Addr().Is4() {
				clear(c[p.l3+10 : p.l3+12])
				clear(c[p.l3+16 : p.l3+20])
			} else {
				clear(c[p.l3+24 : p.l3+40])
			}
			clear(c[p.l4+2 : p.l4+4])
			if p.proto == protoTCP {
				clear(c[p.l4+16 : p.l4+18])
			} else {
				clear(c[p.l4+6 : p.l4+8])
			}
			return c
		}
		if !bytes.Equal(mask(in, p), mask(out, q)) {
			t.Fatalf("more than the destination changed:\n in % x\nout % x", in, out)
		}
	})
}

func contains(s []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}
