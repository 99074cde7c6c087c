package policy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

const (
	actUnspec = 0xffffffff // TC_ACT_UNSPEC: on to the next program
	actShot   = 2
)

var (
	epAddr   = netip.MustParseAddr("10.99.0.1")
	peerAddr = netip.MustParseAddr("10.99.0.2")
	cidrPeer = netip.MustParseAddr("192.0.2.7")
	epAddr6  = netip.MustParseAddr("fd99::1")
)

const peerIdentity Identity = 300

func openTest(t testing.TB) *Datapath {
	t.Helper()
	d, err := Open(Options{})
	if err != nil {
		t.Skipf("loading the policy programs: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// frame builds Ethernet + IPv4/IPv6 + TCP/UDP (checksums are not looked at).
func frame(src, dst netip.Addr, proto uint8, sport, dport uint16) []byte {
	var b []byte
	b = append(b, make([]byte, 12)...)
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], sport)
	binary.BigEndian.PutUint16(l4[2:], dport)
	if proto == TCP {
		l4[12] = 5 << 4
		l4[13] = 0x02
	} else {
		l4 = l4[:8]
		binary.BigEndian.PutUint16(l4[4:], 8)
	}
	if src.Is4() {
		b = append(b, 0x08, 0x00)
		ip := make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		ip[8] = 64
		ip[9] = proto
		copy(ip[12:], src.AsSlice())
		copy(ip[16:], dst.AsSlice())
		b = append(b, ip...)
	} else {
		b = append(b, 0x86, 0xdd)
		ip := make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
		ip[6] = proto
		ip[7] = 64
		copy(ip[8:], src.AsSlice())
		copy(ip[24:], dst.AsSlice())
		b = append(b, ip...)
	}
	return append(b, l4...)
}

func run(t testing.TB, p *ebpf.Program, data []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(data)+256)
	ret, err := p.Run(&ebpf.RunOptions{Data: data, DataOut: out})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret, out
}

func setup(t testing.TB, d *Datapath) {
	t.Helper()
	if err := d.SetIdentity(peerAddr, peerIdentity); err != nil {
		t.Fatal(err)
	}
	if err := d.SetEndpoint(Endpoint{ID: 1, Identity: 299, Addrs: []netip.Addr{epAddr, epAddr6}, Ingress: true, Egress: true, DenyPolicy: [2]uint32{7, 8}}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetRules(1, []Rule{
		{Policy: 1, Dir: Egress, Peers: []Peer{{Identity: peerIdentity}}, Ports: []PortRange{{Proto: TCP, Port: 80}}},
		{Policy: 2, Dir: Egress, Peers: []Peer{{CIDR: netip.MustParsePrefix("192.0.2.0/24"), Except: []netip.Prefix{netip.MustParsePrefix("192.0.2.128/25")}}}, Ports: []PortRange{{Proto: UDP, Port: 1000, EndPort: 1010}}},
		{Policy: 3, Dir: Ingress, Peers: []Peer{{Identity: peerIdentity}}},
	}); err != nil {
		t.Fatal(err)
	}
}

func TestVerdicts(t *testing.T) {
	d := openTest(t)
	setup(t, d)
	from, to := d.objs.DnsaPolFromPod, d.objs.DnsaPolToPod
	node := netip.MustParseAddr("198.18.0.1")
	if err := d.SetIdentity(node, IdentityHost); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		prog *ebpf.Program
		f    []byte
		want uint32
	}{
		{"egress allowed identity+port", from, frame(epAddr, peerAddr, TCP, 40000, 80), actUnspec},
		{"egress other port", from, frame(epAddr, peerAddr, TCP, 40001, 81), actShot},
		{"egress udp same port", from, frame(epAddr, peerAddr, UDP, 40002, 80), actShot},
		{"egress cidr in range", from, frame(epAddr, cidrPeer, UDP, 40003, 1005), actUnspec},
		{"egress cidr range end", from, frame(epAddr, cidrPeer, UDP, 40004, 1010), actUnspec},
		{"egress cidr past range", from, frame(epAddr, cidrPeer, UDP, 40005, 1011), actShot},
		{"egress cidr except", from, frame(epAddr, netip.MustParseAddr("192.0.2.200"), UDP, 40006, 1005), actShot},
		{"egress outside cidr", from, frame(epAddr, netip.MustParseAddr("198.51.100.1"), UDP, 40007, 1005), actShot},
		{"ingress any port from identity", to, frame(peerAddr, epAddr, UDP, 5353, 9999), actUnspec},
		{"ingress other peer", to, frame(cidrPeer, epAddr, TCP, 5353, 80), actShot},
		{"ingress from the node (always allowed)", to, frame(node, epAddr, TCP, 1234, 8080), actUnspec},
		{"reply of the allowed egress flow", to, frame(peerAddr, epAddr, TCP, 80, 40000), actUnspec},
		{"not an endpoint", from, frame(peerAddr, cidrPeer, TCP, 1, 2), actUnspec},
		{"ipv6 egress denied", from, frame(epAddr6, netip.MustParseAddr("fd99::2"), TCP, 1, 80), actShot},
	} {
		ret, out := run(t, c.prog, c.f)
		if ret != c.want {
			t.Errorf("%s: verdict %#x, want %#x", c.name, ret, c.want)
		}
		if !bytes.Equal(out[:len(c.f)], c.f) {
			t.Errorf("%s: the program changed the packet", c.name)
		}
	}
	drops, err := d.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if drops[8] != 6 || drops[7] != 1 {
		t.Errorf("drops per policy = %v, want 6 on egress's 8 and 1 on ingress's 7", drops)
	}
	// Audit: counted, passes.
	if err := d.SetAudit(true); err != nil {
		t.Fatal(err)
	}
	if ret, _ := run(t, from, frame(epAddr, peerAddr, TCP, 40100, 81)); ret != actUnspec {
		t.Errorf("audit mode: verdict %#x, want pass", ret)
	}
	d.SetAudit(false)
	// A new deny applies to the established flow at its next packet.
	if err := d.SetRules(1, nil); err != nil {
		t.Fatal(err)
	}
	if ret, _ := run(t, from, frame(epAddr, peerAddr, TCP, 40000, 80)); ret != actShot {
		t.Errorf("established flow after its allow rule went: verdict %#x, want drop", ret)
	}
	if n := d.RuleEntries(1); n != 0 {
		t.Errorf("%d rule entries left", n)
	}
}

