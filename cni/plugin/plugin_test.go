package plugin

import (
	"strings"
	"testing"

	"github.com/dnsaccel/dnsaccel/cni/api"
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
	err := agentErr("op", "/s", &api.Error{Code: api.CodeTryAgainLater, Msg: "no address"})
	if !strings.Contains(err.Error(), "no address") {
		t.Fatal(err)
	}
}
