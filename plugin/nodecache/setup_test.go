package nodecache

import (
	"testing"

	"github.com/coredns/caddy"
)

// TestParseUpstreamMark: upstream_mark takes one 32-bit number, hex or
// decimal; without it upstream sockets carry no mark.
func TestParseUpstreamMark(t *testing.T) {
	for _, tc := range []struct {
		corefile string
		mark     uint32
		err      bool
	}{
		{"nodecache 127.0.0.1:53", 0, false},
		{"nodecache 127.0.0.1:53 {\n upstream_mark 0xd530000\n}", 0xd530000, false},
		{"nodecache 127.0.0.1:53 {\n upstream_mark 4096\n}", 4096, false},
		{"nodecache 127.0.0.1:53 {\n upstream_mark 0x1ffffffff\n}", 0, true},
		{"nodecache 127.0.0.1:53 {\n upstream_mark mark\n}", 0, true},
		{"nodecache 127.0.0.1:53 {\n upstream_mark\n}", 0, true},
		{"nodecache 127.0.0.1:53 {\n upstream_mark 1 2\n}", 0, true},
	} {
		opts, err := parse(caddy.NewTestController("dns", tc.corefile))
		if (err != nil) != tc.err || err == nil && opts.UpstreamMark != tc.mark {
			t.Errorf("%q: mark %#x, err %v; want %#x, error %v", tc.corefile, opts.UpstreamMark, err, tc.mark, tc.err)
		}
	}
}
