package ecs_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	sdkerrors "github.com/aliyun/alibaba-cloud-sdk-go/sdk/errors"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/requests"
	sdkecs "github.com/aliyun/alibaba-cloud-sdk-go/services/ecs"
	"github.com/vishvananda/netlink"

	"github.com/dnsaccel/dnsaccel/cloud/ecs"
	"github.com/dnsaccel/dnsaccel/cloud/ecs/ecstest"
	"github.com/dnsaccel/dnsaccel/cloud/openapi"
)

func client(t *testing.T, e *ecstest.Emulator, secret string) *sdkecs.Client {
	t.Helper()
	c, err := sdkecs.NewClientWithAccessKey("cn-hangzhou", ecstest.AccessKeyID, secret)
	if err != nil {
		t.Fatal(err)
	}
	c.Domain = strings.TrimPrefix(e.URL, "http://")
	return c
}

func code(err error) string {
	var se *sdkerrors.ServerError
	if errors.As(err, &se) {
		return se.ErrorCode()
	}
	return ""
}

func testConfig() ecs.Config {
	c := ecs.DefaultConfig()
	c.InstanceType = "ecs.g7.large" // 3 ENIs, 6 addresses each
	c.VSwitches = []ecs.VSwitchConfig{{ID: "vsw-a", CIDR: "10.212.1.0/24"}, {ID: "vsw-tiny", CIDR: "10.212.2.0/29"}}
	c.AttachDelay, c.DetachDelay = 50*time.Millisecond, 20*time.Millisecond
	return c
}

func create(t *testing.T, c *sdkecs.Client, vsw string, secondary int, token string) (*sdkecs.CreateNetworkInterfaceResponse, error) {
	t.Helper()
	req := sdkecs.CreateCreateNetworkInterfaceRequest()
	req.Scheme = "HTTP"
	req.VSwitchId = vsw
	req.SecurityGroupId = "sg-test"
	req.NetworkInterfaceName = "dnsaccel-test"
	if secondary > 0 {
		req.SecondaryPrivateIpAddressCount = requests.NewInteger(secondary)
	}
	req.ClientToken = token
	return c.CreateNetworkInterface(req)
}

func describe(t *testing.T, c *sdkecs.Client, id string) sdkecs.NetworkInterfaceSet {
	t.Helper()
	req := sdkecs.CreateDescribeNetworkInterfacesRequest()
	req.Scheme = "HTTP"
	req.NetworkInterfaceId = &[]string{id}
	resp, err := c.DescribeNetworkInterfaces(req)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.NetworkInterfaceSets.NetworkInterfaceSet) != 1 {
		t.Fatalf("describe %s: %d ENIs", id, len(resp.NetworkInterfaceSets.NetworkInterfaceSet))
	}
	return resp.NetworkInterfaceSets.NetworkInterfaceSet[0]
}

func attach(c *sdkecs.Client, id, inst string) error {
	req := sdkecs.CreateAttachNetworkInterfaceRequest()
	req.Scheme = "HTTP"
	req.NetworkInterfaceId, req.InstanceId = id, inst
	_, err := c.AttachNetworkInterface(req)
	return err
}

