// Package kcache loads and drives dnsaccel's in-kernel DNS cache
// (bpf/kcache.c): a tc program on pods' interfaces that answers UDP queries
// to the node cache's address from a map of hot answers, in place, without
// waking user space. It knows nothing of CoreDNS: node-cache decides what
// goes into the map (Put, Delete) and which interfaces carry the program
// (Attach, Detach).
//
// The map is private to the process that loaded it and the attachments are
// not pinned: when node-cache exits, crashes or is killed, the kernel drops
// both, and every query goes to user space again. A restarted node-cache
// starts from an empty kernel cache, consistent with its own.
package kcache

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Limits of what an entry can hold, from bpf/kcache.h.
const (
	MaxName = 128 // wire-format question name, root label included
	MaxData = 512 // record bytes after the question
	MaxTTLs = 32  // TTL fields aged per entry
	// MaxResponseBytes is the largest response the program builds: header,
	// the longest name, type and class, MaxData of records and an OPT.
	MaxResponseBytes = 12 + MaxName + 4 + MaxData + 11
)

// Options configure the kernel cache.
type Options struct {
	// Addrs are the node cache's addresses: only queries to them (and
	// Port) are answered.
	Addrs []netip.Addr
	// Port is the cache's DNS port (default 53).
	Port uint16
	// EDNSSize is the UDP payload size the cache advertises in the OPT
	// record of its answers to EDNS0 queries (default 1232).
	EDNSSize uint16
	// MaxResponse is the largest response, in bytes, answered from the
	// kernel (default 512; at most MaxResponseBytes). Whatever it is, the
	// kernel answers only responses that fit the client's UDP size (512
	// without EDNS0, else its OPT record's, never less than 512) and passes
	// larger ones on to node-cache, which answers them with TC set.
	MaxResponse int
	// MaxEntries bounds the kernel map (default 4096); the kernel evicts
	// the least recently used entry when it is full.
	MaxEntries uint32
}

// Key is a question as the user-space cache keys it.
type Key struct {
	Name  []byte // lower-cased wire-format name
	Qtype uint16
	DO    bool // the query's EDNS0 DO bit
	CD    bool // the query's CD bit
}

// Entry is an answer as the user-space cache renders it.
type Entry struct {
	Flags      uint16 // header flags word; RD is taken from each query
	Ancount    uint16
	Nscount    uint16
	Arcount    uint16   // without an OPT record
	Data       []byte   // the records after the question
	TTLOffsets []uint16 // offsets of the TTL fields in Data
	TTLs       []uint32 // their values at age 0
	// Age is how long ago the TTLs were current; Remaining is how much
	// longer the entry may be served.
	Age, Remaining time.Duration
}

// ErrTooLarge is returned by Put for an entry the kernel cannot hold.
var ErrTooLarge = errors.New("entry too large for the kernel cache")

// Stats are the program's counters, summed over CPUs.
type Stats struct {
	Hits    uint64 // queries answered in the kernel
	Misses  uint64 // answerable queries not in the map
	Expired uint64 // answerable queries whose entry had expired
	Passed  uint64 // queries to the cache the kernel does not answer (TCP, EDNS options, too large, malformed)
	Errors  uint64 // helper failures while answering (the query went on, or was dropped if half rewritten)
}

// Cache is the loaded program and its maps.
type Cache struct {
	objs    kcacheObjects
	maxResp int

	mu    sync.Mutex
	links map[attachPoint]detacher
}

// attachPoint is where the program is: an interface of a network
// namespace (netns: its inode; 0 for the caller's own, as Attach uses).
type attachPoint struct {
	netns   uint64
	ifindex int
	egress  bool
}

type detacher interface{ Close() error }

