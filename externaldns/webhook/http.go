package webhook

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// Handler serves the protocol: GET / (negotiation: the domain filter),
// GET /records, POST /records (204), POST /adjustendpoints. Every body is
// MediaType. Errors reading PrivateZone are 500 (ExternalDNS counts a 5xx
// as a soft error and retries in its next cycle; any other status stops
// it), a body that does not decode is 400.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.instrument("negotiate", s.negotiate))
	mux.HandleFunc("GET /records", s.instrument("records", s.records))
	mux.HandleFunc("POST /records", s.instrument("apply", s.apply))
	mux.HandleFunc("POST /adjustendpoints", s.instrument("adjust", s.adjust))
	return mux
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(c int) {
	if w.code == 0 {
		w.code = c
	}
	w.ResponseWriter.WriteHeader(c)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (s *Server) instrument(name string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h(sw, r)
		if sw.code == 0 {
			sw.code = http.StatusOK
		}
		s.m.Requests.WithLabelValues(name, strconv.Itoa(sw.code)).Inc()
		s.m.RequestSeconds.WithLabelValues(name).Observe(time.Since(start).Seconds())
	}
}

func (s *Server) writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.log.Error("encode answer", "err", err)
		http.Error(w, "encode answer", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", MediaType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append(b, '\n'))
}

func (s *Server) fail(w http.ResponseWriter, what string, err error) {
	code := http.StatusInternalServerError
	if errors.Is(err, ErrBadRequest) {
		code = http.StatusBadRequest
	}
	s.log.Error(what, "err", err, "status", code)
	http.Error(w, err.Error(), code)
}

func (s *Server) negotiate(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Vary", "Content-Type")
	s.writeJSON(w, s.DomainFilter())
}

func (s *Server) records(w http.ResponseWriter, r *http.Request) {
	eps, err := s.Records(r.Context())
	if err != nil {
		s.fail(w, "GET /records", err)
		return
	}
	s.writeJSON(w, eps)
}

func (s *Server) apply(w http.ResponseWriter, r *http.Request) {
	if err := checkContentType(r.Header.Get("Content-Type")); err != nil {
		s.fail(w, "POST /records", err)
		return
	}
	ch, err := DecodeChanges(r.Body)
	if err != nil {
		s.fail(w, "POST /records", err)
		return
	}
	if err := s.ApplyChanges(r.Context(), ch); err != nil {
		s.fail(w, "POST /records", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) adjust(w http.ResponseWriter, r *http.Request) {
	if err := checkContentType(r.Header.Get("Content-Type")); err != nil {
		s.fail(w, "POST /adjustendpoints", err)
		return
	}
	eps, err := DecodeEndpoints(r.Body)
	if err != nil {
		s.fail(w, "POST /adjustendpoints", err)
		return
	}
	s.writeJSON(w, s.AdjustEndpoints(eps))
}

// Healthz is liveness: the process serves.
func (s *Server) Healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// Readyz is 200 once the zones were found and the last read of them
// succeeded, else 503 with the reason.
func (s *Server) Readyz(w http.ResponseWriter, _ *http.Request) {
	ok, reason := s.Ready()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ready: " + reason + "\n"))
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}
