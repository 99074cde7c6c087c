// Package ecs is the ECS (2014-05-26) part of the OpenAPI emulator: the
// ENI actions a CNI uses — CreateNetworkInterface, AttachNetworkInterface
// (asynchronous: Available → Attaching → InUse), DetachNetworkInterface,
// DeleteNetworkInterface, AssignPrivateIpAddresses (several per call),
// UnassignPrivateIpAddresses, DescribeNetworkInterfaces,
// DescribeInstanceTypes, DescribeVSwitches (free address counts) — with the
// real error codes (InvalidVSwitchId.IpNotEnough,
// QuotaExceeded.PrivateIpAddress, EniPerInstanceLimitExceeded, ...) and
// ClientToken idempotency. Signing, throttling, faults and the request log
// come from cloud/openapi.
//
// With Config.Local (cloud-emulator --local-enis) an attached ENI is a real
// kernel interface in the host namespace: one end of a veth pair whose
// other end is a port of the vSwitch's bridge in a "vpc" namespace, which
// holds each vSwitch's gateway address, routes between vSwitches and knows
// which ENI (MAC) holds each private address, as the VPC does.
package ecs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/dnsaccel/dnsaccel/cloud/metadata"
	"github.com/dnsaccel/dnsaccel/cloud/openapi"
)

// API identity.
const (
	Version = "2014-05-26"
	Domain  = "ecs.aliyuncs.com"
)

// InstanceType is an instance type's ENI limits.
type InstanceType struct {
	ID          string `json:"InstanceTypeId"`
	ENIs        int    `json:"EniQuantity"`
	IPsPerENI   int    `json:"EniPrivateIpAddressQuantity"`
	CPUCores    int    `json:"CpuCoreCount"`
	MemoryGiB   int    `json:"MemorySize"`
	Description string `json:"-"`
}

// DefaultInstanceTypes is the emulator's catalogue.
var DefaultInstanceTypes = []InstanceType{
	{ID: "ecs.g7.large", ENIs: 3, IPsPerENI: 6, CPUCores: 2, MemoryGiB: 8},
	{ID: "ecs.g7.xlarge", ENIs: 4, IPsPerENI: 15, CPUCores: 4, MemoryGiB: 16},
	{ID: "ecs.g7.2xlarge", ENIs: 6, IPsPerENI: 15, CPUCores: 8, MemoryGiB: 32},
	{ID: "ecs.g7.4xlarge", ENIs: 8, IPsPerENI: 30, CPUCores: 16, MemoryGiB: 64},
	{ID: "ecs.g7.8xlarge", ENIs: 8, IPsPerENI: 30, CPUCores: 32, MemoryGiB: 128},
}

// VSwitchConfig is one vSwitch of the VPC.
type VSwitchConfig struct {
	ID   string
	CIDR string
	Zone string // default Config.Zone
}

// Config describes the emulated region, VPC and the one instance.
type Config struct {
	Region, Zone   string
	VPCID          string
	VPCCIDR        string
	VSwitches      []VSwitchConfig
	SecurityGroups []string
	InstanceID     string
	InstanceType   string
	Hostname       string
	InstanceTypes  []InstanceType
	// AttachDelay: Attaching → InUse; DetachDelay: Detaching → Available.
	AttachDelay, DetachDelay time.Duration
	// Local makes attached ENIs kernel interfaces (nil: state only).
	Local  *LocalConfig
	Logger *slog.Logger
}

// DefaultConfig is what bin/cloud-emulator serves.
func DefaultConfig() Config {
	return Config{
		Region: "cn-hangzhou", Zone: "cn-hangzhou-i", VPCID: "vpc-dnsaccelemu0000000001", VPCCIDR: "192.168.0.0/16",
		VSwitches: []VSwitchConfig{
			{ID: "vsw-dnsaccelemu0000000001", CIDR: "192.168.0.0/24"},
			{ID: "vsw-dnsaccelemu0000000002", CIDR: "192.168.1.0/24"},
		},
		SecurityGroups: []string{"sg-dnsaccelemu000000001"},
		InstanceID:     "i-dnsaccelemu000000001", InstanceType: "ecs.g7.2xlarge", Hostname: "dnsaccel-node",
		AttachDelay: 200 * time.Millisecond, DetachDelay: 100 * time.Millisecond,
	}
}

type vswitch struct {
	ID, Zone string
	CIDR     netip.Prefix
	Gateway  netip.Addr
	used     map[netip.Addr]string // address -> ENI id (or "held")
}

func (v *vswitch) size() int { return 1 << (32 - v.CIDR.Bits()) }

// reserved: the network address and the last three (gateway .253, .254,
// broadcast), as a VPC vSwitch reserves them.
func (v *vswitch) reserved(a netip.Addr) bool {
	if a == v.CIDR.Addr() {
		return true
	}
	last := lastAddr(v.CIDR)
	for i := 0; i < 3; i++ {
		if a == last {
			return true
		}
		last = last.Prev()
	}
	return false
}

func (v *vswitch) free() int { return v.size() - 4 - len(v.used) }

