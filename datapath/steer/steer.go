// Package steer loads, attaches, pins and drives dnsaccel's eBPF DNS
// steering (bpf/steer.c): cgroup sock_addr programs that send sockets'
// queries for a Service VIP to a local address instead, while a heartbeat
// refreshed from user space is fresh, and show the replies as coming from
// the VIP. It knows nothing about DNS servers: callers give it a table of
// (VIP, port, protocol) -> target and keep the heartbeat going.
//
// Everything lives under <bpffs>/dnsaccel/: the maps (pinned by name), the
// programs and one pinned bpf_link per hook. A new process calling Attach
// adopts what it finds there: the maps keep their contents and each link is
// switched to the new program atomically (BPF_LINK_UPDATE), so steering never
// stops. Close releases this process's handles and leaves everything
// running; Cleanup removes it all.
package steer

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath"
)

// PinDir is the directory under the bpffs mount that holds every pin.
const PinDir = "dnsaccel"

// Proto is an IP protocol number of a steering rule.
type Proto uint8

// The protocols DNS uses.
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

// Rule steers connections and datagrams for VIP over Proto to Target.
type Rule struct {
	VIP    netip.AddrPort
	Proto  Proto
	Target netip.AddrPort
}

func (r Rule) String() string { return fmt.Sprintf("%s/%s -> %s", r.VIP, r.Proto, r.Target) }

// Options configure Attach.
type Options struct {
	// Cgroup is the cgroup v2 directory the programs attach to; every
	// socket of a process in it or below is steered. Default: the cgroup
	// v2 mount (datapath.DetectCgroup2).
	Cgroup string
	// BPFFS is a bpf file system mount; pins go to <BPFFS>/dnsaccel.
	// Default /sys/fs/bpf. If the directory is not a bpf file system,
	// Attach mounts one there (as Cilium does).
	BPFFS string
	// HeartbeatTimeout: the programs steer only while the last heartbeat
	// is younger than this. Default 1s.
	HeartbeatTimeout time.Duration
	// SkipMark: sockets carrying this SO_MARK are never steered (0: none).
	SkipMark uint32
}

func (o *Options) defaults() error {
	if o.BPFFS == "" {
		o.BPFFS = "/sys/fs/bpf"
	}
	if o.Cgroup == "" {
		cg, err := datapath.DetectCgroup2()
		if err != nil {
			return err
		}
		o.Cgroup = cg
	} else {
		o.Cgroup = datapath.Cgroup2Dir(o.Cgroup)
	}
	if o.HeartbeatTimeout <= 0 {
		o.HeartbeatTimeout = time.Second
	}
	return nil
}

// hookObjects is what Attach loads: the maps and the hook programs (not
// the iterator ReverseUDPSockets loads when asked, which needs kernel BTF).
type hookObjects struct {
	steerMaps
	Connect4 *ebpf.Program `ebpf:"dnsa_connect4"`
	Connect6 *ebpf.Program `ebpf:"dnsa_connect6"`
	Sendmsg4 *ebpf.Program `ebpf:"dnsa_sendmsg4"`
	Sendmsg6 *ebpf.Program `ebpf:"dnsa_sendmsg6"`
	Recvmsg4 *ebpf.Program `ebpf:"dnsa_recvmsg4"`
	Recvmsg6 *ebpf.Program `ebpf:"dnsa_recvmsg6"`
	Getpeer4 *ebpf.Program `ebpf:"dnsa_getpeer4"`
	Getpeer6 *ebpf.Program `ebpf:"dnsa_getpeer6"`
}

func (o *hookObjects) Close() error {
	errs := []error{o.steerMaps.Close()}
	for _, h := range hooks {
		if p := h.prog(o); p != nil {
			errs = append(errs, p.Close())
		}
	}
	return errors.Join(errs...)
}

// hook is one attached program.
type hook struct {
	name   string // program name, and the pin names prog_<name>, link_<name>
	attach ebpf.AttachType
	prog   func(*hookObjects) *ebpf.Program
}

