// Package lb is dnsaccel's Service load balancer in eBPF (bpf/lb.c): the
// Service tables as a Go API with no Kubernetes knowledge, and the cgroup
// socket programs that use them (a kube-proxy replacement at the socket,
// as Cilium's socket-LB).
//
// A Service is a frontend (address, port, protocol) with a type, an
// optional ClientIP affinity and a traffic policy; its backends are
// addresses with ports (named target ports are resolved by the caller),
// each ready or terminating (serving), on this node or not. Connections and
// datagrams from sockets in the cgroup go straight to a backend picked at
// random among the ready ones (terminating ones only when none is ready); a
// Service without any is refused at connect (ECONNREFUSED), as kube-proxy's
// REJECT. Replies and getpeername show the frontend.
//
// Everything lives under <bpffs>/dnsaccel/ (pins dnsa_lb_*): a new process
// calling Open adopts the maps with their contents and switches the pinned
// links to its programs, so a restart never stops load balancing. Close
// releases this process's handles and leaves everything running; Cleanup
// removes it all.
package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Map sizes (Options).
const (
	DefaultMaxServiceEntries = 262144 // frontends plus their backend slots
	DefaultMaxBackends       = 131072
	DefaultMaxAffinity       = 65536
	maxRevNat                = 65535 // the frontend id is 16 bits, 0 unused
)

// ErrMapFull is wrapped by errors that come from a full map: the change was
// not (completely) applied; retry after something was deleted, or give
// bigger maps.
var ErrMapFull = errors.New("eBPF map full")

// Proto is the IP protocol of a frontend.
type Proto uint8

// Protocols.
const (
	TCP Proto = unix.IPPROTO_TCP
	UDP Proto = unix.IPPROTO_UDP
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// Type is how a frontend is reached.
type Type uint8

// Types (Kubernetes: spec.clusterIP(s), a node address with the nodePort,
// spec.externalIPs, status.loadBalancer.ingress).
const (
	ClusterIP Type = iota
	NodePort
	ExternalIP
	LoadBalancer
)

func (t Type) String() string {
	switch t {
	case ClusterIP:
		return "ClusterIP"
	case NodePort:
		return "NodePort"
	case ExternalIP:
		return "ExternalIP"
	case LoadBalancer:
		return "LoadBalancer"
	}
	return fmt.Sprintf("type-%d", uint8(t))
}

// Frontend is what clients connect to.
type Frontend struct {
	Addr  netip.Addr
	Port  uint16
	Proto Proto
}

func (f Frontend) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(f.Addr, f.Port), f.Proto)
}

// Service is a frontend and how it balances.
type Service struct {
	Frontend
	Type Type
	// Affinity > 0: sessionAffinity ClientIP with this timeout (a client
	// keeps its backend while it comes back within it). The client is the
	// socket's network namespace (a pod).
	Affinity time.Duration
	// TrafficLocal: only backends on this node. For a ClusterIP frontend
	// this is internalTrafficPolicy Local; for the others
	// externalTrafficPolicy Local, which applies to traffic from outside
	// the node only (sockets on the node use every backend, as kube-proxy
	// does for traffic from the node).
	TrafficLocal bool
}

// Backend is one endpoint of a frontend.
type Backend struct {
	Addr netip.AddrPort
	// Terminating: serving but terminating; used only when no ready
	// backend is left (for the policy that applies). Endpoints neither
	// ready nor serving are not backends.
	Terminating bool
	// Local: on this node (for the traffic policies).
	Local bool
}

func (b Backend) String() string {
	s := b.Addr.String()
	if b.Terminating {
		s += " (terminating)"
	}
	if b.Local {
		s += " (local)"
	}
	return s
}