func waitStatus(t *testing.T, c *sdkecs.Client, id, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s := describe(t, c, id).Status; s == want {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("%s: status %s, want %s", id, s, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSignature(t *testing.T) {
	e := ecstest.Start(t, openapi.Config{}, testConfig())
	_, err := create(t, client(t, e, "wrong-secret"), "vsw-a", 0, "")
	if code(err) != "SignatureDoesNotMatch" {
		t.Fatalf("wrong secret: %v, want SignatureDoesNotMatch", err)
	}
	if _, err := create(t, client(t, e, ecstest.AccessKeySecret), "vsw-a", 0, ""); err != nil {
		t.Fatalf("right secret: %v", err)
	}
}

func TestLifecycleAndIdempotency(t *testing.T) {
	e := ecstest.Start(t, openapi.Config{}, testConfig())
	c := client(t, e, ecstest.AccessKeySecret)
	inst := e.Store.Config().InstanceID
	free0 := e.Store.Free("vsw-a")

	r1, err := create(t, c, "vsw-a", 2, "tok-1")
	if err != nil {
		t.Fatal(err)
	}
	r2, err := create(t, c, "vsw-a", 2, "tok-1")
	if err != nil {
		t.Fatal(err)
	}
	if r1.NetworkInterfaceId != r2.NetworkInterfaceId || len(r1.PrivateIpSets.PrivateIpSet) != 3 {
		t.Fatalf("same ClientToken: %s and %s (%d addresses)", r1.NetworkInterfaceId, r2.NetworkInterfaceId, len(r1.PrivateIpSets.PrivateIpSet))
	}
	if _, err := create(t, c, "vsw-a", 3, "tok-1"); code(err) != "IdempotentParameterMismatch" {
		t.Fatalf("same token, other parameters: %v", err)
	}
	if got := e.Store.Free("vsw-a"); got != free0-3 {
		t.Fatalf("free after one create of 3: %d, want %d", got, free0-3)
	}
	id := r1.NetworkInterfaceId
	if s := describe(t, c, id).Status; s != "Available" {
		t.Fatalf("new ENI status %s", s)
	}
	if err := attach(c, id, inst); err != nil {
		t.Fatal(err)
	}
	if s := describe(t, c, id).Status; s != "Attaching" {
		t.Fatalf("just attached: %s, want Attaching", s)
	}
	waitStatus(t, c, id, "InUse")

	as := sdkecs.CreateAssignPrivateIpAddressesRequest()
	as.Scheme = "HTTP"
	as.NetworkInterfaceId = id
	as.SecondaryPrivateIpAddressCount = requests.NewInteger(2)
	as.ClientToken = "tok-2"
	a1, err := c.AssignPrivateIpAddresses(as)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := c.AssignPrivateIpAddresses(as)
	if err != nil {
		t.Fatal(err)
	}
	got1, got2 := a1.AssignedPrivateIpAddressesSet.PrivateIpSet.PrivateIpAddress, a2.AssignedPrivateIpAddressesSet.PrivateIpSet.PrivateIpAddress
	if len(got1) != 2 || strings.Join(got1, ",") != strings.Join(got2, ",") {
		t.Fatalf("assign with one token twice: %v then %v", got1, got2)
	}
	if n := len(describe(t, c, id).PrivateIpSets.PrivateIpSet); n != 5 {
		t.Fatalf("addresses after assign: %d, want 5", n)
	}
	// Over the per-ENI quota (6 for ecs.g7.large).
	over := sdkecs.CreateAssignPrivateIpAddressesRequest()
	over.Scheme = "HTTP"
	over.NetworkInterfaceId = id
	over.SecondaryPrivateIpAddressCount = requests.NewInteger(2)
	if _, err := c.AssignPrivateIpAddresses(over); code(err) != "QuotaExceeded.PrivateIpAddress" {
		t.Fatalf("assign over quota: %v", err)
	}
	un := sdkecs.CreateUnassignPrivateIpAddressesRequest()
	un.Scheme = "HTTP"
	un.NetworkInterfaceId = id
	un.PrivateIpAddress = &got1
	if _, err := c.UnassignPrivateIpAddresses(un); err != nil {
		t.Fatal(err)
	}
	del := sdkecs.CreateDeleteNetworkInterfaceRequest()
	del.Scheme = "HTTP"
	del.NetworkInterfaceId = id
	if _, err := c.DeleteNetworkInterface(del); code(err) != "InvalidOperation.InvalidEniState" {
		t.Fatalf("delete while InUse: %v", err)
	}
	det := sdkecs.CreateDetachNetworkInterfaceRequest()
	det.Scheme = "HTTP"
	det.NetworkInterfaceId, det.InstanceId = id, inst
	if _, err := c.DetachNetworkInterface(det); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, id, "Available")
	if _, err := c.DeleteNetworkInterface(del); err != nil {
		t.Fatal(err)
	}
	if got := e.Store.Free("vsw-a"); got != free0 {
		t.Fatalf("free after delete: %d, want %d", got, free0)
	}
}

func TestErrors(t *testing.T) {
	e := ecstest.Start(t, openapi.Config{}, testConfig())
	c := client(t, e, ecstest.AccessKeySecret)
	inst := e.Store.Config().InstanceID
	// /29: 8 - 4 reserved = 4 usable.
	if _, err := create(t, c, "vsw-tiny", 4, ""); code(err) != "InvalidVSwitchId.IpNotEnough" {
		t.Fatalf("5 addresses from a /29: %v", err)
	}
	if _, err := create(t, c, "vsw-nope", 0, ""); code(err) != "InvalidVSwitchId.NotFound" {
		t.Fatalf("unknown vSwitch: %v", err)
	}
	// ecs.g7.large: 3 ENIs including the primary.
	var last error
	for i := 0; i < 3; i++ {
		r, err := create(t, c, "vsw-a", 0, "")
		if err != nil {
			t.Fatal(err)
		}
		last = attach(c, r.NetworkInterfaceId, inst)
	}
	if code(last) != "EniPerInstanceLimitExceeded" {
		t.Fatalf("third secondary ENI: %v", last)
	}
	vs := sdkecs.CreateDescribeVSwitchesRequest()
	vs.Scheme = "HTTP"
	vs.VSwitchId = "vsw-tiny"
	resp, err := c.DescribeVSwitches(vs)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.VSwitches.VSwitch); n != 1 || resp.VSwitches.VSwitch[0].AvailableIpAddressCount != 4 {
		t.Fatalf("DescribeVSwitches vsw-tiny: %+v", resp.VSwitches)
	}
	if e.Store.Hold("vsw-tiny", 10) != 4 || e.Store.Free("vsw-tiny") != 0 {
		t.Fatal("Hold did not take the 4 free addresses")
	}
	e.Store.Unhold("vsw-tiny")
	it := sdkecs.CreateDescribeInstanceTypesRequest()
	it.Scheme = "HTTP"
	it.InstanceTypes = &[]string{"ecs.g7.large"}
	ir, err := c.DescribeInstanceTypes(it)
	if err != nil {
		t.Fatal(err)
	}
	if ts := ir.InstanceTypes.InstanceType; len(ts) != 1 || ts[0].EniQuantity != 3 || ts[0].EniPrivateIpAddressQuantity != 6 {
		t.Fatalf("DescribeInstanceTypes: %+v", ts)
	}
}

func TestThrottling(t *testing.T) {
	e := ecstest.Start(t, openapi.Config{ThrottleRate: 1}, testConfig())
	if _, err := create(t, client(t, e, ecstest.AccessKeySecret), "vsw-a", 0, "t"); code(err) != "Throttling.User" {
		t.Fatalf("ThrottleRate 1: %v", err)
	}
	if n := len(e.Store.ENIs()); n != 1 {
		t.Fatalf("a throttled create made an ENI: %d ENIs", n)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}

func TestMetadata(t *testing.T) {
	e := ecstest.Start(t, openapi.Config{}, testConfig())
	c := client(t, e, ecstest.AccessKeySecret)
	cfg := e.Store.Config()
	md := e.URL + "/latest/meta-data/"
	if got := get(t, md+"instance-id"); got != cfg.InstanceID {
		t.Fatalf("instance-id %q", got)
	}
	if got := get(t, md+"instance/instance-type"); got != "ecs.g7.large" {
		t.Fatalf("instance-type %q", got)
	}
	if got := get(t, md+"region-id"); got != cfg.Region {
		t.Fatalf("region-id %q", got)
	}
	mac := get(t, md+"mac")
	if got := get(t, md+"vswitch-id"); got != "vsw-a" {
		t.Fatalf("vswitch-id %q", got)
	}
	if got := get(t, md+"network/interfaces/macs/"+mac+"/gateway"); got != "10.212.1.253" {
		t.Fatalf("gateway %q", got)
	}
	if got := get(t, md+"network/interfaces/macs/"+mac+"/security-group-ids"); got != strings.Join(cfg.SecurityGroups, ",") {
		t.Fatalf("security-group-ids %q", got)
	}
	r, err := create(t, c, "vsw-a", 1, "")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(get(t, md+"network/interfaces/macs/"), r.MacAddress) {
		t.Fatal("an unattached ENI is listed")
	}
	if err := attach(c, r.NetworkInterfaceId, cfg.InstanceID); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, r.NetworkInterfaceId, "InUse")
	if !strings.Contains(get(t, md+"network/interfaces/macs/"), r.MacAddress) {
		t.Fatal("attached ENI not listed")
	}
	ips := get(t, md+"network/interfaces/macs/"+r.MacAddress+"/private-ipv4s")
	if !strings.Contains(ips, r.PrivateIpAddress) || strings.Count(ips, ",") != 1 {
		t.Fatalf("private-ipv4s %s", ips)
	}
}

// TestLocalENIs: with Local, an attached ENI is a kernel interface with the
// ENI's MAC, and the vpc namespace answers on the vSwitch gateway.
func TestLocalENIs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("--local-enis needs root")
	}
	cfg := testConfig()
	// dnsaccel-vpc-<pid>-...: cni/cnitest.Sweep removes it if this process dies.
	ns := fmt.Sprintf("dnsaccel-vpc-%d-ecs", os.Getpid())
	cfg.Local = &ecs.LocalConfig{Netns: ns, LinkPrefix: "enxt", VPCAddresses: []netip.Addr{netip.MustParseAddr("10.212.255.1")}}
	e := ecstest.Start(t, openapi.Config{}, cfg)
	c := client(t, e, ecstest.AccessKeySecret)
	r, err := create(t, c, "vsw-a", 1, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := attach(c, r.NetworkInterfaceId, cfg.InstanceID); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, c, r.NetworkInterfaceId, "InUse")
	name := e.Store.Local().LinkName(r.NetworkInterfaceId)
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("ENI interface %s: %v", name, err)
	}
	if l.Attrs().HardwareAddr.String() != r.MacAddress {
		t.Fatalf("%s has MAC %s, want %s", name, l.Attrs().HardwareAddr, r.MacAddress)
	}
	det := sdkecs.CreateDetachNetworkInterfaceRequest()
	det.Scheme = "HTTP"
	det.NetworkInterfaceId, det.InstanceId = r.NetworkInterfaceId, cfg.InstanceID
	if _, err := c.DetachNetworkInterface(det); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(name); err == nil {
		t.Fatalf("%s still there after detach", name)
	}
	e.Close()
	if _, err := os.Stat("/run/netns/" + ns); err == nil {
		t.Fatalf("vpc namespace %s left behind", ns)
	}
}
