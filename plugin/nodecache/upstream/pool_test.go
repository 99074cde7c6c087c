package upstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestParseAddr(t *testing.T) {
	tests := []struct {
		in      string
		want    Addr
		wantErr string
	}{
		{in: "10.0.0.10", want: Addr{Host: "10.0.0.10:53"}},
		{in: "10.0.0.10:5353", want: Addr{Host: "10.0.0.10:5353"}},
		{in: "tcp://10.0.0.10", want: Addr{Host: "10.0.0.10:53", Transport: "tcp"}},
		{in: "udp://10.0.0.10:54", want: Addr{Host: "10.0.0.10:54", Transport: "udp"}},
		{in: "TCP://10.0.0.10", want: Addr{Host: "10.0.0.10:53", Transport: "tcp"}},
		{in: "dns://10.0.0.10", want: Addr{Host: "10.0.0.10:53"}},
		{in: "[fd00::10]:53", want: Addr{Host: "[fd00::10]:53"}},
		{in: "udp://[fd00::10]:5300", want: Addr{Host: "[fd00::10]:5300", Transport: "udp"}},
		{in: "[::1]", want: Addr{Host: "[::1]:53"}},
		{in: "::1", want: Addr{Host: "[::1]:53"}},
		{in: " 127.0.0.1:53 ", want: Addr{Host: "127.0.0.1:53"}},
		{in: "::ffff:10.0.0.1", want: Addr{Host: "10.0.0.1:53"}},
		{in: "", wantErr: "empty host"},
		{in: "tcp://", wantErr: "empty host"},
		{in: "tls://10.0.0.10", wantErr: "unsupported scheme"},
		{in: "kube-dns.kube-system:53", wantErr: "must be an IP"},
		{in: "10.0.0.10:0", wantErr: "invalid port"},
		{in: "10.0.0.10:65536", wantErr: "invalid port"},
		{in: "10.0.0.10:dns", wantErr: "invalid port"},
		{in: "[fe80::1%eth0]:53", wantErr: "zones"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseAddr(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseAddr(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseAddr(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			// String round-trips.
			if again, err := ParseAddr(got.String()); err != nil || again != got {
				t.Fatalf("ParseAddr(%q) = %+v, %v; want %+v", got.String(), again, err, got)
			}
		})
	}
}

func TestNewValidation(t *testing.T) {
	ok := []Addr{{Host: "127.0.0.1:53"}}
	tests := []struct {
		name    string
		cfg     Config
		wantErr string // "" = valid
	}{
		{name: "defaults", cfg: Config{Upstreams: ok}},
		{name: "no upstreams", cfg: Config{}, wantErr: "Upstreams"},
		{name: "bad transport", cfg: Config{Upstreams: []Addr{{Host: "127.0.0.1:53", Transport: "tls"}}}, wantErr: "Upstreams[0].Transport"},
		{name: "bad host", cfg: Config{Upstreams: []Addr{{Host: "localhost:53"}}}, wantErr: "Upstreams[0].Host"},
		{name: "scheme in host", cfg: Config{Upstreams: []Addr{{Host: "udp://127.0.0.1"}}}, wantErr: "Upstreams[0].Host"},
		{name: "duplicate", cfg: Config{Upstreams: []Addr{{Host: "127.0.0.1"}, {Host: "127.0.0.1:53"}}}, wantErr: "Upstreams[1]: duplicate"},
		{name: "MaxInflight", cfg: Config{Upstreams: ok, MaxInflight: -1}, wantErr: "MaxInflight"},
		{name: "HealthCheck", cfg: Config{Upstreams: ok, HealthCheck: -time.Second}, wantErr: "HealthCheck"},
		{name: "ConnsPerUpstream", cfg: Config{Upstreams: ok, ConnsPerUpstream: -2}, wantErr: "ConnsPerUpstream"},
		{name: "ConnsPerUpstream too many", cfg: Config{Upstreams: ok, ConnsPerUpstream: 65}, wantErr: "ConnsPerUpstream"},
		{name: "MaxQueriesPerConn", cfg: Config{Upstreams: ok, MaxQueriesPerConn: -1}, wantErr: "MaxQueriesPerConn"},
		{name: "MaxConnAge", cfg: Config{Upstreams: ok, MaxConnAge: -1}, wantErr: "MaxConnAge"},
		{name: "Timeout", cfg: Config{Upstreams: ok, Timeout: -1}, wantErr: "Timeout"},
		{name: "MaxFails", cfg: Config{Upstreams: ok, MaxFails: -1}, wantErr: "MaxFails"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				defer p.Close()
				c := p.cfg
				if c.MaxInflight != DefaultMaxInflight || c.HealthCheck != DefaultHealthCheck ||
					c.ConnsPerUpstream != DefaultConnsPerUpstream || c.MaxQueriesPerConn != DefaultMaxQueriesPerConn ||
					c.MaxConnAge != DefaultMaxConnAge || c.Timeout != DefaultTimeout || c.MaxFails != DefaultMaxFails {
					t.Errorf("defaults not applied: %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New() error = %v, want one naming %q", err, tt.wantErr)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		fails int
		max   time.Duration
	}{
		{0, 25 * time.Millisecond},
		{1, 25 * time.Millisecond},
		{2, 50 * time.Millisecond},
		{3, 100 * time.Millisecond},
		{5, 400 * time.Millisecond},
		{6, 800 * time.Millisecond},
		{7, time.Second},
		{100, time.Second},
	}
	for _, tt := range tests {
		for range 100 {
			if d := backoff(tt.fails); d < tt.max/2 || d > tt.max {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", tt.fails, d, tt.max/2, tt.max)
			}
		}
	}
}

func TestExchange(t *testing.T) {
	tests := []struct {
		name      string
		scheme    string
		preferUDP bool
		want      string // transport the answer came over
	}{
		{name: "tcp default", want: "tcp"},
		{name: "udp preferred", preferUDP: true, want: "udp"},
		{name: "udp scheme", scheme: "udp://", want: "udp"},
		{name: "tcp scheme beats PreferUDP", scheme: "tcp://", preferUDP: true, want: "tcp"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			srv := newTestServer(t, bNormal)
			p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, tt.scheme+srv.addr)}, PreferUDP: tt.preferUDP})

			q := query("Example.COM")
			q.Id = 4242
			q.SetEdns0(1232, true)
			before := q.String()
			resp, err := p.Exchange(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			if got := checkAnswer(t, q, resp); got != tt.want {
				t.Errorf("answered over %q, want %q", got, tt.want)
			}
			if q.String() != before || q.Id != 4242 {
				t.Errorf("query mutated:\n%s\nwas\n%s", q, before)
			}
			st := p.Upstreams()
			if len(st) != 1 || st[0].Address != srv.addr || !st[0].Healthy || st[0].Transport != tt.want || st[0].Inflight != 0 {
				t.Errorf("Upstreams() = %+v", st)
			}
			if v := metricValue(t, requestsTotal.WithLabelValues(srv.addr, tt.want)); v != 1 {
				t.Errorf("upstream_requests_total{proto=%s} = %v, want 1", tt.want, v)
			}
			wantConns := 0.0
			if tt.want == "tcp" {
				wantConns = float64(st[0].OpenConns)
			}
			if v := metricValue(t, connectionsGauge.WithLabelValues(srv.addr)); v != wantConns {
				t.Errorf("upstream_connections = %v, want %v", v, wantConns)
			}
		})
	}
}