func (v *vswitch) take(eni string) (netip.Addr, bool) {
	for a := v.CIDR.Addr().Next(); v.CIDR.Contains(a); a = a.Next() {
		if v.reserved(a) {
			continue
		}
		if _, ok := v.used[a]; !ok {
			v.used[a] = eni
			return a, true
		}
	}
	return netip.Addr{}, false
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ENI is an emulated network interface (also its persisted form).
type ENI struct {
	ID             string       `json:"id"`
	MAC            string       `json:"mac"`
	VSwitchID      string       `json:"vswitchId"`
	Name           string       `json:"name,omitempty"`
	Description    string       `json:"description,omitempty"`
	SecurityGroups []string     `json:"securityGroups"`
	Status         string       `json:"status"` // Available, Attaching, InUse, Detaching
	InstanceID     string       `json:"instanceId,omitempty"`
	Type           string       `json:"type"` // Primary, Secondary
	Primary        netip.Addr   `json:"primary"`
	Secondary      []netip.Addr `json:"secondary,omitempty"`
	Created        time.Time    `json:"created"`
	DeviceIndex    int          `json:"deviceIndex"`
	// Link is the kernel interface's name in --local-enis mode.
	Link string `json:"link,omitempty"`
	gen  int    // bumps on every state change, so stale timers do nothing
}

// IPs returns the primary and secondary addresses.
func (e *ENI) IPs() []netip.Addr { return append([]netip.Addr{e.Primary}, e.Secondary...) }

type tokenEntry struct {
	hash string
	resp any
}

// Store is the ECS emulator's state.
type Store struct {
	cfg   Config
	log   *slog.Logger
	mu    sync.Mutex
	vsw   map[string]*vswitch
	enis  map[string]*ENI
	types map[string]InstanceType
	tok   map[string]tokenEntry
	local *Local
	srv   *openapi.Server
	wg    sync.WaitGroup
	stop  chan struct{}
}

// NewStore builds the VPC, its vSwitches and the instance with its primary
// ENI (and, with cfg.Local, the vpc namespace and the primary ENI's link).
func NewStore(cfg Config) (*Store, error) {
	d := DefaultConfig()
	if cfg.Region == "" {
		cfg.Region = d.Region
	}
	if cfg.Zone == "" {
		cfg.Zone = d.Zone
	}
	if cfg.VPCID == "" {
		cfg.VPCID, cfg.VPCCIDR = d.VPCID, d.VPCCIDR
	}
	if len(cfg.VSwitches) == 0 {
		cfg.VSwitches = d.VSwitches
	}
	if len(cfg.SecurityGroups) == 0 {
		cfg.SecurityGroups = d.SecurityGroups
	}
	if cfg.InstanceID == "" {
		cfg.InstanceID = d.InstanceID
	}
	if cfg.InstanceType == "" {
		cfg.InstanceType = d.InstanceType
	}
	if cfg.Hostname == "" {
		cfg.Hostname = d.Hostname
	}
	if len(cfg.InstanceTypes) == 0 {
		cfg.InstanceTypes = DefaultInstanceTypes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{cfg: cfg, log: cfg.Logger, vsw: map[string]*vswitch{}, enis: map[string]*ENI{}, types: map[string]InstanceType{}, tok: map[string]tokenEntry{}, stop: make(chan struct{})}
	for _, t := range cfg.InstanceTypes {
		s.types[t.ID] = t
	}
	if _, ok := s.types[cfg.InstanceType]; !ok {
		return nil, fmt.Errorf("instance type %s not in the catalogue", cfg.InstanceType)
	}
	for _, v := range cfg.VSwitches {
		p, err := netip.ParsePrefix(v.CIDR)
		if err != nil || !p.Addr().Is4() || p.Bits() > 29 {
			return nil, fmt.Errorf("vSwitch %s: CIDR %q: want an IPv4 prefix of /29 or larger", v.ID, v.CIDR)
		}
		p = p.Masked()
		z := v.Zone
		if z == "" {
			z = cfg.Zone
		}
		s.vsw[v.ID] = &vswitch{ID: v.ID, Zone: z, CIDR: p, Gateway: lastAddr(p).Prev().Prev(), used: map[netip.Addr]string{}}
	}
	// The instance's primary ENI, on the first vSwitch.
	first := s.vsw[cfg.VSwitches[0].ID]
	prim := &ENI{ID: "eni-" + randID(20), MAC: randMAC(), VSwitchID: first.ID, Name: "primary", SecurityGroups: cfg.SecurityGroups,
		Status: "InUse", InstanceID: cfg.InstanceID, Type: "Primary", Created: time.Now().UTC()}
	a, _ := first.take(prim.ID)
	prim.Primary = a
	s.enis[prim.ID] = prim
	if cfg.Local != nil {
		l, err := NewLocal(*cfg.Local, s.vswitchNets())
		if err != nil {
			return nil, err
		}
		s.local = l
		if err := s.localAttach(prim, true); err != nil {
			l.Close()
			return nil, err
		}
	}
	return s, nil
}

func (s *Store) vswitchNets() []LocalVSwitch {
	var out []LocalVSwitch
	for _, v := range s.cfg.VSwitches {
		sw := s.vsw[v.ID]
		out = append(out, LocalVSwitch{ID: sw.ID, CIDR: sw.CIDR, Gateway: sw.Gateway})
	}
	return out
}

// Close stops timers and removes kernel interfaces and the vpc namespace.
func (s *Store) Close() error {
	s.mu.Lock()
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.mu.Unlock()
	s.wg.Wait()
	if s.local != nil {
		return s.local.Close()
	}
	return nil
}

// Local returns the kernel side (nil without --local-enis).
func (s *Store) Local() *Local { return s.local }

// Config returns the configuration with defaults applied.
func (s *Store) Config() Config { return s.cfg }

func randID(n int) string {
	const alpha = "0123456789abcdefghijklmnopqrstuvwxyz"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alpha[int(b[i])%len(alpha)]
	}
	return string(b)
}

func randMAC() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("00:16:3e:%02x:%02x:%02x", b[0], b[1], b[2])
}

