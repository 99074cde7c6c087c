// Package policy is dnsaccel's NetworkPolicy datapath in eBPF
// (bpf/policy.c): identities, endpoints, CIDRs and allow rules as a Go API
// with no Kubernetes knowledge, and the tcx programs that enforce them at
// a pod's interface.
//
// The caller (datapath/policyagent for Kubernetes) gives every pod address
// an identity (one numeric id per namespace + label set, SetIdentity),
// declares the pods of this node as endpoints (SetEndpoint: addresses,
// whether ingress and egress are enforced, i.e. some policy selects the pod
// for that direction) and gives each endpoint its allow rules (SetRules:
// direction, peers as identities or ipBlocks with excepts, ports as
// protocol + port range). An enforced direction denies what no rule
// allows; replies of allowed flows pass (a connection-tracking map).
// SetRules writes only the map entries that changed, so a change costs work
// proportional to what it touches.
//
// Policy changes and established flows: every SetRules/SetEndpoint bumps
// the endpoint's revision; the next packet of a tracked flow decided under
// an older revision is decided again under the new rules, so a new deny
// applies to established flows too (at their next packet), and a flow a
// policy still allows is never interrupted.
package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// ErrMapFull wraps errors from a full map: the change was not (completely)
// applied.
var ErrMapFull = errors.New("eBPF map full")

// Identity is a peer's numeric identity. Identities at or above
// FirstCIDRIdentity are allocated by this package for ipBlock prefixes.
type Identity uint32

// Reserved identities.
const (
	// IdentityAny in a Peer: any peer (the rule has no from/to).
	IdentityAny Identity = 0
	// IdentityHost: give it to the node's own addresses (SetIdentity):
	// traffic between a pod and its node is always allowed.
	IdentityHost Identity = 2
	// FirstCIDRIdentity: the caller's identities are below it.
	FirstCIDRIdentity Identity = 1 << 24
)

// Direction is as seen by the pod.
type Direction uint8

