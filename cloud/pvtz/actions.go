package pvtz

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/dnsaccel/dnsaccel/cloud/openapi"
)

// Register adds PrivateZone, backed by st, to srv.
func Register(srv *openapi.Server, st *Store) error {
	a := func(h openapi.Handler) openapi.Action { return openapi.Action{Handler: h} }
	w := func(h openapi.Handler) openapi.Action { return openapi.Action{Handler: h, Write: true} }
	return srv.Register(&openapi.Product{
		Name: "pvtz", Version: Version, Domain: Domain, State: st,
		Actions: map[string]openapi.Action{
			"DescribeZones":       a(st.describeZones),
			"DescribeZoneInfo":    a(st.describeZoneInfo),
			"DescribeZoneVpcTree": a(st.describeZoneVpcTree),
			"AddZone":             w(st.addZone),
			"DeleteZone":          w(st.deleteZone),
			"BindZoneVpc":         w(st.bindZoneVpc),
			"UpdateZoneRemark":    w(st.updateZoneRemark),
			"DescribeZoneRecords": a(st.describeZoneRecords),
			"AddZoneRecord":       w(st.addZoneRecord),
			"UpdateZoneRecord":    w(st.updateZoneRecord),
			"DeleteZoneRecord":    w(st.deleteZoneRecord),
			"SetZoneRecordStatus": w(st.setZoneRecordStatus),
			"UpdateRecordRemark":  w(st.updateRecordRemark),
			"DescribeChangeLogs":  a(st.describeChangeLogs),
		},
	})
}

// Limits of the real service (OpenAPI metadata of pvtz 2018-01-01).
const (
	MinTTL       = 5
	MaxTTL       = 86400
	DefaultTTL   = 60
	MaxPageSize  = 100
	DefPageSize  = 20
	MaxRemarkLen = 50
	MaxVpcs      = 150
)

var recordTypes = map[string]bool{"A": true, "AAAA": true, "CNAME": true, "TXT": true, "MX": true, "PTR": true, "SRV": true}

func errZoneID() *openapi.Error {
	return openapi.Errorf(http.StatusBadRequest, "Zone.Invalid.Id", "Zone id is invalid.")
}
func errRecordID() *openapi.Error {
	return openapi.Errorf(http.StatusBadRequest, "Record.Invalid.Id", "Record id is invalid.")
}
func errConflict() *openapi.Error {
	return openapi.Errorf(http.StatusBadRequest, "Record.Invalid.Conflict", "Record is conflict.")
}

func fmtTime(ms int64) string { return time.UnixMilli(ms).UTC().Format("2006-01-02T15:04Z") }

// paging reads PageNumber/PageSize with the service's defaults and bounds.
func paging(r *openapi.Request) (page, size int, err error) {
	p, err := r.Int("PageNumber", 1)
	if err != nil {
		return 0, 0, err
	}
	sz, err := r.Int("PageSize", DefPageSize)
	if err != nil {
		return 0, 0, err
	}
	if p < 1 || p > 1<<31 {
		return 0, 0, openapi.InvalidParameter("PageNumber", r.Get("PageNumber"))
	}
	if sz < 1 || sz > MaxPageSize {
		return 0, 0, openapi.InvalidParameter("PageSize", r.Get("PageSize"))
	}
	return int(p), int(sz), nil
}

func pageBounds(total, page, size int) (lo, hi, pages int) {
	pages = (total + size - 1) / size
	lo = (page - 1) * size
	if lo > total {
		lo = total
	}
	hi = min(lo+size, total)
	return
}

func matches(keyword, mode string, fields ...string) bool {
	if keyword == "" {
		return true
	}
	k := strings.ToLower(keyword)
	for _, f := range fields {
		f = strings.ToLower(f)
		if mode == "EXACT" && f == k || mode == "LIKE" && strings.Contains(f, k) {
			return true
		}
	}
	return false
}

func searchMode(r *openapi.Request, def string) (string, error) {
	m := strings.ToUpper(r.Get("SearchMode"))
	if m == "" {
		return def, nil
	}
	if m != "LIKE" && m != "EXACT" {
		return "", openapi.InvalidParameter("SearchMode", r.Get("SearchMode"))
	}
	return m, nil
}