// Options configure Open.
type Options struct {
	// Cgroup is the cgroup v2 directory the programs attach to; sockets of
	// processes in it or below are load-balanced. Default: the cgroup v2
	// mount (datapath.DetectCgroup2).
	Cgroup string
	// BPFFS is a bpf file system; pins go to <BPFFS>/dnsaccel. Default
	// /sys/fs/bpf (mounted there if it is not one).
	BPFFS string
	// Map sizes: entries of the Service table (one per frontend and scope
	// plus one per backend slot), backends (one per frontend and backend),
	// affinity (clients x Services with affinity). 0: the defaults.
	MaxServiceEntries int
	MaxBackends       int
	MaxAffinity       int
	// NoSocket: do not attach the socket programs (per-packet load
	// balancing only, AttachTC); ones an earlier process pinned are
	// detached.
	NoSocket bool
}

// svcState is what the Table knows about one frontend.
type svcState struct {
	svc      Service
	id       uint16 // reverse NAT id
	backends []Backend
	ids      map[netip.AddrPort]uint32 // backend ids in dnsa_lb_be
	slots    [2]int                    // slots written per scope (ALL, EXT); -1: no slot-0 entry
}

// Table is this process's handle on the Service tables and the attached
// programs. Its methods are safe for concurrent use.
type Table struct {
	opts     Options
	dir      string
	objs     hookObjects
	links    []link.Link
	adopted  int
	replaced []string
	mounted  bool
	closed   atomic.Bool

	mu      sync.Mutex
	svcs    map[Frontend]*svcState
	usedRN  map[uint16]Frontend
	usedBE  map[uint32]bool
	nextRN  uint16
	nextBE  uint32
	entries int // dnsa_lb_svc entries written, for Usage

	pendingGone []lbDnsaLbGoneKey // backends that left, for TerminateUDP
	term        *ebpf.Program     // the terminating iterator, loaded on first use
	tc          *tcObjects        // the per-packet programs, loaded on first use
}