// Directions.
const (
	Ingress Direction = 0
	Egress  Direction = 1
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Protocols for PortRange.
const (
	AnyProto = 0
	TCP      = unix.IPPROTO_TCP
	UDP      = unix.IPPROTO_UDP
	SCTP     = unix.IPPROTO_SCTP
)

// PortRange is a protocol and destination ports Port..EndPort (EndPort 0:
// Port alone; Port 0: every port of Proto; Proto AnyProto: everything).
type PortRange struct {
	Proto   uint8
	Port    uint16
	EndPort uint16
}

// Peer is an identity, or (CIDR valid) an ipBlock: CIDR minus Except.
type Peer struct {
	Identity Identity
	CIDR     netip.Prefix
	Except   []netip.Prefix
}

// Rule allows traffic in Dir from/to any of Peers (none: any peer) on any
// of Ports (none: any). Policy is the id drops and allows are reported on.
type Rule struct {
	Policy uint32
	Dir    Direction
	Peers  []Peer
	Ports  []PortRange
}

// Endpoint is a pod of this node.
type Endpoint struct {
	ID       uint32
	Identity Identity
	Addrs    []netip.Addr
	// Enforced directions: default deny unless a rule allows.
	Ingress, Egress bool
	// DenyPolicy is the policy a drop in each direction is counted on
	// (Ingress, Egress).
	DenyPolicy [2]uint32
}

// Options configure Open.
type Options struct {
	// PinDir: pin the maps there (adopted by a later Open) and the tcx
	// links (<PinDir>/link_dnsa_pol_<ifindex>_<in|out>). Empty: nothing is
	// pinned; everything goes with Close.
	PinDir string
}

type epState struct {
	ep       Endpoint
	revision uint32
	rules    []Rule
	entries  map[policyDnsaPolRuleKey]uint32
	cidrs    []netip.Prefix
}

// Datapath is this process's handle on the policy maps and programs.
type Datapath struct {
	opts  Options
	objs  policyObjects
	mu    sync.Mutex
	eps   map[uint32]*epState
	cidrs map[netip.Prefix]*cidrState
	next  Identity
	free  []Identity
	links map[string]link.Link
}

type cidrState struct {
	id   Identity
	refs int
}

// Open loads the programs and maps.
func Open(opts Options) (*Datapath, error) {
	_ = rlimit.RemoveMemlock()
	spec, err := loadPolicy()
	if err != nil {
		return nil, err
	}
	copts := &ebpf.CollectionOptions{}
	if opts.PinDir != "" {
		if err := os.MkdirAll(opts.PinDir, 0o700); err != nil {
			return nil, err
		}
		copts.Maps.PinPath = opts.PinDir
	} else {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	d := &Datapath{opts: opts, eps: map[uint32]*epState{}, cidrs: map[netip.Prefix]*cidrState{},
		next: FirstCIDRIdentity, links: map[string]link.Link{}}
	if err := spec.LoadAndAssign(&d.objs, copts); err != nil {
		return nil, fmt.Errorf("loading the policy programs: %w", err)
	}
	return d, nil
}

// Prune deletes what an earlier process left in the pinned maps and this
// one has not set since Open (endpoints, rules, ipBlock prefixes). Call it
// after the first complete sync: until then the earlier process's entries
// keep enforcing, so a restart neither opens nor closes anything.
func (d *Datapath) Prune() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	rules := map[policyDnsaPolRuleKey]bool{}
	addrs := map[policyDnsaPolAddr]bool{}
	for _, st := range d.eps {
		for k := range st.entries {
			rules[k] = true
		}
		for _, a := range st.ep.Addrs {
			addrs[addr16(a)] = true
		}
	}
	cidrs := map[policyDnsaPolCidrKey]bool{}
	for p := range d.cidrs {
		cidrs[policyDnsaPolCidrKey{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}] = true
	}
	var errs []error
	errs = append(errs, prune(d.objs.DnsaPolRules, func(k policyDnsaPolRuleKey) bool { return rules[k] }))
	errs = append(errs, prune(d.objs.DnsaPolEp, func(k policyDnsaPolAddr) bool { return addrs[k] }))
	errs = append(errs, prune(d.objs.DnsaPolCidr, func(k policyDnsaPolCidrKey) bool { return cidrs[k] }))
	return errors.Join(errs...)
}

func prune[K comparable](m *ebpf.Map, keep func(K) bool) error {
	var gone []K
	var k K
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, v) {
		if !keep(k) {
			gone = append(gone, k)
		}
	}
	errs := []error{it.Err()}
	for _, k := range gone {
		if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close detaches what is not pinned and releases the handles.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for k, l := range d.links {
		errs = append(errs, l.Close())
		delete(d.links, k)
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

func addr16(a netip.Addr) policyDnsaPolAddr {
	return policyDnsaPolAddr{Addr: netip.AddrFrom16(a.As16()).As16()}
}

func mapped(p netip.Prefix) netip.Prefix {
	p = p.Masked()
	if p.Addr().Is4() {
		return netip.PrefixFrom(netip.AddrFrom16(p.Addr().As16()), p.Bits()+96)
	}
	return p
}

func wrap(err error) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
		return fmt.Errorf("%w: %w", ErrMapFull, err)
	}
	return err
}

// SetIdentity gives a pod address (on any node) its identity.
func (d *Datapath) SetIdentity(a netip.Addr, id Identity) error {
	k := addr16(a)
	return wrap(d.objs.DnsaPolIpc.Put(&k, &policyDnsaPolIpcVal{Identity: uint32(id)}))
}

// DeleteIdentity forgets a pod address.
func (d *Datapath) DeleteIdentity(a netip.Addr) error {
	k := addr16(a)
	if err := d.objs.DnsaPolIpc.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// SetAudit switches audit mode: what would be dropped is counted and
// reported, and passes.
func (d *Datapath) SetAudit(on bool) error {
	var c policyDnsaPolConfig
	if on {
		c.Flags = 1
	}
	return d.objs.DnsaPolCfg.Put(uint32(0), &c)
}

// SetEndpoint adds or changes a pod of this node.
func (d *Datapath) SetEndpoint(ep Endpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.eps[ep.ID]
	if st == nil {
		st = &epState{entries: map[policyDnsaPolRuleKey]uint32{}}
		d.eps[ep.ID] = st
	}
	old := st.ep.Addrs
	st.ep = ep
	st.revision++
	if err := d.writeEndpoint(st); err != nil {
		return err
	}
	for _, a := range old {
		if !slices.Contains(ep.Addrs, a) {
			k := addr16(a)
			d.objs.DnsaPolEp.Delete(&k)
		}
	}
	return nil
}

func (d *Datapath) writeEndpoint(st *epState) error {
	v := policyDnsaPolEpVal{Id: st.ep.ID, Identity: uint32(st.ep.Identity), Revision: st.revision, DenyPolicy: st.ep.DenyPolicy}
	if st.ep.Ingress {
		v.Flags |= 1
	}
	if st.ep.Egress {
		v.Flags |= 2
	}
	for _, a := range st.ep.Addrs {
		k := addr16(a)
		if err := d.objs.DnsaPolEp.Put(&k, &v); err != nil {
			return wrap(err)
		}
	}
	return nil
}

// DeleteEndpoint removes a pod of this node and its rules.
func (d *Datapath) DeleteEndpoint(id uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.eps[id]
	if st == nil {
		return nil
	}
	var errs []error
	for _, a := range st.ep.Addrs {
		k := addr16(a)
		if err := d.objs.DnsaPolEp.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for k := range st.entries {
		if err := d.objs.DnsaPolRules.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	delete(d.eps, id)
	changed := d.unref(st.cidrs)
	if changed {
		errs = append(errs, d.recomputeCIDRUsers(id))
	}
	errs = append(errs, d.gcCIDRs())
	return errors.Join(errs...)
}

// SetRules replaces an endpoint's allow rules (SetEndpoint first). Only the
// entries that changed are written.
func (d *Datapath) SetRules(id uint32, rules []Rule) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.eps[id]
	if st == nil {
		return fmt.Errorf("endpoint %d: unknown", id)
	}
	oldCIDRs := st.cidrs
	st.rules = slices.Clone(rules)
	st.cidrs = ruleCIDRs(rules)
	added, err := d.ref(st.cidrs)
	if err != nil {
		return err
	}
	removed := d.unref(oldCIDRs)
	errs := []error{d.sync(st)}
	if added || removed {
		errs = append(errs, d.recomputeCIDRUsers(id))
	}
	errs = append(errs, d.gcCIDRs())
	return errors.Join(errs...)
}

func ruleCIDRs(rules []Rule) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range rules {
		for _, p := range r.Peers {
			if !p.CIDR.IsValid() {
				continue
			}
			out = append(out, mapped(p.CIDR))
			for _, e := range p.Except {
				out = append(out, mapped(e))
			}
		}
	}
	return out
}

// ref counts prefixes in, writing new ones to the CIDR trie; it reports
// whether the set of prefixes grew.
func (d *Datapath) ref(ps []netip.Prefix) (bool, error) {
	grew := false
	for _, p := range ps {
		c := d.cidrs[p]
		if c == nil {
			id := d.next
			if n := len(d.free); n > 0 {
				id, d.free = d.free[n-1], d.free[:n-1]
			} else {
				d.next++
			}
			k := policyDnsaPolCidrKey{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}
			if err := d.objs.DnsaPolCidr.Put(&k, &policyDnsaPolIpcVal{Identity: uint32(id)}); err != nil {
				d.free = append(d.free, id)
				return grew, wrap(err)
			}
			c = &cidrState{id: id}
			d.cidrs[p] = c
			grew = true
		}
		c.refs++
	}
	return grew, nil
}

// unref counts prefixes out; it reports whether some reached zero (they are
// deleted from the trie by gcCIDRs, after the rules no longer name them).
func (d *Datapath) unref(ps []netip.Prefix) bool {
	gone := false
	for _, p := range ps {
		if c := d.cidrs[p]; c != nil {
			c.refs--
			if c.refs == 0 {
				gone = true
			}
		}
	}
	return gone
}

func (d *Datapath) gcCIDRs() error {
	var errs []error
	for p, c := range d.cidrs {
		if c.refs > 0 {
			continue
		}
		k := policyDnsaPolCidrKey{Prefixlen: uint32(p.Bits()), Addr: p.Addr().As16()}
		if err := d.objs.DnsaPolCidr.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
		delete(d.cidrs, p)
		d.free = append(d.free, c.id)
	}
	return errors.Join(errs...)
}

// recomputeCIDRUsers syncs every other endpoint with ipBlock peers: which
// CIDR identities an ipBlock allows depends on the set of prefixes.
func (d *Datapath) recomputeCIDRUsers(except uint32) error {
	var errs []error
	for id, st := range d.eps {
		if id != except && len(st.cidrs) > 0 {
			errs = append(errs, d.sync(st))
		}
	}
	return errors.Join(errs...)
}

// peerIDs is the identities a peer allows.
func (d *Datapath) peerIDs(p Peer) []Identity {
	if !p.CIDR.IsValid() {
		return []Identity{p.Identity}
	}
	c := mapped(p.CIDR)
	var ex []netip.Prefix
	for _, e := range p.Except {
		ex = append(ex, mapped(e))
	}
	var ids []Identity
	for q, s := range d.cidrs {
		if !within(q, c) {
			continue
		}
		if slices.ContainsFunc(ex, func(e netip.Prefix) bool { return within(q, e) }) {
			continue
		}
		ids = append(ids, s.id)
	}
	return ids
}

// within reports whether q lies inside c.
func within(q, c netip.Prefix) bool {
	return q.Bits() >= c.Bits() && c.Contains(q.Addr())
}

// portPrefixes splits lo..hi into prefixes (value, bits).
func portPrefixes(lo, hi uint16) [][2]int {
	var out [][2]int
	l, h := int(lo), int(hi)
	for l <= h {
		bits := 16
		for bits > 0 {
			size := 1 << (16 - (bits - 1))
			if l%size != 0 || l+size-1 > h {
				break
			}
			bits--
		}
		out = append(out, [2]int{l, bits})
		l += 1 << (16 - bits)
	}
	return out
}

func (d *Datapath) expand(st *epState) map[policyDnsaPolRuleKey]uint32 {
	want := map[policyDnsaPolRuleKey]uint32{}
	put := func(k policyDnsaPolRuleKey, pol uint32) {
		if old, ok := want[k]; !ok || pol < old {
			want[k] = pol
		}
	}
	for _, r := range st.rules {
		var ids []Identity
		if len(r.Peers) == 0 {
			ids = []Identity{IdentityAny}
		}
		for _, p := range r.Peers {
			ids = append(ids, d.peerIDs(p)...)
		}
		ports := r.Ports
		if len(ports) == 0 {
			ports = []PortRange{{}}
		}
		for _, id := range ids {
			for _, pr := range ports {
				k := policyDnsaPolRuleKey{Ep: st.ep.ID, Peer: uint32(id), Dir: uint8(r.Dir), Proto: pr.Proto}
				if pr.Proto == AnyProto || pr.Port == 0 {
					k.Prefixlen = 80
					put(k, r.Policy)
					continue
				}
				end := pr.EndPort
				if end < pr.Port {
					end = pr.Port
				}
				for _, pp := range portPrefixes(pr.Port, end) {
					k.Prefixlen = uint32(80 + pp[1])
					k.Dport = [2]uint8{uint8(pp[0] >> 8), uint8(pp[0])}
					put(k, r.Policy)
				}
			}
		}
	}
	return want
}

// sync writes the difference between the endpoint's rules and the map, then
// bumps its revision so tracked flows are decided again.
func (d *Datapath) sync(st *epState) error {
	want := d.expand(st)
	var errs []error
	for k, pol := range want {
		if old, ok := st.entries[k]; ok && old == pol {
			continue
		}
		if err := d.objs.DnsaPolRules.Put(&k, &policyDnsaPolRuleVal{Policy: pol}); err != nil {
			errs = append(errs, wrap(err))
			continue
		}
		st.entries[k] = pol
	}
	for k := range st.entries {
		if _, ok := want[k]; ok {
			continue
		}
		if err := d.objs.DnsaPolRules.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
			continue
		}
		delete(st.entries, k)
	}
	st.revision++
	errs = append(errs, d.writeEndpoint(st))
	return errors.Join(errs...)
}

// RuleEntries is how many rule entries the map holds for an endpoint.
func (d *Datapath) RuleEntries(id uint32) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if st := d.eps[id]; st != nil {
		return len(st.entries)
	}
	return 0
}