// ---- response shapes (field names as the API's) ----

type vpcOut struct {
	VpcId      string `json:"VpcId" xml:"VpcId"`
	VpcName    string `json:"VpcName" xml:"VpcName"`
	VpcType    string `json:"VpcType" xml:"VpcType"`
	RegionId   string `json:"RegionId" xml:"RegionId"`
	RegionName string `json:"RegionName" xml:"RegionName"`
}

type vpcInfoOut struct {
	vpcOut
	VpcUserId int64 `json:"VpcUserId" xml:"VpcUserId"`
}

type vpcTreeOut struct {
	vpcOut
	VpcUserId string `json:"VpcUserId" xml:"VpcUserId"`
}

type zoneOut struct {
	ZoneId          string `json:"ZoneId" xml:"ZoneId"`
	ZoneName        string `json:"ZoneName" xml:"ZoneName"`
	Remark          string `json:"Remark" xml:"Remark"`
	RecordCount     int    `json:"RecordCount" xml:"RecordCount"`
	ProxyPattern    string `json:"ProxyPattern" xml:"ProxyPattern"`
	IsPtr           bool   `json:"IsPtr" xml:"IsPtr"`
	ZoneType        string `json:"ZoneType" xml:"ZoneType"`
	ResourceGroupId string `json:"ResourceGroupId" xml:"ResourceGroupId"`
	CreateTime      string `json:"CreateTime" xml:"CreateTime"`
	CreateTimestamp int64  `json:"CreateTimestamp" xml:"CreateTimestamp"`
	UpdateTime      string `json:"UpdateTime" xml:"UpdateTime"`
	UpdateTimestamp int64  `json:"UpdateTimestamp" xml:"UpdateTimestamp"`
}

func zoneFields(z *Zone) zoneOut {
	return zoneOut{
		ZoneId: z.ZoneId, ZoneName: z.ZoneName, Remark: z.Remark, RecordCount: len(z.Records),
		ProxyPattern: z.ProxyPattern, IsPtr: strings.HasSuffix(z.ZoneName, ".in-addr.arpa") || strings.HasSuffix(z.ZoneName, ".ip6.arpa"),
		ZoneType: z.ZoneType, ResourceGroupId: z.ResourceGroupId,
		CreateTime: fmtTime(z.CreateTimestamp), CreateTimestamp: z.CreateTimestamp,
		UpdateTime: fmtTime(z.UpdateTimestamp), UpdateTimestamp: z.UpdateTimestamp,
	}
}

func vpcFields(v Vpc) vpcOut {
	return vpcOut{VpcId: v.VpcId, VpcName: v.VpcId, VpcType: v.VpcType, RegionId: v.RegionId, RegionName: v.RegionId}
}

type recordOut struct {
	RecordId        int64  `json:"RecordId" xml:"RecordId"`
	Rr              string `json:"Rr" xml:"Rr"`
	Type            string `json:"Type" xml:"Type"`
	Value           string `json:"Value" xml:"Value"`
	Ttl             int    `json:"Ttl" xml:"Ttl"`
	Priority        int    `json:"Priority" xml:"Priority"`
	Weight          int    `json:"Weight" xml:"Weight"`
	Line            string `json:"Line" xml:"Line"`
	Status          string `json:"Status" xml:"Status"`
	Remark          string `json:"Remark" xml:"Remark"`
	ZoneId          string `json:"ZoneId" xml:"ZoneId"`
	RegionId        string `json:"RegionId" xml:"RegionId"`
	CreateTime      string `json:"CreateTime" xml:"CreateTime"`
	CreateTimestamp int64  `json:"CreateTimestamp" xml:"CreateTimestamp"`
	UpdateTime      string `json:"UpdateTime" xml:"UpdateTime"`
	UpdateTimestamp int64  `json:"UpdateTimestamp" xml:"UpdateTimestamp"`
}

// ---- zones ----