var hooks = []hook{
	{"dnsa_connect4", ebpf.AttachCGroupInet4Connect, func(o *hookObjects) *ebpf.Program { return o.Connect4 }},
	{"dnsa_connect6", ebpf.AttachCGroupInet6Connect, func(o *hookObjects) *ebpf.Program { return o.Connect6 }},
	{"dnsa_sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(o *hookObjects) *ebpf.Program { return o.Sendmsg4 }},
	{"dnsa_sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(o *hookObjects) *ebpf.Program { return o.Sendmsg6 }},
	{"dnsa_recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(o *hookObjects) *ebpf.Program { return o.Recvmsg4 }},
	{"dnsa_recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(o *hookObjects) *ebpf.Program { return o.Recvmsg6 }},
	{"dnsa_getpeer4", ebpf.AttachCgroupInet4GetPeername, func(o *hookObjects) *ebpf.Program { return o.Getpeer4 }},
	{"dnsa_getpeer6", ebpf.AttachCgroupInet6GetPeername, func(o *hookObjects) *ebpf.Program { return o.Getpeer6 }},
}

// ProgramNames are the kernel names of the steering programs (bpftool prog
// show), MapNames those of its maps.
var (
	ProgramNames = func() []string {
		var n []string
		for _, h := range hooks {
			n = append(n, h.name)
		}
		return n
	}()
	MapNames = []string{"dnsa_steer", "dnsa_rev", "dnsa_hb", "dnsa_cfg", "dnsa_stats"}
)

// Steering is this process's handle on the attached steering.
type Steering struct {
	opts     Options
	dir      string
	objs     hookObjects
	links    []link.Link
	adopted  int      // links found pinned and switched to our programs
	replaced []string // pinned maps of another layout, replaced
	mounted  bool     // Attach mounted the bpffs
	// lastBeat is the value this process wrote last, so that a process
	// handing over can tell a successor's beats from its own.
	lastBeat atomic.Uint64
	closed   atomic.Bool
}

// Attach loads the programs, adopts or creates the pinned maps and links
// under <BPFFS>/dnsaccel, attaches to the cgroup and writes the
// configuration. The heartbeat is not touched: steering starts with the
// first Beat (or continues on the beats of the process this one adopts
// from).
func Attach(opts Options) (*Steering, error) {
	opts, mounted, err := Preflight(opts)
	if err != nil {
		return nil, err
	}
	s := &Steering{opts: opts, dir: filepath.Join(opts.BPFFS, PinDir), mounted: mounted}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("pin directory: %w", err)
	}
	// Two processes attaching at once (a DaemonSet surge) take turns.
	unlock, err := lockDir(s.dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.load(); err != nil {
		return nil, err
	}
	if err := s.attach(); err != nil {
		s.Close()
		return nil, err
	}
	cfg := steerDnsaConfig{TimeoutNs: uint64(opts.HeartbeatTimeout), SkipMark: opts.SkipMark}
	if err := s.objs.DnsaCfg.Put(uint32(0), cfg); err != nil {
		s.Close()
		return nil, fmt.Errorf("writing the steering configuration: %w", err)
	}
	return s, nil
}

// Preflight fills in the defaults of opts, makes sure BPFFS is a bpf file
// system (mounting one if not: mounted) and checks the prerequisites
// (Check), so that a caller can fail before changing anything else.
func Preflight(opts Options) (_ Options, mounted bool, err error) {
	if err := opts.defaults(); err != nil {
		return opts, false, err
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones
	// to the memory cgroup (then this is a no-op).
	_ = rlimit.RemoveMemlock()
	if err := datapath.Check(opts.Cgroup); err != nil {
		return opts, false, err
	}
	mounted, err = datapath.EnsureBPFFS(opts.BPFFS)
	return opts, mounted, err
}

// load loads the maps and hook programs, reusing the maps pinned by an
// earlier process. A pinned map that no longer matches the programs (an
// upgrade changed its layout or type) is replaced, alone: the others keep
// their contents, and the old programs keep the old map until their links
// are switched in attach.
func (s *Steering) load() error {
	spec, err := loadSteer()
	if err != nil {
		return fmt.Errorf("steering programs: %w", err)
	}
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		p := filepath.Join(s.dir, name)
		m, err := ebpf.LoadPinnedMap(p, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("pinned map %s: %w", p, err)
		}
		err = ms.Compatible(m)
		m.Close()
		if err != nil {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("replacing pinned map %s: %w", p, err)
			}
			s.replaced = append(s.replaced, name)
		}
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: s.dir}}
	if err := spec.LoadAndAssign(&s.objs, opts); err != nil {
		return explainLoad(err)
	}
	return nil
}

// explainLoad names the missing permission or kernel feature.
func explainLoad(err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("BPF permission: loading the steering programs needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN (root): %w", err)
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("kernel feature missing (steering needs Linux 5.8+ with cgroup sock_addr programs): %w", err)
	}
	return fmt.Errorf("loading the steering programs: %w", err)
}

func (s *Steering) attach() error {
	cg, err := os.Open(s.opts.Cgroup)
	if err != nil {
		return fmt.Errorf("cgroup v2 %s: %w", s.opts.Cgroup, err)
	}
	defer cg.Close()
	cgID, err := inode(s.opts.Cgroup)
	if err != nil {
		return err
	}
	for _, h := range hooks {
		l, adopted, err := datapath.AttachCgroupPinned(cg, s.opts.Cgroup, cgID, s.dir, h.name, h.prog(&s.objs), h.attach)
		if l != nil {
			s.links = append(s.links, l)
		}
		if err != nil {
			return err
		}
		if adopted {
			s.adopted++
		}
	}
	return nil
}

// Adopted reports how many links Attach found pinned and took over.
func (s *Steering) Adopted() int { return s.adopted }

// Replaced names the pinned maps Attach found with another layout (an
// earlier version's) and replaced with fresh ones.
func (s *Steering) Replaced() []string { return s.replaced }

// MountedBPFFS reports whether Attach had to mount the bpf file system.
func (s *Steering) MountedBPFFS() bool { return s.mounted }

// Dir is the pin directory.
func (s *Steering) Dir() string { return s.dir }

// Options returns the options Attach ran with (defaults filled in).
func (s *Steering) Options() Options { return s.opts }

// SetTable makes the steering table exactly rules.
func (s *Steering) SetTable(rules []Rule) error {
	want := map[steerDnsaSteerKey]steerDnsaSteerTarget{}
	for _, r := range rules {
		k, v, err := ruleEntry(r)
		if err != nil {
			return err
		}
		want[k] = v
	}
	var (
		k    steerDnsaSteerKey
		v    steerDnsaSteerTarget
		stal []steerDnsaSteerKey
	)
	it := s.objs.DnsaSteer.Iterate()
	for it.Next(&k, &v) {
		if _, ok := want[k]; !ok {
			stal = append(stal, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading the steering table: %w", err)
	}
	for k, v := range want {
		if err := s.objs.DnsaSteer.Put(k, v); err != nil {
			return fmt.Errorf("steering table: %w", err)
		}
	}
	for _, k := range stal {
		if err := s.objs.DnsaSteer.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("steering table: %w", err)
		}
	}
	return nil
}

// Table returns the steering table.
func (s *Steering) Table() ([]Rule, error) {
	var (
		k   steerDnsaSteerKey
		v   steerDnsaSteerTarget
		out []Rule
	)
	it := s.objs.DnsaSteer.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Rule{
			VIP:    netip.AddrPortFrom(fromWords(k.Addr, k.Family), ntohs(k.Port)),
			Proto:  Proto(k.Proto),
			Target: netip.AddrPortFrom(fromWords(v.Addr, v.Family), ntohs(v.Port)),
		})
	}
	return out, it.Err()
}