// TestPipelining: 100 concurrent queries over ConnsPerUpstream=1 share one
// TCP connection and are in flight at the server at the same time.
func TestPipelining(t *testing.T) {
	checkGoroutines(t)
	srv := newTestServer(t, bDelay)
	srv.delay = 50 * time.Millisecond
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}, ConnsPerUpstream: 1})

	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := query(fmt.Sprintf("q%d.example.", i))
			q.Id = uint16(i) // callers' IDs collide with nothing: the pool picks its own
			resp, err := p.Exchange(context.Background(), q)
			if err != nil {
				errs <- err
				return
			}
			checkAnswer(t, q, resp)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := srv.accepted.Load(); got != 1 {
		t.Errorf("server accepted %d connections, want 1", got)
	}
	if got := srv.maxInflight.Load(); got < 2 {
		t.Errorf("at most %d queries in flight at the server, want pipelining (>1)", got)
	}
	t.Logf("max in flight at the server: %d", srv.maxInflight.Load())
	if got := srv.tcpQueries.Load(); got != n {
		t.Errorf("server saw %d queries, want %d", got, n)
	}
}

// TestOutOfOrder: the server answers each batch of 10 in reverse order.
func TestOutOfOrder(t *testing.T) {
	checkGoroutines(t)
	srv := newTestServer(t, bReverse)
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}, ConnsPerUpstream: 1, Timeout: 5 * time.Second})

	for round := range 3 {
		var wg sync.WaitGroup
		for i := range srv.batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				q := query(fmt.Sprintf("r%d-q%d.example.", round, i))
				resp, err := p.Exchange(context.Background(), q)
				if err != nil {
					t.Error(err)
					return
				}
				checkAnswer(t, q, resp)
			}()
		}
		wg.Wait()
	}
	if got := srv.accepted.Load(); got != 1 {
		t.Errorf("server accepted %d connections, want 1", got)
	}
}