// Open loads the program and configures it.
func Open(opts Options) (*Cache, error) {
	if len(opts.Addrs) == 0 {
		return nil, errors.New("kernel cache: no address to answer on")
	}
	if opts.Port == 0 {
		opts.Port = 53
	}
	if opts.EDNSSize == 0 {
		opts.EDNSSize = 1232
	}
	if opts.MaxEntries == 0 {
		opts.MaxEntries = 4096
	}
	if opts.MaxResponse == 0 {
		opts.MaxResponse = 512
	}
	spec, err := loadKcache()
	if err != nil {
		return nil, fmt.Errorf("kernel cache: load spec: %w", err)
	}
	spec.Maps["dnsa_kc_cache"].MaxEntries = opts.MaxEntries
	c := &Cache{maxResp: opts.MaxResponse, links: map[attachPoint]detacher{}}
	if err := spec.LoadAndAssign(&c.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("kernel cache: the verifier rejected the program: %+v", ve)
		}
		return nil, fmt.Errorf("kernel cache: load (needs BPF and CAP_BPF/CAP_NET_ADMIN): %w", err)
	}
	for _, a := range opts.Addrs {
		var k kcacheDnsaKcAddr
		k.Addr = a.Unmap().As16()
		if err := c.objs.DnsaKcAddrs.Put(k, uint8(1)); err != nil {
			c.Close()
			return nil, fmt.Errorf("kernel cache: address %s: %w", a, err)
		}
	}
	cfg := kcacheDnsaKcConfig{Port: opts.Port, EdnsSize: opts.EDNSSize, MaxResp: uint16(min(opts.MaxResponse, 0xffff))}
	if err := c.objs.DnsaKcCfg.Put(uint32(0), cfg); err != nil {
		c.Close()
		return nil, fmt.Errorf("kernel cache: config: %w", err)
	}
	return c, nil
}

// Close detaches the program everywhere and releases it and its maps.
func (c *Cache) Close() error {
	c.mu.Lock()
	var errs []error
	for ap, l := range c.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach from interface %d: %w", ap.ifindex, err))
		}
		delete(c.links, ap)
	}
	c.mu.Unlock()
	errs = append(errs, c.objs.Close())
	return errors.Join(errs...)
}

// Attach puts the program on an interface: on its ingress for the host end
// of a pod's veth (answers go straight into the pod end's ingress when that
// is in another namespace, as a pod's is, or else leave through the same
// device), on its egress for an interface inside the pod (answers come back
// in on it). It prefers tcx
// and falls back to a clsact qdisc on kernels without it.
func (c *Cache) Attach(ifindex int, egress bool) error {
	return c.attach(attachPoint{ifindex: ifindex, egress: egress})
}

// AttachIn is Attach for an interface of another network namespace, such
// as a pod's IPVLAN interface (egress): the program is attached from a
// thread switched into that namespace, where ifindex means its interface.
func (c *Cache) AttachIn(netns ns.NetNS, ifindex int, egress bool) error {
	id, err := netnsID(netns)
	if err != nil {
		return err
	}
	return netns.Do(func(ns.NetNS) error {
		return c.attach(attachPoint{netns: id, ifindex: ifindex, egress: egress})
	})
}

// DetachIn undoes AttachIn; as Detach, where the program is not (or the
// interface is gone) is not an error.
func (c *Cache) DetachIn(netns ns.NetNS, ifindex int, egress bool) error {
	id, err := netnsID(netns)
	if err != nil {
		return err
	}
	return c.detach(attachPoint{netns: id, ifindex: ifindex, egress: egress})
}

// netnsID is the inode of a network namespace: unique while it exists.
func netnsID(netns ns.NetNS) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(netns.Fd()), &st); err != nil {
		return 0, fmt.Errorf("kernel cache: network namespace %s: %w", netns.Path(), err)
	}
	return st.Ino, nil
}

// attach runs on a thread in ap's namespace.
func (c *Cache) attach(ap attachPoint) error {
	ifindex, egress := ap.ifindex, ap.egress
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.links[ap]; ok {
		return nil
	}
	prog, attach := c.objs.KcIngress, ebpf.AttachTCXIngress
	switch {
	case egress:
		prog, attach = c.objs.KcEgress, ebpf.AttachTCXEgress
	case peerInOtherNetns(ifindex):
		prog = c.objs.KcIngressPeer
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: attach, Anchor: link.Head()})
	if errors.Is(err, ebpf.ErrNotSupported) {
		var f *clsactFilter
		f, err = attachClsact(ifindex, egress, prog)
		if err == nil {
			c.links[ap] = f
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("kernel cache: attach to interface %d: %w", ifindex, err)
	}
	c.links[ap] = l
	return nil
}

// peerInOtherNetns reports whether ifindex is a veth whose other end is in
// another network namespace (the kernel then reports the peer's namespace,
// IFLA_LINK_NETNSID): a pod's veth seen from the host.
func peerInOtherNetns(ifindex int) bool {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return false
	}
	_, veth := l.(*netlink.Veth)
	return veth && l.Attrs().NetNsID >= 0
}