func TestPortPrefixes(t *testing.T) {
	for _, c := range []struct{ lo, hi uint16 }{{80, 80}, {80, 81}, {1000, 1010}, {0, 65535}, {1, 65534}, {32768, 32768}} {
		covered := map[int]bool{}
		for _, p := range portPrefixes(c.lo, c.hi) {
			n := 1 << (16 - p[1])
			if p[0]%n != 0 {
				t.Errorf("%d-%d: prefix %v misaligned", c.lo, c.hi, p)
			}
			for i := p[0]; i < p[0]+n; i++ {
				if covered[i] {
					t.Errorf("%d-%d: port %d twice", c.lo, c.hi, i)
				}
				covered[i] = true
			}
		}
		if len(covered) != int(c.hi)-int(c.lo)+1 || !covered[int(c.lo)] || !covered[int(c.hi)] {
			t.Errorf("%d-%d: covers %d ports", c.lo, c.hi, len(covered))
		}
	}
}

// FuzzFromPod: whatever the bytes, the egress program passes a packet of
// the enforced endpoint only when it is TCP to the allowed peer on port 80
// or UDP to the CIDR rule's range (as the Go model below parses it), and
// never changes a packet.
func FuzzFromPod(f *testing.F) {
	f.Add(frame(epAddr, peerAddr, TCP, 1, 80))
	f.Add(frame(epAddr, peerAddr, TCP, 1, 81))
	f.Add(frame(epAddr, cidrPeer, UDP, 1, 1003))
	f.Add(frame(epAddr6, peerAddr, TCP, 1, 80)[:30])
	f.Add(frame(epAddr, peerAddr, TCP, 1, 80)[:36])
	d := openTest(f)
	setup(f, d)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 14 || len(data) > 512 {
			return
		}
		out := make([]byte, len(data)+256)
		ret, err := d.objs.DnsaPolFromPod.Run(&ebpf.RunOptions{Data: data, DataOut: out})
		if errors.Is(err, unix.EINVAL) {
			return // the kernel refuses to build an skb of it (IP header shorter than its ethertype needs)
		}
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out[:len(data)], data) {
			t.Fatalf("packet changed")
		}
		if ret != actUnspec && ret != actShot {
			t.Fatalf("verdict %#x", ret)
		}
		if ret == actUnspec && !modelPasses(data) {
			t.Fatalf("passed a packet the policy does not allow: %x", data)
		}
	})
}

// modelPasses: not IPv4/IPv6 for the endpoint, or allowed by setup's rules.
func modelPasses(b []byte) bool {
	et := binary.BigEndian.Uint16(b[12:])
	switch et {
	case 0x0800:
		if len(b) < 34 || b[14]>>4 != 4 || b[14]&0xf < 5 {
			return false // malformed: dropped
		}
		src := netip.AddrFrom4([4]byte(b[26:30]))
		if src != epAddr {
			return true // not an endpoint
		}
		dst := netip.AddrFrom4([4]byte(b[30:34]))
		if binary.BigEndian.Uint16(b[20:])&0x1fff != 0 {
			return false
		}
		l4 := 14 + int(b[14]&0xf)*4
		if len(b) < l4+4 {
			return false
		}
		dport := binary.BigEndian.Uint16(b[l4+2:])
		switch b[23] {
		case TCP:
			return dst == peerAddr && dport == 80
		case UDP:
			return netip.MustParsePrefix("192.0.2.0/25").Contains(dst) && dport >= 1000 && dport <= 1010
		}
		return false
	case 0x86dd:
		if len(b) < 54 || b[14]>>4 != 6 {
			return false
		}
		src := netip.AddrFrom16([16]byte(b[22:38]))
		if src != epAddr6 {
			return true
		}
		// Only neighbour discovery passes (no IPv6 rule).
		return b[20] == 58 && len(b) >= 62 && b[54] >= 133 && b[54] <= 137
	}
	return true
}