// TestBadAnswers: answers that match no query are dropped and the query
// times out; broken streams fail fast. Nothing stays registered.
func TestBadAnswers(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tests := []struct {
		name        string
		mode        behaviour
		scheme      string
		wantErr     error
		mismatched  bool // the mismatch counter must move
		wantAnswer  bool
		maxDuration time.Duration
	}{
		{name: "wrong id", mode: bWrongID, wantErr: ErrTimeout, mismatched: true},
		{name: "wrong question", mode: bWrongQuestion, wantErr: ErrTimeout, mismatched: true},
		{name: "hang", mode: bHang, wantErr: ErrTimeout},
		{name: "garbage stream", mode: bGarbageStream, wantErr: ErrTimeout},
		{name: "garbage frame", mode: bGarbageFrame, wantErr: errProtocol},
		{name: "mismatches then answer", mode: bMismatchThenOK, mismatched: true, wantAnswer: true},
		{name: "udp wrong id", mode: bWrongID, scheme: "udp://", wantErr: ErrTimeout, mismatched: true},
		{name: "udp wrong question", mode: bWrongQuestion, scheme: "udp://", wantErr: ErrTimeout, mismatched: true},
		{name: "udp hang", mode: bHang, scheme: "udp://", wantErr: ErrTimeout},
		{name: "udp mismatches then answer", mode: bMismatchThenOK, scheme: "udp://", mismatched: true, wantAnswer: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			srv := newTestServer(t, tt.mode)
			p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, tt.scheme+srv.addr)}, Timeout: timeout, MaxFails: 100})
			mism := metricValue(t, mismatchedTotal)

			for i := range 3 { // several rounds: a fresh connection behaves the same
				q := query(fmt.Sprintf("bad%d.example.", i))
				start := time.Now()
				resp, err := p.Exchange(context.Background(), q)
				took := time.Since(start)
				if tt.wantAnswer {
					if err != nil {
						t.Fatalf("Exchange: %v", err)
					}
					checkAnswer(t, q, resp)
				} else if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Exchange = %v, %v; want error %v", resp, err, tt.wantErr)
				}
				// One attempt of Timeout at most (a garbage frame fails the
				// connection at once and is retried once, also at once).
				if took > timeout+250*time.Millisecond {
					t.Errorf("Exchange took %v, want about Timeout (%v) at most", took, timeout)
				}
			}
			if tt.mismatched && metricValue(t, mismatchedTotal) == mism {
				t.Error("upstream_mismatched_total did not move")
			}
			if n := pendingTotal(p); n != 0 {
				t.Errorf("%d queries still registered on connections", n)
			}
			if st := p.Upstreams()[0]; st.Inflight != 0 {
				t.Errorf("Upstreams()[0].Inflight = %d", st.Inflight)
			}
		})
	}
}

// TestMidStreamClose: the first connection closes with queries in flight;
// they are retried on a fresh connection and every Exchange succeeds.
func TestMidStreamClose(t *testing.T) {
	tests := []struct {
		name       string
		closeAfter int
		concurrent int
	}{
		{name: "single query", closeAfter: 1, concurrent: 1},
		{name: "pipelined", closeAfter: 5, concurrent: 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			srv := newTestServer(t, bCloseMidStream)
			srv.closeAfter = tt.closeAfter
			p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}, ConnsPerUpstream: 1})

			var wg sync.WaitGroup
			for i := range tt.concurrent {
				wg.Add(1)
				go func() {
					defer wg.Done()
					q := query(fmt.Sprintf("mid%d.example.", i))
					resp, err := p.Exchange(context.Background(), q)
					if err != nil {
						t.Errorf("Exchange: %v", err)
						return
					}
					checkAnswer(t, q, resp)
				}()
			}
			wg.Wait()
			if got := srv.accepted.Load(); got < 2 {
				t.Errorf("server accepted %d connections, want a fresh one after the close", got)
			}
			if st := p.Upstreams()[0]; !st.Healthy || st.Fails != 0 {
				t.Errorf("upstream state after recovery: %+v", st)
			}
		})
	}
}