func ruleEntry(r Rule) (steerDnsaSteerKey, steerDnsaSteerTarget, error) {
	var (
		k steerDnsaSteerKey
		v steerDnsaSteerTarget
	)
	vip, tgt := r.VIP.Addr().Unmap(), r.Target.Addr().Unmap()
	switch {
	case !vip.IsValid() || !tgt.IsValid():
		return k, v, fmt.Errorf("rule %s: missing address", r)
	case vip.Is4() != tgt.Is4():
		return k, v, fmt.Errorf("rule %s: VIP and target are of different IP families", r)
	case r.Proto != TCP && r.Proto != UDP:
		return k, v, fmt.Errorf("rule %s: protocol must be tcp or udp", r)
	case vip.Zone() != "" || tgt.Zone() != "":
		return k, v, fmt.Errorf("rule %s: zoned addresses are not supported", r)
	}
	k.Addr, k.Family = toWords(vip)
	k.Port, k.Proto = htons(r.VIP.Port()), uint8(r.Proto)
	v.Addr, v.Family = toWords(tgt)
	v.Port = htons(r.Target.Port())
	return k, v, nil
}

// toWords lays an address out as the hooks see it: network byte order in
// memory, IPv4 in the first word.
func toWords(a netip.Addr) (w [4]uint32, family uint8) {
	var b [16]byte
	if a.Is4() {
		a4 := a.As4()
		copy(b[:], a4[:])
		family = 4
	} else {
		b = a.As16()
		family = 6
	}
	for i := range w {
		w[i] = nativeEndian.Uint32(b[i*4:])
	}
	return w, family
}