// Detach removes the program from an interface; detaching where it is not
// attached is not an error (the interface may be gone already).
func (c *Cache) Detach(ifindex int, egress bool) error {
	return c.detach(attachPoint{ifindex: ifindex, egress: egress})
}

func (c *Cache) detach(ap attachPoint) error {
	ifindex := ap.ifindex
	c.mu.Lock()
	l, ok := c.links[ap]
	delete(c.links, ap)
	c.mu.Unlock()
	if !ok {
		return nil
	}
	if err := l.Close(); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("kernel cache: detach from interface %d: %w", ifindex, err)
	}
	return nil
}

// Attached lists the interfaces (by index, in their namespaces) the program
// is on.
func (c *Cache) Attached() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]int, 0, len(c.links))
	for ap := range c.links {
		out = append(out, ap.ifindex)
	}
	return out
}

// Fits reports whether an answer of that many bytes (header, question and
// records, without OPT) may be answered from the kernel.
func (c *Cache) Fits(key Key, e *Entry) bool {
	return len(key.Name) <= MaxName && len(e.Data) <= MaxData && len(e.TTLOffsets) <= MaxTTLs &&
		12+len(key.Name)+4+len(e.Data)+11 <= c.maxResp
}

// Put stores or replaces the answer for key.
func (c *Cache) Put(key Key, e *Entry) error {
	if !c.Fits(key, e) {
		return ErrTooLarge
	}
	return c.store(key, e)
}

// store is Put without the MaxResponse check, which the program makes again
// for every query (tests use it to reach that check).
func (c *Cache) store(key Key, e *Entry) error {
	if len(key.Name) > MaxName || len(e.Data) > MaxData || len(e.TTLOffsets) > MaxTTLs || len(e.TTLOffsets) != len(e.TTLs) {
		return ErrTooLarge
	}
	for _, o := range e.TTLOffsets {
		if int(o)+4 > len(e.Data) {
			return fmt.Errorf("kernel cache: TTL offset %d outside %d bytes of records", o, len(e.Data))
		}
	}
	k := kernelKey(key)
	now := monotonic()
	v := kcacheDnsaKcEntry{
		StoredNs:  uint64(max(0, now-int64(e.Age))),
		ExpiresNs: uint64(now + int64(e.Remaining)),
		Flags:     e.Flags,
		Ancount:   e.Ancount,
		Nscount:   e.Nscount,
		Arcount:   e.Arcount,
		DataLen:   uint16(len(e.Data)),
		TtlCount:  uint16(len(e.TTLOffsets)),
	}
	copy(v.TtlOff[:], e.TTLOffsets)
	copy(v.Ttl[:], e.TTLs)
	copy(v.Data[:], e.Data)
	if err := c.objs.DnsaKcCache.Put(k, &v); err != nil {
		return fmt.Errorf("kernel cache: put: %w", err)
	}
	return nil
}

// Delete removes the answer for key; a missing key is not an error.
func (c *Cache) Delete(key Key) error {
	if len(key.Name) > MaxName {
		return nil
	}
	k := kernelKey(key)
	if err := c.objs.DnsaKcCache.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("kernel cache: delete: %w", err)
	}
	return nil
}

// Len counts the entries in the kernel map (expired ones included).
func (c *Cache) Len() int {
	var k kcacheDnsaKcKey
	var v kcacheDnsaKcEntry
	n := 0
	it := c.objs.DnsaKcCache.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}

// Stats sums the per-CPU counters.
func (c *Cache) Stats() (Stats, error) {
	var s Stats
	dst := []*uint64{&s.Hits, &s.Misses, &s.Expired, &s.Passed, &s.Errors}
	for i, d := range dst {
		var per []uint64
		if err := c.objs.DnsaKcStats.Lookup(uint32(i), &per); err != nil {
			return s, fmt.Errorf("kernel cache: stats: %w", err)
		}
		for _, n := range per {
			*d += n
		}
	}
	return s, nil
}

// ClientCounts are the answers the kernel gave one client, by rcode, since
// the client appeared in the map (summed over CPUs).
type ClientCounts struct {
	NoError, NXDomain, Other uint64
}

// Total is every answer counted.
func (c ClientCounts) Total() uint64 { return c.NoError + c.NXDomain + c.Other }