// TestRotationMaxQueries: a connection carries MaxQueriesPerConn queries,
// then is drained, closed and replaced.
func TestRotationMaxQueries(t *testing.T) {
	const perConn = 10
	tests := []struct {
		name        string
		conns       int
		workers     int
		queries     int
		wantConns   int // exact, when sequential
		minAccepted int
	}{
		{name: "sequential", conns: 1, workers: 1, queries: 95, wantConns: 10},
		{name: "concurrent", conns: 2, workers: 16, queries: 400, minAccepted: 400 / perConn},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			srv := newTestServer(t, bNormal)
			p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}, ConnsPerUpstream: tt.conns, MaxQueriesPerConn: perConn})

			var wg sync.WaitGroup
			work := make(chan int)
			for range tt.workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range work {
						q := query(fmt.Sprintf("rot%d.example.", i))
						resp, err := p.Exchange(context.Background(), q)
						if err != nil {
							t.Errorf("Exchange: %v", err)
							continue
						}
						checkAnswer(t, q, resp)
					}
				}()
			}
			for i := range tt.queries {
				work <- i
			}
			close(work)
			wg.Wait()

			per := srv.perConnQueries()
			for i, n := range per {
				if n > perConn {
					t.Errorf("connection %d carried %d queries, want <= %d", i, n, perConn)
				}
			}
			if tt.wantConns != 0 && len(per) != tt.wantConns {
				t.Errorf("server accepted %d connections (%v), want %d", len(per), per, tt.wantConns)
			}
			if len(per) < tt.minAccepted {
				t.Errorf("server accepted %d connections, want >= %d", len(per), tt.minAccepted)
			}
			// Retired connections are closed once drained.
			waitFor(t, "retired connections to close", 5*time.Second, func() bool {
				return srv.openConns.Load() <= int64(tt.conns) && p.Upstreams()[0].OpenConns <= tt.conns
			})
		})
	}
}

// TestRotationMaxConnAge: connections are closed at MaxConnAge, idle or
// busy.
func TestRotationMaxConnAge(t *testing.T) {
	checkGoroutines(t)
	srv := newTestServer(t, bNormal)
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}, ConnsPerUpstream: 1, MaxConnAge: 100 * time.Millisecond})
	ctx := context.Background()

	// Idle: the connection is closed by its age timer.
	if _, err := p.Exchange(ctx, query("age.example.")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the idle connection to expire", 5*time.Second, func() bool {
		return p.Upstreams()[0].OpenConns == 0 && srv.openConns.Load() == 0
	})
	if _, err := p.Exchange(ctx, query("age.example.")); err != nil {
		t.Fatal(err)
	}
	if got := srv.accepted.Load(); got != 2 {
		t.Fatalf("server accepted %d connections, want 2", got)
	}

	// Busy: queries keep flowing while connections rotate under them.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; srv.accepted.Load() < 5; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("only %d connections after %d queries", srv.accepted.Load(), i)
		}
		q := query(fmt.Sprintf("busy%d.example.", i))
		resp, err := p.Exchange(ctx, q)
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		checkAnswer(t, q, resp)
	}
}

