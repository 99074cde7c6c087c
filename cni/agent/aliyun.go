package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/requests"
	"github.com/aliyun/alibaba-cloud-sdk-go/services/ecs"

	"github.com/dnsaccel/dnsaccel/alicloud"
)

// ECS is Cloud through the Alibaba Cloud SDK (services/ecs, 2014-05-26)
// on the shared client core (alicloud): a pool of SDK clients (one per
// call in flight), errors classified and redacted (never the signed URL,
// the AccessKeyId, the Signature or an STS SecurityToken: they end up in
// logs, Events and CNI errors). ECS itself makes one attempt per call:
// Limited adds the rate limits and retries.
type ECS struct {
	c *alicloud.Client[*ecs.Client]
}

// sdkClients is how many SDK clients ECS keeps: the pool's refills
// (PoolConfig.MaxRefills) plus a delete.
const sdkClients = 4

// NewECS returns an ECS client for region. endpoint ("" = the SDK's
// regional endpoint) overrides the API host, e.g. http://127.0.0.1:8380
// for the emulator.
func NewECS(region, endpoint string, cred auth.Credential) (*ECS, error) {
	host, _, err := alicloud.EndpointHost(endpoint)
	if err != nil {
		return nil, fmt.Errorf("--endpoint: %w", err)
	}
	c, err := alicloud.NewClient(alicloud.ClientConfig{
		Config:   alicloud.Config{Product: "ecs", Retry: alicloud.Retry{Attempts: 1}},
		Endpoint: endpoint, Pool: sdkClients, ReadTimeout: 30 * time.Second, ConnectTimeout: 5 * time.Second,
	}, func(sc *sdk.Config) (*ecs.Client, error) {
		c, err := ecs.NewClientWithOptions(region, sc, cred)
		if err != nil {
			return nil, err
		}
		if host != "" {
			c.Domain = host
		}
		return c, nil
	})
	if err != nil {
		return nil, fmt.Errorf("ecs client: %w", err)
	}
	return &ECS{c: c}, nil
}

// call runs one SDK call (a method expression such as
// (*ecs.Client).DeleteNetworkInterface) on a pooled client, with the
// endpoint's scheme; errors are *alicloud.Error (= *CloudError).
func call[Q interface{ SetScheme(string) }, R any](e *ECS, action string, f func(*ecs.Client, Q) (R, error), req Q) (R, error) {
	req.SetScheme(e.c.Scheme())
	var resp R
	err := e.c.Call(context.Background(), action, false, func(c *ecs.Client) (err error) { resp, err = f(c, req); return })
	return resp, err
}

