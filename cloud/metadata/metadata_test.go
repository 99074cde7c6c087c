package metadata

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

type src struct{}

func (src) MetadataInstance() Instance {
	return Instance{ID: "i-1", Type: "ecs.g7.large", Region: "cn-hangzhou", Zone: "cn-hangzhou-i", VPCID: "vpc-1", VPCCIDR: "10.0.0.0/16"}
}
func (src) MetadataENIs() []ENI {
	return []ENI{
		{ID: "eni-p", MAC: "00:16:3e:00:00:01", VSwitchID: "vsw-1", CIDR: netip.MustParsePrefix("10.0.1.0/24"), Gateway: netip.MustParseAddr("10.0.1.253"), IPs: []netip.Addr{netip.MustParseAddr("10.0.1.1")}, SecurityGroups: []string{"sg-1", "sg-2"}},
		{ID: "eni-s", MAC: "00:16:3e:00:00:02", VSwitchID: "vsw-1", CIDR: netip.MustParsePrefix("10.0.1.0/24"), Gateway: netip.MustParseAddr("10.0.1.253"), IPs: []netip.Addr{netip.MustParseAddr("10.0.1.5"), netip.MustParseAddr("10.0.1.6")}},
	}
}

func TestPaths(t *testing.T) {
	s := httptest.NewServer(Handler(src{}))
	defer s.Close()
	for path, want := range map[string]string{
		"instance-id": "i-1", "instance/instance-type": "ecs.g7.large", "region-id": "cn-hangzhou", "zone-id": "cn-hangzhou-i",
		"mac": "00:16:3e:00:00:01", "vswitch-id": "vsw-1", "private-ipv4": "10.0.1.1", "vpc-cidr-block": "10.0.0.0/16",
		"network/interfaces/macs/":                                       "00:16:3e:00:00:01/\n00:16:3e:00:00:02/",
		"network/interfaces/macs/00:16:3e:00:00:02/private-ipv4s":        `["10.0.1.5","10.0.1.6"]`,
		"network/interfaces/macs/00:16:3e:00:00:02/gateway":              "10.0.1.253",
		"network/interfaces/macs/00:16:3e:00:00:02/netmask":              "255.255.255.0",
		"network/interfaces/macs/00:16:3e:00:00:01/security-group-ids":   "sg-1,sg-2",
		"network/interfaces/macs/00:16:3e:00:00:02/network-interface-id": "eni-s",
	} {
		resp, err := http.Get(s.URL + "/latest/meta-data/" + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != want {
			t.Errorf("%s: %d %q, want %q", path, resp.StatusCode, b, want)
		}
	}
	resp, err := http.Get(s.URL + "/latest/meta-data/network/interfaces/macs/00:16:3e:00:00:09/gateway")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("unknown MAC: %d", resp.StatusCode)
	}
}