// TestFailover: the first upstream's port is closed; queries go to the
// second, the first is marked down, and once it listens again the health
// check brings it back.
func TestFailover(t *testing.T) {
	checkGoroutines(t)
	deadAddr := closedAddr(t)
	good := newTestServer(t, bNormal)
	p := newPool(t, Config{
		Upstreams:   []Addr{mustAddr(t, deadAddr), mustAddr(t, good.addr)},
		HealthCheck: 20 * time.Millisecond,
		Timeout:     time.Second,
	})
	ctx := context.Background()

	for i := range 20 {
		q := query(fmt.Sprintf("fo%d.example.", i))
		resp, err := p.Exchange(ctx, q)
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		checkAnswer(t, q, resp)
	}
	st := p.Upstreams()
	if st[0].Healthy || !st[1].Healthy {
		t.Fatalf("Upstreams() = %+v, want the first down and the second up", st)
	}
	if v := metricValue(t, healthyGauge.WithLabelValues(deadAddr)); v != 0 {
		t.Errorf("upstream_healthy{to=%s} = %v, want 0", deadAddr, v)
	}
	if v := metricValue(t, failuresTotal.WithLabelValues(deadAddr, reasonDial)); v < 1 {
		t.Errorf("upstream_failures_total{reason=dial} = %v", v)
	}

	// The first comes back.
	revived := newTestServerAt(t, deadAddr, bNormal)
	waitFor(t, "the health check to mark the first upstream up", 5*time.Second, func() bool {
		return p.Upstreams()[0].Healthy
	})
	for i := 0; revived.tcpQueries.Load() == 0; i++ {
		if i > 100 {
			t.Fatal("the revived upstream gets no queries")
		}
		if _, err := p.Exchange(ctx, query("back.example.")); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAllDown: with every upstream down one is still tried, and ErrNoHealthy
// is returned when that fails; recovery is noticed.
func TestAllDown(t *testing.T) {
	checkGoroutines(t)
	addr := closedAddr(t)
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, addr)}, HealthCheck: 20 * time.Millisecond, MaxFails: 1})
	ctx := context.Background()

	if _, err := p.Exchange(ctx, query("down.example.")); err == nil || errors.Is(err, ErrNoHealthy) {
		t.Fatalf("first Exchange = %v, want a dial error (the upstream was not yet known down)", err)
	}
	if p.Upstreams()[0].Healthy {
		t.Fatal("upstream not marked down")
	}
	_, err := p.Exchange(ctx, query("down.example."))
	if !errors.Is(err, ErrNoHealthy) {
		t.Fatalf("Exchange = %v, want ErrNoHealthy", err)
	}

	newTestServerAt(t, addr, bNormal)
	waitFor(t, "recovery", 5*time.Second, func() bool {
		_, err := p.Exchange(ctx, query("up.example."))
		return err == nil
	})
	if !p.Upstreams()[0].Healthy {
		t.Error("upstream answered but is not marked up")
	}
}

// TestMaxInflight: over MaxInflight, Exchange fails fast.
func TestMaxInflight(t *testing.T) {
	checkGoroutines(t)
	srv := newTestServer(t, bHang)
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}, MaxInflight: 5, Timeout: 10 * time.Second})
	over := metricValue(t, overloadedTotal)

	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := p.Exchange(context.Background(), query(fmt.Sprintf("held%d.example.", i)))
			errs <- err
		}()
	}
	waitFor(t, "5 queries at the server", 5*time.Second, func() bool { return srv.tcpQueries.Load() == 5 })

	start := time.Now()
	_, err := p.Exchange(context.Background(), query("one-too-many.example."))
	if !errors.Is(err, ErrOverloaded) {
		t.Fatalf("Exchange = %v, want ErrOverloaded", err)
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("ErrOverloaded took %v, want fast", took)
	}
	if metricValue(t, overloadedTotal) != over+1 {
		t.Error("upstream_overloaded_total did not move")
	}

	p.Close()
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("held Exchange = %v, want ErrClosed", err)
		}
	}
}

// TestCloseInflight: Close fails the Exchanges in flight with ErrClosed
// and stops everything.
func TestCloseInflight(t *testing.T) {
	for _, scheme := range []string{"tcp://", "udp://"} {
		t.Run(scheme, func(t *testing.T) {
			checkGoroutines(t)
			srv := newTestServer(t, bHang)
			p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, scheme+srv.addr)}, Timeout: 30 * time.Second})
			const n = 10
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := p.Exchange(context.Background(), query(fmt.Sprintf("c%d.example.", i)))
					errs <- err
				}()
			}
			waitFor(t, "queries at the server", 5*time.Second, func() bool {
				return srv.tcpQueries.Load()+srv.udpQueries.Load() == n
			})
			start := time.Now()
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			if took := time.Since(start); took > time.Second {
				t.Errorf("Close and the Exchanges' return took %v", took)
			}
			close(errs)
			for err := range errs {
				if !errors.Is(err, ErrClosed) {
					t.Errorf("Exchange = %v, want ErrClosed", err)
				}
			}
			if _, err := p.Exchange(context.Background(), query("after.example.")); !errors.Is(err, ErrClosed) {
				t.Errorf("Exchange after Close = %v, want ErrClosed", err)
			}
			if err := p.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if st := p.Upstreams()[0]; st.OpenConns != 0 {
				t.Errorf("%d connections open after Close", st.OpenConns)
			}
		})
	}
}