func (s *Store) describeZones(_ context.Context, r *openapi.Request) (any, error) {
	page, size, err := paging(r)
	if err != nil {
		return nil, err
	}
	mode, err := searchMode(r, "LIKE")
	if err != nil {
		return nil, err
	}
	kw, vpc, region := r.Get("Keyword"), r.Get("QueryVpcId"), r.Get("QueryRegionId")
	s.mu.RLock()
	defer s.mu.RUnlock()
	var all []zoneOut
	for _, id := range s.zoneOrder {
		z := s.zones[id]
		if !matches(kw, mode, z.ZoneName) {
			continue
		}
		if vpc != "" || region != "" {
			found := false
			for _, v := range z.Vpcs {
				if (vpc == "" || v.VpcId == vpc) && (region == "" || v.RegionId == region) {
					found = true
				}
			}
			if !found {
				continue
			}
		}
		all = append(all, zoneFields(z))
	}
	lo, hi, pages := pageBounds(len(all), page, size)
	type zones struct {
		Zone []zoneOut `json:"Zone" xml:"Zone"`
	}
	return struct {
		PageNumber int   `json:"PageNumber" xml:"PageNumber"`
		PageSize   int   `json:"PageSize" xml:"PageSize"`
		TotalItems int   `json:"TotalItems" xml:"TotalItems"`
		TotalPages int   `json:"TotalPages" xml:"TotalPages"`
		Zones      zones `json:"Zones" xml:"Zones"`
	}{page, size, len(all), pages, zones{Zone: append([]zoneOut{}, all[lo:hi]...)}}, nil
}

func (s *Store) zone(r *openapi.Request) (*Zone, error) {
	id, err := r.Required("ZoneId")
	if err != nil {
		return nil, err
	}
	z, ok := s.zones[id]
	if !ok {
		return nil, errZoneID()
	}
	return z, nil
}

func (s *Store) describeZoneInfo(_ context.Context, r *openapi.Request) (any, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	z, err := s.zone(r)
	if err != nil {
		return nil, err
	}
	type bind struct {
		Vpc []vpcInfoOut `json:"Vpc" xml:"Vpc"`
	}
	b := bind{Vpc: []vpcInfoOut{}}
	for _, v := range z.Vpcs {
		b.Vpc = append(b.Vpc, vpcInfoOut{vpcOut: vpcFields(v)})
	}
	return struct {
		zoneOut
		SlaveDns bool `json:"SlaveDns" xml:"SlaveDns"`
		BindVpcs bind `json:"BindVpcs" xml:"BindVpcs"`
	}{zoneOut: zoneFields(z), BindVpcs: b}, nil
}

func (s *Store) describeZoneVpcTree(_ context.Context, _ *openapi.Request) (any, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	type vpcs struct {
		Vpc []vpcTreeOut `json:"Vpc" xml:"Vpc"`
	}
	type zone struct {
		zoneOut
		Vpcs vpcs `json:"Vpcs" xml:"Vpcs"`
	}
	type zones struct {
		Zone []zone `json:"Zone" xml:"Zone"`
	}
	out := zones{Zone: []zone{}}
	for _, id := range s.zoneOrder {
		z := s.zones[id]
		zz := zone{zoneOut: zoneFields(z), Vpcs: vpcs{Vpc: []vpcTreeOut{}}}
		for _, v := range z.Vpcs {
			zz.Vpcs.Vpc = append(zz.Vpcs.Vpc, vpcTreeOut{vpcOut: vpcFields(v)})
		}
		out.Zone = append(out.Zone, zz)
	}
	return struct {
		Zones zones `json:"Zones" xml:"Zones"`
	}{out}, nil
}