// Drops is the drop count per policy id (DenyPolicy of the endpoints).
func (d *Datapath) Drops() (map[uint32]uint64, error) {
	out := map[uint32]uint64{}
	var k uint32
	var v uint64
	it := d.objs.DnsaPolDrops.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	return out, it.Err()
}

// Stat names, in dnsa_pol_stats order.
var StatNames = []string{"new", "established", "reply", "dropped", "audited", "malformed", "unmanaged"}

// Stats sums the per-CPU counters.
func (d *Datapath) Stats() (map[string]uint64, error) {
	out := map[string]uint64{}
	for i, n := range StatNames {
		var vs []uint64
		if err := d.objs.DnsaPolStats.Lookup(uint32(i), &vs); err != nil {
			return nil, err
		}
		var s uint64
		for _, v := range vs {
			s += v
		}
		out[n] = s
	}
	return out, nil
}

// Side is which end of a pod's link the programs go on.
type Side uint8

// Sides.
const (
	// HostEnd: the host end of the pod's veth: from_pod at tcx ingress,
	// to_pod at tcx egress, both first (head). to_pod must run before the
	// Service load balancer turns a backend's reply back into its Service
	// address. from_pod belongs after the load balancer's dnsa_lb_pkt_in
	// (egress decided on the backend a Service picked), but that program
	// returns TC_ACT_OK, which ends the tcx chain, so behind it the policy
	// would never run: it goes first until lb.c returns TC_ACT_UNSPEC
	// (see datapath/README.md). With the socket load balancer the pod's
	// packets carry the backend already.
	HostEnd Side = iota
	// PodSide: the pod's own interface (IPVLAN and other modes without a
	// host end): to_pod at ingress, from_pod at egress.
	PodSide
)

