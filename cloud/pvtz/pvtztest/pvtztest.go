// Package pvtztest starts the PrivateZone emulator in-process on a real
// loopback HTTP port, for tests and benchmarks that talk to it with the
// real SDK.
package pvtztest

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cloud/pvtz"
)

// Credentials the emulator accepts.
const (
	AccessKeyID     = "LTAIpvtztest"
	AccessKeySecret = "pvtztest-secret"
)

// Emulator is a running emulator.
type Emulator struct {
	URL    string // http://127.0.0.1:PORT
	Server *openapi.Server
	Store  *pvtz.Store
	hs     *http.Server
	ln     net.Listener
}

// Start runs an emulator until Close (or the test's end when tb is set).
func Start(tb testing.TB, cfg openapi.Config) *Emulator {
	if tb != nil {
		tb.Helper()
	}
	e, err := StartErr(cfg)
	if err != nil {
		if tb == nil {
			panic(err)
		}
		tb.Fatal(err)
	}
	if tb != nil {
		tb.Cleanup(e.Close)
	}
	return e
}

// StartErr is Start for programs (no testing.TB).
func StartErr(cfg openapi.Config) (*Emulator, error) {
	cfg.Credentials = append(cfg.Credentials, openapi.Credential{AccessKeyID: AccessKeyID, AccessKeySecret: AccessKeySecret})
	srv := openapi.New(cfg)
	st := pvtz.NewStore()
	if err := pvtz.Register(srv, st); err != nil {
		return nil, err
	}
	if err := srv.Load(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	return &Emulator{URL: "http://" + ln.Addr().String(), Server: srv, Store: st, hs: hs, ln: ln}, nil
}

// Close stops the server.
func (e *Emulator) Close() {
	_ = e.hs.Close()
	_ = e.Server.Close()
}

// Writes counts write calls that reached the product so far.
func (e *Emulator) Writes() int { return e.Server.Stats().Writes }
