package steer

import (
	"net/netip"
	"strings"
	"testing"
)

func TestRuleEntry(t *testing.T) {
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		name string
		rule Rule
		err  string
	}{
		{"ipv4 udp", Rule{ap("10.96.0.10:53"), UDP, ap("169.254.20.10:53")}, ""},
		{"ipv6 tcp", Rule{ap("[fd00::a]:53"), TCP, ap("[fd00::53]:5353")}, ""},
		{"v4-mapped is IPv4", Rule{ap("[::ffff:10.96.0.10]:53"), UDP, ap("169.254.20.10:53")}, ""},
		{"mixed families", Rule{ap("10.96.0.10:53"), UDP, ap("[fd00::53]:53")}, "different IP families"},
		{"other protocol", Rule{ap("10.96.0.10:53"), Proto(1), ap("169.254.20.10:53")}, "tcp or udp"},
		{"no target", Rule{VIP: ap("10.96.0.10:53"), Proto: UDP}, "missing address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, v, err := ruleEntry(tc.rule)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Back from the map layout to the rule, as Table does.
			vip := netip.AddrPortFrom(fromWords(k.Addr, k.Family), ntohs(k.Port))
			tgt := netip.AddrPortFrom(fromWords(v.Addr, v.Family), ntohs(v.Port))
			want := netip.AddrPortFrom(tc.rule.VIP.Addr().Unmap(), tc.rule.VIP.Port())
			if vip != want || tgt != tc.rule.Target || Proto(k.Proto) != tc.rule.Proto {
				t.Fatalf("round trip: %s %s %s", vip, Proto(k.Proto), tgt)
			}
			// The hooks compare ports as the kernel stores them: network order in memory.
			var b [2]byte
			nativeEndian.PutUint16(b[:], k.Port)
			if uint16(b[0])<<8|uint16(b[1]) != tc.rule.VIP.Port() {
				t.Fatalf("port bytes %x", b)
			}
		})
	}
}