func fromWords(w [4]uint32, family uint8) netip.Addr {
	var b [16]byte
	for i := range w {
		nativeEndian.PutUint32(b[i*4:], w[i])
	}
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// htons gives the uint16 whose in-memory bytes are p in network order.
func htons(p uint16) uint16 {
	var b [2]byte
	b[0], b[1] = byte(p>>8), byte(p)
	return nativeEndian.Uint16(b[:])
}

func ntohs(p uint16) uint16 {
	var b [2]byte
	nativeEndian.PutUint16(b[:], p)
	return uint16(b[0])<<8 | uint16(b[1])
}

// Monotonic is CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
func Monotonic() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// Beat refreshes the heartbeat: steering goes on for HeartbeatTimeout.
func (s *Steering) Beat() error {
	now := Monotonic()
	if err := s.objs.DnsaHb.Put(uint32(0), now); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	s.lastBeat.Store(now)
	return nil
}

// LastHeartbeat returns the heartbeat as stored (whoever wrote it), as
// CLOCK_MONOTONIC nanoseconds; 0 if there never was one.
func (s *Steering) LastHeartbeat() (uint64, error) {
	var v uint64
	if err := s.objs.DnsaHb.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("heartbeat: %w", err)
	}
	return v, nil
}

// HeartbeatAge is how old the stored heartbeat is (-1 if none).
func (s *Steering) HeartbeatAge() time.Duration {
	hb, err := s.LastHeartbeat()
	if err != nil || hb == 0 {
		return -1
	}
	now := Monotonic()
	if hb > now {
		return 0
	}
	return time.Duration(now - hb)
}

// Fresh reports whether the programs steer now.
func (s *Steering) Fresh() bool {
	age := s.HeartbeatAge()
	return age >= 0 && age < s.opts.HeartbeatTimeout
}

// BeatenByOther reports whether the stored heartbeat was written after this
// process's last beat by someone else: a successor has taken over.
func (s *Steering) BeatenByOther() bool {
	hb, err := s.LastHeartbeat()
	return err == nil && hb > s.lastBeat.Load()
}

// Stop makes the programs stop steering now (heartbeat cleared) without
// detaching them.
func (s *Steering) Stop() error {
	if err := s.objs.DnsaHb.Put(uint32(0), uint64(0)); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

// Stat indexes the per-CPU counters of the programs (enum dnsa_stat in
// bpf/steer.h).
type Stat uint32

// The counters.
const (
	StatSteered  Stat = 0 // connect/sendmsg rewritten to the target
	StatStale    Stat = 1 // matched but not steered: heartbeat too old
	StatSkipMark Stat = 2 // matched but not steered: the skip mark
	StatReversed Stat = 3 // recvmsg/getpeername shown the VIP
	StatRevFail  Stat = 4 // matched but not steered: reverse entry not stored
)

// Stats returns the counters summed over CPUs.
func (s *Steering) Stats() (map[Stat]uint64, error) { return readStats(s.objs.DnsaStats) }

// PinnedStats returns the counters, summed over CPUs, of the steering
// pinned under bpffs, for a process that does not hold it.
func PinnedStats(bpffs string) (map[Stat]uint64, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(bpffs, PinDir, "dnsa_stats"), nil)
	if err != nil {
		return nil, fmt.Errorf("steering counters: %w", err)
	}
	defer m.Close()
	return readStats(m)
}

func readStats(m *ebpf.Map) (map[Stat]uint64, error) {
	out := map[Stat]uint64{}
	for _, st := range []Stat{StatSteered, StatStale, StatSkipMark, StatReversed, StatRevFail} {
		var per []uint64
		if err := m.Lookup(uint32(st), &per); err != nil {
			return nil, fmt.Errorf("steering counters: %w", err)
		}
		for _, v := range per {
			out[st] += v
		}
	}
	return out, nil
}

