// Package metadata is the emulator's instance metadata service: the paths
// of the real one at http://100.100.100.200/latest/meta-data/ for one
// instance — instance-id, instance/instance-type, region-id, zone-id,
// hostname, mac, vpc-id, vswitch-id, vpc-cidr-block, vswitch-cidr-block,
// private-ipv4, and network/interfaces/macs/[mac]/ (network-interface-id,
// vswitch-id, vswitch-cidr-block, vpc-id, vpc-cidr-block, gateway, netmask,
// primary-ip-address, private-ipv4s, security-group-ids) for every attached
// ENI. PUT /latest/api/token hands out a session token (IMDSv2 style);
// requests without one are served too, as in the service's normal mode.
package metadata

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Instance is the instance the service describes.
type Instance struct {
	ID, Type, Region, Zone, Hostname string
	VPCID                            string
	VPCCIDR                          string
}

// ENI is an attached ENI (InUse) as metadata shows it.
type ENI struct {
	ID, MAC, VSwitchID string
	CIDR               netip.Prefix
	Gateway            netip.Addr
	IPs                []netip.Addr // primary first
	SecurityGroups     []string
}

// Source supplies the data (cloud/ecs's Store).
type Source interface {
	MetadataInstance() Instance
	// MetadataENIs lists the instance's attached ENIs, the primary first.
	MetadataENIs() []ENI
}

// Handler serves /latest/meta-data/ and /latest/api/token from src.
func Handler(src Source) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /latest/api/token", func(w http.ResponseWriter, _ *http.Request) {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		fmt.Fprint(w, hex.EncodeToString(b))
	})
	mux.HandleFunc("GET /latest/meta-data/{path...}", func(w http.ResponseWriter, r *http.Request) {
		v, ok := lookup(src, r.PathValue("path"))
		if !ok {
			http.Error(w, "404 - Not Found", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, v)
	})
	return mux
}

func netmask(p netip.Prefix) string { return net.IP(net.CIDRMask(p.Bits(), 32)).String() }

func lookup(src Source, path string) (string, bool) {
	path = strings.TrimPrefix(path, "/")
	inst := src.MetadataInstance()
	enis := src.MetadataENIs()
	var prim ENI
	if len(enis) > 0 {
		prim = enis[0]
	}
	top := map[string]string{
		"instance-id": inst.ID, "instance/instance-type": inst.Type, "region-id": inst.Region, "zone-id": inst.Zone,
		"hostname": inst.Hostname, "vpc-id": inst.VPCID, "vpc-cidr-block": inst.VPCCIDR, "network-type": "vpc",
		"mac": prim.MAC, "vswitch-id": prim.VSwitchID, "vswitch-cidr-block": prim.CIDR.String(),
	}
	if len(prim.IPs) > 0 {
		top["private-ipv4"] = prim.IPs[0].String()
	}
	switch {
	case path == "":
		return "instance-id\ninstance/\nregion-id\nzone-id\nhostname\nmac\nnetwork/\nnetwork-type\nprivate-ipv4\nvpc-id\nvpc-cidr-block\nvswitch-id\nvswitch-cidr-block", true
	case path == "instance/":
		return "instance-type", true
	case path == "network/":
		return "interfaces/", true
	case path == "network/interfaces/":
		return "macs/", true
	case path == "network/interfaces/macs/" || path == "network/interfaces/macs":
		var b strings.Builder
		for i, e := range enis {
			if i > 0 {
				b.WriteByte('\n')
			}
			b.WriteString(e.MAC + "/")
		}
		return b.String(), true
	case strings.HasPrefix(path, "network/interfaces/macs/"):
		rest := strings.TrimPrefix(path, "network/interfaces/macs/")
		mac, item, _ := strings.Cut(rest, "/")
		for _, e := range enis {
			if !strings.EqualFold(e.MAC, mac) {
				continue
			}
			ips := make([]string, len(e.IPs))
			for i, a := range e.IPs {
				ips[i] = a.String()
			}
			j, _ := json.Marshal(ips)
			items := map[string]string{
				"network-interface-id": e.ID, "vswitch-id": e.VSwitchID, "vswitch-cidr-block": e.CIDR.String(),
				"vpc-id": inst.VPCID, "vpc-cidr-block": inst.VPCCIDR, "gateway": e.Gateway.String(), "netmask": netmask(e.CIDR),
				"private-ipv4s": string(j), "security-group-ids": strings.Join(e.SecurityGroups, ","), "mac": e.MAC,
			}
			if len(e.IPs) > 0 {
				items["primary-ip-address"] = e.IPs[0].String()
			}
			if item == "" {
				return "gateway\nmac\nnetmask\nnetwork-interface-id\nprimary-ip-address\nprivate-ipv4s\nsecurity-group-ids\nvpc-cidr-block\nvpc-id\nvswitch-cidr-block\nvswitch-id", true
			}
			v, ok := items[item]
			return v, ok
		}
		return "", false
	}
	v, ok := top[path]
	return v, ok && v != ""
}