// Open loads the programs, adopts or creates the pinned maps and links under
// <BPFFS>/dnsaccel, attaches them to the cgroup, and reads back the
// Services an earlier process left in the maps (they keep working until the
// caller changes or deletes them).
func Open(opts Options) (*Table, error) {
	mounted, err := preflight(&opts)
	if err != nil {
		return nil, err
	}
	t := &Table{
		opts: opts, dir: filepath.Join(opts.BPFFS, PinDir), mounted: mounted,
		svcs: map[Frontend]*svcState{}, usedRN: map[uint16]Frontend{}, usedBE: map[uint32]bool{},
		nextRN: 1, nextBE: 1,
	}
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return nil, fmt.Errorf("pin directory: %w", err)
	}
	unlock, err := lockDir(t.dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := t.load(); err != nil {
		return nil, err
	}
	if err := t.readBack(); err != nil {
		t.Close()
		return nil, err
	}
	if opts.NoSocket {
		for _, h := range hooks {
			p := filepath.Join(t.dir, "link_"+h.name)
			if l, err := link.LoadPinnedLink(p, nil); err == nil {
				l.Unpin()
				l.Close()
			}
			os.Remove(filepath.Join(t.dir, "prog_"+h.name))
		}
		return t, nil
	}
	if err := t.attach(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// Adopted is how many links Open found pinned and took over.
func (t *Table) Adopted() int { return t.adopted }

// Replaced names the pinned maps Open replaced (another layout or size).
func (t *Table) Replaced() []string { return t.replaced }

// MountedBPFFS reports whether Open mounted the bpf file system.
func (t *Table) MountedBPFFS() bool { return t.mounted }

// Dir is the pin directory.
func (t *Table) Dir() string { return t.dir }

// Options returns the options Open ran with (defaults filled in).
func (t *Table) Options() Options { return t.opts }

// Close releases this process's handles; everything stays attached.
func (t *Table) Close() error {
	if !t.closed.CompareAndSwap(false, true) {
		return nil
	}
	var errs []error
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links = nil
	if t.term != nil {
		errs = append(errs, t.term.Close())
	}
	if t.tc != nil {
		errs = append(errs, t.tc.Close())
	}
	errs = append(errs, t.objs.Close())
	return errors.Join(errs...)
}

// Cleanup closes t and removes everything it pinned.
func (t *Table) Cleanup() error {
	return errors.Join(t.Close(), Cleanup(t.opts.BPFFS))
}

func (s Service) validate() error {
	a := s.Addr
	switch {
	case !a.IsValid():
		return fmt.Errorf("service %s: no address", s.Frontend)
	case a.Is4In6() || a.Zone() != "":
		return fmt.Errorf("service %s: want a plain IPv4 or IPv6 address", s.Frontend)
	case a.IsUnspecified() || a.IsMulticast():
		return fmt.Errorf("service %s: not a unicast address", s.Frontend)
	case s.Port == 0:
		return fmt.Errorf("service %s: port 0", s.Frontend)
	case s.Proto != TCP && s.Proto != UDP:
		return fmt.Errorf("service %s: protocol must be tcp or udp", s.Frontend)
	case s.Type > LoadBalancer:
		return fmt.Errorf("service %s: unknown type %d", s.Frontend, s.Type)
	case s.Affinity < 0 || s.Affinity > 86400*time.Second:
		return fmt.Errorf("service %s: affinity timeout %s out of range (0..86400s)", s.Frontend, s.Affinity)
	}
	return nil
}

// UpsertService adds a frontend or changes how it balances (its backends
// stay). A new frontend has no backends: connections to it are refused
// until SetBackends.
func (t *Table) UpsertService(s Service) error {
	if err := s.validate(); err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.svcs[s.Frontend]
	if st == nil {
		id, err := t.allocRN(s.Frontend)
		if err != nil {
			return err
		}
		st = &svcState{svc: s, id: id, ids: map[netip.AddrPort]uint32{}, slots: [2]int{-1, -1}}
		rn := lbDnsaLbRevnatVal{Port: htons(s.Port), Proto: uint8(s.Proto)}
		rn.Addr, rn.Family = toWords(s.Addr)
		if err := t.objs.DnsaLbRevnat.Put(id, rn); err != nil {
			delete(t.usedRN, id)
			return mapErr(fmt.Sprintf("service %s: reverse NAT entry", s.Frontend), err)
		}
		t.svcs[s.Frontend] = st
	}
	st.svc = s
	return t.write(st, st.backends)
}

// SetBackends makes the frontend's backends exactly bs (an Upsert must have
// created it). New connections never pick a backend that left; sockets
// already translated keep theirs (TCP), and connected UDP sockets too
// (see TerminateUDP).
func (t *Table) SetBackends(f Frontend, bs []Backend) error {
	seen := map[netip.AddrPort]bool{}
	for _, b := range bs {
		a := b.Addr.Addr()
		switch {
		case !a.IsValid() || b.Addr.Port() == 0:
			return fmt.Errorf("service %s: backend %s: need an address and a port", f, b.Addr)
		case a.Is4() != f.Addr.Is4() || a.Is4In6() || a.Zone() != "":
			return fmt.Errorf("service %s: backend %s: not of the frontend's IP family", f, b.Addr)
		case seen[b.Addr]:
			return fmt.Errorf("service %s: backend %s given twice", f, b.Addr)
		}
		seen[b.Addr] = true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.svcs[f]
	if st == nil {
		return fmt.Errorf("service %s: not in the table", f)
	}
	return t.write(st, slices.Clone(bs))
}

// DeleteService removes a frontend and its backends. Replies to sockets
// translated for it are no longer shown from it.
func (t *Table) DeleteService(f Frontend) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.svcs[f]
	if st == nil {
		return nil
	}
	var errs []error
	// Slot 0 first: new connections stop finding the Service.
	for scope := range 2 {
		for slot := 0; slot <= st.slots[scope]; slot++ {
			errs = append(errs, t.delSvc(key(st.svc.Frontend, uint8(scope), uint16(slot))))
		}
	}
	for a, id := range st.ids {
		errs = append(errs, del(t.objs.DnsaLbBe, id))
		delete(t.usedBE, id)
		t.gone(a, st.id)
	}
	errs = append(errs, del(t.objs.DnsaLbRevnat, st.id))
	delete(t.usedRN, st.id)
	delete(t.svcs, f)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("service %s: %w", f, err)
	}
	return nil
}

// Services returns every frontend in the table with its backends (for
// reconciling: those Open read back from an earlier process are here too,
// their Backends without Local).
func (t *Table) Services() map[Service][]Backend {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[Service][]Backend, len(t.svcs))
	for _, st := range t.svcs {
		out[st.svc] = slices.Clone(st.backends)
	}
	return out
}

