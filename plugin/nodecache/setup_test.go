package nodecache

import (
	"strings"
	"testing"

	"github.com/coredns/caddy"
)

func TestParseMaxBytes(t *testing.T) {
	tests := []struct {
		input   string
		want    int64
		wantErr string
	}{
		{input: "nodecache 127.0.0.1", want: DefaultMaxBytes},
		{input: "nodecache 127.0.0.1 {\n max_bytes 1048576\n}", want: 1 << 20},
		{input: "nodecache 127.0.0.1 {\n max_bytes 512K\n}", want: 512 << 10},
		{input: "nodecache 127.0.0.1 {\n max_bytes 64M\n}", want: 64 << 20},
		{input: "nodecache 127.0.0.1 {\n max_bytes 64m\n}", want: 64 << 20},
		{input: "nodecache 127.0.0.1 {\n max_bytes 2G\n}", want: 2 << 30},
		{input: "nodecache 127.0.0.1 {\n max_bytes\n}", wantErr: "max_bytes takes 1 to 1 arguments"},
		{input: "nodecache 127.0.0.1 {\n max_bytes 1M 2M\n}", wantErr: "max_bytes takes 1 to 1 arguments"},
		{input: "nodecache 127.0.0.1 {\n max_bytes 0\n}", wantErr: "max_bytes: \"0\" is not a size"},
		{input: "nodecache 127.0.0.1 {\n max_bytes -1M\n}", wantErr: "is not a size"},
		{input: "nodecache 127.0.0.1 {\n max_bytes +1M\n}", wantErr: "is not a size"},
		{input: "nodecache 127.0.0.1 {\n max_bytes 64MB\n}", wantErr: "is not a size"},
		{input: "nodecache 127.0.0.1 {\n max_bytes 1.5G\n}", wantErr: "is not a size"},
		{input: "nodecache 127.0.0.1 {\n max_bytes M\n}", wantErr: "is not a size"},
		{input: "nodecache 127.0.0.1 {\n max_bytes 2048G\n}", wantErr: "more than 1T"},
		{input: "nodecache 127.0.0.1 {\n max_bytes 99999999999999999999\n}", wantErr: "is not a size"},
	}
	for _, tt := range tests {
		t.Run(tt.input, func(t *testing.T) {
			opts, err := parse(caddy.NewTestController("dns", tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parse: %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if opts.MaxBytes != tt.want {
				t.Fatalf("MaxBytes = %d, want %d", opts.MaxBytes, tt.want)
			}
		})
	}
}

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