func (s *Store) addZone(_ context.Context, r *openapi.Request) (any, error) {
	name, err := r.Required("ZoneName")
	if err != nil {
		return nil, err
	}
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if !validDomain(name) || !strings.Contains(name, ".") && len(name) < 1 {
		return nil, openapi.Errorf(http.StatusBadRequest, "Zone.Invalid.Name", "Zone name is invalid.")
	}
	zt := r.Get("ZoneType")
	if zt == "" {
		zt = "AUTH_ZONE"
	}
	if zt != "AUTH_ZONE" && zt != "CLOUD_PRODUCT_ZONE" {
		return nil, openapi.InvalidParameter("ZoneType", zt)
	}
	pp := r.Get("ProxyPattern")
	if pp == "" {
		pp = "ZONE"
	}
	if pp != "ZONE" && pp != "RECORD" {
		return nil, openapi.InvalidParameter("ProxyPattern", pp)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// ClientToken: a repeat (a retry after a lost answer) is answered with
	// the zone the first call made; the same token for another name is an
	// error, as on every Alibaba Cloud API with idempotency.
	tokKey := ""
	if tok := r.Get("ClientToken"); tok != "" {
		if len(tok) > 64 {
			return nil, openapi.InvalidParameter("ClientToken", tok)
		}
		tokKey = r.AccessKeyID + "\x00" + tok
		if t, ok := s.tokens[tokKey]; ok {
			if t.Name != name {
				return nil, openapi.Errorf(http.StatusBadRequest, "IdempotentParameterMismatch", "The request uses the same client token %q as a previous, but non-identical request.", tok)
			}
			return struct {
				ZoneId   string `json:"ZoneId" xml:"ZoneId"`
				ZoneName string `json:"ZoneName" xml:"ZoneName"`
				Success  bool   `json:"Success" xml:"Success"`
			}{t.ZoneID, name, true}, nil
		}
	}
	now := s.now().UnixMilli()
	z := &Zone{ZoneId: newZoneID(), ZoneName: name, ProxyPattern: pp, ZoneType: zt, ResourceGroupId: r.Get("ResourceGroupId"),
		CreateTimestamp: now, UpdateTimestamp: now, Records: map[int64]*Record{}}
	s.zones[z.ZoneId] = z
	s.zoneOrder = append(s.zoneOrder, z.ZoneId)
	s.addLog(z, "PV_ZONE", z.ZoneId, name, "ADD", "zone "+name, r.RemoteAddr, r.AccessKeyID)
	if tokKey != "" {
		s.tokens[tokKey] = zoneToken{ZoneID: z.ZoneId, Name: name}
	}
	return struct {
		ZoneId   string `json:"ZoneId" xml:"ZoneId"`
		ZoneName string `json:"ZoneName" xml:"ZoneName"`
		Success  bool   `json:"Success" xml:"Success"`
	}{z.ZoneId, name, true}, nil
}

func (s *Store) deleteZone(_ context.Context, r *openapi.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	z, err := s.zone(r)
	if err != nil {
		return nil, err
	}
	if len(z.Vpcs) > 0 {
		return nil, openapi.Errorf(http.StatusBadRequest, "Zone.VpcExists", "Zone have vpc bound.")
	}
	delete(s.zones, z.ZoneId)
	for i, id := range s.zoneOrder {
		if id == z.ZoneId {
			s.zoneOrder = append(s.zoneOrder[:i], s.zoneOrder[i+1:]...)
			break
		}
	}
	s.addLog(z, "PV_ZONE", z.ZoneId, z.ZoneName, "DEL", "zone "+z.ZoneName, r.RemoteAddr, r.AccessKeyID)
	return struct {
		ZoneId string `json:"ZoneId" xml:"ZoneId"`
	}{z.ZoneId}, nil
}

func (s *Store) bindZoneVpc(_ context.Context, r *openapi.Request) (any, error) {
	ids := r.List("Vpcs", "VpcId")
	regions := r.List("Vpcs", "RegionId")
	types := r.List("Vpcs", "VpcType")
	if len(ids) > MaxVpcs {
		return nil, openapi.InvalidParameter("Vpcs", strconv.Itoa(len(ids)))
	}
	var vpcs []Vpc
	for i, id := range ids {
		n := strconv.Itoa(i + 1)
		if id == "" {
			return nil, openapi.MissingParameter("Vpcs." + n + ".VpcId")
		}
		if i >= len(regions) || regions[i] == "" {
			return nil, openapi.MissingParameter("Vpcs." + n + ".RegionId")
		}
		vt := "STANDARD"
		if i < len(types) && types[i] != "" {
			vt = types[i]
		}
		if vt != "STANDARD" && vt != "EDS" {
			return nil, openapi.InvalidParameter("Vpcs."+n+".VpcType", vt)
		}
		vpcs = append(vpcs, Vpc{VpcId: id, RegionId: regions[i], VpcType: vt})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	z, err := s.zone(r)
	if err != nil {
		return nil, err
	}
	for _, v := range vpcs {
		for _, other := range s.zones {
			if other == z || other.ZoneName != z.ZoneName {
				continue
			}
			for _, ov := range other.Vpcs {
				if ov.VpcId == v.VpcId {
					return nil, openapi.Errorf(http.StatusBadRequest, "ZoneVpc.Zone.Repeated", "Vpc is bind to same zone name.")
				}
			}
		}
	}
	if d := r.Get("Dryrun"); d == "true" {
		return struct{}{}, nil
	}
	z.Vpcs = vpcs // the call sets the bound list; none = unbind all
	z.UpdateTimestamp = s.now().UnixMilli()
	s.addLog(z, "PV_ZONE", z.ZoneId, z.ZoneName, "BIND", fmt.Sprintf("vpcs %v", ids), r.RemoteAddr, r.AccessKeyID)
	return struct{}{}, nil
}

// updateZoneRemark sets a zone's Remark (≤ 50 characters; empty clears it).
func (s *Store) updateZoneRemark(_ context.Context, r *openapi.Request) (any, error) {
	remark := r.Get("Remark")
	if len(remark) > MaxRemarkLen {
		return nil, openapi.Errorf(http.StatusBadRequest, "Zone.Remark", "Remark is longer than %d characters.", MaxRemarkLen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	z, err := s.zone(r)
	if err != nil {
		return nil, err
	}
	z.Remark = remark
	z.UpdateTimestamp = s.now().UnixMilli()
	s.addLog(z, "PV_ZONE", z.ZoneId, z.ZoneName, "UPDATE", "remark "+remark, r.RemoteAddr, r.AccessKeyID)
	return struct {
		ZoneId string `json:"ZoneId" xml:"ZoneId"`
	}{z.ZoneId}, nil
}

// ---- records ----

func (s *Store) describeZoneRecords(_ context.Context, r *openapi.Request) (any, error) {
	page, size, err := paging(r)
	if err != nil {
		return nil, err
	}
	mode, err := searchMode(r, "EXACT")
	if err != nil {
		return nil, err
	}
	kw := r.Get("Keyword")
	s.mu.RLock()
	defer s.mu.RUnlock()
	z, err := s.zone(r)
	if err != nil {
		return nil, err
	}
	var sel []*Record
	if kw == "" {
		sel = z.records()
	} else {
		for _, rec := range z.records() {
			if matches(kw, mode, rec.Rr, rec.Value) {
				sel = append(sel, rec)
			}
		}
	}
	lo, hi, pages := pageBounds(len(sel), page, size)
	type records struct {
		Record []recordOut `json:"Record" xml:"Record"`
	}
	out := records{Record: make([]recordOut, 0, hi-lo)}
	for _, rec := range sel[lo:hi] {
		out.Record = append(out.Record, s.recordFields(z, rec))
	}
	return struct {
		PageNumber int     `json:"PageNumber" xml:"PageNumber"`
		PageSize   int     `json:"PageSize" xml:"PageSize"`
		TotalItems int     `json:"TotalItems" xml:"TotalItems"`
		TotalPages int     `json:"TotalPages" xml:"TotalPages"`
		Records    records `json:"Records" xml:"Records"`
	}{page, size, len(sel), pages, out}, nil
}

func (s *Store) recordFields(z *Zone, rec *Record) recordOut {
	region := ""
	if len(z.Vpcs) > 0 {
		region = z.Vpcs[0].RegionId
	}
	return recordOut{
		RecordId: rec.RecordId, Rr: rec.Rr, Type: rec.Type, Value: rec.Value, Ttl: rec.Ttl,
		Priority: rec.Priority, Weight: rec.Weight, Line: rec.Line, Status: rec.Status, Remark: rec.Remark,
		ZoneId: z.ZoneId, RegionId: region,
		CreateTime: fmtTime(rec.CreateTimestamp), CreateTimestamp: rec.CreateTimestamp,
		UpdateTime: fmtTime(rec.UpdateTimestamp), UpdateTimestamp: rec.UpdateTimestamp,
	}
}

// recordInput validates the fields shared by AddZoneRecord and UpdateZoneRecord.
func recordInput(r *openapi.Request) (*Record, error) {
	rr, err := r.Required("Rr")
	if err != nil {
		return nil, err
	}
	typ, err := r.Required("Type")
	if err != nil {
		return nil, err
	}
	val, err := r.Required("Value")
	if err != nil {
		return nil, err
	}
	typ = strings.ToUpper(typ)
	if !recordTypes[typ] {
		return nil, openapi.Errorf(http.StatusBadRequest, "Record.Invalid.Type", "The specified parameter \"Type\" is not valid: %q.", r.Get("Type"))
	}
	rr = strings.ToLower(rr)
	if !validRr(rr) {
		return nil, openapi.Errorf(http.StatusBadRequest, "Record.Invalid.Rr", "The specified parameter \"Rr\" is not valid: %q.", r.Get("Rr"))
	}
	ttl, err := r.Int("Ttl", DefaultTTL)
	if err != nil {
		return nil, err
	}
	if ttl < MinTTL || ttl > MaxTTL {
		return nil, openapi.Errorf(http.StatusBadRequest, "Record.Invalid.Ttl", "The specified parameter \"Ttl\" is not valid: %d (must be %d to %d).", ttl, MinTTL, MaxTTL)
	}
	prio, err := r.Int("Priority", 0)
	if err != nil {
		return nil, err
	}
	if typ == "MX" {
		if !r.Has("Priority") {
			return nil, openapi.MissingParameter("Priority")
		}
		if prio < 1 || prio > 99 {
			return nil, openapi.InvalidParameter("Priority", r.Get("Priority"))
		}
	} else {
		prio = 0
	}
	weight, err := r.Int("Weight", 1)
	if err != nil {
		return nil, err
	}
	if weight < 0 || weight > 100 {
		return nil, openapi.InvalidParameter("Weight", r.Get("Weight"))
	}
	if err := validValue(typ, val); err != nil {
		return nil, openapi.Errorf(http.StatusBadRequest, "Record.Invalid.Value", "The specified parameter \"Value\" is not valid for type %s: %v.", typ, err)
	}
	line := r.Get("Line")
	if line == "" {
		line = "default"
	}
	if typ == "A" || typ == "AAAA" {
		val = net.ParseIP(val).String()
	}
	return &Record{Rr: rr, Type: typ, Value: val, Ttl: int(ttl), Priority: int(prio), Weight: int(weight), Line: line}, nil
}

// conflict reports whether rec may not live in z beside its other records:
// the same Rr/Type/Value (and Line), or a CNAME beside anything at the Rr.
func conflict(z *Zone, rec *Record, except int64) bool {
	for _, o := range z.Records {
		if o.RecordId == except || o.Rr != rec.Rr {
			continue
		}
		if o.Type == rec.Type && strings.EqualFold(o.Value, rec.Value) && o.Line == rec.Line {
			return true
		}
		if (o.Type == "CNAME") != (rec.Type == "CNAME") {
			return true
		}
	}
	return false
}

func (s *Store) addZoneRecord(_ context.Context, r *openapi.Request) (any, error) {
	rec, err := recordInput(r)
	if err != nil {
		return nil, err
	}
	rec.Remark = r.Get("Remark")
	if len(rec.Remark) > MaxRemarkLen {
		return nil, openapi.Errorf(http.StatusBadRequest, "Record.Invalid.Remark", "Remark is longer than %d characters.", MaxRemarkLen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	z, err := s.zone(r)
	if err != nil {
		return nil, err
	}
	if conflict(z, rec, 0) {
		return nil, errConflict()
	}
	now := s.now().UnixMilli()
	rec.RecordId, rec.Status, rec.CreateTimestamp, rec.UpdateTimestamp = s.nextRecord, "ENABLE", now, now
	s.nextRecord++
	z.insert(rec)
	z.UpdateTimestamp = now
	s.addLog(z, "PV_RECORD", strconv.FormatInt(rec.RecordId, 10), rec.Rr, "ADD", fmt.Sprintf("%s %s %s ttl=%d", rec.Rr, rec.Type, rec.Value, rec.Ttl), r.RemoteAddr, r.AccessKeyID)
	return struct {
		RecordId int64 `json:"RecordId" xml:"RecordId"`
		Success  bool  `json:"Success" xml:"Success"`
	}{rec.RecordId, true}, nil
}

func (s *Store) record(r *openapi.Request) (*Zone, *Record, error) {
	v, err := r.Required("RecordId")
	if err != nil {
		return nil, nil, err
	}
	id, perr := strconv.ParseInt(v, 10, 64)
	if perr != nil {
		return nil, nil, openapi.InvalidParameter("RecordId", v)
	}
	z, rec := s.findRecord(id)
	if rec == nil {
		return nil, nil, errRecordID()
	}
	return z, rec, nil
}

type recordIDOut struct {
	RecordId int64 `json:"RecordId" xml:"RecordId"`
}

func (s *Store) updateZoneRecord(_ context.Context, r *openapi.Request) (any, error) {
	in, err := recordInput(r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	z, rec, err := s.record(r)
	if err != nil {
		return nil, err
	}
	if conflict(z, in, rec.RecordId) {
		return nil, errConflict()
	}
	old := fmt.Sprintf("%s %s %s ttl=%d", rec.Rr, rec.Type, rec.Value, rec.Ttl)
	rec.Rr, rec.Type, rec.Value, rec.Ttl, rec.Priority, rec.Weight, rec.Line = in.Rr, in.Type, in.Value, in.Ttl, in.Priority, in.Weight, in.Line
	rec.UpdateTimestamp = s.now().UnixMilli()
	s.addLog(z, "PV_RECORD", strconv.FormatInt(rec.RecordId, 10), rec.Rr, "UPDATE", fmt.Sprintf("%s -> %s %s %s ttl=%d", old, rec.Rr, rec.Type, rec.Value, rec.Ttl), r.RemoteAddr, r.AccessKeyID)
	return recordIDOut{rec.RecordId}, nil
}

func (s *Store) deleteZoneRecord(_ context.Context, r *openapi.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	z, rec, err := s.record(r)
	if err != nil {
		return nil, err
	}
	z.remove(rec.RecordId)
	z.UpdateTimestamp = s.now().UnixMilli()
	s.addLog(z, "PV_RECORD", strconv.FormatInt(rec.RecordId, 10), rec.Rr, "DEL", fmt.Sprintf("%s %s %s", rec.Rr, rec.Type, rec.Value), r.RemoteAddr, r.AccessKeyID)
	return recordIDOut{rec.RecordId}, nil
}

func (s *Store) setZoneRecordStatus(_ context.Context, r *openapi.Request) (any, error) {
	st, err := r.Required("Status")
	if err != nil {
		return nil, err
	}
	st = strings.ToUpper(st)
	if st != "ENABLE" && st != "DISABLE" {
		return nil, openapi.InvalidParameter("Status", r.Get("Status"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	z, rec, err := s.record(r)
	if err != nil {
		return nil, err
	}
	rec.Status = st
	rec.UpdateTimestamp = s.now().UnixMilli()
	s.addLog(z, "PV_RECORD", strconv.FormatInt(rec.RecordId, 10), rec.Rr, st, fmt.Sprintf("%s %s %s", rec.Rr, rec.Type, rec.Value), r.RemoteAddr, r.AccessKeyID)
	return struct {
		RecordId int64  `json:"RecordId" xml:"RecordId"`
		Status   string `json:"Status" xml:"Status"`
	}{rec.RecordId, st}, nil
}

func (s *Store) updateRecordRemark(_ context.Context, r *openapi.Request) (any, error) {
	remark := r.Get("Remark")
	if len(remark) > MaxRemarkLen {
		return nil, openapi.Errorf(http.StatusBadRequest, "Record.Invalid.Remark", "Remark is longer than %d characters.", MaxRemarkLen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	z, rec, err := s.record(r)
	if err != nil {
		return nil, err
	}
	rec.Remark = remark
	rec.UpdateTimestamp = s.now().UnixMilli()
	s.addLog(z, "PV_RECORD", strconv.FormatInt(rec.RecordId, 10), rec.Rr, "UPDATE_REMARK", remark, r.RemoteAddr, r.AccessKeyID)
	return recordIDOut{rec.RecordId}, nil
}

func (s *Store) describeChangeLogs(_ context.Context, r *openapi.Request) (any, error) {
	page, size, err := paging(r)
	if err != nil {
		return nil, err
	}
	start, err := r.Int("StartTimestamp", 0)
	if err != nil {
		return nil, err
	}
	end, err := r.Int("EndTimestamp", 0)
	if err != nil {
		return nil, err
	}
	et := r.Get("EntityType")
	if et != "" && et != "PV_ZONE" && et != "PV_RECORD" {
		return nil, openapi.InvalidParameter("EntityType", et)
	}
	kw, zoneID := r.Get("Keyword"), r.Get("ZoneId")
	s.mu.RLock()
	defer s.mu.RUnlock()
	if zoneID != "" {
		if _, ok := s.zones[zoneID]; !ok {
			// Deleted zones keep their logs; only a never-seen id is invalid.
			seen := false
			for _, l := range s.logs {
				if l.ZoneId == zoneID {
					seen = true
					break
				}
			}
			if !seen {
				return nil, errZoneID()
			}
		}
	}
	type logOut struct {
		Id             int64  `json:"Id" xml:"Id"`
		OperTimestamp  int64  `json:"OperTimestamp" xml:"OperTimestamp"`
		OperTime       string `json:"OperTime" xml:"OperTime"`
		OperAction     string `json:"OperAction" xml:"OperAction"`
		OperObject     string `json:"OperObject" xml:"OperObject"`
		OperIp         string `json:"OperIp" xml:"OperIp"`
		EntityId       string `json:"EntityId" xml:"EntityId"`
		EntityName     string `json:"EntityName" xml:"EntityName"`
		Content        string `json:"Content" xml:"Content"`
		CreatorId      string `json:"CreatorId" xml:"CreatorId"`
		CreatorType    string `json:"CreatorType" xml:"CreatorType"`
		CreatorSubType string `json:"CreatorSubType" xml:"CreatorSubType"`
	}
	var sel []logOut
	for i := len(s.logs) - 1; i >= 0; i-- { // newest first
		l := s.logs[i]
		if zoneID != "" && l.ZoneId != zoneID || et != "" && l.EntityType != et ||
			start > 0 && l.OperTimestamp < start || end > 0 && l.OperTimestamp > end ||
			!matches(kw, "LIKE", l.EntityName, l.Content) {
			continue
		}
		sel = append(sel, logOut{Id: l.Id, OperTimestamp: l.OperTimestamp, OperTime: fmtTime(l.OperTimestamp),
			OperAction: l.OperAction, OperObject: l.OperObject, OperIp: hostOnly(l.OperIp), EntityId: l.EntityId,
			EntityName: l.EntityName, Content: l.Content, CreatorId: l.CreatorId, CreatorType: "USER", CreatorSubType: "ACCESS_KEY"})
	}
	lo, hi, pages := pageBounds(len(sel), page, size)
	type logs struct {
		ChangeLog []logOut `json:"ChangeLog" xml:"ChangeLog"`
	}
	return struct {
		PageNumber int  `json:"PageNumber" xml:"PageNumber"`
		PageSize   int  `json:"PageSize" xml:"PageSize"`
		TotalItems int  `json:"TotalItems" xml:"TotalItems"`
		TotalPages int  `json:"TotalPages" xml:"TotalPages"`
		ChangeLogs logs `json:"ChangeLogs" xml:"ChangeLogs"`
	}{page, size, len(sel), pages, logs{ChangeLog: append([]logOut{}, sel[lo:hi]...)}}, nil
}

func hostOnly(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
