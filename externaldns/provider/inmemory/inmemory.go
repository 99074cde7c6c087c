// Package inmemory is a PrivateZone kept in memory, as ExternalDNS's
// provider/inmemory: the semantics the sync relies on (one record per
// value, the owner in each record's Remark, Record.Invalid.Conflict on an
// identical create resolved as provider.Provider resolves it, idempotent
// deletes, a change log), plus what tests need around them: records seeded
// or changed behind the sync's back, injected failures per call and record,
// and the list of calls made. It implements the methods of
// provider.Provider that controller and ctl call.
package inmemory

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/provider"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
)

// API actions, as PrivateZone names them (Call.Action, FailFunc's action).
const (
	DescribeZones       = "DescribeZones"
	DescribeZoneInfo    = "DescribeZoneInfo"
	DescribeZoneVpcTree = "DescribeZoneVpcTree"
	DescribeZoneRecords = "DescribeZoneRecords"
	DescribeChangeLogs  = "DescribeChangeLogs"
	AddZone             = "AddZone"
	AddZoneRecord       = "AddZoneRecord"
	UpdateZoneRecord    = "UpdateZoneRecord"
	UpdateRecordRemark  = "UpdateRecordRemark"
	SetZoneRecordStatus = "SetZoneRecordStatus"
	DeleteZoneRecord    = "DeleteZoneRecord"
)

var writes = map[string]bool{AddZone: true, AddZoneRecord: true, UpdateZoneRecord: true, UpdateRecordRemark: true,
	SetZoneRecordStatus: true, DeleteZoneRecord: true}

// Call is one call made to the provider.
type Call struct {
	Action string
	Zone   string          // zone id, when the call names one
	Record endpoint.Record // the record written (Name = the keyword of a listing)
	Err    error
}

// Write reports whether the call is a write.
func (c Call) Write() bool { return writes[c.Action] }

// FailFunc decides whether a call fails: a non-nil error is returned to the
// caller and nothing changes. r is the record the call concerns (as stored
// for calls by id; Name = the keyword for a listing).
type FailFunc func(action string, r endpoint.Record) error

// Provider is an in-memory PrivateZone; safe for concurrent use.
type Provider struct {
	mu     sync.Mutex
	zones  []*zone
	nextID int64
	calls  []Call
	fail   FailFunc
	now    func() time.Time
}

type zone struct {
	id, name string
	vpcs     []string // region/vpc-id
	recs     map[int64]endpoint.Record
	log      []provider.ChangeLog // oldest first
}

// New returns an empty provider.
func New() *Provider { return &Provider{nextID: 1000, now: time.Now} }

// SetNow sets the clock of the change log.
func (p *Provider) SetNow(now func() time.Time) { p.mu.Lock(); p.now = now; p.mu.Unlock() }

// FailWith installs (nil: removes) a failure injector.
func (p *Provider) FailWith(f FailFunc) { p.mu.Lock(); p.fail = f; p.mu.Unlock() }

// Calls returns the calls made so far, in order.
func (p *Provider) Calls() []Call {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Call(nil), p.calls...)
}

// Writes returns the write calls made so far (failed ones included).
func (p *Provider) Writes() []Call {
	var out []Call
	for _, c := range p.Calls() {
		if c.Write() {
			out = append(out, c)
		}
	}
	return out
}

// Count returns how many calls of action were made.
func (p *Provider) Count(action string) int {
	n := 0
	for _, c := range p.Calls() {
		if c.Action == action {
			n++
		}
	}
	return n
}

// ResetCalls forgets the calls made so far.
func (p *Provider) ResetCalls() { p.mu.Lock(); p.calls = nil; p.mu.Unlock() }

// Seed adds records to a zone directly (no call recorded): as if created by
// hand or by an earlier run. A record without a Status is ENABLE. It returns
// the ids given.
func (p *Provider) Seed(zoneID string, recs ...endpoint.Record) ([]int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	z := p.zone(zoneID)
	if z == nil {
		return nil, fmt.Errorf("seed: zone %s does not exist", zoneID)
	}
	ids := make([]int64, 0, len(recs))
	for _, r := range recs {
		p.nextID++
		r.ID = p.nextID
		r.Name = strings.ToLower(r.Name)
		if r.Status == "" {
			r.Status = "ENABLE"
		}
		z.recs[r.ID] = r
		ids = append(ids, r.ID)
	}
	return ids, nil
}

