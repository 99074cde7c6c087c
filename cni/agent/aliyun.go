package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth"
	sdkerrors "github.com/aliyun/alibaba-cloud-sdk-go/sdk/errors"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/requests"
	"github.com/aliyun/alibaba-cloud-sdk-go/services/ecs"
)

// ECS is Cloud through the Alibaba Cloud SDK (services/ecs, 2014-05-26).
// An SDK client is not safe for concurrent calls (it sets its HTTP
// client's timeout on every request), so ECS keeps a few and gives each
// call its own.
type ECS struct {
	clients chan *ecs.Client
	scheme  string
}

// sdkClients is how many calls ECS runs at once: the pool's refills
// (PoolConfig.MaxRefills) plus a delete.
const sdkClients = 4

// NewECS returns an ECS client for region. endpoint ("" = the SDK's
// regional endpoint) overrides the API host, e.g. http://127.0.0.1:8380
// for the emulator.
func NewECS(region, endpoint string, cred auth.Credential) (*ECS, error) {
	e := &ECS{clients: make(chan *ecs.Client, sdkClients), scheme: "HTTPS"}
	host := ""
	if endpoint != "" {
		u, err := url.Parse(endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("--endpoint %q: want http(s)://HOST[:PORT]", endpoint)
		}
		host, e.scheme = u.Host, strings.ToUpper(u.Scheme)
	}
	for range sdkClients {
		c, err := ecs.NewClientWithOptions(region, sdk.NewConfig(), cred)
		if err != nil {
			return nil, fmt.Errorf("ecs client: %w", err)
		}
		if host != "" {
			c.Domain = host
		}
		c.SetReadTimeout(30 * time.Second)
		c.SetConnectTimeout(5 * time.Second)
		e.clients <- c
	}
	return e, nil
}

// call runs one SDK call (a method expression such as
// (*ecs.Client).DeleteNetworkInterface) on a client of its own, with the
// configured scheme.
func call[Q interface{ SetScheme(string) }, R any](e *ECS, f func(*ecs.Client, Q) (R, error), req Q) (R, error) {
	req.SetScheme(e.scheme)
	c := <-e.clients
	defer func() { e.clients <- c }()
	return f(c, req)
}

// wrap turns SDK errors into *CloudError. A transport error keeps its
// cause but loses the request URL: the SDK signs in the query string, so
// the URL holds the AccessKeyId, the Signature and any STS SecurityToken,
// and these errors are logged and shown in Events and CNI errors.
func wrap(action string, err error) error {
	if err == nil {
		return nil
	}
	var se *sdkerrors.ServerError
	if errors.As(err, &se) {
		return &CloudError{Action: action, Code: se.ErrorCode(), Message: se.Message(), HTTP: se.HttpStatus()}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		host := ue.URL
		if u, perr := url.Parse(ue.URL); perr == nil {
			host = u.Host
		}
		return &transportError{action: action, host: host, err: ue.Err}
	}
	return fmt.Errorf("%s: %w", action, err)
}

// transportError is a request that got no answer (connection refused,
// reset, timeout); Unwrap gives the cause (net.Error, io.EOF, ...).
type transportError struct {
	action, host string
	err          error
}

func (e *transportError) Error() string { return fmt.Sprintf("%s to %s: %v", e.action, e.host, e.err) }
func (e *transportError) Unwrap() error { return e.err }

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
	resp, err := call(e, (*ecs.Client).CreateNetworkInterface, req)
	if err != nil {
		return nil, wrap("CreateNetworkInterface", err)
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
	_, err := call(e, (*ecs.Client).AttachNetworkInterface, req)
	return wrap("AttachNetworkInterface", err)
}

// DetachENI implements Cloud.
func (e *ECS) DetachENI(_ context.Context, eniID, instanceID string) error {
	req := ecs.CreateDetachNetworkInterfaceRequest()
	req.NetworkInterfaceId, req.InstanceId = eniID, instanceID
	_, err := call(e, (*ecs.Client).DetachNetworkInterface, req)
	return wrap("DetachNetworkInterface", err)
}

// DeleteENI implements Cloud.
func (e *ECS) DeleteENI(_ context.Context, eniID string) error {
	req := ecs.CreateDeleteNetworkInterfaceRequest()
	req.NetworkInterfaceId = eniID
	_, err := call(e, (*ecs.Client).DeleteNetworkInterface, req)
	return wrap("DeleteNetworkInterface", err)
}

// AssignIPs implements Cloud.
func (e *ECS) AssignIPs(_ context.Context, eniID string, n int, token string) ([]netip.Addr, error) {
	req := ecs.CreateAssignPrivateIpAddressesRequest()
	req.NetworkInterfaceId = eniID
	req.SecondaryPrivateIpAddressCount = requests.NewInteger(n)
	req.ClientToken = token
	resp, err := call(e, (*ecs.Client).AssignPrivateIpAddresses, req)
	if err != nil {
		return nil, wrap("AssignPrivateIpAddresses", err)
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
	_, err := call(e, (*ecs.Client).UnassignPrivateIpAddresses, req)
	return wrap("UnassignPrivateIpAddresses", err)
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
		resp, err := call(e, (*ecs.Client).DescribeNetworkInterfaces, req)
		if err != nil {
			return nil, wrap("DescribeNetworkInterfaces", err)
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
	resp, err := call(e, (*ecs.Client).DescribeInstanceTypes, req)
	if err != nil {
		return Limits{}, wrap("DescribeInstanceTypes", err)
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
		resp, err := call(e, (*ecs.Client).DescribeVSwitches, req)
		if err != nil {
			return nil, wrap("DescribeVSwitches", err)
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
