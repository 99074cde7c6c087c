// Package provider talks to Alibaba Cloud PrivateZone through the real SDK
// (github.com/aliyun/alibaba-cloud-sdk-go/services/pvtz): paged listing
// (PageSize 100), a client-side token bucket for writes, retries with
// exponential backoff and full jitter on throttling, System.Busy,
// ServiceUnavailable, 5xx and network errors, idempotent creates and
// deletes, and a dry-run mode that makes no write call at all.
package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"
	sdkerrors "github.com/aliyun/alibaba-cloud-sdk-go/sdk/errors"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/requests"
	"github.com/aliyun/alibaba-cloud-sdk-go/services/pvtz"
	"golang.org/x/time/rate"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

// DefaultEndpoint is PrivateZone's (central) endpoint.
const DefaultEndpoint = "https://pvtz.aliyuncs.com"

// PageSize of every listing (the API's maximum).
const PageSize = 100

// Config of a Provider.
type Config struct {
	Endpoint string // URL; default DefaultEndpoint
	Region   string // default cn-hangzhou
	// Credential: nil = the SDK's default chain (environment, OIDC, CLI and
	// credentials-file profiles, ECS RAM role, credentials URI).
	Credential credentials.CredentialsProvider
	QPS        float64 // write budget per second; 0 = unlimited
	Burst      int     // default max(1, QPS/10)
	ReadQPS    float64 // read budget; 0 = unlimited
	DryRun     bool
	// MaxAttempts per call (default 8); backoff from BaseBackoff (100ms)
	// doubling to MaxBackoff (10s), full jitter.
	MaxAttempts int
	BaseBackoff time.Duration
	MaxBackoff  time.Duration
	Timeout     time.Duration // per HTTP request, default 10s
	Logger      *slog.Logger
	// Observe is called after every API attempt (metrics): action, whether
	// it is a write, the error code ("" on success, "network" for transport
	// errors) and whether it will be retried.
	Observe func(action string, write bool, code string, retry bool)
	// DryRunOut receives the writes dry-run skips (default: logged).
	DryRunOut func(op, detail string)
}

// Provider is a PrivateZone client.
type Provider struct {
	cfg    Config
	pool   chan *pvtz.Client // the SDK client is not safe for concurrent use: one per call in flight
	host   string
	scheme string
	creds  credentials.CredentialsProvider
	wlim   *rate.Limiter
	rlim   *rate.Limiter
	log    *slog.Logger
}

// New builds a provider; it makes no call.
func New(cfg Config) (*Provider, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultEndpoint
	}
	if cfg.Region == "" {
		cfg.Region = "cn-hangzhou"
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("endpoint %q: want http(s)://HOST[:PORT]", cfg.Endpoint)
	}
	if cfg.Credential == nil {
		cfg.Credential = credentials.NewDefaultCredentialsProvider()
	}
	p := &Provider{cfg: cfg, pool: make(chan *pvtz.Client, 64), host: u.Host, scheme: strings.ToUpper(u.Scheme), creds: cfg.Credential, log: cfg.Logger}
	c, err := p.getClient()
	if err != nil {
		return nil, err
	}
	p.putClient(c)
	p.wlim = limiter(cfg.QPS, cfg.Burst)
	p.rlim = limiter(cfg.ReadQPS, 0)
	return p, nil
}

func limiter(qps float64, burst int) *rate.Limiter {
	if qps <= 0 {
		return rate.NewLimiter(rate.Inf, 1)
	}
	if burst <= 0 {
		burst = max(1, int(qps/10))
	}
	return rate.NewLimiter(rate.Limit(qps), burst)
}

func (p *Provider) getClient() (*pvtz.Client, error) {
	select {
	case c := <-p.pool:
		return c, nil
	default:
	}
	c, err := pvtz.NewClientWithOptions(p.cfg.Region, sdk.NewConfig(), p.cfg.Credential)
	if err != nil {
		return nil, fmt.Errorf("pvtz client: %w", err)
	}
	c.Domain = p.host
	c.SetReadTimeout(p.cfg.Timeout)
	c.SetConnectTimeout(5 * time.Second)
	return c, nil
}

func (p *Provider) putClient(c *pvtz.Client) {
	select {
	case p.pool <- c:
	default:
	}
}

// DryRun reports whether writes are skipped.
func (p *Provider) DryRun() bool { return p.cfg.DryRun }

// AccessKeyID returns the key id the credential chain resolves to ("" if
// it cannot), for error messages; never the secret.
func (p *Provider) AccessKeyID() string {
	cc, err := p.creds.GetCredentials()
	if err != nil || cc == nil {
		return ""
	}
	return cc.AccessKeyId
}