// AttachTC attaches the programs to interface ifindex (tcx).
func (d *Datapath) AttachTC(ifindex int, side Side) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	type att struct {
		name   string
		prog   *ebpf.Program
		attach ebpf.AttachType
		anchor link.Anchor
	}
	hs := []att{
		{"in", d.objs.DnsaPolFromPod, ebpf.AttachTCXIngress, link.Head()},
		{"out", d.objs.DnsaPolToPod, ebpf.AttachTCXEgress, link.Head()},
	}
	if side == PodSide {
		hs = []att{
			{"in", d.objs.DnsaPolToPod, ebpf.AttachTCXIngress, link.Head()},
			{"out", d.objs.DnsaPolFromPod, ebpf.AttachTCXEgress, link.Head()},
		}
	}
	for _, h := range hs {
		name := fmt.Sprintf("link_dnsa_pol_%d_%s", ifindex, h.name)
		if l, ok := d.links[name]; ok {
			if err := l.Update(h.prog); err == nil {
				continue
			}
			l.Close()
			delete(d.links, name)
		}
		if d.opts.PinDir != "" {
			p := filepath.Join(d.opts.PinDir, name)
			if l, err := link.LoadPinnedLink(p, nil); err == nil {
				if err := l.Update(h.prog); err == nil {
					d.links[name] = l
					continue
				}
				l.Unpin()
				l.Close()
			}
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: h.prog, Attach: h.attach, Anchor: h.anchor})
		if err != nil {
			return fmt.Errorf("attaching the policy program to interface %d (%s): %w", ifindex, h.name, err)
		}
		if d.opts.PinDir != "" {
			if err := l.Pin(filepath.Join(d.opts.PinDir, name)); err != nil {
				l.Close()
				return err
			}
		}
		d.links[name] = l
	}
	return nil
}

// DetachTC removes the programs from interface ifindex.
func (d *Datapath) DetachTC(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, dir := range []string{"in", "out"} {
		name := fmt.Sprintf("link_dnsa_pol_%d_%s", ifindex, dir)
		l, ok := d.links[name]
		if !ok && d.opts.PinDir != "" {
			var err error
			l, err = link.LoadPinnedLink(filepath.Join(d.opts.PinDir, name), nil)
			if err != nil {
				continue
			}
		} else if !ok {
			continue
		}
		if d.opts.PinDir != "" {
			errs = append(errs, l.Unpin())
		}
		errs = append(errs, l.Close())
		delete(d.links, name)
	}
	return errors.Join(errs...)
}

// Endpoints lists the endpoint ids (sorted).
func (d *Datapath) Endpoints() []uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []uint32
	for id := range d.eps {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Cleanup detaches every pinned policy link under pinDir and removes the
// pins and the directory: no pod is isolated any more.
func Cleanup(pinDir string) error {
	ents, err := os.ReadDir(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		p := filepath.Join(pinDir, e.Name())
		if l, err := link.LoadPinnedLink(p, nil); err == nil {
			errs = append(errs, l.Unpin(), l.Close())
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