// ReverseUDPSockets counts the UDP sockets of the calling thread's network
// namespace that hold a reverse translation: those steered and still open
// (the kernel frees the translation with its socket). It loads an iterator
// program, which needs the kernel's BTF.
func (s *Steering) ReverseUDPSockets() (int, error) {
	spec, err := loadSteer()
	if err != nil {
		return 0, fmt.Errorf("steering programs: %w", err)
	}
	var it struct {
		Prog *ebpf.Program `ebpf:"dnsa_rev_udp"`
	}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"dnsa_rev": s.objs.DnsaRev}}
	if err := spec.LoadAndAssign(&it, opts); err != nil {
		return 0, fmt.Errorf("loading the reverse-entry iterator (needs kernel BTF): %w", err)
	}
	defer it.Prog.Close()
	l, err := link.AttachIter(link.IterOptions{Program: it.Prog})
	if err != nil {
		return 0, fmt.Errorf("reverse-entry iterator: %w", err)
	}
	defer l.Close()
	r, err := l.Open()
	if err != nil {
		return 0, fmt.Errorf("reverse-entry iterator: %w", err)
	}
	defer r.Close()
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return 0, fmt.Errorf("reading the reverse-entry iterator: %w", err)
	}
	return int(n), nil
}

// IDs are the kernel IDs of what this process holds, for checks that
// everything is gone after Cleanup.
type IDs struct {
	Programs []ebpf.ProgramID
	Maps     []ebpf.MapID
	Links    []link.ID
}

// IDs returns the kernel IDs of the programs, maps and links.
func (s *Steering) IDs() (IDs, error) {
	var ids IDs
	for _, h := range hooks {
		info, err := h.prog(&s.objs).Info()
		if err != nil {
			return ids, err
		}
		id, _ := info.ID()
		ids.Programs = append(ids.Programs, id)
	}
	for _, m := range []*ebpf.Map{s.objs.DnsaSteer, s.objs.DnsaRev, s.objs.DnsaHb, s.objs.DnsaCfg, s.objs.DnsaStats} {
		info, err := m.Info()
		if err != nil {
			return ids, err
		}
		id, _ := info.ID()
		ids.Maps = append(ids.Maps, id)
	}
	for _, l := range s.links {
		info, err := l.Info()
		if err != nil {
			return ids, err
		}
		ids.Links = append(ids.Links, info.ID)
	}
	return ids, nil
}

// Close releases this process's handles. Pinned links, programs and maps
// stay: steering goes on while someone beats, and falls back to the VIPs
// when nobody does.
func (s *Steering) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	var errs []error
	for _, l := range s.links {
		errs = append(errs, l.Close())
	}
	s.links = nil
	errs = append(errs, s.objs.Close())
	return errors.Join(errs...)
}

// Cleanup closes s and removes everything under its pin directory.
func (s *Steering) Cleanup() error {
	return errors.Join(s.Close(), Cleanup(filepath.Dir(s.dir)))
}

// Cleanup detaches and removes everything pinned under <bpffs>/dnsaccel:
// links (detached when the pin goes and no process holds them), programs,
// maps, the directory. Nothing there is fine. The Service load balancer's
// pins (dnsa_lb_*, datapath/lb) stay, with the maps it shares while it is
// attached, and then the directory.
func Cleanup(bpffs string) error {
	dir := filepath.Join(bpffs, PinDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cleanup %s: %w", dir, err)
	}
	if unlock, err := lockDir(dir); err == nil {
		defer unlock()
	}
	var errs []error
	// The Service load balancer (datapath/lb) pins dnsa_lb_* into the same
	// directory and reads dnsa_steer, dnsa_hb and dnsa_cfg: leave its pins,
	// and those three while it is attached (it then balances the VIP).
	lbAttached := false
	for _, e := range ents {
		lbAttached = lbAttached || strings.HasPrefix(e.Name(), "link_dnsa_lb_")
	}
	ents = slices.DeleteFunc(ents, func(e os.DirEntry) bool {
		n := e.Name()
		return strings.Contains(n, "dnsa_lb_") || lbAttached && (n == "dnsa_steer" || n == "dnsa_hb" || n == "dnsa_cfg")
	})
	// Links first: traffic stops being steered before the maps go.
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "link_") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", p, err))
			os.Remove(p)
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", p, err))
		}
		l.Close()
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "link_") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", p, err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) {
		errs = append(errs, fmt.Errorf("cleanup %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// Pinned reports whether a pin directory exists under bpffs.
func Pinned(bpffs string) bool {
	_, err := os.Stat(filepath.Join(bpffs, PinDir))
	return err == nil
}

// lockDir takes an exclusive flock on dir.
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}

func inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}
