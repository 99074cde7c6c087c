package alicloud

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk"
	"golang.org/x/time/rate"
)

// Limit is a token bucket: QPS tokens a second, Burst at most (default
// max(1, QPS)). QPS <= 0: no limit.
type Limit struct {
	QPS   float64
	Burst int
}

// Retry is the backoff of repeated calls: the n-th wait is drawn from
// [d/2, d] with d = Base·2ⁿ⁻¹ capped at Max ("equal jitter": concurrent
// callers spread out, yet every wait grows).
type Retry struct {
	Attempts int           // per call, the first included; default 8
	Base     time.Duration // default 200ms
	Max      time.Duration // default 10s
}

func (r Retry) withDefaults() Retry {
	if r.Attempts <= 0 {
		r.Attempts = 8
	}
	if r.Base <= 0 {
		r.Base = 200 * time.Millisecond
	}
	if r.Max <= 0 {
		r.Max = 10 * time.Second
	}
	if r.Max < r.Base {
		r.Max = r.Base
	}
	return r
}

// Backoff returns the wait before attempt n+1 (n >= 1 failed attempts).
func (r Retry) Backoff(n int) time.Duration {
	r = r.withDefaults()
	d := r.Base << min(max(n-1, 0), 30)
	if d > r.Max || d <= 0 {
		d = r.Max
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// Attempt is one try of a call, as Observe hears it.
type Attempt struct {
	Product, Action string
	Write           bool
	Err             error // nil on success; else an *Error (redacted)
	Kind            Kind  // KindUnknown on success
	Code            string
	Retry           bool // another attempt follows
	Duration        time.Duration
}

// Config of an Invoker (and of a Client).
type Config struct {
	Product string // "ecs", "pvtz": in errors and observations
	// Limits: a bucket per action, one shared by all writes and one by all
	// reads; a call waits for each that is set.
	PerAction Limit
	Writes    Limit
	Reads     Limit
	Retry     Retry
	// Observe hears every attempt (metrics, events); called synchronously.
	Observe func(Attempt)
	Logger  *slog.Logger // debug lines of retries; default: none
}

// Invoker runs calls with the rate limits, retries on retryable errors,
// error classification and redaction. A call is repeated as it is: a
// creating call built once with a ClientToken carries the same token on
// every attempt, so an attempt that succeeded while its answer was lost
// is answered with what it made, not done twice.
type Invoker struct {
	cfg    Config
	mu     sync.Mutex
	action map[string]*rate.Limiter
	writes *rate.Limiter
	reads  *rate.Limiter
}

// NewInvoker returns an Invoker.
func NewInvoker(cfg Config) *Invoker {
	cfg.Retry = cfg.Retry.withDefaults()
	return &Invoker{cfg: cfg, action: map[string]*rate.Limiter{}, writes: limiter(cfg.Writes), reads: limiter(cfg.Reads)}
}

func limiter(l Limit) *rate.Limiter {
	if l.QPS <= 0 {
		return nil
	}
	b := l.Burst
	if b <= 0 {
		b = max(1, int(l.QPS))
	}
	return rate.NewLimiter(rate.Limit(l.QPS), b)
}

func (in *Invoker) wait(ctx context.Context, action string, write bool) error {
	in.mu.Lock()
	lim, ok := in.action[action]
	if !ok {
		lim = limiter(in.cfg.PerAction)
		in.action[action] = lim
	}
	in.mu.Unlock()
	shared := in.reads
	if write {
		shared = in.writes
	}
	for _, l := range []*rate.Limiter{lim, shared} {
		if l != nil {
			if err := l.Wait(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// Do runs fn (one API call) until it succeeds, fails for good, or the
// attempts or ctx run out, with r overriding the Invoker's retry policy
// when set. Every error returned is an *Error, redacted.
func (in *Invoker) Do(ctx context.Context, action string, write bool, fn func(context.Context) error) error {
	return in.DoRetry(ctx, action, write, Retry{}, fn)
}

// DoRetry is Do with another retry policy (zero fields: the Invoker's).
func (in *Invoker) DoRetry(ctx context.Context, action string, write bool, r Retry, fn func(context.Context) error) error {
	pol := in.cfg.Retry
	if r.Attempts > 0 {
		pol.Attempts = r.Attempts
	}
	if r.Base > 0 {
		pol.Base = r.Base
	}
	if r.Max > 0 {
		pol.Max = r.Max
	}
	var last error
	for attempt := 1; ; attempt++ {
		if err := in.wait(ctx, action, write); err != nil {
			return in.abandoned(action, err, last)
		}
		t0 := time.Now()
		err := fn(ctx)
		if err == nil {
			in.observe(Attempt{Product: in.cfg.Product, Action: action, Write: write, Duration: time.Since(t0)})
			return nil
		}
		err = FromSDK(in.cfg.Product, action, "", err)
		k := KindOf(err)
		again := k.Retryable() && attempt < pol.Attempts && ctx.Err() == nil
		in.observe(Attempt{Product: in.cfg.Product, Action: action, Write: write, Err: err, Kind: k, Code: Code(err), Retry: again, Duration: time.Since(t0)})
		if !again {
			return err
		}
		last = err
		if in.cfg.Logger != nil {
			in.cfg.Logger.Debug("retrying", "product", in.cfg.Product, "action", action, "attempt", attempt, "kind", k.String(), "err", err)
		}
		t := time.NewTimer(pol.Backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return in.abandoned(action, ctx.Err(), last)
		case <-t.C:
		}
	}
}

// abandoned: ctx ended while waiting; the last API error (if any) is the
// story, the context error why we stopped.
func (in *Invoker) abandoned(action string, why, last error) error {
	e, ok := last.(*Error)
	if !ok {
		return &Error{Product: in.cfg.Product, Action: action, Kind: KindTransport, Err: why}
	}
	cp := *e
	if cp.Code != "" {
		cp.Message += " (retry abandoned: " + why.Error() + ")"
		cp.Err = why
	} else {
		cp.Err = errors.Join(e.Err, fmt.Errorf("retry abandoned: %w", why))
	}
	return &cp
}

func (in *Invoker) observe(a Attempt) {
	if in.cfg.Observe != nil {
		in.cfg.Observe(a)
	}
}

// SDKClient is what every product client of the SDK (*ecs.Client,
// *pvtz.Client, ...) has from its embedded sdk.Client.
type SDKClient interface {
	SetReadTimeout(time.Duration)
	SetConnectTimeout(time.Duration)
}

// ClientConfig configures a Client.
type ClientConfig struct {
	Config
	// Endpoint: "" = the SDK's regional endpoint; else http(s)://HOST[:PORT]
	// (a VPC endpoint, or bin/cloud-emulator).
	Endpoint       string
	Pool           int           // SDK clients kept; default 16
	ReadTimeout    time.Duration // per HTTP request; default 10s
	ConnectTimeout time.Duration // default 5s
}

// Client is an Invoker with a pool of SDK clients of one product. An SDK
// client is not safe for concurrent calls (it sets its HTTP client's
// timeout on every request), so each call in flight has its own; idle ones
// are kept for reuse (connections stay open).
type Client[C SDKClient] struct {
	*Invoker
	newClient func(*sdk.Config) (C, error)
	pool      chan C
	scheme    string
	host      string
	cc        ClientConfig
}

// NewClient returns a Client whose SDK clients newClient makes, given the
// SDK configuration (AutoRetry off: the Invoker retries). newClient sets
// the product client's Domain to Host() when that is not "". It is called
// once here, so a bad region or credential fails now.
func NewClient[C SDKClient](cfg ClientConfig, newClient func(*sdk.Config) (C, error)) (*Client[C], error) {
	if cfg.Pool <= 0 {
		cfg.Pool = 16
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 10 * time.Second
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	c := &Client[C]{Invoker: NewInvoker(cfg.Config), newClient: newClient, pool: make(chan C, cfg.Pool), scheme: "HTTPS", cc: cfg}
	var err error
	if c.host, c.scheme, err = EndpointHost(cfg.Endpoint); err != nil {
		return nil, err
	}
	first, err := c.get()
	if err != nil {
		return nil, err
	}
	c.put(first)
	return c, nil
}

// Host is the endpoint's host[:port] ("" = the SDK's regional endpoint).
func (c *Client[C]) Host() string { return c.host }

// Scheme is "HTTP" or "HTTPS", for request.SetScheme.
func (c *Client[C]) Scheme() string { return c.scheme }

func (c *Client[C]) get() (C, error) {
	select {
	case cl := <-c.pool:
		return cl, nil
	default:
	}
	cl, err := c.newClient(sdk.NewConfig().WithAutoRetry(false))
	if err != nil {
		var zero C
		return zero, fmt.Errorf("%s client: %w", c.cc.Product, Redact(err))
	}
	cl.SetReadTimeout(c.cc.ReadTimeout)
	cl.SetConnectTimeout(c.cc.ConnectTimeout)
	return cl, nil
}

func (c *Client[C]) put(cl C) {
	select {
	case c.pool <- cl:
	default:
	}
}

// Call runs fn on a pooled SDK client through the Invoker (limits,
// retries, classification, redaction). Build the SDK request once, outside
// fn: a retry then repeats it with the same ClientToken.
func (c *Client[C]) Call(ctx context.Context, action string, write bool, fn func(C) error) error {
	return c.CallRetry(ctx, action, write, Retry{}, fn)
}

// CallRetry is Call with another retry policy (zero fields: the Client's).
func (c *Client[C]) CallRetry(ctx context.Context, action string, write bool, r Retry, fn func(C) error) error {
	return c.DoRetry(ctx, action, write, r, func(context.Context) error {
		cl, err := c.get()
		if err != nil {
			return &Error{Product: c.cc.Product, Action: action, Kind: KindOther, Err: err}
		}
		defer c.put(cl)
		return FromSDK(c.cc.Product, action, c.host, fn(cl))
	})
}

// EndpointHost splits an endpoint URL into the host[:port] an SDK client's
// Domain takes and the request scheme ("HTTP"/"HTTPS"); "" gives "" and
// "HTTPS" (the SDK's regional endpoint).
func EndpointHost(endpoint string) (host, scheme string, err error) {
	if endpoint == "" {
		return "", "HTTPS", nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", "", fmt.Errorf("endpoint %q: want http(s)://HOST[:PORT]", endpoint)
	}
	return u.Host, strings.ToUpper(u.Scheme), nil
}
