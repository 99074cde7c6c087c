package plugin

import (
	"errors"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/dnsaccel/dnsaccel/cni/api"
	"github.com/dnsaccel/dnsaccel/cni/netsetup"
)

func TestParseConf(t *testing.T) {
	for _, tc := range []struct {
		name, in, err string
		mode          api.Mode
		socket, dns   string
	}{
		{name: "issue example", in: `{"cniVersion":"1.1.0","name":"dnsaccel","type":"eni-cni","mode":"exclusive","agentSocket":"/run/x.sock","nodeLocalDNS":"169.254.20.10"}`,
			mode: api.ModeExclusive, socket: "/run/x.sock", dns: "169.254.20.10"},
		{name: "defaults", in: `{"cniVersion":"1.1.0","name":"dnsaccel","type":"eni-cni"}`, mode: api.ModeVeth, socket: api.DefaultSocket},
		{name: "ipvlan", in: `{"cniVersion":"1.1.0","name":"n","type":"eni-cni","mode":"ipvlan"}`, mode: api.ModeIPVLAN, socket: api.DefaultSocket},
		{name: "bad mode", in: `{"cniVersion":"1.1.0","name":"n","type":"eni-cni","mode":"bridge"}`, err: `"mode"`},
		{name: "bad dns", in: `{"cniVersion":"1.1.0","name":"n","type":"eni-cni","nodeLocalDNS":"nope"}`, err: `"nodeLocalDNS"`},
		{name: "v6 dns", in: `{"cniVersion":"1.1.0","name":"n","type":"eni-cni","nodeLocalDNS":"fd00::10"}`, err: `"nodeLocalDNS"`},
		{name: "not json", in: `{`, err: "network configuration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConf([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Mode != tc.mode || c.AgentSocket != tc.socket || c.NodeLocalDNS != tc.dns {
				t.Fatalf("got mode %q socket %q dns %q", c.Mode, c.AgentSocket, c.NodeLocalDNS)
			}
		})
	}
}

func TestAgentErrCodes(t *testing.T) {
	for _, tc := range []struct {
		name         string
		in           error
		code         uint
		msg, details string
	}{
		{"agent error keeps code, msg and details", &api.Error{Code: api.CodeTryAgainLater, Msg: "no address", Details: "vSwitch vsw-1: InvalidVSwitchId.IpNotEnough"},
			types.ErrTryAgainLater, "op: no address", "vSwitch vsw-1: InvalidVSwitchId.IpNotEnough"},
		{"agent down: try again later", &url.Error{Op: "Post", URL: "http://eni-agent/v1/alloc", Err: &net.OpError{Op: "dial", Net: "unix", Err: errors.New("connection refused")}},
			types.ErrTryAgainLater, "op: eni-agent unreachable at /s", "Post \"http://eni-agent/v1/alloc\": dial unix: connection refused"},
		{"anything else: internal", errors.New("boom"), types.ErrInternal, "op", "boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e *types.Error
			if !errors.As(agentErr("op", "/s", tc.in), &e) {
				t.Fatalf("not a CNI error: %v", e)
			}
			if e.Code != tc.code || e.Msg != tc.msg || e.Details != tc.details {
				t.Fatalf("got code %d msg %q details %q; want %d %q %q", e.Code, e.Msg, e.Details, tc.code, tc.msg, tc.details)
			}
		})
	}
}

// ADD's result: this plugin's interfaces and address, added to a
// prevResult when eni-cni is chained after another plugin (the spec:
// a plugin must pass prevResult through or modify it).
func TestResultKeepsPrevResult(t *testing.T) {
	r := &netsetup.Result{Host: &netsetup.Iface{Name: "enip0123456789a", MAC: "02:00:00:00:00:01"},
		Pod:  netsetup.Iface{Name: "eth0", MAC: "02:00:00:00:00:02", Sandbox: "/run/netns/p"},
		Addr: netip.MustParsePrefix("10.0.1.7/32"), Gateway: netip.MustParseAddr("169.254.1.1"),
		Routes: []netsetup.Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("169.254.1.1")}}}
	for _, tc := range []struct {
		name, conf   string
		ifaces, ips  int
		ourIdx       int
		keepsPrevDNS bool
	}{
		{"first plugin", `{"cniVersion":"1.1.0","name":"n","type":"eni-cni"}`, 2, 1, 1, false},
		{"chained", `{"cniVersion":"1.1.0","name":"n","type":"eni-cni","prevResult":{"cniVersion":"1.1.0",
			"interfaces":[{"name":"lo","sandbox":"/run/netns/p"}],"ips":[{"interface":0,"address":"127.0.0.1/8"}],
			"dns":{"nameservers":["10.96.0.10"]}}}`, 3, 2, 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, err := ParseConf([]byte(tc.conf))
			if err != nil {
				t.Fatal(err)
			}
			res, err := toResult(conf, r)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Interfaces) != tc.ifaces || len(res.IPs) != tc.ips {
				t.Fatalf("%d interfaces, %d IPs; want %d, %d: %+v", len(res.Interfaces), len(res.IPs), tc.ifaces, tc.ips, res)
			}
			ours := res.IPs[len(res.IPs)-1]
			if ours.Address.String() != "10.0.1.7/32" || *ours.Interface != tc.ourIdx || res.Interfaces[tc.ourIdx].Name != "eth0" {
				t.Fatalf("our address %s on interface %d (%s), want 10.0.1.7/32 on %d (eth0)", ours.Address.String(), *ours.Interface, res.Interfaces[*ours.Interface].Name, tc.ourIdx)
			}
			if tc.keepsPrevDNS != (len(res.DNS.Nameservers) == 1) {
				t.Fatalf("DNS %+v", res.DNS)
			}
		})
	}
}
