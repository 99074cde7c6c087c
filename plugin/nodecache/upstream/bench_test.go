package upstream

import (
	"context"
	"testing"
)

// BenchmarkExchange measures Exchange against the loopback test server
// (which shares the machine's CPUs with the client). "pipelined" runs many
// concurrent callers over a single TCP connection; "serial" is one caller at
// a time (round-trip latency); "udp" is one fresh socket per query.
func BenchmarkExchange(b *testing.B) {
	benches := []struct {
		name     string
		scheme   string
		parallel bool
	}{
		{name: "pipelined-1conn", parallel: true},
		{name: "serial-1conn"},
		{name: "udp-parallel", scheme: "udp://", parallel: true},
	}
	for _, bb := range benches {
		b.Run(bb.name, func(b *testing.B) {
			srv := newTestServer(b, bNormal)
			p := newPool(b, Config{
				Upstreams:         []Addr{mustAddr(b, bb.scheme+srv.addr)},
				ConnsPerUpstream:  1,
				MaxQueriesPerConn: 1 << 30,
				MaxInflight:       1 << 20,
			})
			q := query("bench.example.")
			ctx := context.Background()
			if _, err := p.Exchange(ctx, q); err != nil { // dial outside the timing
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			if !bb.parallel {
				for b.Loop() {
					if _, err := p.Exchange(ctx, q); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.SetParallelism(16)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := p.Exchange(ctx, q); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			if bb.scheme == "" && srv.accepted.Load() != 1 {
				b.Errorf("%d connections, want 1", srv.accepted.Load())
			}
		})
	}
}