// Tamper changes a record directly (no call recorded): a change made behind
// the sync's back. mutate nil removes the record.
func (p *Provider) Tamper(zoneID string, id int64, mutate func(*endpoint.Record)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	z := p.zone(zoneID)
	if z == nil {
		return fmt.Errorf("tamper: zone %s does not exist", zoneID)
	}
	r, ok := z.recs[id]
	if !ok {
		return fmt.Errorf("tamper: record %d does not exist", id)
	}
	if mutate == nil {
		delete(z.recs, id)
		return nil
	}
	mutate(&r)
	r.ID = id
	z.recs[id] = r
	return nil
}

// Snapshot returns a zone's records sorted by id (no call recorded).
func (p *Provider) Snapshot(zoneID string) []endpoint.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	z := p.zone(zoneID)
	if z == nil {
		return nil
	}
	return z.sorted()
}

func (z *zone) sorted() []endpoint.Record {
	out := make([]endpoint.Record, 0, len(z.recs))
	for _, r := range z.recs {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (p *Provider) zone(id string) *zone {
	for _, z := range p.zones {
		if z.id == id {
			return z
		}
	}
	return nil
}

// begin records a call and applies the failure injector; p.mu is held.
func (p *Provider) begin(ctx context.Context, action, zoneID string, r endpoint.Record) error {
	err := ctx.Err()
	if err == nil && p.fail != nil {
		err = p.fail(action, r)
	}
	if err != nil {
		err = fmt.Errorf("%s: %w", action, err)
	}
	p.calls = append(p.calls, Call{Action: action, Zone: zoneID, Record: r, Err: err})
	return err
}

func (p *Provider) noZone(action, id string) error {
	return &provider.APIError{Action: action, Code: "Zone.Invalid.Id", Message: "zone " + id + " does not exist", HTTPStatus: 400}
}

func (p *Provider) noRecord(action string, id int64) error {
	return &provider.APIError{Action: action, Code: "Record.Invalid.Id", Message: fmt.Sprintf("record %d does not exist", id), HTTPStatus: 400}
}

// find returns the zone holding record id.
func (p *Provider) find(id int64) (*zone, endpoint.Record, bool) {
	for _, z := range p.zones {
		if r, ok := z.recs[id]; ok {
			return z, r, true
		}
	}
	return nil, endpoint.Record{}, false
}

func (p *Provider) logChange(z *zone, action, entity, content string) {
	z.log = append(z.log, provider.ChangeLog{Time: p.now().UTC(), Action: action, Object: "RECORD", Entity: entity,
		Content: content, Creator: "inmemory"})
}

// FindZone returns the id of the zone named name (bound to vpcID when set),
// "" when there is none; two matches are an error, as provider's.
func (p *Provider) FindZone(ctx context.Context, name, vpcID string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	name = endpoint.NormalizeName(name)
	if err := p.begin(ctx, DescribeZones, "", endpoint.Record{Name: name}); err != nil {
		return "", err
	}
	var ids []string
	for _, z := range p.zones {
		if z.name != name {
			continue
		}
		if vpcID != "" && !z.boundTo(vpcID) {
			continue
		}
		ids = append(ids, z.id)
	}
	switch len(ids) {
	case 0:
		return "", nil
	case 1:
		return ids[0], nil
	}
	return "", fmt.Errorf("zone %s: %d zones have that name (%s); bind one to the VPC with --vpc-id", name, len(ids), strings.Join(ids, ", "))
}

func (z *zone) boundTo(vpcID string) bool {
	for _, v := range z.vpcs {
		if _, id, _ := strings.Cut(v, "/"); id == vpcID {
			return true
		}
	}
	return false
}

// CreateZone adds a zone bound to vpcID in region (if vpcID is set).
func (p *Provider) CreateZone(ctx context.Context, name, vpcID, region string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.begin(ctx, AddZone, "", endpoint.Record{Name: name}); err != nil {
		return "", err
	}
	p.nextID++
	z := &zone{id: fmt.Sprintf("zone-%d", p.nextID), name: endpoint.NormalizeName(name), recs: map[int64]endpoint.Record{}}
	if vpcID != "" {
		z.vpcs = []string{region + "/" + vpcID}
	}
	p.zones = append(p.zones, z)
	return z.id, nil
}

func (z *zone) info() provider.Zone {
	return provider.Zone{ID: z.id, Name: z.name, RecordCount: len(z.recs), VPCs: append([]string(nil), z.vpcs...)}
}

// ZoneInfo returns a zone (by id) with its bound VPCs.
func (p *Provider) ZoneInfo(ctx context.Context, zoneID string) (provider.Zone, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.begin(ctx, DescribeZoneInfo, zoneID, endpoint.Record{}); err != nil {
		return provider.Zone{}, err
	}
	z := p.zone(zoneID)
	if z == nil {
		return provider.Zone{}, p.noZone(DescribeZoneInfo, zoneID)
	}
	return z.info(), nil
}

// ZonesWithVPCs lists every zone with its bound VPCs.
func (p *Provider) ZonesWithVPCs(ctx context.Context) ([]provider.Zone, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.begin(ctx, DescribeZoneVpcTree, "", endpoint.Record{}); err != nil {
		return nil, err
	}
	out := make([]provider.Zone, 0, len(p.zones))
	for _, z := range p.zones {
		out = append(out, z.info())
	}
	return out, nil
}

// Records lists a zone's records by id; keyword limits them to one name.
func (p *Provider) Records(ctx context.Context, zoneID, keyword string) ([]endpoint.Record, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.begin(ctx, DescribeZoneRecords, zoneID, endpoint.Record{Name: keyword}); err != nil {
		return nil, err
	}
	z := p.zone(zoneID)
	if z == nil {
		return nil, p.noZone(DescribeZoneRecords, zoneID)
	}
	var out []endpoint.Record
	for _, r := range z.sorted() {
		if keyword == "" || strings.EqualFold(r.Name, keyword) {
			out = append(out, r)
		}
	}
	return out, nil
}

func sameValue(a, b endpoint.Record) bool {
	return strings.EqualFold(a.Name, b.Name) && a.Type == b.Type &&
		strings.EqualFold(strings.TrimSuffix(a.Value, "."), strings.TrimSuffix(b.Value, "."))
}

// Create adds a record and returns its id. An identical record (name, type,
// value) is a conflict, resolved as provider.Provider resolves it: adopted
// when it carries ownerID (Remark and TTL brought up to date), or when it
// has no owner and adopt is set; else provider.ErrConflict.
func (p *Provider) Create(ctx context.Context, zoneID, ownerID string, r endpoint.Record, adopt bool) (int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.begin(ctx, AddZoneRecord, zoneID, r); err != nil {
		return 0, err
	}
	z := p.zone(zoneID)
	if z == nil {
		return 0, p.noZone(AddZoneRecord, zoneID)
	}
	if endpoint.TypeOf(r.Value) != "" && r.Type != endpoint.TypeOf(r.Value) || r.TTL < 5 || r.TTL > 86400 || len(r.Remark) > registry.MaxRemark {
		return 0, &provider.APIError{Action: AddZoneRecord, Code: "Record.Invalid", HTTPStatus: 400,
			Message: fmt.Sprintf("invalid record %s %s %s ttl=%d remark=%q", r.Name, r.Type, r.Value, r.TTL, r.Remark)}
	}
	for _, c := range z.sorted() {
		if !sameValue(c, r) {
			continue
		}
		owner, _, owned := registry.Parse(c.Remark)
		switch {
		case owned && owner == ownerID:
			c.Remark, c.TTL = r.Remark, r.TTL
		case !owned && adopt:
			c.Remark = r.Remark
		default:
			return 0, fmt.Errorf("create %s %s %s: %w (record id %d, remark %q)", r.Name, r.Type, r.Value, provider.ErrConflict, c.ID, c.Remark)
		}
		z.recs[c.ID] = c
		p.logChange(z, "UPDATE", c.Name, fmt.Sprintf("adopt %s %s %s", c.Name, c.Type, c.Value))
		return c.ID, nil
	}
	p.nextID++
	r.ID = p.nextID
	r.Name = strings.ToLower(r.Name)
	if r.Status == "" {
		r.Status = "ENABLE"
	}
	z.recs[r.ID] = r
	p.logChange(z, "ADD", r.Name, fmt.Sprintf("%s %s %s ttl=%d", r.Name, r.Type, r.Value, r.TTL))
	return r.ID, nil
}

// Update sets a record's name, type, value and TTL (by r.ID).
func (p *Provider) Update(ctx context.Context, r endpoint.Record) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	z, old, ok := p.find(r.ID)
	if err := p.begin(ctx, UpdateZoneRecord, zoneOf(z), r); err != nil {
		return err
	}
	if !ok {
		return p.noRecord(UpdateZoneRecord, r.ID)
	}
	old.Name, old.Type, old.Value, old.TTL = strings.ToLower(r.Name), r.Type, r.Value, r.TTL
	if r.Priority > 0 {
		old.Priority = r.Priority
	}
	z.recs[r.ID] = old
	p.logChange(z, "UPDATE", old.Name, fmt.Sprintf("%s %s %s ttl=%d", old.Name, old.Type, old.Value, old.TTL))
	return nil
}

func zoneOf(z *zone) string {
	if z == nil {
		return ""
	}
	return z.id
}

// UpdateRemark sets a record's Remark.
func (p *Provider) UpdateRemark(ctx context.Context, id int64, remark string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	z, r, ok := p.find(id)
	if err := p.begin(ctx, UpdateRecordRemark, zoneOf(z), withRemark(r, id, remark)); err != nil {
		return err
	}
	if !ok {
		return p.noRecord(UpdateRecordRemark, id)
	}
	if len(remark) > registry.MaxRemark {
		return &provider.APIError{Action: UpdateRecordRemark, Code: "Remark.Invalid", HTTPStatus: 400, Message: "remark too long"}
	}
	r.Remark = remark
	z.recs[id] = r
	p.logChange(z, "UPDATE", r.Name, fmt.Sprintf("remark %q", remark))
	return nil
}

func withRemark(r endpoint.Record, id int64, remark string) endpoint.Record {
	r.ID, r.Remark = id, remark
	return r
}

// SetStatus enables or disables a record.
func (p *Provider) SetStatus(ctx context.Context, id int64, status string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	z, r, ok := p.find(id)
	rr := r
	rr.ID, rr.Status = id, status
	if err := p.begin(ctx, SetZoneRecordStatus, zoneOf(z), rr); err != nil {
		return err
	}
	if !ok {
		return p.noRecord(SetZoneRecordStatus, id)
	}
	if status != "ENABLE" && status != "DISABLE" {
		return &provider.APIError{Action: SetZoneRecordStatus, Code: "Status.Invalid", HTTPStatus: 400, Message: "status " + status}
	}
	r.Status = status
	z.recs[id] = r
	p.logChange(z, "UPDATE", r.Name, "status "+status)
	return nil
}

// Delete removes a record; one already gone is not an error.
func (p *Provider) Delete(ctx context.Context, id int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	z, r, ok := p.find(id)
	r.ID = id
	if err := p.begin(ctx, DeleteZoneRecord, zoneOf(z), r); err != nil {
		return err
	}
	if !ok {
		return nil
	}
	delete(z.recs, id)
	p.logChange(z, "DEL", r.Name, fmt.Sprintf("%s %s %s", r.Name, r.Type, r.Value))
	return nil
}

// ChangeLogs returns a zone's change log, newest first, at most limit
// entries (0: all).
func (p *Provider) ChangeLogs(ctx context.Context, zoneID string, limit int) ([]provider.ChangeLog, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.begin(ctx, DescribeChangeLogs, zoneID, endpoint.Record{}); err != nil {
		return nil, err
	}
	z := p.zone(zoneID)
	if z == nil {
		return nil, p.noZone(DescribeChangeLogs, zoneID)
	}
	var out []provider.ChangeLog
	for i := len(z.log) - 1; i >= 0; i-- {
		out = append(out, z.log[i])
		if limit > 0 && len(out) >= limit {
			break
		}
	}
	return out, nil
}