// Frontends lists the frontends in the table.
func (t *Table) Frontends() []Frontend {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Frontend, 0, len(t.svcs))
	for f := range t.svcs {
		out = append(out, f)
	}
	return out
}

// Usage is how full the maps are (entries written by this table).
type Usage struct {
	ServiceEntries, MaxServiceEntries int
	Backends, MaxBackends             int
	Frontends, MaxFrontends           int
}

// Usage reports the maps' fill.
func (t *Table) Usage() Usage {
	t.mu.Lock()
	defer t.mu.Unlock()
	return Usage{
		ServiceEntries: t.entries, MaxServiceEntries: t.opts.MaxServiceEntries,
		Backends: len(t.usedBE), MaxBackends: t.opts.MaxBackends,
		Frontends: len(t.usedRN), MaxFrontends: maxRevNat,
	}
}

// choose returns the backends a scope balances over: those the policy
// allows, the ready ones among them, else the terminating ones; and
// whether the policy alone left none (noLocal).
func choose(bs []Backend, localOnly bool) (out []Backend, noLocal bool) {
	var ready, term []Backend
	for _, b := range bs {
		if localOnly && !b.Local {
			continue
		}
		if b.Terminating {
			term = append(term, b)
		} else {
			ready = append(ready, b)
		}
	}
	if len(ready) > 0 {
		out = ready
	} else {
		out = term
	}
	return out, len(out) == 0 && localOnly && len(bs) > 0
}

func (s Service) flags() uint8 {
	var f uint8
	switch s.Type {
	case ClusterIP:
		f = flagClusterIP
	case NodePort:
		f = flagNodePort
	case ExternalIP:
		f = flagExternalIP
	case LoadBalancer:
		f = flagLoadBalancer
	}
	if s.Affinity > 0 {
		f |= flagAffinity
	}
	return f
}

// The DNSA_LB_F_* and scope values of bpf/lb.h.
const (
	flagClusterIP    = 0x01
	flagNodePort     = 0x02
	flagExternalIP   = 0x04
	flagLoadBalancer = 0x08
	flagNoLocal      = 0x10
	flagAffinity     = 0x20
	beTerminating    = 0x01
	scopeAll         = 0
	scopeExt         = 1
)