// APIError is an error answered by the service.
type APIError struct {
	Action, Code, Message, RequestID string
	HTTPStatus                       int
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: %s (HTTP %d): %s [RequestId %s]", e.Action, e.Code, e.HTTPStatus, e.Message, e.RequestID)
}

// CredentialError is a rejected credential; it names the key id.
type CredentialError struct {
	AccessKeyID string
	Err         error
}

func (e *CredentialError) Error() string {
	id := e.AccessKeyID
	if id == "" {
		id = "(none found by the credential chain)"
	}
	return fmt.Sprintf("PrivateZone rejected the credentials of access key id %s: %v", id, e.Err)
}

func (e *CredentialError) Unwrap() error { return e.Err }

// Code returns the API error code of err ("" when it is not an API error).
func Code(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

var credentialCodes = map[string]bool{
	"InvalidAccessKeyId.NotFound": true, "InvalidAccessKeyId": true, "SignatureDoesNotMatch": true,
	"InvalidAccessKeyId.Inactive": true, "InvalidSecurityToken.Expired": true, "InvalidSecurityToken.MismatchWithAccessKey": true,
	"InvalidSecurityToken.Malformed": true, "MissingSecurityToken": true, "Forbidden.AccessKeyDisabled": true,
}

// IsCredentialError reports whether err is a rejected credential.
func IsCredentialError(err error) bool {
	var ce *CredentialError
	return errors.As(err, &ce)
}

func isTransport(err error) bool {
	var ue *url.Error
	var ne net.Error
	return errors.As(err, &ue) || errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

func retryable(code string, status int) bool {
	switch {
	case code == "network", strings.HasPrefix(code, "Throttling"), code == "System.Busy", code == "ServiceUnavailable",
		code == "InternalError", code == "SignatureNonceUsed", status >= 500:
		return true
	}
	return false
}

// call runs one API call with the budget, retries and error mapping.
func (p *Provider) call(ctx context.Context, action string, write bool, fn func(c *pvtz.Client) error) error {
	lim := p.rlim
	if write {
		lim = p.wlim
	}
	var last error
	for attempt := 0; attempt < p.cfg.MaxAttempts; attempt++ {
		if attempt > 0 {
			d := p.cfg.BaseBackoff << min(attempt-1, 16)
			if d > p.cfg.MaxBackoff {
				d = p.cfg.MaxBackoff
			}
			d = time.Duration(rand.Int64N(int64(d)) + 1) // full jitter
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("%s: %w (last error: %v)", action, ctx.Err(), last)
			case <-t.C:
			}
		}
		if err := lim.Wait(ctx); err != nil {
			return fmt.Errorf("%s: %w", action, err)
		}
		c, err := p.getClient()
		if err != nil {
			return fmt.Errorf("%s: %w", action, err)
		}
		err = fn(c)
		p.putClient(c)
		if err == nil {
			p.observe(action, write, "", false)
			return nil
		}
		code, status := "", 0
		var se *sdkerrors.ServerError
		var ce *sdkerrors.ClientError
		switch {
		case errors.As(err, &se):
			code, status = se.ErrorCode(), se.HttpStatus()
			err = &APIError{Action: action, Code: code, Message: se.Message(), RequestID: se.RequestId(), HTTPStatus: status}
		case errors.As(err, &ce) && ce.ErrorCode() == sdkerrors.CanNotResolveEndpointErrorCode:
			code = "endpoint"
		case !isTransport(err) && strings.Contains(strings.ToLower(err.Error()), "credential"):
			// The credential chain found nothing usable: no call was made.
			p.observe(action, write, "credentials", false)
			return &CredentialError{AccessKeyID: p.AccessKeyID(), Err: fmt.Errorf("%s: %w", action, err)}
		default:
			code = "network"
			err = fmt.Errorf("%s: %w", action, err)
		}
		if credentialCodes[code] {
			p.observe(action, write, code, false)
			return &CredentialError{AccessKeyID: p.AccessKeyID(), Err: err}
		}
		again := retryable(code, status) && attempt+1 < p.cfg.MaxAttempts && ctx.Err() == nil
		p.observe(action, write, code, again)
		if !again {
			return err
		}
		last = err
		p.log.Debug("retrying", "action", action, "attempt", attempt+1, "code", code)
	}
	return last
}

func (p *Provider) observe(action string, write bool, code string, retry bool) {
	if p.cfg.Observe != nil {
		p.cfg.Observe(action, write, code, retry)
	}
}

func (p *Provider) dry(op, detail string) {
	if p.cfg.DryRunOut != nil {
		p.cfg.DryRunOut(op, detail)
		return
	}
	p.log.Info("dry run: skipped write", "op", op, "change", detail)
}

// Zone is a zone as listed.
type Zone struct {
	ID, Name    string
	RecordCount int
	VPCs        []string // "region/vpc-id"
}

// Zones lists every zone (paged).
func (p *Provider) Zones(ctx context.Context, keyword, vpcID string) ([]Zone, error) {
	var out []Zone
	for page := 1; ; page++ {
		req := pvtz.CreateDescribeZonesRequest()
		req.Scheme = p.scheme
		req.PageNumber, req.PageSize = requests.NewInteger(page), requests.NewInteger(PageSize)
		if keyword != "" {
			req.Keyword, req.SearchMode = keyword, "EXACT"
		}
		req.QueryVpcId = vpcID
		var resp *pvtz.DescribeZonesResponse
		err := p.call(ctx, "DescribeZones", false, func(c *pvtz.Client) (err error) { resp, err = c.DescribeZones(req); return })
		if err != nil {
			return nil, err
		}
		for _, z := range resp.Zones.Zone {
			out = append(out, Zone{ID: z.ZoneId, Name: z.ZoneName, RecordCount: z.RecordCount})
		}
		if page*PageSize >= resp.TotalItems || len(resp.Zones.Zone) == 0 {
			return out, nil
		}
	}
}

// ZoneInfo returns a zone with its bound VPCs.
func (p *Provider) ZoneInfo(ctx context.Context, zoneID string) (Zone, error) {
	req := pvtz.CreateDescribeZoneInfoRequest()
	req.Scheme = p.scheme
	req.ZoneId = zoneID
	var resp *pvtz.DescribeZoneInfoResponse
	if err := p.call(ctx, "DescribeZoneInfo", false, func(c *pvtz.Client) (err error) { resp, err = c.DescribeZoneInfo(req); return }); err != nil {
		return Zone{}, err
	}
	z := Zone{ID: resp.ZoneId, Name: resp.ZoneName, RecordCount: resp.RecordCount}
	for _, v := range resp.BindVpcs.Vpc {
		z.VPCs = append(z.VPCs, v.RegionId+"/"+v.VpcId)
	}
	return z, nil
}

// FindZone returns the id of the zone named name (bound to vpcID when set),
// "" when there is none. Two matches are an error.
func (p *Provider) FindZone(ctx context.Context, name, vpcID string) (string, error) {
	name = endpoint.NormalizeName(name)
	zs, err := p.Zones(ctx, name, vpcID)
	if err != nil {
		return "", err
	}
	var ids []string
	for _, z := range zs {
		if endpoint.NormalizeName(z.Name) == name {
			ids = append(ids, z.ID)
		}
	}
	switch len(ids) {
	case 0:
		return "", nil
	case 1:
		return ids[0], nil
	}
	return "", fmt.Errorf("zone %s: %d zones have that name (%s); bind one to the VPC with --vpc-id", name, len(ids), strings.Join(ids, ", "))
}

// CreateZone adds a zone and binds it to vpcID in region (if vpcID is set).
func (p *Provider) CreateZone(ctx context.Context, name, vpcID, region string) (string, error) {
	if p.cfg.DryRun {
		p.dry("create-zone", name)
		return "", nil
	}
	req := pvtz.CreateAddZoneRequest()
	req.Scheme = p.scheme
	req.ZoneName = name
	var resp *pvtz.AddZoneResponse
	if err := p.call(ctx, "AddZone", true, func(c *pvtz.Client) (err error) { resp, err = c.AddZone(req); return }); err != nil {
		return "", err
	}
	if vpcID != "" {
		b := pvtz.CreateBindZoneVpcRequest()
		b.Scheme = p.scheme
		b.ZoneId = resp.ZoneId
		b.Vpcs = &[]pvtz.BindZoneVpcVpcs{{RegionId: region, VpcId: vpcID}}
		if err := p.call(ctx, "BindZoneVpc", true, func(c *pvtz.Client) error { _, err := c.BindZoneVpc(b); return err }); err != nil {
			return resp.ZoneId, err
		}
	}
	return resp.ZoneId, nil
}

// Records lists a zone's records, paged (PageSize 100); keyword (EXACT)
// limits the listing to one name.
func (p *Provider) Records(ctx context.Context, zoneID, keyword string) ([]endpoint.Record, error) {
	var out []endpoint.Record
	for page := 1; ; page++ {
		req := pvtz.CreateDescribeZoneRecordsRequest()
		req.Scheme = p.scheme
		req.ZoneId = zoneID
		req.PageNumber, req.PageSize = requests.NewInteger(page), requests.NewInteger(PageSize)
		if keyword != "" {
			req.Keyword, req.SearchMode = keyword, "EXACT"
		}
		var resp *pvtz.DescribeZoneRecordsResponse
		err := p.call(ctx, "DescribeZoneRecords", false, func(c *pvtz.Client) (err error) { resp, err = c.DescribeZoneRecords(req); return })
		if err != nil {
			return nil, err
		}
		for _, r := range resp.Records.Record {
			if keyword != "" && !strings.EqualFold(r.Rr, keyword) {
				continue // EXACT matches values too
			}
			out = append(out, endpoint.Record{ID: r.RecordId, Name: strings.ToLower(r.Rr), Type: r.Type, Value: r.Value,
				TTL: r.Ttl, Status: r.Status, Remark: r.Remark, Priority: r.Priority})
		}
		if page*PageSize >= resp.TotalItems || len(resp.Records.Record) == 0 {
			return out, nil
		}
	}
}

// ErrConflict: a create met an identical record it may not adopt.
var ErrConflict = errors.New("record exists and is not owned by this sync")

// Create adds a record (its Remark marks the owner) and returns its id.
// It is idempotent: a Record.Invalid.Conflict (our own earlier attempt
// landed, or a previous run's did) is resolved by reading the name and
// adopting the identical record when it carries our owner id — or, with
// adopt, when it has no owner.
func (p *Provider) Create(ctx context.Context, zoneID, ownerID string, r endpoint.Record, adopt bool) (int64, error) {
	if p.cfg.DryRun {
		p.dry("create", fmt.Sprintf("%s %s %s ttl=%d remark=%q", r.Name, r.Type, r.Value, r.TTL, r.Remark))
		return 0, nil
	}
	req := pvtz.CreateAddZoneRecordRequest()
	req.Scheme = p.scheme
	req.ZoneId, req.Rr, req.Type, req.Value, req.Remark = zoneID, r.Name, r.Type, r.Value, r.Remark
	req.Ttl = requests.NewInteger(r.TTL)
	var resp *pvtz.AddZoneRecordResponse
	err := p.call(ctx, "AddZoneRecord", true, func(c *pvtz.Client) (err error) { resp, err = c.AddZoneRecord(req); return })
	if err == nil {
		return resp.RecordId, nil
	}
	if Code(err) != "Record.Invalid.Conflict" {
		return 0, err
	}
	recs, lerr := p.Records(ctx, zoneID, r.Name)
	if lerr != nil {
		return 0, fmt.Errorf("resolve conflict of %s %s %s: %w", r.Name, r.Type, r.Value, lerr)
	}
	for _, c := range recs {
		if c.Type != r.Type || !strings.EqualFold(strings.TrimSuffix(c.Value, "."), strings.TrimSuffix(r.Value, ".")) {
			continue
		}
		owner, _, owned := registry.Parse(c.Remark)
		switch {
		case owned && owner == ownerID:
			if c.Remark != r.Remark {
				if err := p.UpdateRemark(ctx, c.ID, r.Remark); err != nil {
					return c.ID, err
				}
			}
			if c.TTL != r.TTL {
				c.TTL = r.TTL
				if err := p.Update(ctx, c); err != nil {
					return c.ID, err
				}
			}
			return c.ID, nil
		case !owned && adopt:
			if err := p.UpdateRemark(ctx, c.ID, r.Remark); err != nil {
				return c.ID, err
			}
			return c.ID, nil
		}
		return 0, fmt.Errorf("create %s %s %s: %w (record id %d, remark %q)", r.Name, r.Type, r.Value, ErrConflict, c.ID, c.Remark)
	}
	return 0, fmt.Errorf("create %s %s %s: %w", r.Name, r.Type, r.Value, err)
}

// Update sets a record's TTL (and Rr/Type/Value as given).
func (p *Provider) Update(ctx context.Context, r endpoint.Record) error {
	if p.cfg.DryRun {
		p.dry("update", fmt.Sprintf("%s %s %s ttl=%d id=%d", r.Name, r.Type, r.Value, r.TTL, r.ID))
		return nil
	}
	req := pvtz.CreateUpdateZoneRecordRequest()
	req.Scheme = p.scheme
	req.RecordId = requests.NewInteger64(r.ID)
	req.Rr, req.Type, req.Value, req.Ttl = r.Name, r.Type, r.Value, requests.NewInteger(r.TTL)
	if r.Priority > 0 {
		req.Priority = requests.NewInteger(r.Priority)
	}
	return p.call(ctx, "UpdateZoneRecord", true, func(c *pvtz.Client) error { _, err := c.UpdateZoneRecord(req); return err })
}

// UpdateRemark sets a record's Remark.
func (p *Provider) UpdateRemark(ctx context.Context, id int64, remark string) error {
	if p.cfg.DryRun {
		p.dry("remark", fmt.Sprintf("id=%d remark=%q", id, remark))
		return nil
	}
	req := pvtz.CreateUpdateRecordRemarkRequest()
	req.Scheme = p.scheme
	req.RecordId, req.Remark = requests.NewInteger64(id), remark
	return p.call(ctx, "UpdateRecordRemark", true, func(c *pvtz.Client) error { _, err := c.UpdateRecordRemark(req); return err })
}

// SetStatus enables or disables a record.
func (p *Provider) SetStatus(ctx context.Context, id int64, status string) error {
	if p.cfg.DryRun {
		p.dry("status", fmt.Sprintf("id=%d status=%s", id, status))
		return nil
	}
	req := pvtz.CreateSetZoneRecordStatusRequest()
	req.Scheme = p.scheme
	req.RecordId, req.Status = requests.NewInteger64(id), status
	return p.call(ctx, "SetZoneRecordStatus", true, func(c *pvtz.Client) error { _, err := c.SetZoneRecordStatus(req); return err })
}

// Delete removes a record; a record already gone is not an error (a retry
// after a lost answer, or someone else's delete).
func (p *Provider) Delete(ctx context.Context, id int64) error {
	if p.cfg.DryRun {
		p.dry("delete", "id="+strconv.FormatInt(id, 10))
		return nil
	}
	req := pvtz.CreateDeleteZoneRecordRequest()
	req.Scheme = p.scheme
	req.RecordId = requests.NewInteger64(id)
	err := p.call(ctx, "DeleteZoneRecord", true, func(c *pvtz.Client) error { _, err := c.DeleteZoneRecord(req); return err })
	if c := Code(err); c == "Record.Invalid.Id" || c == "Record.NotExists" {
		return nil
	}
	return err
}

// ChangeLog is one audit entry of a zone.
type ChangeLog struct {
	Time                   time.Time
	Action, Object, Entity string
	Content, Creator, IP   string
}

// ChangeLogs lists a zone's change log, newest first, at most limit entries.
func (p *Provider) ChangeLogs(ctx context.Context, zoneID string, limit int) ([]ChangeLog, error) {
	var out []ChangeLog
	for page := 1; ; page++ {
		req := pvtz.CreateDescribeChangeLogsRequest()
		req.Scheme = p.scheme
		req.ZoneId = zoneID
		req.PageNumber, req.PageSize = requests.NewInteger(page), requests.NewInteger(PageSize)
		var resp *pvtz.DescribeChangeLogsResponse
		if err := p.call(ctx, "DescribeChangeLogs", false, func(c *pvtz.Client) (err error) { resp, err = c.DescribeChangeLogs(req); return }); err != nil {
			return nil, err
		}
		for _, l := range resp.ChangeLogs.ChangeLog {
			out = append(out, ChangeLog{Time: time.UnixMilli(l.OperTimestamp).UTC(), Action: l.OperAction, Object: l.OperObject,
				Entity: l.EntityName, Content: l.Content, Creator: l.CreatorId, IP: l.OperIp})
			if limit > 0 && len(out) >= limit {
				return out, nil
			}
		}
		if page*PageSize >= resp.TotalItems || len(resp.ChangeLogs.ChangeLog) == 0 {
			return out, nil
		}
	}
}

// ZonesWithVPCs lists every zone with its bound VPCs in one call
// (DescribeZoneVpcTree).
func (p *Provider) ZonesWithVPCs(ctx context.Context) ([]Zone, error) {
	req := pvtz.CreateDescribeZoneVpcTreeRequest()
	req.Scheme = p.scheme
	var resp *pvtz.DescribeZoneVpcTreeResponse
	if err := p.call(ctx, "DescribeZoneVpcTree", false, func(c *pvtz.Client) (err error) { resp, err = c.DescribeZoneVpcTree(req); return }); err != nil {
		return nil, err
	}
	var out []Zone
	for _, z := range resp.Zones.Zone {
		zz := Zone{ID: z.ZoneId, Name: z.ZoneName, RecordCount: z.RecordCount}
		for _, v := range z.Vpcs.Vpc {
			zz.VPCs = append(zz.VPCs, v.RegionId+"/"+v.VpcId)
		}
		out = append(out, zz)
	}
	return out, nil
}