// TestTruncatedRetriedOverTCP: with PreferUDP a TC=1 answer is retried
// over TCP.
func TestTruncatedRetriedOverTCP(t *testing.T) {
	checkGoroutines(t)
	srv := newTestServer(t, bTruncate)
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}, PreferUDP: true})
	q := query("big.example.")
	resp, err := p.Exchange(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if got := checkAnswer(t, q, resp); got != "tcp" || resp.Truncated {
		t.Errorf("answer over %q (TC=%v), want the TCP one", got, resp.Truncated)
	}
	if u, tc := srv.udpQueries.Load(), srv.tcpQueries.Load(); u != 1 || tc != 1 {
		t.Errorf("server saw %d UDP and %d TCP queries, want 1 and 1", u, tc)
	}
}

// TestCallerCancel: a cancelled caller gets context.Canceled at once and the
// upstream is not blamed.
func TestCallerCancel(t *testing.T) {
	for _, scheme := range []string{"tcp://", "udp://"} {
		t.Run(scheme, func(t *testing.T) {
			checkGoroutines(t)
			srv := newTestServer(t, bHang)
			p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, scheme+srv.addr)}, Timeout: 10 * time.Second, MaxFails: 1})
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				for srv.tcpQueries.Load()+srv.udpQueries.Load() == 0 {
					time.Sleep(time.Millisecond)
				}
				cancel()
			}()
			_, err := p.Exchange(ctx, query("cancel.example."))
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Exchange = %v, want context.Canceled", err)
			}
			if st := p.Upstreams()[0]; !st.Healthy || st.Fails != 0 {
				t.Errorf("upstream blamed for the caller's cancel: %+v", st)
			}

			// A caller deadline shorter than Timeout is a timeout.
			dctx, dcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer dcancel()
			if _, err := p.Exchange(dctx, query("deadline.example.")); !errors.Is(err, ErrTimeout) {
				t.Fatalf("Exchange = %v, want ErrTimeout", err)
			}
		})
	}
}

// TestServerClosesIdle: the server drops idle connections; the next query
// simply uses a new one.
func TestServerClosesIdle(t *testing.T) {
	checkGoroutines(t)
	srv := newTestServer(t, bNormal)
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}, ConnsPerUpstream: 2})
	ctx := context.Background()
	for round := range 3 {
		for i := range 4 {
			q := query(fmt.Sprintf("idle%d-%d.example.", round, i))
			resp, err := p.Exchange(ctx, q)
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			checkAnswer(t, q, resp)
		}
		// (Again and again: a connection the pool dialed may not have been
		// accepted yet.)
		waitFor(t, "the pool to notice", 5*time.Second, func() bool {
			srv.closeConns()
			return p.Upstreams()[0].OpenConns == 0
		})
	}
}

// TestMiekgServer: interoperability with a stock miekg/dns TCP server (as
// CoreDNS uses), which handles the pipelined queries of a connection one
// after the other.
func TestMiekgServer(t *testing.T) {
	checkGoroutines(t)
	srv := &dns.Server{Addr: "127.0.0.1:0", Net: "tcp", Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		_ = w.WriteMsg(answer(q, "tcp"))
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.ListenAndServe()
	}()
	<-started
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-served
	})
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.Listener.Addr().String())}, ConnsPerUpstream: 1})

	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := query(fmt.Sprintf("m%d.example.", i))
			resp, err := p.Exchange(context.Background(), q)
			if err != nil {
				t.Error(err)
				return
			}
			checkAnswer(t, q, resp)
		}()
	}
	wg.Wait()
}