func parseAddrs(ss []string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// CreateENI implements Cloud.
func (e *ECS) CreateENI(_ context.Context, r CreateENIRequest) (*ENI, error) {
	req := ecs.CreateCreateNetworkInterfaceRequest()
	req.VSwitchId = r.VSwitchID
	sgs := append([]string(nil), r.SecurityGroups...)
	req.SecurityGroupIds = &sgs
	if r.Count > 1 {
		req.SecondaryPrivateIpAddressCount = requests.NewInteger(r.Count - 1)
	}
	req.NetworkInterfaceName = r.Name
	req.Description = "dnsaccel eni-agent"
	req.ClientToken = r.Token
	req.SourceDestCheck = requests.NewBoolean(false)
	resp, err := call(e, "CreateNetworkInterface", (*ecs.Client).CreateNetworkInterface, req)
	if err != nil {
		return nil, err
	}
	eni := &ENI{ID: resp.NetworkInterfaceId, MAC: resp.MacAddress, VSwitchID: resp.VSwitchId, Status: resp.Status, Name: resp.NetworkInterfaceName, Type: resp.Type}
	eni.Primary, _ = netip.ParseAddr(resp.PrivateIpAddress)
	for _, s := range resp.PrivateIpSets.PrivateIpSet {
		if a, err := netip.ParseAddr(s.PrivateIpAddress); err == nil {
			eni.IPs = append(eni.IPs, a)
		}
	}
	return eni, nil
}

// AttachENI implements Cloud.
func (e *ECS) AttachENI(_ context.Context, eniID, instanceID string) error {
	req := ecs.CreateAttachNetworkInterfaceRequest()
	req.NetworkInterfaceId, req.InstanceId = eniID, instanceID
	_, err := call(e, "AttachNetworkInterface", (*ecs.Client).AttachNetworkInterface, req)
	return err
}

// DetachENI implements Cloud.
func (e *ECS) DetachENI(_ context.Context, eniID, instanceID string) error {
	req := ecs.CreateDetachNetworkInterfaceRequest()
	req.NetworkInterfaceId, req.InstanceId = eniID, instanceID
	_, err := call(e, "DetachNetworkInterface", (*ecs.Client).DetachNetworkInterface, req)
	return err
}

// DeleteENI implements Cloud.
func (e *ECS) DeleteENI(_ context.Context, eniID string) error {
	req := ecs.CreateDeleteNetworkInterfaceRequest()
	req.NetworkInterfaceId = eniID
	_, err := call(e, "DeleteNetworkInterface", (*ecs.Client).DeleteNetworkInterface, req)
	return err
}

// AssignIPs implements Cloud.
func (e *ECS) AssignIPs(_ context.Context, eniID string, n int, token string) ([]netip.Addr, error) {
	req := ecs.CreateAssignPrivateIpAddressesRequest()
	req.NetworkInterfaceId = eniID
	req.SecondaryPrivateIpAddressCount = requests.NewInteger(n)
	req.ClientToken = token
	resp, err := call(e, "AssignPrivateIpAddresses", (*ecs.Client).AssignPrivateIpAddresses, req)
	if err != nil {
		return nil, err
	}
	return parseAddrs(resp.AssignedPrivateIpAddressesSet.PrivateIpSet.PrivateIpAddress), nil
}

// UnassignIPs implements Cloud.
func (e *ECS) UnassignIPs(_ context.Context, eniID string, ips []netip.Addr) error {
	req := ecs.CreateUnassignPrivateIpAddressesRequest()
	req.NetworkInterfaceId = eniID
	ss := make([]string, len(ips))
	for i, a := range ips {
		ss[i] = a.String()
	}
	req.PrivateIpAddress = &ss
	_, err := call(e, "UnassignPrivateIpAddresses", (*ecs.Client).UnassignPrivateIpAddresses, req)
	return err
}

// DescribeENIs implements Cloud.
func (e *ECS) DescribeENIs(_ context.Context, instanceID, name string) ([]ENI, error) {
	var out []ENI
	for page := 1; ; page++ {
		req := ecs.CreateDescribeNetworkInterfacesRequest()
		req.InstanceId = instanceID
		req.NetworkInterfaceName = name
		req.PageSize = requests.NewInteger(100)
		req.PageNumber = requests.NewInteger(page)
		resp, err := call(e, "DescribeNetworkInterfaces", (*ecs.Client).DescribeNetworkInterfaces, req)
		if err != nil {
			return nil, err
		}
		for _, s := range resp.NetworkInterfaceSets.NetworkInterfaceSet {
			eni := ENI{ID: s.NetworkInterfaceId, MAC: s.MacAddress, VSwitchID: s.VSwitchId, Status: s.Status, InstanceID: s.InstanceId, Name: s.NetworkInterfaceName, Type: s.Type}
			eni.Primary, _ = netip.ParseAddr(s.PrivateIpAddress)
			for _, p := range s.PrivateIpSets.PrivateIpSet {
				if a, err := netip.ParseAddr(p.PrivateIpAddress); err == nil {
					eni.IPs = append(eni.IPs, a)
				}
			}
			out = append(out, eni)
		}
		if len(resp.NetworkInterfaceSets.NetworkInterfaceSet) == 0 || page*100 >= resp.TotalCount {
			return out, nil
		}
	}
}

// InstanceLimits implements Cloud.
func (e *ECS) InstanceLimits(_ context.Context, instanceType string) (Limits, error) {
	req := ecs.CreateDescribeInstanceTypesRequest()
	req.InstanceTypes = &[]string{instanceType}
	resp, err := call(e, "DescribeInstanceTypes", (*ecs.Client).DescribeInstanceTypes, req)
	if err != nil {
		return Limits{}, err
	}
	for _, t := range resp.InstanceTypes.InstanceType {
		if t.InstanceTypeId == instanceType {
			return Limits{ENIs: t.EniQuantity, IPsPerENI: t.EniPrivateIpAddressQuantity}, nil
		}
	}
	return Limits{}, fmt.Errorf("DescribeInstanceTypes: instance type %s not found", instanceType)
}

// DescribeVSwitches implements Cloud.
func (e *ECS) DescribeVSwitches(_ context.Context, ids []string) ([]VSwitch, error) {
	var out []VSwitch
	for _, id := range ids {
		req := ecs.CreateDescribeVSwitchesRequest()
		req.VSwitchId = id
		resp, err := call(e, "DescribeVSwitches", (*ecs.Client).DescribeVSwitches, req)
		if err != nil {
			return nil, err
		}
		for _, v := range resp.VSwitches.VSwitch {
			p, _ := netip.ParsePrefix(v.CidrBlock)
			out = append(out, VSwitch{ID: v.VSwitchId, Zone: v.ZoneId, CIDR: p, Free: int(v.AvailableIpAddressCount)})
		}
	}
	return out, nil
}

// Metadata reads the instance metadata service (http://100.100.100.200).
type Metadata struct {
	base string
	hc   *http.Client
}

// NewMetadata returns a client for the metadata service at base.
func NewMetadata(base string) *Metadata {
	return &Metadata{base: strings.TrimRight(base, "/"), hc: &http.Client{Timeout: 5 * time.Second}}
}

// Get returns the item at path under /latest/meta-data/.
func (m *Metadata) Get(ctx context.Context, path string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.base+"/latest/meta-data/"+strings.TrimLeft(path, "/"), nil)
	if err != nil {
		return "", err
	}
	resp, err := m.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("metadata %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", fmt.Errorf("metadata %s: %w", path, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return "", fmt.Errorf("metadata %s: %w", path, errMetaNotFound)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("metadata %s: HTTP %d", path, resp.StatusCode)
	}
	return strings.TrimSpace(string(b)), nil
}

var errMetaNotFound = errors.New("not found")

// MACs lists the MACs of the attached ENIs.
func (m *Metadata) MACs(ctx context.Context) ([]string, error) {
	s, err := m.Get(ctx, "network/interfaces/macs/")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSuffix(strings.TrimSpace(l), "/"); l != "" {
			out = append(out, l)
		}
	}
	return out, nil
}