// Clients returns the answers given per client address (an LRU of 16,384
// clients: a client evicted starts again from zero). node-cache's per-pod
// accounting reads it periodically and takes the differences.
func (c *Cache) Clients() (map[netip.Addr]ClientCounts, error) {
	out := map[netip.Addr]ClientCounts{}
	var k kcacheDnsaKcAddr
	var per []kcacheDnsaKcClient
	it := c.objs.DnsaKcClients.Iterate()
	for it.Next(&k, &per) {
		var cc ClientCounts
		for _, v := range per {
			cc.NoError += v.Noerror
			cc.NXDomain += v.Nxdomain
			cc.Other += v.Other
		}
		out[netip.AddrFrom16(k.Addr).Unmap()] = cc
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("kernel cache: clients: %w", err)
	}
	return out, nil
}

// SetBypass makes the kernel pass every query from these clients on to
// node-cache instead of answering it (node-cache's query log sees them);
// nil or empty: answer everyone again. It replaces the previous set.
func (c *Cache) SetBypass(addrs []netip.Addr) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	want := map[kcacheDnsaKcAddr]bool{}
	for _, a := range addrs {
		want[kcacheDnsaKcAddr{Addr: a.Unmap().As16()}] = true
	}
	if len(want) > int(c.objs.DnsaKcBypass.MaxEntries()) {
		return fmt.Errorf("kernel cache: %d clients to bypass, at most %d", len(want), c.objs.DnsaKcBypass.MaxEntries())
	}
	var cfg kcacheDnsaKcConfig
	if err := c.objs.DnsaKcCfg.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("kernel cache: config: %w", err)
	}
	// The flag goes on before the set is filled and off after it is
	// emptied, so a client being added is never answered by mistake.
	if len(want) > 0 && cfg.Flags&cfgBypass == 0 {
		cfg.Flags |= cfgBypass
		if err := c.objs.DnsaKcCfg.Put(uint32(0), cfg); err != nil {
			return fmt.Errorf("kernel cache: config: %w", err)
		}
	}
	var k kcacheDnsaKcAddr
	var v uint8
	var stale []kcacheDnsaKcAddr
	it := c.objs.DnsaKcBypass.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		if err := c.objs.DnsaKcBypass.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("kernel cache: bypass: %w", err)
		}
	}
	for k := range want {
		if err := c.objs.DnsaKcBypass.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("kernel cache: bypass: %w", err)
		}
	}
	if len(want) == 0 && cfg.Flags&cfgBypass != 0 {
		cfg.Flags &^= cfgBypass
		if err := c.objs.DnsaKcCfg.Put(uint32(0), cfg); err != nil {
			return fmt.Errorf("kernel cache: config: %w", err)
		}
	}
	return nil
}

// cfgBypass is DNSA_KC_CFG_BYPASS of bpf/kcache.h.
const cfgBypass = 1

func kernelKey(key Key) kcacheDnsaKcKey {
	k := kcacheDnsaKcKey{Qtype: key.Qtype, NameLen: uint8(len(key.Name))}
	copy(k.Name[:], key.Name)
	if key.DO {
		k.Flags |= 1
	}
	if key.CD {
		k.Flags |= 2
	}
	return k
}

// monotonic is CLOCK_MONOTONIC in nanoseconds, the clock of
// bpf_ktime_get_ns.
func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// clsactFilter is a direct-action bpf filter on a clsact qdisc, for kernels
// without tcx (before 6.6). It keeps a netlink handle of the interface's
// namespace (the caller's at attach), to remove the filter from any thread.
type clsactFilter struct {
	f *netlink.BpfFilter
	h *netlink.Handle
}

func attachClsact(ifindex int, egress bool, prog *ebpf.Program) (_ *clsactFilter, err error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer func() {
		if err != nil {
			h.Close()
		}
	}()
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := h.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("add clsact qdisc: %w", err)
	}
	parent := uint32(netlink.HANDLE_MIN_INGRESS)
	if egress {
		parent = netlink.HANDLE_MIN_EGRESS
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex, Parent: parent, Handle: 0xd45,
			Protocol: unix.ETH_P_ALL, Priority: 1,
		},
		Fd: prog.FD(), Name: "dnsaccel-kcache", DirectAction: true,
	}
	if err := h.FilterReplace(f); err != nil {
		return nil, fmt.Errorf("add bpf filter: %w", err)
	}
	return &clsactFilter{f: f, h: h}, nil
}

func (c *clsactFilter) Close() error {
	defer c.h.Close()
	return c.h.FilterDel(c.f)
}