// TestHeadOfLineStall: a sequential server (stock miekg/dns, as CoreDNS)
// stuck on a slow query holds up the queries pipelined behind it; when the
// slow one times out the connection is closed as stalled and the others
// are retried on a fresh connection instead of timing out too.
func TestHeadOfLineStall(t *testing.T) {
	checkGoroutines(t)
	release := make(chan struct{})
	var releaseOnce sync.Once
	srv := &dns.Server{Addr: "127.0.0.1:0", Net: "tcp", Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		if q.Question[0].Name == "slow.example." {
			<-release
		}
		_ = w.WriteMsg(answer(q, "tcp"))
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.ListenAndServe()
	}()
	<-started
	t.Cleanup(func() {
		releaseOnce.Do(func() { close(release) })
		_ = srv.Shutdown()
		<-served
	})
	const timeout = 500 * time.Millisecond
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.Listener.Addr().String())}, ConnsPerUpstream: 1, Timeout: timeout, MaxFails: 100})
	ctx := context.Background()
	if _, err := p.Exchange(ctx, query("warmup.example.")); err != nil { // the connection exists
		t.Fatal(err)
	}

	slowErr := make(chan error, 1)
	go func() {
		_, err := p.Exchange(ctx, query("slow.example."))
		slowErr <- err
	}()
	waitFor(t, "the slow query in flight", 5*time.Second, func() bool { return pendingTotal(p) == 1 })
	// The scenario: queries arriving while the slow one is being worked on
	// (not in the same instant: those time out with it).
	inFlight := time.Now()
	waitFor(t, "the slow query to be slow", 5*time.Second, func() bool { return time.Since(inFlight) > timeout/3 })

	start := time.Now()
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q := query(fmt.Sprintf("fast%d.example.", i))
			resp, err := p.Exchange(ctx, q)
			if err != nil {
				t.Errorf("fast query, after %v: %v", time.Since(start), err)
				return
			}
			checkAnswer(t, q, resp)
		}()
	}
	wg.Wait()
	if err := <-slowErr; !errors.Is(err, ErrTimeout) {
		t.Errorf("slow query: %v, want ErrTimeout", err)
	}
	if took := time.Since(start); took > timeout {
		t.Errorf("fast queries took %v, want less than Timeout (%v)", took, timeout)
	}
	releaseOnce.Do(func() { close(release) })
}

// TestUnparsableAnswerKeepsConn: one answer that does not parse, well
// framed, among pipelined good ones fails its own query (at once) and
// nothing else: the connection stays, the other queries in flight on it get
// their answers.
func TestUnparsableAnswerKeepsConn(t *testing.T) {
	tests := []struct {
		name    string
		async   bool
		queries int
	}{
		{name: "Exchange", queries: 20},
		{name: "ExchangeAsync", async: true, queries: 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			srv := newTestServer(t, bNormal)
			p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}, ConnsPerUpstream: 1, Timeout: 3 * time.Second, MaxFails: 100})
			// Open the one connection first, so every query below is on it.
			if _, err := p.Exchange(context.Background(), query("warm.example.")); err != nil {
				t.Fatalf("warm-up: %v", err)
			}
			if m := new(dns.Msg); m.Unpack(poison(mustPack(t, answer(query("poison.example."), "tcp")))) == nil {
				t.Fatal("the poisoned answer parses: the test proves nothing")
			}
			// The server holds the answers until every query is in, then
			// writes them all (reversed), the poisoned one among them.
			srv.batch = tt.queries
			srv.setMode(bReverse)

			type res struct {
				q   *dns.Msg
				msg *dns.Msg
				err error
			}
			results := make(chan res, tt.queries)
			for i := range tt.queries {
				name := fmt.Sprintf("q%d.example.", i)
				if i == tt.queries/2 {
					name = "poison.example."
				}
				q := query(name)
				q.Id = uint16(1000 + i)
				if tt.async {
					wire, err := q.Pack()
					if err != nil {
						t.Fatal(err)
					}
					p.ExchangeAsync(wire, time.Now().Add(5*time.Second), func(m *dns.Msg, err error) { results <- res{q, m, err} })
					continue
				}
				go func() {
					m, err := p.Exchange(context.Background(), q)
					results <- res{q, m, err}
				}()
			}
			start := time.Now()
			for range tt.queries {
				r := <-results
				name := r.q.Question[0].Name
				if name == "poison.example." {
					if !errors.Is(r.err, errProtocol) {
						t.Errorf("poisoned query: %v, %v; want a protocol error", r.msg, r.err)
					}
					continue
				}
				if r.err != nil {
					t.Errorf("%s: %v", name, r.err)
					continue
				}
				checkAnswer(t, r.q, r.msg)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("answers took %v: something waited for a timeout", d)
			}
			if n := srv.accepted.Load(); n != 1 {
				t.Errorf("server accepted %d connections, want 1: the unparsable answer cost the connection", n)
			}
			if st := p.Upstreams()[0]; st.OpenConns != 1 {
				t.Errorf("%d connections open, want 1", st.OpenConns)
			}
			if n := pendingTotal(p); n != 0 {
				t.Errorf("%d queries still registered", n)
			}
		})
	}
}

func mustPack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
