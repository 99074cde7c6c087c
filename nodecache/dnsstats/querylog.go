package dnsstats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// The query log: off by default, turned on at runtime for one pod or one
// namespace (node-cache's observe endpoint, dnsaccelctl log), every query
// of the selection as a JSON line, sampled (one in Sample) or full, never
// more than MaxRate lines a second (a token bucket; the rest are counted as
// dropped), for Duration at most. Lines go to a ring of the most recent
// ones and to followers; nothing is written to disk.
//
// Queries the in-kernel cache answers never reach user space; while a
// selection is logged, node-cache tells the kernel to pass that pod's (or
// namespace's) queries on (kcache.SetBypass), so they are logged, answered
// by node-cache's cache, and counted as answered by "cache" meanwhile.

// LogSelection is what is logged.
type LogSelection struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod,omitempty"` // empty: the whole namespace
	// Sample logs one query in Sample (default 1: every query).
	Sample int `json:"sample,omitempty"`
	// Duration turns the log off after this long (default 5m, at most 1h).
	Duration time.Duration `json:"duration,omitempty"`
}

// LogLine is one logged query.
type LogLine struct {
	Time       time.Time `json:"time"`
	Namespace  string    `json:"namespace"`
	Pod        string    `json:"pod"`
	Client     string    `json:"client"`
	Name       string    `json:"name"`
	Type       string    `json:"type"`
	Rcode      string    `json:"rcode"`
	AnsweredBy string    `json:"answered_by"`
	LatencyUS  float64   `json:"latency_us"`
	Timeout    bool      `json:"timeout,omitempty"`
}

// LogStatus describes the query log.
type LogStatus struct {
	On        bool          `json:"on"`
	Selection *LogSelection `json:"selection,omitempty"`
	Until     time.Time     `json:"until,omitzero"`
	MaxRate   int           `json:"max_rate"`
	Logged    uint64        `json:"logged"`
	Sampled   uint64        `json:"sampled_out"`
	Dropped   uint64        `json:"rate_limited"`
	Followers int           `json:"followers"`
}

const (
	defaultLogDuration = 5 * time.Minute
	maxLogDuration     = time.Hour
	ringSize           = 4096
)

// QueryLog is one turned-on query log.
type QueryLog struct {
	sel   LogSelection
	until time.Time
	rate  int

	seen    atomic.Uint64
	logged  atomic.Uint64
	sampled atomic.Uint64
	dropped atomic.Uint64

	mu        sync.Mutex
	tokens    float64
	last      time.Time
	ring      [][]byte
	next      int
	followers map[chan []byte]struct{}
	closed    bool
}

// Validate checks a selection and applies defaults.
func (sel *LogSelection) Validate() error {
	if sel.Namespace == "" {
		return errors.New("query log: a namespace is required (pod: namespace/name)")
	}
	if sel.Sample <= 0 {
		sel.Sample = 1
	}
	if sel.Duration <= 0 {
		sel.Duration = defaultLogDuration
	}
	if sel.Duration > maxLogDuration {
		return fmt.Errorf("query log: duration %s: at most %s", sel.Duration, maxLogDuration)
	}
	return nil
}

// Matches reports whether p is selected.
func (sel *LogSelection) Matches(p Pod) bool {
	return p.Namespace == sel.Namespace && (sel.Pod == "" || p.Name == sel.Pod)
}

// StartLog turns the query log on for sel (replacing any), at most maxRate
// lines a second. It returns the log, which ends after sel.Duration.
func (s *Stats) StartLog(sel LogSelection, maxRate int) (*QueryLog, error) {
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	if maxRate <= 0 {
		return nil, errors.New("query log: the rate limit must be positive")
	}
	now := time.Now()
	l := &QueryLog{sel: sel, until: now.Add(sel.Duration), rate: maxRate, tokens: float64(maxRate), last: now,
		followers: map[chan []byte]struct{}{}}
	if old := s.log.Swap(l); old != nil {
		old.close()
	}
	return l, nil
}

// StopLog turns the query log off.
func (s *Stats) StopLog() {
	if old := s.log.Swap(nil); old != nil {
		old.close()
	}
}

