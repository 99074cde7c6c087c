package upstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// asyncResult collects what ExchangeAsync's done receives, and how often.
type asyncResult struct {
	calls atomic.Int32
	ch    chan struct{}
	msg   *dns.Msg
	err   error
}

func exchangeAsync(t *testing.T, p *Pool, q *dns.Msg, deadline time.Duration) *asyncResult {
	t.Helper()
	wire, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	r := &asyncResult{ch: make(chan struct{})}
	p.ExchangeAsync(wire, time.Now().Add(deadline), func(m *dns.Msg, err error) {
		if r.calls.Add(1) == 1 {
			r.msg, r.err = m, err
			close(r.ch)
		}
	})
	return r
}

func (r *asyncResult) wait(t *testing.T, d time.Duration) (*dns.Msg, error) {
	t.Helper()
	select {
	case <-r.ch:
	case <-time.After(d):
		t.Fatalf("done not called within %v", d)
	}
	time.Sleep(10 * time.Millisecond) // room for a second, wrong call
	if n := r.calls.Load(); n != 1 {
		t.Fatalf("done called %d times, want 1", n)
	}
	return r.msg, r.err
}

func TestExchangeAsync(t *testing.T) {
	tests := []struct {
		name    string
		mode    behaviour
		udp     bool
		warm    bool          // an Exchange first, so a connection is open
		timeout time.Duration // attempt timeout
		want    string        // "tcp"/"udp": answered over it; "timeout": ErrTimeout
	}{
		{name: "cold: no connection yet, goes on as Exchange", mode: bNormal, want: "tcp"},
		{name: "warm: written on the open connection", mode: bNormal, warm: true, want: "tcp"},
		{name: "out of order answers", mode: bReverse, warm: true, want: "tcp"},
		{name: "mismatched answers are skipped", mode: bMismatchThenOK, warm: true, want: "tcp"},
		{name: "udp upstream", mode: bNormal, udp: true, want: "udp"},
		{name: "hang: times out", mode: bHang, warm: true, timeout: 200 * time.Millisecond, want: "timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkGoroutines(t)
			srv := newTestServer(t, bNormal)
			srv.batch = 2
			scheme := ""
			if tt.udp {
				scheme = "udp://"
			}
			p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, scheme+srv.addr)}, ConnsPerUpstream: 1, Timeout: tt.timeout})
			if tt.warm {
				if _, err := p.Exchange(context.Background(), query("warm.example.")); err != nil {
					t.Fatal(err)
				}
			}
			srv.setMode(tt.mode)
			n := 1
			if tt.mode == bReverse {
				n = 2 // the server holds answers until two queries arrived
			}
			var results []*asyncResult
			var qs []*dns.Msg
			for i := range n {
				q := query(fmt.Sprintf("Async%d.Example.", i))
				q.Id = uint16(1000 + i)
				q.SetEdns0(1232, false)
				qs = append(qs, q)
				results = append(results, exchangeAsync(t, p, q, 2*time.Second))
			}
			for i, r := range results {
				resp, err := r.wait(t, 5*time.Second)
				if tt.want == "timeout" {
					if !errors.Is(err, ErrTimeout) {
						t.Fatalf("err = %v, want ErrTimeout", err)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if got := checkAnswer(t, qs[i], resp); got != tt.want {
					t.Errorf("answered over %q, want %q", got, tt.want)
				}
			}
			waitFor(t, "no query in flight", time.Second, func() bool { return p.inflight.Load() == 0 && p.Upstreams()[0].Inflight == 0 })
		})
	}
}

