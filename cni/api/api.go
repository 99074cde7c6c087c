// Package api is the wire protocol between bin/eni-cni and bin/eni-agent:
// JSON over HTTP on the agent's unix socket. It is kept small (no client-go,
// no bbolt) so that the CNI binary, started once per pod operation, starts
// fast.
//
//	POST /v1/alloc    AllocRequest   -> Allocation
//	POST /v1/release  Key            -> ReleaseResult
//	GET  /v1/alloc?containerID=&ifName=  -> Allocation (404 if none)
//	GET  /v1/alloc?ip=               -> Allocation holding the address (404 if none)
//	POST /v1/gc       GCRequest      -> GCResult
//	GET  /v1/status?mode=            -> Status
//
// Errors are HTTP 4xx/5xx with an Error body carrying the CNI error code the
// plugin should return.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// DefaultSocket is where eni-agent listens and eni-cni connects by default.
const DefaultSocket = "/run/dnsaccel/eni-agent.sock"

// Mode is how a pod gets its address.
type Mode string

// Modes.
const (
	ModeVeth      Mode = "veth"      // veth pair + policy routing, address from a shared ENI
	ModeIPVLAN    Mode = "ipvlan"    // IPVLAN L2 slave of a shared ENI
	ModeExclusive Mode = "exclusive" // the whole ENI moved into the pod
)

// Valid reports whether m is a known mode.
func (m Mode) Valid() bool { return m == ModeVeth || m == ModeIPVLAN || m == ModeExclusive }

// Shared reports whether the mode takes one secondary address of a shared ENI.
func (m Mode) Shared() bool { return m == ModeVeth || m == ModeIPVLAN }

// Key names one attachment, as CNI does: (container ID, interface name).
type Key struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

func (k Key) String() string { return k.ContainerID + "/" + k.IfName }

// AllocRequest asks for an address (or an ENI) for a pod.
type AllocRequest struct {
	Key
	Netns        string `json:"netns,omitempty"`
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	Mode         Mode   `json:"mode"`
}

// Allocation is what the agent gave a pod.
type Allocation struct {
	Key
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	Mode         Mode   `json:"mode"`
	// IP is the pod's address; for exclusive mode the ENI's primary address.
	IP string `json:"ip"`
	// VSwitchCIDR is the CIDR of the ENI's vSwitch ("10.0.1.0/24").
	VSwitchCIDR string `json:"vswitchCIDR"`
	// Gateway is the vSwitch gateway.
	Gateway string `json:"gateway"`
	ENIID   string `json:"eniID"`
	// MAC of the ENI: how the plugin finds its kernel interface.
	MAC string `json:"mac"`
	// NodeIP is the node's primary address (host routes in the pod).
	NodeIP  string    `json:"nodeIP,omitempty"`
	Created time.Time `json:"created"`
}

// ReleaseResult answers a release.
type ReleaseResult struct {
	// Released is false when nothing was allocated under the key.
	Released   bool        `json:"released"`
	Allocation *Allocation `json:"allocation,omitempty"`
}

// GCRequest carries CNI GC's valid attachments: everything else is freed.
type GCRequest struct {
	Valid []Key `json:"valid"`
}

// GCResult lists what GC freed.
type GCResult struct {
	Released []Key `json:"released"`
}

// Status is the pool's readiness for an ADD of a mode.
type Status struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
	Idle   int    `json:"idle"`
	InUse  int    `json:"inUse"`
	ENIs   int    `json:"enis"`
}

// Error is the body of a failed request.
type Error struct {
	// Code is the CNI error code (11 try again later, 50 not available, 7
	// invalid network config, 999 internal).
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func (e *Error) Error() string {
	if e.Details != "" {
		return e.Msg + ": " + e.Details
	}
	return e.Msg
}

// CNI error codes used between agent and plugin.
const (
	CodeTryAgainLater uint = 11
	CodeUnavailable   uint = 50
	CodeInvalidConfig uint = 7
	CodeInternal      uint = 999
)

// ErrNotFound is returned by Get for an unknown key.
var ErrNotFound = errors.New("no allocation")

// Client talks to the agent over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the agent socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns: 4, IdleConnTimeout: 30 * time.Second,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Unreachable reports whether err means the agent could not be reached.
func Unreachable(err error) bool {
	var ue *url.Error
	if errors.As(err, &ue) {
		var oe *net.OpError
		return errors.As(err, &oe)
	}
	return false
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://eni-agent"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("eni-agent at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("eni-agent at %s: reading answer: %w", c.socket, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return ErrNotFound
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{}
		if json.Unmarshal(b, e) != nil || e.Msg == "" {
			return &Error{Code: CodeInternal, Msg: fmt.Sprintf("eni-agent: HTTP %d", resp.StatusCode), Details: string(b)}
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("eni-agent: decoding answer: %w", err)
	}
	return nil
}

// Alloc asks for an address; it returns the existing allocation for a key
// that already has one.
func (c *Client) Alloc(ctx context.Context, r AllocRequest) (*Allocation, error) {
	var a Allocation
	if err := c.do(ctx, http.MethodPost, "/v1/alloc", r, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// Get returns the allocation of a key, ErrNotFound if there is none.
func (c *Client) Get(ctx context.Context, k Key) (*Allocation, error) {
	var a Allocation
	q := url.Values{"containerID": {k.ContainerID}, "ifName": {k.IfName}}
	if err := c.do(ctx, http.MethodGet, "/v1/alloc?"+q.Encode(), nil, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// Owner returns the allocation that holds ip, ErrNotFound if none does.
func (c *Client) Owner(ctx context.Context, ip string) (*Allocation, error) {
	var a Allocation
	if err := c.do(ctx, http.MethodGet, "/v1/alloc?"+url.Values{"ip": {ip}}.Encode(), nil, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// Release frees a key's allocation; releasing an unknown key succeeds.
func (c *Client) Release(ctx context.Context, k Key) (*ReleaseResult, error) {
	var r ReleaseResult
	if err := c.do(ctx, http.MethodPost, "/v1/release", k, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// GC frees every allocation not in valid.
func (c *Client) GC(ctx context.Context, valid []Key) (*GCResult, error) {
	var r GCResult
	if err := c.do(ctx, http.MethodPost, "/v1/gc", GCRequest{Valid: valid}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Status asks whether an ADD of mode can be served now.
func (c *Client) Status(ctx context.Context, mode Mode) (*Status, error) {
	var s Status
	if err := c.do(ctx, http.MethodGet, "/v1/status?mode="+url.QueryEscape(string(mode)), nil, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Allocations lists every allocation (debugging, tests).
func (c *Client) Allocations(ctx context.Context) ([]Allocation, error) {
	var out []Allocation
	if err := c.do(ctx, http.MethodGet, "/v1/allocations", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}