// write brings the maps to st.svc with backends bs, in an order that keeps
// every state a program can see consistent: backend entries of new backends
// first, then the slots, then the Service entry with the new count, then
// the slots and backends that are no longer used.
func (t *Table) write(st *svcState, bs []Backend) error {
	s := st.svc
	lists := [2][]Backend{}
	noLocal := [2]bool{}
	want := [2]bool{true, false}
	if s.Type == ClusterIP {
		lists[scopeAll], noLocal[scopeAll] = choose(bs, s.TrafficLocal)
	} else {
		lists[scopeAll], noLocal[scopeAll] = choose(bs, false)
		if s.TrafficLocal {
			want[scopeExt] = true
			lists[scopeExt], noLocal[scopeExt] = choose(bs, true)
		}
	}
	// Backend ids: one per backend in any list.
	used := map[netip.AddrPort]Backend{}
	for _, l := range lists {
		for _, b := range l {
			used[b.Addr] = b
		}
	}
	newIDs := map[netip.AddrPort]uint32{}
	for a, b := range used {
		id, ok := st.ids[a]
		if !ok {
			var err error
			if id, err = t.allocBE(); err != nil {
				t.rollbackIDs(st, newIDs)
				return fmt.Errorf("service %s: %w", s.Frontend, err)
			}
		}
		newIDs[a] = id
		v := lbDnsaLbBackend{Port: htons(a.Port())}
		v.Addr, v.Family = toWords(a.Addr())
		if b.Terminating {
			v.Flags = beTerminating
		}
		if err := t.objs.DnsaLbBe.Put(id, v); err != nil {
			if !ok {
				delete(t.usedBE, id)
			}
			t.rollbackIDs(st, newIDs)
			return mapErr(fmt.Sprintf("service %s: backend %s", s.Frontend, a), err)
		}
	}
	// Tracked from here on, so that a failure below leaks nothing: the
	// next write or the delete removes what is not used.
	for a, id := range newIDs {
		st.ids[a] = id
	}
	var errs []error
	for scope := range 2 {
		if !want[scope] {
			continue
		}
		l := lists[scope]
		slices.SortFunc(l, func(a, b Backend) int { return a.Addr.Compare(b.Addr) })
		for i, b := range l {
			v := lbDnsaLbSvcVal{BackendId: newIDs[b.Addr], RevNatId: st.id}
			if err := t.putSvc(key(s.Frontend, uint8(scope), uint16(i+1)), v); err != nil {
				return mapErr(fmt.Sprintf("service %s: backend slot", s.Frontend), err)
			}
		}
		v := lbDnsaLbSvcVal{Count: uint16(len(l)), RevNatId: st.id, Flags: s.flags()}
		if s.Affinity > 0 {
			v.AffinityTimeout = uint32((s.Affinity + time.Second - 1) / time.Second)
		}
		if noLocal[scope] {
			v.Flags |= flagNoLocal
		}
		if err := t.putSvc(key(s.Frontend, uint8(scope), 0), v); err != nil {
			return mapErr(fmt.Sprintf("service %s", s.Frontend), err)
		}
	}
	// Now nothing new points at what is left over.
	for scope := range 2 {
		n := -1
		if want[scope] {
			n = len(lists[scope])
		}
		start := n + 1
		for slot := start; slot <= st.slots[scope]; slot++ {
			errs = append(errs, t.delSvc(key(s.Frontend, uint8(scope), uint16(slot))))
		}
		st.slots[scope] = n
	}
	for a, id := range st.ids {
		if _, ok := newIDs[a]; !ok {
			errs = append(errs, del(t.objs.DnsaLbBe, id))
			delete(t.usedBE, id)
			delete(st.ids, a)
			t.gone(a, st.id)
		}
	}
	st.backends = bs
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("service %s: %w", s.Frontend, err)
	}
	return nil
}

// rollbackIDs frees ids allocated in a write that failed.
func (t *Table) rollbackIDs(st *svcState, ids map[netip.AddrPort]uint32) {
	for a, id := range ids {
		if _, ok := st.ids[a]; !ok {
			del(t.objs.DnsaLbBe, id)
			delete(t.usedBE, id)
		}
	}
}

func (t *Table) putSvc(k lbDnsaLbKey, v lbDnsaLbSvcVal) error {
	var old lbDnsaLbSvcVal
	exists := t.objs.DnsaLbSvc.Lookup(k, &old) == nil
	if err := t.objs.DnsaLbSvc.Put(k, v); err != nil {
		return err
	}
	if !exists {
		t.entries++
	}
	return nil
}

func (t *Table) delSvc(k lbDnsaLbKey) error {
	err := t.objs.DnsaLbSvc.Delete(k)
	if err == nil {
		t.entries--
	}
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}

