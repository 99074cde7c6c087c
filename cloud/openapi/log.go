package openapi

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Entry is one line of the request log. It never holds secrets: no
// signature, no security token, no secret; only the key id.
type Entry struct {
	Seq         int               `json:"seq"`
	Time        time.Time         `json:"time"`
	RequestID   string            `json:"request_id"`
	Method      string            `json:"method"`
	Product     string            `json:"product,omitempty"`
	Version     string            `json:"version,omitempty"`
	Action      string            `json:"action,omitempty"`
	Write       bool              `json:"write"`
	AccessKeyID string            `json:"access_key_id,omitempty"`
	Params      map[string]string `json:"params,omitempty"`
	Status      int               `json:"status"` // 0 = connection dropped
	Code        string            `json:"code,omitempty"`
	Fault       string            `json:"fault,omitempty"` // throttled, 503-before, drop-after, ...
	DurationMS  float64           `json:"duration_ms"`
	Remote      string            `json:"remote,omitempty"`
}

// Stats counts requests.
type Stats struct {
	Total     int            `json:"total"`
	Reads     int            `json:"reads"`  // read actions that reached a product
	Writes    int            `json:"writes"` // write actions that reached a product
	Errors    int            `json:"errors"` // non-200 answers (and drops)
	Throttled int            `json:"throttled"`
	Faults    int            `json:"faults"`
	ByAction  map[string]int `json:"by_action"`
}

type requestLog struct {
	mu      sync.Mutex
	cap     int
	base    int // seq of entries[0]
	entries []Entry
	out     io.Writer
	st      Stats
}

func newRequestLog(capacity int, out io.Writer) *requestLog {
	return &requestLog{cap: capacity, out: out, st: Stats{ByAction: map[string]int{}}}
}

func (l *requestLog) add(e Entry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e.Seq = l.base + len(l.entries)
	if len(l.entries) >= l.cap {
		drop := len(l.entries) / 2
		l.entries = append(l.entries[:0], l.entries[drop:]...)
		l.base += drop
	}
	l.entries = append(l.entries, e)
	l.st.Total++
	if e.Action != "" && e.Product != "" && e.Fault != "throttled" && e.Fault != "503-before" && e.Fault != "drop-before" && (e.Status != 0 || e.Fault == "drop-after") {
		if e.Write {
			l.st.Writes++
		} else {
			l.st.Reads++
		}
		l.st.ByAction[e.Action]++
	}
	if e.Status != http.StatusOK {
		l.st.Errors++
	}
	if e.Fault == "throttled" {
		l.st.Throttled++
	} else if e.Fault != "" {
		l.st.Faults++
	}
	if l.out != nil {
		b, _ := json.Marshal(e)
		_, _ = l.out.Write(append(b, '\n'))
	}
}

func (l *requestLog) since(seq int) ([]Entry, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := seq - l.base
	if i < 0 {
		i = 0
	}
	if i > len(l.entries) {
		i = len(l.entries)
	}
	return append([]Entry(nil), l.entries[i:]...), l.base + len(l.entries)
}

func (l *requestLog) stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.st
	st.ByAction = make(map[string]int, len(l.st.ByAction))
	for k, v := range l.st.ByAction {
		st.ByAction[k] = v
	}
	return st
}

// serveRequests answers GET /_emulator/requests?since=N with JSON lines and
// the next index in the X-Next-Seq header.
func (s *Server) serveRequests(w http.ResponseWriter, r *http.Request) {
	since, _ := strconv.Atoi(r.URL.Query().Get("since"))
	ents, next := s.reqLog.since(since)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Next-Seq", strconv.Itoa(next))
	enc := json.NewEncoder(w)
	for _, e := range ents {
		_ = enc.Encode(e)
	}
}

func (s *Server) serveStats(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.reqLog.stats())
}