// Log returns the running query log (nil: off). A log past its duration is
// turned off here.
func (s *Stats) Log() *QueryLog {
	l := s.log.Load()
	if l != nil && time.Now().After(l.until) {
		if s.log.CompareAndSwap(l, nil) {
			l.close()
		}
		return nil
	}
	return l
}

// LogStatus describes the running query log, or says it is off.
func (s *Stats) LogStatus(maxRate int) LogStatus {
	l := s.Log()
	if l == nil {
		return LogStatus{MaxRate: maxRate}
	}
	return l.Status()
}

// Selection is what l logs.
func (l *QueryLog) Selection() LogSelection { return l.sel }

// Status describes l.
func (l *QueryLog) Status() LogStatus {
	l.mu.Lock()
	n := len(l.followers)
	l.mu.Unlock()
	sel := l.sel
	return LogStatus{On: true, Selection: &sel, Until: l.until, MaxRate: l.rate, Logged: l.logged.Load(),
		Sampled: l.sampled.Load(), Dropped: l.dropped.Load(), Followers: n}
}

// offer logs one query of pod if selected (called by Record).
func (l *QueryLog) offer(p Pod, ip netip.Addr, ev Event, lowName []byte) {
	if !l.sel.Matches(p) {
		return
	}
	now := time.Now()
	if now.After(l.until) {
		return
	}
	if n := l.seen.Add(1); l.sel.Sample > 1 && (n-1)%uint64(l.sel.Sample) != 0 {
		l.sampled.Add(1)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.tokens = min(float64(l.rate), l.tokens+now.Sub(l.last).Seconds()*float64(l.rate))
	l.last = now
	if l.tokens < 1 {
		l.dropped.Add(1)
		return
	}
	l.tokens--
	line := LogLine{
		Time: now.UTC(), Namespace: p.Namespace, Pod: p.Name, Client: ip.String(),
		Name: wireToText(string(lowName)), Type: typeString(ev.Qtype), AnsweredBy: ev.By.String(),
		LatencyUS: float64(ev.Latency.Nanoseconds()) / 1e3, Timeout: ev.Timeout,
	}
	if ev.By != ByNone {
		line.Rcode = rcodeString(ev.Rcode)
	}
	b, err := json.Marshal(line)
	if err != nil {
		return
	}
	b = append(b, '\n')
	if len(l.ring) < ringSize {
		l.ring = append(l.ring, b)
	} else {
		l.ring[l.next] = b
		l.next = (l.next + 1) % ringSize
	}
	l.logged.Add(1)
	for ch := range l.followers {
		select {
		case ch <- b:
		default: // a slow follower misses lines rather than slow queries down
		}
	}
}

// Lines returns the lines logged so far (the last 4096), oldest first.
func (l *QueryLog) Lines() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([][]byte, 0, len(l.ring))
	out = append(out, l.ring[l.next:]...)
	return append(out, l.ring[:l.next]...)
}

// Follow calls f with every line logged from now on (after the ones
// already logged, if backlog) until ctx ends, the log is turned off or
// replaced, or f fails.
func (l *QueryLog) Follow(ctx context.Context, backlog bool, f func([]byte) error) error {
	ch := make(chan []byte, 1024)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	var old [][]byte
	if backlog {
		old = append(old, l.ring[l.next:]...)
		old = append(old, l.ring[:l.next]...)
	}
	l.followers[ch] = struct{}{}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		if !l.closed {
			delete(l.followers, ch)
		}
		l.mu.Unlock()
	}()
	for _, b := range old {
		if err := f(b); err != nil {
			return err
		}
	}
	end := time.NewTimer(time.Until(l.until))
	defer end.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-end.C:
			return nil
		case b, ok := <-ch:
			if !ok {
				return nil
			}
			if err := f(b); err != nil {
				return err
			}
		}
	}
}

func (l *QueryLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	for ch := range l.followers {
		close(ch)
	}
	l.followers = nil
}

func typeString(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return fmt.Sprintf("TYPE%d", t)
}

func rcodeString(r int) string {
	if s, ok := dns.RcodeToString[r]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", r)
}