// TestExchangeAsyncConnLost: the connection dies under async queries; they
// are retried as Exchange retries and answered on a new connection.
func TestExchangeAsyncConnLost(t *testing.T) {
	checkGoroutines(t)
	srv := newTestServer(t, bNormal)
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}, ConnsPerUpstream: 1})
	if _, err := p.Exchange(context.Background(), query("warm.example.")); err != nil {
		t.Fatal(err)
	}
	srv.setMode(bHang)
	var results []*asyncResult
	var qs []*dns.Msg
	for i := range 20 {
		q := query(fmt.Sprintf("lost%d.example.", i))
		qs = append(qs, q)
		results = append(results, exchangeAsync(t, p, q, 3*time.Second))
	}
	waitFor(t, "the queries to reach the server", time.Second, func() bool { return srv.inflight.Load() >= 20 })
	srv.setMode(bNormal)
	srv.closeConns()
	for i, r := range results {
		resp, err := r.wait(t, 5*time.Second)
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		checkAnswer(t, qs[i], resp)
	}
	if a := srv.accepted.Load(); a < 2 {
		t.Errorf("%d connections accepted, want a new one after the loss", a)
	}
}

// TestExchangeAsyncFailover: the first upstream hangs; the exchange moves
// on to the second within the deadline.
func TestExchangeAsyncFailover(t *testing.T) {
	checkGoroutines(t)
	bad := newTestServer(t, bNormal)
	good := newTestServer(t, bNormal)
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, bad.addr), mustAddr(t, good.addr)}, Timeout: 300 * time.Millisecond})
	for i := range 4 { // a connection open to both
		if _, err := p.Exchange(context.Background(), query(fmt.Sprintf("warm%d.example.", i))); err != nil {
			t.Fatal(err)
		}
	}
	bad.setMode(bHang)
	for i := range 6 {
		q := query(fmt.Sprintf("fo%d.example.", i))
		resp, err := exchangeAsync(t, p, q, 3*time.Second).wait(t, 5*time.Second)
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		checkAnswer(t, q, resp)
	}
	if v := metricValue(t, failuresTotal.WithLabelValues(bad.addr, reasonTimeout)); v < 1 {
		t.Errorf("failures_total{reason=timeout} of the hanging upstream = %v, want ≥ 1", v)
	}
}

// TestExchangeAsyncRefusals: failures known at once reach done before
// ExchangeAsync returns, once.
func TestExchangeAsyncRefusals(t *testing.T) {
	srv := newTestServer(t, bHang)
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}, MaxInflight: 1})
	first := exchangeAsync(t, p, query("one.example."), 2*time.Second)

	r := exchangeAsync(t, p, query("two.example."), 2*time.Second)
	if _, err := r.wait(t, time.Second); !errors.Is(err, ErrOverloaded) {
		t.Errorf("over MaxInflight: err = %v, want ErrOverloaded", err)
	}

	var calls atomic.Int32
	var gotErr error
	p.ExchangeAsync([]byte{1, 2, 3}, time.Now().Add(time.Second), func(_ *dns.Msg, err error) { calls.Add(1); gotErr = err })
	if calls.Load() != 1 || gotErr == nil {
		t.Errorf("garbage query: %d calls, err %v; want 1 call with an error", calls.Load(), gotErr)
	}

	p.Close()
	if _, err := first.wait(t, 3*time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("query in flight at Close: err = %v, want ErrClosed", err)
	}
	r = exchangeAsync(t, p, query("three.example."), time.Second)
	if _, err := r.wait(t, time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: err = %v, want ErrClosed", err)
	}
}

// TestExchangeAsyncConcurrent: many async and blocking exchanges at once,
// each answered exactly once (run with -race).
func TestExchangeAsyncConcurrent(t *testing.T) {
	checkGoroutines(t)
	srv := newTestServer(t, bNormal)
	p := newPool(t, Config{Upstreams: []Addr{mustAddr(t, srv.addr)}})
	if _, err := p.Exchange(context.Background(), query("warm.example.")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for i := range 200 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			q := query(fmt.Sprintf("a%d.example.", i))
			r := exchangeAsync(t, p, q, 3*time.Second)
			select {
			case <-r.ch:
			case <-time.After(5 * time.Second):
				errs <- fmt.Errorf("a%d: no answer", i)
				return
			}
			if r.err != nil {
				errs <- r.err
			} else if len(r.msg.Question) != 1 || r.msg.Question[0].Name != q.Question[0].Name {
				errs <- fmt.Errorf("a%d: answer to %v", i, r.msg.Question)
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := p.Exchange(context.Background(), query(fmt.Sprintf("s%d.example.", i))); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