// Register adds ECS to an OpenAPI server.
func Register(srv *openapi.Server, s *Store) error {
	s.srv = srv
	r := func(h openapi.Handler) openapi.Action { return openapi.Action{Handler: h} }
	w := func(h openapi.Handler) openapi.Action { return openapi.Action{Handler: h, Write: true} }
	return srv.Register(&openapi.Product{
		Name: "ecs", Version: Version, Domain: Domain, State: s,
		Actions: map[string]openapi.Action{
			"CreateNetworkInterface":     w(s.create),
			"AttachNetworkInterface":     w(s.attach),
			"DetachNetworkInterface":     w(s.detach),
			"DeleteNetworkInterface":     w(s.delete),
			"AssignPrivateIpAddresses":   w(s.assign),
			"UnassignPrivateIpAddresses": w(s.unassign),
			"DescribeNetworkInterfaces":  r(s.describeENIs),
			"DescribeInstanceTypes":      r(s.describeTypes),
			"DescribeVSwitches":          r(s.describeVSwitches),
		},
	})
}

func (s *Store) dirty() {
	if s.srv != nil {
		s.srv.MarkDirty()
	}
}

// Errors (codes and wording of the real API).
func errENINotFound(id string) *openapi.Error {
	return openapi.Errorf(http.StatusNotFound, "InvalidEniId.NotFound", "The specified NetworkInterfaceId %q does not exist.", id)
}
func errInstanceNotFound(id string) *openapi.Error {
	return openapi.Errorf(http.StatusNotFound, "InvalidInstanceId.NotFound", "The specified InstanceId %q does not exist.", id)
}
func errVSwitchNotFound(id string) *openapi.Error {
	return openapi.Errorf(http.StatusNotFound, "InvalidVSwitchId.NotFound", "The specified VSwitchId %q does not exist.", id)
}
func errIPNotEnough(id string) *openapi.Error {
	return openapi.Errorf(http.StatusForbidden, "InvalidVSwitchId.IpNotEnough", "The specified VSwitch %q has not enough IpAddress.", id)
}
func errIPQuota(id string, limit int) *openapi.Error {
	return openapi.Errorf(http.StatusForbidden, "QuotaExceeded.PrivateIpAddress", "The private IP addresses of network interface %q would exceed the quota of %d.", id, limit)
}
func errENILimit(inst string, limit int) *openapi.Error {
	return openapi.Errorf(http.StatusForbidden, "EniPerInstanceLimitExceeded", "The instance %q already has the maximum of %d network interfaces.", inst, limit)
}
func errENIState(id, status string) *openapi.Error {
	return openapi.Errorf(http.StatusForbidden, "InvalidOperation.InvalidEniState", "The operation is not allowed in the current state %q of network interface %q.", status, id)
}

// idempotent answers a repeated ClientToken with the first answer (when
// the parameters match), else runs f and remembers a successful answer.
func (s *Store) idempotent(r *openapi.Request, f func() (any, error)) (any, error) {
	token := r.Get("ClientToken")
	if token == "" {
		return f()
	}
	key := r.Action + "\x00" + r.AccessKeyID + "\x00" + token
	p := r.ActionParams()
	delete(p, "ClientToken")
	b, _ := json.Marshal(p)
	sum := sha256.Sum256(b)
	h := hex.EncodeToString(sum[:])
	if e, ok := s.tok[key]; ok {
		if e.hash != h {
			return nil, openapi.Errorf(http.StatusBadRequest, "IdempotentParameterMismatch", "The request uses the same client token %q as a previous, but non-identical request.", token)
		}
		return e.resp, nil
	}
	resp, err := f()
	if err == nil {
		s.tok[key] = tokenEntry{hash: h, resp: resp}
	}
	return resp, err
}

func (s *Store) limitOf(inst string) InstanceType {
	if inst == s.cfg.InstanceID {
		return s.types[s.cfg.InstanceType]
	}
	return InstanceType{ENIs: 8, IPsPerENI: 50}
}