// Identity is what the agent learns about its instance from metadata.
type Identity struct {
	InstanceID, InstanceType, Region, Zone string
	PrimaryMAC, VSwitchID, VPCID           string
	PrimaryIP                              netip.Addr
	SecurityGroups                         []string
}

// Identity reads the instance's identity and primary ENI.
func (m *Metadata) Identity(ctx context.Context) (*Identity, error) {
	id := &Identity{}
	for _, f := range []struct {
		path string
		dst  *string
	}{
		{"instance-id", &id.InstanceID}, {"instance/instance-type", &id.InstanceType}, {"region-id", &id.Region},
		{"zone-id", &id.Zone}, {"mac", &id.PrimaryMAC}, {"vswitch-id", &id.VSwitchID}, {"vpc-id", &id.VPCID},
	} {
		v, err := m.Get(ctx, f.path)
		if err != nil {
			return nil, err
		}
		*f.dst = v
	}
	ip, err := m.Get(ctx, "private-ipv4")
	if err != nil {
		return nil, err
	}
	if id.PrimaryIP, err = netip.ParseAddr(ip); err != nil {
		return nil, fmt.Errorf("metadata private-ipv4 %q: %w", ip, err)
	}
	sgs, err := m.Get(ctx, "network/interfaces/macs/"+id.PrimaryMAC+"/security-group-ids")
	if err != nil {
		return nil, err
	}
	for _, s := range strings.FieldsFunc(sgs, func(r rune) bool { return r == ',' || r == '\n' || r == ' ' }) {
		id.SecurityGroups = append(id.SecurityGroups, s)
	}
	return id, nil
}

// ENIInfo is an attached ENI's network facts from metadata.
type ENIInfo struct {
	Gateway netip.Addr
	CIDR    netip.Prefix
}

// ENIInfo reads the gateway and vSwitch CIDR of the ENI with mac.
func (m *Metadata) ENIInfo(ctx context.Context, mac string) (ENIInfo, error) {
	var info ENIInfo
	gw, err := m.Get(ctx, "network/interfaces/macs/"+mac+"/gateway")
	if err != nil {
		return info, err
	}
	cidr, err := m.Get(ctx, "network/interfaces/macs/"+mac+"/vswitch-cidr-block")
	if err != nil {
		return info, err
	}
	if info.Gateway, err = netip.ParseAddr(gw); err != nil {
		return info, fmt.Errorf("metadata gateway of %s %q: %w", mac, gw, err)
	}
	if info.CIDR, err = netip.ParsePrefix(cidr); err != nil {
		return info, fmt.Errorf("metadata vswitch-cidr-block of %s %q: %w", mac, cidr, err)
	}
	return info, nil
}
