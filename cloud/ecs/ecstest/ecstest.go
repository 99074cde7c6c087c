// Package ecstest starts the ECS emulator (with the instance metadata
// service) in-process on a real loopback HTTP port, for tests and
// benchmarks that talk to it with the real SDK.
package ecstest

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/dnsaccel/dnsaccel/cloud/ecs"
	"github.com/dnsaccel/dnsaccel/cloud/openapi"
)

// Credentials the emulator accepts.
const (
	AccessKeyID     = "LTAIecstest"
	AccessKeySecret = "ecstest-secret"
)

// Emulator is a running emulator: ECS at URL, metadata at URL/latest/.
type Emulator struct {
	URL    string
	Server *openapi.Server
	Store  *ecs.Store
	hs     *http.Server
}

// Start runs an emulator until the test ends.
func Start(tb testing.TB, cfg openapi.Config, ecfg ecs.Config) *Emulator {
	tb.Helper()
	e, err := StartErr(cfg, ecfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(e.Close)
	return e
}

// StartErr is Start for programs.
func StartErr(cfg openapi.Config, ecfg ecs.Config) (*Emulator, error) {
	cfg.Credentials = append(cfg.Credentials, openapi.Credential{AccessKeyID: AccessKeyID, AccessKeySecret: AccessKeySecret})
	srv := openapi.New(cfg)
	st, err := ecs.NewStore(ecfg)
	if err != nil {
		_ = srv.Close()
		return nil, err
	}
	if err := ecs.RegisterWithMetadata(srv, st); err != nil {
		_ = st.Close()
		_ = srv.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = st.Close()
		_ = srv.Close()
		return nil, err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	return &Emulator{URL: "http://" + ln.Addr().String(), Server: srv, Store: st, hs: hs}, nil
}

// Close stops the server and removes kernel interfaces.
func (e *Emulator) Close() {
	_ = e.hs.Close()
	_ = e.Server.Close()
	_ = e.Store.Close()
}