func del[K any](m *ebpf.Map, k K) error {
	if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

func mapErr(what string, err error) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM) {
		return fmt.Errorf("%s: %w (%w)", what, ErrMapFull, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (t *Table) allocRN(f Frontend) (uint16, error) {
	if len(t.usedRN) >= maxRevNat {
		return 0, fmt.Errorf("service %s: %w: all %d frontend ids in use", f, ErrMapFull, maxRevNat)
	}
	for {
		id := t.nextRN
		t.nextRN++
		if t.nextRN == 0 {
			t.nextRN = 1
		}
		if _, ok := t.usedRN[id]; !ok && id != 0 {
			t.usedRN[id] = f
			return id, nil
		}
	}
}

func (t *Table) allocBE() (uint32, error) {
	if len(t.usedBE) >= t.opts.MaxBackends {
		return 0, fmt.Errorf("%w: all %d backend entries in use", ErrMapFull, t.opts.MaxBackends)
	}
	for {
		id := t.nextBE
		t.nextBE++
		if t.nextBE == 0 {
			t.nextBE = 1
		}
		if !t.usedBE[id] && id != 0 {
			t.usedBE[id] = true
			return id, nil
		}
	}
}

func key(f Frontend, scope uint8, slot uint16) lbDnsaLbKey {
	k := lbDnsaLbKey{Port: htons(f.Port), Proto: uint8(f.Proto), Slot: slot, Scope: scope}
	k.Addr, k.Family = toWords(f.Addr)
	return k
}

// readBack rebuilds the table's state from maps an earlier process pinned.
func (t *Table) readBack() error {
	rns := map[uint16]Frontend{}
	var (
		id uint16
		rn lbDnsaLbRevnatVal
	)
	it := t.objs.DnsaLbRevnat.Iterate()
	for it.Next(&id, &rn) {
		rns[id] = Frontend{Addr: fromWords(rn.Addr, rn.Family), Port: ntohs(rn.Port), Proto: Proto(rn.Proto)}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading pinned reverse NAT entries: %w", err)
	}
	bes := map[uint32]lbDnsaLbBackend{}
	var (
		bid uint32
		be  lbDnsaLbBackend
	)
	bit := t.objs.DnsaLbBe.Iterate()
	for bit.Next(&bid, &be) {
		bes[bid] = be
	}
	if err := bit.Err(); err != nil {
		return fmt.Errorf("reading pinned backends: %w", err)
	}
	type slotRef struct {
		scope uint8
		slot  uint16
		val   lbDnsaLbSvcVal
	}
	byFE := map[Frontend][]slotRef{}
	var (
		k lbDnsaLbKey
		v lbDnsaLbSvcVal
	)
	sit := t.objs.DnsaLbSvc.Iterate()
	for sit.Next(&k, &v) {
		f := Frontend{Addr: fromWords(k.Addr, k.Family), Port: ntohs(k.Port), Proto: Proto(k.Proto)}
		byFE[f] = append(byFE[f], slotRef{k.Scope, k.Slot, v})
		t.entries++
	}
	if err := sit.Err(); err != nil {
		return fmt.Errorf("reading pinned services: %w", err)
	}
	for f, refs := range byFE {
		var head *lbDnsaLbSvcVal
		for i := range refs {
			if refs[i].slot == 0 && refs[i].scope == scopeAll {
				head = &refs[i].val
			}
		}
		if head == nil || rns[head.RevNatId] != f {
			// Half-written (a crash mid-update): drop it.
			for _, r := range refs {
				t.delSvc(key(f, r.scope, r.slot))
			}
			continue
		}
		st := &svcState{id: head.RevNatId, ids: map[netip.AddrPort]uint32{}, slots: [2]int{-1, -1}}
		st.svc = Service{Frontend: f, Affinity: time.Duration(head.AffinityTimeout) * time.Second}
		switch {
		case head.Flags&flagNodePort != 0:
			st.svc.Type = NodePort
		case head.Flags&flagExternalIP != 0:
			st.svc.Type = ExternalIP
		case head.Flags&flagLoadBalancer != 0:
			st.svc.Type = LoadBalancer
		}
		seen := map[netip.AddrPort]bool{}
		for _, r := range refs {
			if int(r.slot) > st.slots[r.scope] {
				st.slots[r.scope] = int(r.slot)
			}
			if r.slot == 0 {
				if r.scope == scopeExt {
					st.svc.TrafficLocal = true
				}
				continue
			}
			b, ok := bes[r.val.BackendId]
			if !ok {
				continue
			}
			a := netip.AddrPortFrom(fromWords(b.Addr, b.Family), ntohs(b.Port))
			st.ids[a] = r.val.BackendId
			t.usedBE[r.val.BackendId] = true
			if !seen[a] {
				seen[a] = true
				st.backends = append(st.backends, Backend{Addr: a, Terminating: b.Flags&beTerminating != 0})
			}
		}
		t.svcs[f] = st
		t.usedRN[st.id] = f
	}
	// Backends and reverse NAT entries nobody refers to.
	for id := range bes {
		if !t.usedBE[id] {
			del(t.objs.DnsaLbBe, id)
		}
	}
	for id := range rns {
		if _, ok := t.usedRN[id]; !ok {
			del(t.objs.DnsaLbRevnat, id)
		}
	}
	return nil
}

// Stat indexes the per-CPU counters (enum dnsa_lb_stat in bpf/lb.h).
type Stat uint32

// The counters.
const (
	StatXlated      Stat = 0  // connect/sendmsg sent to a backend
	StatRejected    Stat = 1  // no endpoints: refused
	StatNoLocal     Stat = 2  // traffic policy Local, none on this node: refused
	StatSteered     Stat = 3  // left to the node cache's steering
	StatReversed    Stat = 4  // recvmsg/getpeername shown the frontend
	StatRevStale    Stat = 5  // reverse entry of a deleted Service: not reversed
	StatAffinity    Stat = 6  // backend from the affinity map
	StatNoStorage   Stat = 7  // socket storage not allocated: left untranslated
	StatNoBackend   Stat = 8  // slot or backend entry missing (an update in flight)
	StatTerminated  Stat = 9  // connected UDP socket to a gone backend destroyed
	StatPktXlated   Stat = 10 // tc: packet to a frontend sent to a backend
	StatPktReversed Stat = 11 // tc: reply shown from the frontend
	StatPktDropped  Stat = 12 // tc: no (local) endpoint: dropped
)

// StatNames names the counters (for metrics).
var StatNames = map[Stat]string{
	StatXlated: "translated", StatRejected: "rejected", StatNoLocal: "no_local_endpoint",
	StatSteered: "left_to_node_cache", StatReversed: "reversed", StatRevStale: "reverse_stale",
	StatAffinity: "affinity", StatNoStorage: "no_socket_storage", StatNoBackend: "no_backend",
	StatTerminated: "udp_terminated", StatPktXlated: "packet_translated", StatPktReversed: "packet_reversed",
	StatPktDropped: "packet_dropped",
}

// Stats returns the counters summed over CPUs.
func (t *Table) Stats() (map[Stat]uint64, error) {
	out := map[Stat]uint64{}
	for st := range StatNames {
		var per []uint64
		if err := t.objs.DnsaLbStats.Lookup(uint32(st), &per); err != nil {
			return nil, fmt.Errorf("load-balancing counters: %w", err)
		}
		for _, v := range per {
			out[st] += v
		}
	}
	return out, nil
}

// IDs are the kernel IDs of what this process holds.
type IDs struct {
	Programs []ebpf.ProgramID
	Maps     []ebpf.MapID
	Links    []link.ID
}

// IDs returns the kernel IDs of the programs, maps and links.
func (t *Table) IDs() (IDs, error) {
	var ids IDs
	for _, h := range hooks {
		info, err := h.prog(&t.objs).Info()
		if err != nil {
			return ids, err
		}
		id, _ := info.ID()
		ids.Programs = append(ids.Programs, id)
	}
	for _, m := range []*ebpf.Map{t.objs.DnsaLbSvc, t.objs.DnsaLbBe, t.objs.DnsaLbRevnat, t.objs.DnsaLbAff, t.objs.DnsaLbSock, t.objs.DnsaLbStats, t.objs.DnsaLbGone, t.objs.DnsaLbCt} {
		info, err := m.Info()
		if err != nil {
			return ids, err
		}
		id, _ := info.ID()
		ids.Maps = append(ids.Maps, id)
	}
	if t.term != nil {
		if info, err := t.term.Info(); err == nil {
			id, _ := info.ID()
			ids.Programs = append(ids.Programs, id)
		}
	}
	for _, l := range t.links {
		info, err := l.Info()
		if err != nil {
			return ids, err
		}
		ids.Links = append(ids.Links, info.ID)
	}
	return ids, nil
}
