// Package provider talks to Alibaba Cloud PrivateZone through the real SDK
// (github.com/aliyun/alibaba-cloud-sdk-go/services/pvtz) on the shared
// client core (alicloud: client pool, token buckets, jittered retries on
// throttling, busy, 5xx and network errors, error classification and
// redaction of signed URLs and credentials): paged listing (PageSize 100),
// idempotent creates and deletes of records, idempotent zone creation, and
// a dry-run mode that makes no write call at all.
package provider

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aliyun/alibaba-cloud-sdk-go/sdk"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/auth/credentials"
	"github.com/aliyun/alibaba-cloud-sdk-go/sdk/requests"
	"github.com/aliyun/alibaba-cloud-sdk-go/services/pvtz"

	"github.com/dnsaccel/dnsaccel/alicloud"
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
	// doubling to MaxBackoff (10s), jittered.
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
	cfg   Config
	core  *alicloud.Client[*pvtz.Client]
	creds credentials.CredentialsProvider
	log   *slog.Logger
	// zoneToken: AddZone's ClientToken per zone name and VPC, made once per
	// process, so every retry of a creation (in the core, or the next
	// CreateZone after a failure) is answered with the same zone.
	mu        sync.Mutex
	zoneToken map[string]string
	created   map[string]bool // zone ids this process added
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
	if cfg.Credential == nil {
		cfg.Credential = credentials.NewDefaultCredentialsProvider()
	}
	burst := cfg.Burst
	if burst <= 0 {
		burst = max(1, int(cfg.QPS/10))
	}
	p := &Provider{cfg: cfg, creds: cfg.Credential, log: cfg.Logger, zoneToken: map[string]string{}, created: map[string]bool{}}
	host, _, err := alicloud.EndpointHost(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	core, err := alicloud.NewClient(alicloud.ClientConfig{
		Config: alicloud.Config{Product: "pvtz",
			Writes: alicloud.Limit{QPS: cfg.QPS, Burst: burst}, Reads: alicloud.Limit{QPS: cfg.ReadQPS},
			Retry:   alicloud.Retry{Attempts: cfg.MaxAttempts, Base: cfg.BaseBackoff, Max: cfg.MaxBackoff},
			Observe: p.observe, Logger: cfg.Logger},
		Endpoint: cfg.Endpoint, Pool: 64, ReadTimeout: cfg.Timeout,
	}, func(sc *sdk.Config) (*pvtz.Client, error) {
		c, err := pvtz.NewClientWithOptions(cfg.Region, sc, cfg.Credential)
		if err != nil {
			return nil, err
		}
		c.Domain = host
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	p.core = core
	return p, nil
}

// DryRun reports whether writes are skipped.
func (p *Provider) DryRun() bool { return p.cfg.DryRun }

// AccessKeyID returns the key id the credential chain resolves to ("" if
// it cannot), never the secret. Show it masked (alicloud.MaskKeyID).
func (p *Provider) AccessKeyID() string {
	cc, err := p.creds.GetCredentials()
	if err != nil || cc == nil {
		return ""
	}
	return cc.AccessKeyId
}

// APIError is an error of the client core: an API answer (Code set) or a
// transport error; its text never holds credentials or the signed URL.
type APIError = alicloud.Error

// CredentialError is a rejected credential; its message names the key id,
// masked.
type CredentialError struct {
	AccessKeyID string // in full, for programs; Error shows it masked
	Err         error
}

func (e *CredentialError) Error() string {
	id := alicloud.MaskKeyID(e.AccessKeyID)
	if id == "" {
		id = "(none found by the credential chain)"
	}
	return fmt.Sprintf("PrivateZone rejected the credentials of access key id %s: %v", id, e.Err)
}

func (e *CredentialError) Unwrap() error { return e.Err }

// Code returns the API error code of err ("" when it is not an API error).
func Code(err error) string { return alicloud.Code(err) }

// IsCredentialError reports whether err is a rejected credential.
func IsCredentialError(err error) bool {
	var ce *CredentialError
	return errors.As(err, &ce)
}

// call runs one API call through the core (budget, retries, error
// classification and redaction); a rejected credential becomes a
// *CredentialError.
func (p *Provider) call(ctx context.Context, action string, write bool, fn func(c *pvtz.Client) error) error {
	err := p.core.Call(ctx, action, write, fn)
	if err != nil && alicloud.IsCredential(err) {
		return &CredentialError{AccessKeyID: p.AccessKeyID(), Err: err}
	}
	return err
}

func (p *Provider) observe(a alicloud.Attempt) {
	if p.cfg.Observe == nil {
		return
	}
	code := a.Code
	if a.Err != nil && code == "" {
		switch a.Kind {
		case alicloud.KindTransport:
			code = "network"
		case alicloud.KindCredential:
			code = "credentials"
		default:
			code = "client"
		}
	}
	p.cfg.Observe(a.Action, a.Write, code, a.Retry)
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
	Remark      string
	RecordCount int
	VPCs        []string // "region/vpc-id"
}

// Zones lists every zone (paged).
func (p *Provider) Zones(ctx context.Context, keyword, vpcID string) ([]Zone, error) {
	var out []Zone
	for page := 1; ; page++ {
		req := pvtz.CreateDescribeZonesRequest()
		req.Scheme = p.core.Scheme()
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
			out = append(out, Zone{ID: z.ZoneId, Name: z.ZoneName, Remark: z.Remark, RecordCount: z.RecordCount})
		}
		if page*PageSize >= resp.TotalItems || len(resp.Zones.Zone) == 0 {
			return out, nil
		}
	}
}

// ZoneInfo returns a zone with its bound VPCs.
func (p *Provider) ZoneInfo(ctx context.Context, zoneID string) (Zone, error) {
	req := pvtz.CreateDescribeZoneInfoRequest()
	req.Scheme = p.core.Scheme()
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

// ZoneRemark is the Remark of a zone CreateZone made for vpcID: it marks
// the zone as pvtz-sync's, so a later CreateZone (a retry, another process,
// a restart) adopts it instead of adding another when it could not be
// bound (PrivateZone zones have no other owner field; Remark ≤ 50).
func ZoneRemark(vpcID string) string {
	r := "dnsaccel pvtz-sync"
	if vpcID != "" {
		r += " vpc=" + vpcID
	}
	return r[:min(len(r), 50)]
}

// CreateZone makes sure one zone named name exists, bound to vpcID in
// region (if vpcID is set), and returns its id. It is idempotent: a zone
// of that name already bound to the VPC is returned; an unbound one of
// ours (ZoneRemark, or added by this process) is adopted and bound;
// AddZone carries a ClientToken kept for the process, so an AddZone whose
// answer was lost and is repeated (by the retries, or the next CreateZone
// after a failed bind) is answered with the zone it made.
func (p *Provider) CreateZone(ctx context.Context, name, vpcID, region string) (string, error) {
	if p.cfg.DryRun {
		p.dry("create-zone", name)
		return "", nil
	}
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	id, bound, err := p.ownZone(ctx, name, vpcID, region)
	if err != nil {
		return "", err
	}
	if id == "" {
		if id, err = p.addZone(ctx, name, vpcID, region); err != nil {
			return "", err
		}
	}
	if vpcID == "" || bound {
		return id, nil
	}
	b := pvtz.CreateBindZoneVpcRequest()
	b.Scheme = p.core.Scheme()
	b.ZoneId = id
	b.Vpcs = &[]pvtz.BindZoneVpcVpcs{{RegionId: region, VpcId: vpcID}}
	if err := p.call(ctx, "BindZoneVpc", true, func(c *pvtz.Client) error { _, err := c.BindZoneVpc(b); return err }); err != nil {
		if alicloud.IsNotFound(err) {
			p.forget(name, vpcID, region, id) // deleted meanwhile: the next try adds a new one
		}
		return id, fmt.Errorf("bind zone %s (%s) to VPC %s in %s: %w", name, id, vpcID, region, err)
	}
	return id, nil
}

// ownZone finds the zone CreateZone should use: one named name bound to
// vpcID (bound), else an unbound one of ours. Further unbound, empty zones
// of ours (duplicates from before this fix) are deleted.
func (p *Provider) ownZone(ctx context.Context, name, vpcID, region string) (id string, bound bool, err error) {
	zs, err := p.Zones(ctx, name, "")
	if err != nil {
		return "", false, err
	}
	var ours []Zone
	for _, z := range zs {
		if endpoint.NormalizeName(z.Name) != endpoint.NormalizeName(name) {
			continue
		}
		info, err := p.ZoneInfo(ctx, z.ID)
		if alicloud.IsNotFound(err) {
			continue // deleted meanwhile
		}
		if err != nil {
			return "", false, err
		}
		for _, v := range info.VPCs {
			if vpcID != "" && v == region+"/"+vpcID {
				return z.ID, true, nil
			}
		}
		p.mu.Lock()
		mine := p.created[z.ID]
		p.mu.Unlock()
		if len(info.VPCs) == 0 && (mine || z.Remark == ZoneRemark(vpcID)) {
			ours = append(ours, z)
		}
	}
	if len(ours) == 0 {
		return "", false, nil
	}
	for _, extra := range ours[1:] {
		if extra.RecordCount != 0 {
			continue
		}
		d := pvtz.CreateDeleteZoneRequest()
		d.Scheme = p.core.Scheme()
		d.ZoneId = extra.ID
		if err := p.call(ctx, "DeleteZone", true, func(c *pvtz.Client) error { _, err := c.DeleteZone(d); return err }); err != nil && !alicloud.IsNotFound(err) {
			p.log.Warn("cannot delete a duplicate unbound zone", "zone", name, "zone_id", extra.ID, "err", err)
		}
	}
	p.log.Info("adopting an unbound zone of ours", "zone", name, "zone_id", ours[0].ID, "vpc", vpcID)
	return ours[0].ID, false, nil
}

// forget drops the ClientToken of a zone that is gone (deleted by someone
// after we made it): the service would answer the token with the old id.
func (p *Provider) forget(name, vpcID, region, id string) {
	p.mu.Lock()
	delete(p.zoneToken, zoneKey(name, vpcID, region))
	delete(p.created, id)
	p.mu.Unlock()
}

func zoneKey(name, vpcID, region string) string { return name + "\x00" + region + "\x00" + vpcID }

// addZone adds the zone with the process's ClientToken for it and marks it
// ours.
func (p *Provider) addZone(ctx context.Context, name, vpcID, region string) (string, error) {
	key := zoneKey(name, vpcID, region)
	p.mu.Lock()
	tok, ok := p.zoneToken[key]
	if !ok {
		tok = alicloud.NewClientToken()
		p.zoneToken[key] = tok
	}
	p.mu.Unlock()
	req := pvtz.CreateAddZoneRequest()
	req.Scheme = p.core.Scheme()
	req.ZoneName, req.ClientToken = name, tok
	var resp *pvtz.AddZoneResponse
	if err := p.call(ctx, "AddZone", true, func(c *pvtz.Client) (err error) { resp, err = c.AddZone(req); return }); err != nil {
		return "", fmt.Errorf("add zone %s: %w", name, err)
	}
	p.mu.Lock()
	p.created[resp.ZoneId] = true
	p.mu.Unlock()
	r := pvtz.CreateUpdateZoneRemarkRequest()
	r.Scheme = p.core.Scheme()
	r.ZoneId, r.Remark = resp.ZoneId, ZoneRemark(vpcID)
	if err := p.call(ctx, "UpdateZoneRemark", true, func(c *pvtz.Client) error { _, err := c.UpdateZoneRemark(r); return err }); err != nil {
		if alicloud.IsNotFound(err) {
			p.forget(name, vpcID, region, resp.ZoneId)
		}
		return resp.ZoneId, fmt.Errorf("mark zone %s (%s) as pvtz-sync's: %w", name, resp.ZoneId, err)
	}
	return resp.ZoneId, nil
}

// Records lists a zone's records, paged (PageSize 100); keyword (EXACT)
// limits the listing to one name.
func (p *Provider) Records(ctx context.Context, zoneID, keyword string) ([]endpoint.Record, error) {
	var out []endpoint.Record
	for page := 1; ; page++ {
		req := pvtz.CreateDescribeZoneRecordsRequest()
		req.Scheme = p.core.Scheme()
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
	req.Scheme = p.core.Scheme()
	req.ZoneId, req.Rr, req.Type, req.Value, req.Remark = zoneID, r.Name, r.Type, r.Value, r.Remark
	req.Ttl = requests.NewInteger(r.TTL)
	if r.Priority > 0 { // MX
		req.Priority = requests.NewInteger(r.Priority)
	}
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
	req.Scheme = p.core.Scheme()
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
	req.Scheme = p.core.Scheme()
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
	req.Scheme = p.core.Scheme()
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
	req.Scheme = p.core.Scheme()
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
		req.Scheme = p.core.Scheme()
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

// ChangeMark identifies the newest entry of a zone's change log: every
// record change (add, update, status, remark, delete) appends one, so an
// unchanged mark means an unchanged zone.
type ChangeMark struct {
	LastID int64 // Id of the newest entry (0: none)
	Total  int   // entries in the log
}

// LatestChange returns the zone's ChangeMark with one DescribeChangeLogs
// call (PageSize 1, newest first): the cheap way to tell whether a cached
// listing of the zone is still current.
func (p *Provider) LatestChange(ctx context.Context, zoneID string) (ChangeMark, error) {
	req := pvtz.CreateDescribeChangeLogsRequest()
	req.Scheme = p.core.Scheme()
	req.ZoneId = zoneID
	req.PageNumber, req.PageSize = requests.NewInteger(1), requests.NewInteger(1)
	var resp *pvtz.DescribeChangeLogsResponse
	if err := p.call(ctx, "DescribeChangeLogs", false, func(c *pvtz.Client) (err error) { resp, err = c.DescribeChangeLogs(req); return }); err != nil {
		return ChangeMark{}, err
	}
	m := ChangeMark{Total: resp.TotalItems}
	if len(resp.ChangeLogs.ChangeLog) > 0 {
		m.LastID = resp.ChangeLogs.ChangeLog[0].Id
	}
	return m, nil
}

// ZonesWithVPCs lists every zone with its bound VPCs in one call
// (DescribeZoneVpcTree).
func (p *Provider) ZonesWithVPCs(ctx context.Context) ([]Zone, error) {
	req := pvtz.CreateDescribeZoneVpcTreeRequest()
	req.Scheme = p.core.Scheme()
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