// Response shapes (field names as the SDK's structs read them).
type privateIPSet struct {
	PrivateIpAddress string `json:"PrivateIpAddress" xml:"PrivateIpAddress"` //nolint:revive // API name
	Primary          bool   `json:"Primary" xml:"Primary"`
}
type privateIPSets struct {
	PrivateIpSet []privateIPSet `json:"PrivateIpSet" xml:"PrivateIpSet"` //nolint:revive
}
type sgIDs struct {
	SecurityGroupId []string `json:"SecurityGroupId" xml:"SecurityGroupId"` //nolint:revive
}
type attachment struct {
	InstanceId  string `json:"InstanceId,omitempty" xml:"InstanceId,omitempty"` //nolint:revive
	DeviceIndex int    `json:"DeviceIndex" xml:"DeviceIndex"`
}
type eniSet struct {
	NetworkInterfaceId   string        `json:"NetworkInterfaceId" xml:"NetworkInterfaceId"` //nolint:revive
	NetworkInterfaceName string        `json:"NetworkInterfaceName" xml:"NetworkInterfaceName"`
	Description          string        `json:"Description" xml:"Description"`
	Status               string        `json:"Status" xml:"Status"`
	Type                 string        `json:"Type" xml:"Type"`
	VpcId                string        `json:"VpcId" xml:"VpcId"`         //nolint:revive
	VSwitchId            string        `json:"VSwitchId" xml:"VSwitchId"` //nolint:revive
	ZoneId               string        `json:"ZoneId" xml:"ZoneId"`       //nolint:revive
	MacAddress           string        `json:"MacAddress" xml:"MacAddress"`
	PrivateIpAddress     string        `json:"PrivateIpAddress" xml:"PrivateIpAddress"` //nolint:revive
	InstanceId           string        `json:"InstanceId" xml:"InstanceId"`             //nolint:revive
	CreationTime         string        `json:"CreationTime" xml:"CreationTime"`
	SecurityGroupIds     sgIDs         `json:"SecurityGroupIds" xml:"SecurityGroupIds"`
	PrivateIpSets        privateIPSets `json:"PrivateIpSets" xml:"PrivateIpSets"`
	Attachment           *attachment   `json:"Attachment,omitempty" xml:"Attachment,omitempty"`
}

func (s *Store) view(e *ENI) eniSet {
	v := eniSet{NetworkInterfaceId: e.ID, NetworkInterfaceName: e.Name, Description: e.Description, Status: e.Status, Type: e.Type,
		VpcId: s.cfg.VPCID, VSwitchId: e.VSwitchID, ZoneId: s.vsw[e.VSwitchID].Zone, MacAddress: e.MAC, PrivateIpAddress: e.Primary.String(),
		InstanceId: e.InstanceID, CreationTime: e.Created.Format("2006-01-02T15:04:05Z"), SecurityGroupIds: sgIDs{SecurityGroupId: e.SecurityGroups}}
	for i, a := range e.IPs() {
		v.PrivateIpSets.PrivateIpSet = append(v.PrivateIpSets.PrivateIpSet, privateIPSet{PrivateIpAddress: a.String(), Primary: i == 0})
	}
	if e.InstanceID != "" {
		v.Attachment = &attachment{InstanceId: e.InstanceID, DeviceIndex: e.DeviceIndex}
	}
	return v
}

