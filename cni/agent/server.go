package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/dnsaccel/dnsaccel/cni/api"
)

// Handler serves the cni/api protocol for a pool.
func Handler(p *Pool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/alloc", func(w http.ResponseWriter, r *http.Request) {
		var req api.AllocRequest
		if !decode(w, r, &req) {
			return
		}
		a, err := p.Alloc(r.Context(), req)
		reply(w, a, err)
	})
	mux.HandleFunc("GET /v1/alloc", func(w http.ResponseWriter, r *http.Request) {
		var a *api.Allocation
		if ip := r.URL.Query().Get("ip"); ip != "" {
			a = p.Owner(ip)
		} else {
			a = p.Get(api.Key{ContainerID: r.URL.Query().Get("containerID"), IfName: r.URL.Query().Get("ifName")})
		}
		if a == nil {
			http.Error(w, `{"code":3,"msg":"no allocation"}`, http.StatusNotFound)
			return
		}
		reply(w, a, nil)
	})
	mux.HandleFunc("POST /v1/release", func(w http.ResponseWriter, r *http.Request) {
		var k api.Key
		if !decode(w, r, &k) {
			return
		}
		a, err := p.Release(k, "del")
		reply(w, &api.ReleaseResult{Released: a != nil, Allocation: a}, err)
	})
	mux.HandleFunc("POST /v1/gc", func(w http.ResponseWriter, r *http.Request) {
		var req api.GCRequest
		if !decode(w, r, &req) {
			return
		}
		released, err := p.GC(req.Valid)
		reply(w, &api.GCResult{Released: released}, err)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st := p.Status(api.Mode(r.URL.Query().Get("mode")))
		reply(w, &st, nil)
	})
	mux.HandleFunc("GET /v1/allocations", func(w http.ResponseWriter, _ *http.Request) {
		reply(w, p.Allocations(), nil)
	})
	return mux
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		reply(w, nil, &api.Error{Code: api.CodeInvalidConfig, Msg: "bad request", Details: err.Error()})
		return false
	}
	return true
}

func reply(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		var ae *api.Error
		if !errors.As(err, &ae) {
			ae = &api.Error{Code: api.CodeInternal, Msg: err.Error()}
		}
		status := http.StatusInternalServerError
		switch ae.Code {
		case api.CodeTryAgainLater, api.CodeUnavailable:
			status = http.StatusServiceUnavailable
		case api.CodeInvalidConfig:
			status = http.StatusBadRequest
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(ae)
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}

// ListenUnix listens on a unix socket, replacing a stale socket file, with
// mode 0600.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		// A live agent answers; a stale socket refuses.
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another eni-agent is serving %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve runs an HTTP server on ln until ctx ends.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		return nil
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}
}