func (s *Store) create(_ context.Context, r *openapi.Request) (any, error) {
	vswID, err := r.Required("VSwitchId")
	if err != nil {
		return nil, err
	}
	sgs := r.List("SecurityGroupIds", "")
	if sg := r.Get("SecurityGroupId"); sg != "" {
		sgs = append([]string{sg}, sgs...)
	}
	if len(sgs) == 0 {
		return nil, openapi.MissingParameter("SecurityGroupId")
	}
	n, err := r.Int("SecondaryPrivateIpAddressCount", 0)
	if err != nil {
		return nil, err
	}
	if n < 0 || n > 49 {
		return nil, openapi.InvalidParameter("SecondaryPrivateIpAddressCount", r.Get("SecondaryPrivateIpAddressCount"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idempotent(r, func() (any, error) {
		vs := s.vsw[vswID]
		if vs == nil {
			return nil, errVSwitchNotFound(vswID)
		}
		if vs.free() < int(n)+1 {
			return nil, errIPNotEnough(vswID)
		}
		e := &ENI{ID: "eni-" + randID(20), MAC: randMAC(), VSwitchID: vswID, Name: r.Get("NetworkInterfaceName"), Description: r.Get("Description"),
			SecurityGroups: sgs, Status: "Available", Type: "Secondary", Created: time.Now().UTC()}
		for i := 0; i <= int(n); i++ {
			a, _ := vs.take(e.ID)
			if i == 0 {
				e.Primary = a
			} else {
				e.Secondary = append(e.Secondary, a)
			}
		}
		s.enis[e.ID] = e
		s.dirty()
		v := s.view(e)
		return struct {
			NetworkInterfaceId   string        `json:"NetworkInterfaceId" xml:"NetworkInterfaceId"` //nolint:revive
			NetworkInterfaceName string        `json:"NetworkInterfaceName" xml:"NetworkInterfaceName"`
			Status               string        `json:"Status" xml:"Status"`
			Type                 string        `json:"Type" xml:"Type"`
			VpcId                string        `json:"VpcId" xml:"VpcId"`         //nolint:revive
			VSwitchId            string        `json:"VSwitchId" xml:"VSwitchId"` //nolint:revive
			ZoneId               string        `json:"ZoneId" xml:"ZoneId"`       //nolint:revive
			MacAddress           string        `json:"MacAddress" xml:"MacAddress"`
			PrivateIpAddress     string        `json:"PrivateIpAddress" xml:"PrivateIpAddress"` //nolint:revive
			SecurityGroupIds     sgIDs         `json:"SecurityGroupIds" xml:"SecurityGroupIds"`
			PrivateIpSets        privateIPSets `json:"PrivateIpSets" xml:"PrivateIpSets"`
		}{v.NetworkInterfaceId, v.NetworkInterfaceName, v.Status, v.Type, v.VpcId, v.VSwitchId, v.ZoneId, v.MacAddress, v.PrivateIpAddress, v.SecurityGroupIds, v.PrivateIpSets}, nil
	})
}

func (s *Store) getENI(r *openapi.Request) (*ENI, error) {
	id, err := r.Required("NetworkInterfaceId")
	if err != nil {
		return nil, err
	}
	e := s.enis[id]
	if e == nil {
		return nil, errENINotFound(id)
	}
	return e, nil
}

type empty struct{}

func (s *Store) attach(_ context.Context, r *openapi.Request) (any, error) {
	inst, err := r.Required("InstanceId")
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.getENI(r)
	if err != nil {
		return nil, err
	}
	if inst != s.cfg.InstanceID {
		return nil, errInstanceNotFound(inst)
	}
	if e.InstanceID == inst && (e.Status == "Attaching" || e.Status == "InUse") {
		return empty{}, nil // already (being) attached here
	}
	if e.Status != "Available" {
		return nil, errENIState(e.ID, e.Status)
	}
	lim := s.limitOf(inst)
	n, used := 0, map[int]bool{}
	for _, o := range s.enis {
		if o.InstanceID == inst {
			n++
			used[o.DeviceIndex] = true
		}
	}
	if n >= lim.ENIs {
		return nil, errENILimit(inst, lim.ENIs)
	}
	idx := 1
	for used[idx] {
		idx++
	}
	e.Status, e.InstanceID, e.DeviceIndex = "Attaching", inst, idx
	e.gen++
	s.later(e, s.cfg.AttachDelay, "Attaching", func() {
		if s.local != nil {
			if err := s.localAttach(e, false); err != nil {
				s.log.Error("local ENI attach", "eni", e.ID, "err", err)
			}
		}
		e.Status = "InUse"
	})
	s.dirty()
	return empty{}, nil
}

// later runs f (under s.mu) after d if e is still in state from with the
// same generation.
func (s *Store) later(e *ENI, d time.Duration, from string, f func()) {
	gen := e.gen
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.enis[e.ID] != e || e.gen != gen || e.Status != from {
			return
		}
		e.gen++
		f()
		s.dirty()
	}()
}

func (s *Store) detach(_ context.Context, r *openapi.Request) (any, error) {
	inst, err := r.Required("InstanceId")
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.getENI(r)
	if err != nil {
		return nil, err
	}
	if e.Type == "Primary" {
		return nil, openapi.Errorf(http.StatusForbidden, "InvalidOperation.DetachPrimaryEniNotAllowed", "The primary network interface cannot be detached.")
	}
	if e.InstanceID != inst {
		return nil, openapi.Errorf(http.StatusForbidden, "InvalidOperation.EniNotAttached", "The network interface %q is not attached to instance %q.", e.ID, inst)
	}
	if e.Status == "Detaching" {
		return empty{}, nil
	}
	if s.local != nil && e.Link != "" {
		if err := s.local.Detach(e.ID, e.IPs()); err != nil {
			s.log.Error("local ENI detach", "eni", e.ID, "err", err)
		}
		e.Link = ""
	}
	e.Status = "Detaching"
	e.gen++
	s.later(e, s.cfg.DetachDelay, "Detaching", func() {
		e.Status, e.InstanceID, e.DeviceIndex = "Available", "", 0
	})
	s.dirty()
	return empty{}, nil
}

func (s *Store) delete(_ context.Context, r *openapi.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.getENI(r)
	if err != nil {
		return nil, err
	}
	if e.Status != "Available" || e.Type == "Primary" {
		return nil, errENIState(e.ID, e.Status)
	}
	vs := s.vsw[e.VSwitchID]
	for _, a := range e.IPs() {
		delete(vs.used, a)
	}
	delete(s.enis, e.ID)
	s.dirty()
	return empty{}, nil
}

func (s *Store) assign(_ context.Context, r *openapi.Request) (any, error) {
	n, err := r.Int("SecondaryPrivateIpAddressCount", 0)
	if err != nil {
		return nil, err
	}
	want := r.List("PrivateIpAddress", "")
	if n == 0 && len(want) == 0 {
		return nil, openapi.MissingParameter("SecondaryPrivateIpAddressCount")
	}
	if n < 0 || n > 10 || len(want) > 10 {
		return nil, openapi.InvalidParameter("SecondaryPrivateIpAddressCount", r.Get("SecondaryPrivateIpAddressCount"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.idempotent(r, func() (any, error) {
		e, err := s.getENI(r)
		if err != nil {
			return nil, err
		}
		if e.Status != "InUse" && e.Status != "Available" {
			return nil, errENIState(e.ID, e.Status)
		}
		lim := s.limitOf(e.InstanceID)
		count := int(n) + len(want)
		if len(e.IPs())+count > lim.IPsPerENI {
			return nil, errIPQuota(e.ID, lim.IPsPerENI)
		}
		vs := s.vsw[e.VSwitchID]
		var got []netip.Addr
		for _, w := range want {
			a, err := netip.ParseAddr(w)
			if err != nil || !vs.CIDR.Contains(a) || vs.reserved(a) {
				return nil, openapi.InvalidParameter("PrivateIpAddress", w)
			}
			if _, used := vs.used[a]; used {
				return nil, openapi.Errorf(http.StatusForbidden, "InvalidIp.Duplicated", "The specified IP %s is already in use.", w)
			}
		}
		if vs.free() < count {
			return nil, errIPNotEnough(vs.ID)
		}
		for _, w := range want {
			a := netip.MustParseAddr(w)
			vs.used[a] = e.ID
			got = append(got, a)
		}
		for i := 0; i < int(n); i++ {
			a, _ := vs.take(e.ID)
			got = append(got, a)
		}
		e.Secondary = append(e.Secondary, got...)
		if s.local != nil && e.Link != "" {
			if err := s.local.AddAddrs(e.MAC, got); err != nil {
				s.log.Error("local ENI addresses", "eni", e.ID, "err", err)
			}
		}
		s.dirty()
		ss := make([]string, len(got))
		for i, a := range got {
			ss[i] = a.String()
		}
		type ipSet struct {
			PrivateIpAddress []string `json:"PrivateIpAddress" xml:"PrivateIpAddress"` //nolint:revive
		}
		return struct {
			AssignedPrivateIpAddressesSet struct {
				NetworkInterfaceId string `json:"NetworkInterfaceId" xml:"NetworkInterfaceId"` //nolint:revive
				PrivateIpSet       ipSet  `json:"PrivateIpSet" xml:"PrivateIpSet"`
			} `json:"AssignedPrivateIpAddressesSet" xml:"AssignedPrivateIpAddressesSet"`
		}{AssignedPrivateIpAddressesSet: struct {
			NetworkInterfaceId string `json:"NetworkInterfaceId" xml:"NetworkInterfaceId"` //nolint:revive
			PrivateIpSet       ipSet  `json:"PrivateIpSet" xml:"PrivateIpSet"`
		}{NetworkInterfaceId: e.ID, PrivateIpSet: ipSet{PrivateIpAddress: ss}}}, nil
	})
}

func (s *Store) unassign(_ context.Context, r *openapi.Request) (any, error) {
	ips := r.List("PrivateIpAddress", "")
	if len(ips) == 0 {
		return nil, openapi.MissingParameter("PrivateIpAddress.1")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, err := s.getENI(r)
	if err != nil {
		return nil, err
	}
	drop := map[netip.Addr]bool{}
	for _, v := range ips {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, openapi.InvalidParameter("PrivateIpAddress", v)
		}
		if a == e.Primary {
			return nil, openapi.Errorf(http.StatusForbidden, "InvalidIp.IpUnassigned", "The primary IP %s cannot be unassigned.", v)
		}
		if !slices.Contains(e.Secondary, a) {
			return nil, openapi.Errorf(http.StatusNotFound, "InvalidIp.NotFound", "The IP %s is not assigned to %s.", v, e.ID)
		}
		drop[a] = true
	}
	vs := s.vsw[e.VSwitchID]
	var removed []netip.Addr
	e.Secondary = slices.DeleteFunc(e.Secondary, func(a netip.Addr) bool {
		if drop[a] {
			delete(vs.used, a)
			removed = append(removed, a)
			return true
		}
		return false
	})
	if s.local != nil && e.Link != "" {
		if err := s.local.DelAddrs(removed); err != nil {
			s.log.Error("local ENI addresses", "eni", e.ID, "err", err)
		}
	}
	s.dirty()
	return empty{}, nil
}

func pageArgs(r *openapi.Request) (page, size int, err error) {
	p, err := r.Int("PageNumber", 1)
	if err != nil {
		return 0, 0, err
	}
	z, err := r.Int("PageSize", 10)
	if err != nil {
		return 0, 0, err
	}
	if p < 1 {
		return 0, 0, openapi.InvalidParameter("PageNumber", r.Get("PageNumber"))
	}
	if z < 1 || z > 500 {
		return 0, 0, openapi.InvalidParameter("PageSize", r.Get("PageSize"))
	}
	return int(p), int(z), nil
}

func (s *Store) describeENIs(_ context.Context, r *openapi.Request) (any, error) {
	page, size, err := pageArgs(r)
	if err != nil {
		return nil, err
	}
	ids := r.List("NetworkInterfaceId", "")
	ipf := r.List("PrivateIpAddress", "")
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []*ENI
	for _, e := range s.enis {
		if v := r.Get("InstanceId"); v != "" && e.InstanceID != v {
			continue
		}
		if v := r.Get("NetworkInterfaceName"); v != "" && e.Name != v {
			continue
		}
		if v := r.Get("VSwitchId"); v != "" && e.VSwitchID != v {
			continue
		}
		if v := r.Get("Status"); v != "" && e.Status != v {
			continue
		}
		if v := r.Get("Type"); v != "" && e.Type != v {
			continue
		}
		if len(ids) > 0 && !slices.Contains(ids, e.ID) {
			continue
		}
		if len(ipf) > 0 && !slices.ContainsFunc(e.IPs(), func(a netip.Addr) bool { return slices.Contains(ipf, a.String()) }) {
			continue
		}
		all = append(all, e)
	}
	sort.Slice(all, func(i, j int) bool {
		return all[i].Created.Before(all[j].Created) || all[i].Created.Equal(all[j].Created) && all[i].ID < all[j].ID
	})
	type sets struct {
		NetworkInterfaceSet []eniSet `json:"NetworkInterfaceSet" xml:"NetworkInterfaceSet"`
	}
	out := struct {
		TotalCount           int  `json:"TotalCount" xml:"TotalCount"`
		PageNumber           int  `json:"PageNumber" xml:"PageNumber"`
		PageSize             int  `json:"PageSize" xml:"PageSize"`
		NetworkInterfaceSets sets `json:"NetworkInterfaceSets" xml:"NetworkInterfaceSets"`
	}{TotalCount: len(all), PageNumber: page, PageSize: size, NetworkInterfaceSets: sets{NetworkInterfaceSet: []eniSet{}}}
	for i := (page - 1) * size; i < len(all) && i < page*size; i++ {
		out.NetworkInterfaceSets.NetworkInterfaceSet = append(out.NetworkInterfaceSets.NetworkInterfaceSet, s.view(all[i]))
	}
	return out, nil
}

func (s *Store) describeTypes(_ context.Context, r *openapi.Request) (any, error) {
	want := r.List("InstanceTypes", "")
	type types struct {
		InstanceType []InstanceType `json:"InstanceType" xml:"InstanceType"`
	}
	out := struct {
		InstanceTypes types `json:"InstanceTypes" xml:"InstanceTypes"`
	}{InstanceTypes: types{InstanceType: []InstanceType{}}}
	for _, t := range s.cfg.InstanceTypes {
		if len(want) == 0 || slices.Contains(want, t.ID) {
			out.InstanceTypes.InstanceType = append(out.InstanceTypes.InstanceType, t)
		}
	}
	return out, nil
}

func (s *Store) describeVSwitches(_ context.Context, r *openapi.Request) (any, error) {
	page, size, err := pageArgs(r)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	type vsw struct {
		VSwitchId               string `json:"VSwitchId" xml:"VSwitchId"` //nolint:revive
		VpcId                   string `json:"VpcId" xml:"VpcId"`         //nolint:revive
		ZoneId                  string `json:"ZoneId" xml:"ZoneId"`       //nolint:revive
		CidrBlock               string `json:"CidrBlock" xml:"CidrBlock"`
		AvailableIpAddressCount int    `json:"AvailableIpAddressCount" xml:"AvailableIpAddressCount"` //nolint:revive
		Status                  string `json:"Status" xml:"Status"`
	}
	var all []vsw
	for _, c := range s.cfg.VSwitches {
		v := s.vsw[c.ID]
		if id := r.Get("VSwitchId"); id != "" && id != v.ID {
			continue
		}
		if z := r.Get("ZoneId"); z != "" && z != v.Zone {
			continue
		}
		if id := r.Get("VpcId"); id != "" && id != s.cfg.VPCID {
			continue
		}
		all = append(all, vsw{VSwitchId: v.ID, VpcId: s.cfg.VPCID, ZoneId: v.Zone, CidrBlock: v.CIDR.String(), AvailableIpAddressCount: v.free(), Status: "Available"})
	}
	type vsws struct {
		VSwitch []vsw `json:"VSwitch" xml:"VSwitch"`
	}
	out := struct {
		TotalCount int  `json:"TotalCount" xml:"TotalCount"`
		PageNumber int  `json:"PageNumber" xml:"PageNumber"`
		PageSize   int  `json:"PageSize" xml:"PageSize"`
		VSwitches  vsws `json:"VSwitches" xml:"VSwitches"`
	}{TotalCount: len(all), PageNumber: page, PageSize: size, VSwitches: vsws{VSwitch: []vsw{}}}
	for i := (page - 1) * size; i < len(all) && i < page*size; i++ {
		out.VSwitches.VSwitch = append(out.VSwitches.VSwitch, all[i])
	}
	return out, nil
}

// Hold takes up to n free addresses of a vSwitch away (another tenant's
// use), for tests of address shortages; Unhold gives them back.
func (s *Store) Hold(vswID string, n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	vs := s.vsw[vswID]
	if vs == nil {
		return 0
	}
	got := 0
	for ; got < n; got++ {
		if _, ok := vs.take("held"); !ok {
			break
		}
	}
	return got
}

// Unhold returns every held address of a vSwitch.
func (s *Store) Unhold(vswID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if vs := s.vsw[vswID]; vs != nil {
		for a, owner := range vs.used {
			if owner == "held" {
				delete(vs.used, a)
			}
		}
	}
}

// ENIs returns copies of every ENI (the emulator's view, for tests).
func (s *Store) ENIs() []ENI {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ENI, 0, len(s.enis))
	for _, e := range s.enis {
		c := *e
		c.Secondary = slices.Clone(e.Secondary)
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Created.Before(out[j].Created) || out[i].Created.Equal(out[j].Created) && out[i].ID < out[j].ID
	})
	return out
}

// Free returns a vSwitch's free address count.
func (s *Store) Free(vswID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if vs := s.vsw[vswID]; vs != nil {
		return vs.free()
	}
	return 0
}

// snapshot is the persisted state.
type snapshot struct {
	ENIs []*ENI                  `json:"enis"`
	Held map[string][]netip.Addr `json:"held,omitempty"`
}

// Snapshot implements openapi.Stateful.
func (s *Store) Snapshot() (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := snapshot{Held: map[string][]netip.Addr{}}
	for _, e := range s.enis {
		snap.ENIs = append(snap.ENIs, e)
	}
	for id, vs := range s.vsw {
		for a, o := range vs.used {
			if o == "held" {
				snap.Held[id] = append(snap.Held[id], a)
			}
		}
	}
	return json.Marshal(snap)
}

// Restore implements openapi.Stateful (state only: kernel interfaces of a
// previous run are not recreated; attached ENIs come back InUse).
func (s *Store) Restore(raw json.RawMessage) error {
	var snap snapshot
	if err := json.Unmarshal(raw, &snap); err != nil {
		return fmt.Errorf("ecs state: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, vs := range s.vsw {
		vs.used = map[netip.Addr]string{}
	}
	s.enis = map[string]*ENI{}
	for _, e := range snap.ENIs {
		vs := s.vsw[e.VSwitchID]
		if vs == nil {
			return fmt.Errorf("ecs state: ENI %s on unknown vSwitch %s", e.ID, e.VSwitchID)
		}
		switch e.Status {
		case "Attaching":
			e.Status = "InUse"
		case "Detaching":
			e.Status, e.InstanceID = "Available", ""
		}
		e.Link = ""
		for _, a := range e.IPs() {
			vs.used[a] = e.ID
		}
		s.enis[e.ID] = e
	}
	for id, as := range snap.Held {
		if vs := s.vsw[id]; vs != nil {
			for _, a := range as {
				vs.used[a] = "held"
			}
		}
	}
	return nil
}

// localAttach makes e's kernel interface (s.mu held or during setup).
func (s *Store) localAttach(e *ENI, primary bool) error {
	vs := s.vsw[e.VSwitchID]
	link, err := s.local.Attach(e.ID, e.MAC, vs.ID, e.IPs())
	if err != nil {
		return err
	}
	e.Link = link
	if primary {
		return s.local.ConfigureHost(link, netip.PrefixFrom(e.Primary, vs.CIDR.Bits()))
	}
	return nil
}

// MetadataInstance implements metadata.Source.
func (s *Store) MetadataInstance() metadata.Instance {
	return metadata.Instance{ID: s.cfg.InstanceID, Type: s.cfg.InstanceType, Region: s.cfg.Region, Zone: s.cfg.Zone,
		Hostname: s.cfg.Hostname, VPCID: s.cfg.VPCID, VPCCIDR: s.cfg.VPCCIDR}
}

// MetadataENIs implements metadata.Source: the instance's InUse ENIs, the
// primary first.
func (s *Store) MetadataENIs() []metadata.ENI {
	s.mu.Lock()
	defer s.mu.Unlock()
	var es []*ENI
	for _, e := range s.enis {
		if e.InstanceID == s.cfg.InstanceID && e.Status == "InUse" {
			es = append(es, e)
		}
	}
	sort.Slice(es, func(i, j int) bool {
		if (es[i].Type == "Primary") != (es[j].Type == "Primary") {
			return es[i].Type == "Primary"
		}
		return es[i].DeviceIndex < es[j].DeviceIndex
	})
	out := make([]metadata.ENI, 0, len(es))
	for _, e := range es {
		vs := s.vsw[e.VSwitchID]
		out = append(out, metadata.ENI{ID: e.ID, MAC: e.MAC, VSwitchID: e.VSwitchID, CIDR: vs.CIDR, Gateway: vs.Gateway, IPs: e.IPs(), SecurityGroups: slices.Clone(e.SecurityGroups)})
	}
	return out
}

// RegisterWithMetadata registers ECS and mounts the instance metadata
// service (/latest/) on the same server.
func RegisterWithMetadata(srv *openapi.Server, s *Store) error {
	if err := Register(srv, s); err != nil {
		return err
	}
	srv.Handle("/latest/", metadata.Handler(s))
	return nil
}

// RegisterDefault builds the default region/VPC/instance (DefaultConfig),
// with kernel ENIs when local (cloud-emulator --local-enis), and registers
// ECS and the metadata service. Close the Store on exit.
func RegisterDefault(srv *openapi.Server, local bool, log *slog.Logger) (*Store, error) {
	cfg := DefaultConfig()
	cfg.Logger = log
	if local {
		cfg.Local = &LocalConfig{}
	}
	s, err := NewStore(cfg)
	if err != nil {
		return nil, err
	}
	if err := RegisterWithMetadata(srv, s); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}
