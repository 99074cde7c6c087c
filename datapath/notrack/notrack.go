// Package notrack exempts a local DNS server's own traffic from connection
// tracking with an nftables table of its own, written over netlink (no nft
// binary, no iptables). For each address it holds, in the inet table:
//
//	chain prerouting { type filter hook prerouting priority raw; }
//	chain output     { type filter hook output priority raw; }
//	# in both:
//	ip daddr ADDR udp dport PORT notrack
//	ip daddr ADDR tcp dport PORT notrack
//	ip saddr ADDR udp sport PORT notrack
//	ip saddr ADDR tcp sport PORT notrack
//
// (ip6 for IPv6 addresses). Only packets to and from ADDR:PORT match: the
// server's own queries to other servers stay tracked.
package notrack

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// DefaultTable is the table's name (family inet).
const DefaultTable = "dnsaccel"

// Chain names, one per hook, both at raw priority (-300), before conntrack.
const (
	ChainPrerouting = "prerouting"
	ChainOutput     = "output"
)

// commentPrefix starts every rule's comment; the owner token follows.
const commentPrefix = "dnsaccel: no conntrack for the node cache's address; owner "

// ErrUnavailable wraps errors meaning the kernel has no nftables (or there is no
// permission to use it): the caller may go on without the table.
var ErrUnavailable = errors.New("nftables not available")

// Table is where the rules live: an inet table in a network namespace.
type Table struct {
	Name  string // "" = DefaultTable
	NetNS int    // fd of the network namespace; 0 = the caller's
}

func (t Table) name() string {
	if t.Name == "" {
		return DefaultTable
	}
	return t.Name
}

func (t Table) conn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if t.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(t.NetNS))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, classify(fmt.Errorf("nftables netlink: %w", err))
	}
	return c, nil
}

func (t Table) table() *nftables.Table {
	return &nftables.Table{Name: t.name(), Family: nftables.TableFamilyINet}
}

func (t Table) chains(tb *nftables.Table) []*nftables.Chain {
	mk := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: tb, Type: nftables.ChainTypeFilter, Hooknum: hook, Priority: nftables.ChainPriorityRaw}
	}
	return []*nftables.Chain{mk(ChainPrerouting, nftables.ChainHookPrerouting), mk(ChainOutput, nftables.ChainHookOutput)}
}

// Owner is the result of one Ensure: its rules carry a token of their own,
// so that Release removes the table only while no later Ensure (another
// process's) has replaced them.
type Owner struct {
	t       Table
	token   string
	created bool
}

// Created reports whether the table did not exist before this Ensure.
func (o *Owner) Created() bool { return o.created }

// Token is what the rules' comments carry for this owner.
func (o *Owner) Token() string { return o.token }

// Ensure creates the table with the rules for addrs and port, or, if it
// exists (a predecessor's, or one a running process keeps), replaces its
// rules with these, in one transaction: there is no moment without rules.
// Errors meaning no nftables wrap ErrUnavailable.
func (t Table) Ensure(addrs []netip.Addr, port uint16) (*Owner, error) {
	if len(addrs) == 0 {
		return nil, errors.New("notrack: no address")
	}
	c, err := t.conn()
	if err != nil {
		return nil, err
	}
	existed, err := t.exists(c)
	if err != nil {
		return nil, err
	}
	var b [8]byte
	rand.Read(b[:])
	o := &Owner{t: t, token: fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(b[:])), created: !existed}
	comment := userdata.AppendString(nil, userdata.TypeComment, commentPrefix+o.token)

	// The table stays (only its rules are flushed), so rule handles keep
	// increasing and are never reused: Release relies on it.
	tb := c.AddTable(t.table())
	for _, ch := range t.chains(tb) {
		c.AddChain(ch)
	}
	c.FlushTable(tb)
	for _, ch := range t.chains(tb) {
		for _, a := range addrs {
			a = a.Unmap()
			for _, dir := range []direction{toServer, fromServer} {
				for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
					c.AddRule(&nftables.Rule{Table: tb, Chain: ch, Exprs: match(a, port, dir, proto), UserData: comment})
				}
			}
		}
	}
	if err := c.Flush(); err != nil {
		return nil, classify(fmt.Errorf("nftables: writing table inet %s: %w", t.name(), err))
	}
	return o, nil
}

// Release removes the table if its rules are still this owner's: not when
// another process has called Ensure since (it serves now and needs them).
// The check and the removal are one transaction. It reports whether it
// removed the table.
func (o *Owner) Release() (bool, error) {
	c, err := o.t.conn()
	if err != nil {
		return false, err
	}
	tb := o.t.table()
	rules, err := c.GetRules(tb, &nftables.Chain{Name: ChainPrerouting, Table: tb})
	if err != nil {
		if ok, _ := o.t.exists(c); !ok {
			return false, nil // gone already
		}
		return false, fmt.Errorf("nftables: listing table inet %s: %w", o.t.name(), err)
	}
	var mine *nftables.Rule
	for _, r := range rules {
		if s, _ := userdata.GetString(r.UserData, userdata.TypeComment); s == commentPrefix+o.token {
			mine = r
			break
		}
	}
	if mine == nil {
		return false, nil // replaced by a successor's
	}
	// Deleting our rule by handle fails (and the whole batch with it) if a
	// successor replaced the rules in between.
	if err := c.DelRule(&nftables.Rule{Table: tb, Chain: mine.Chain, Handle: mine.Handle}); err != nil {
		return false, err
	}
	c.DelTable(tb)
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("nftables: removing table inet %s: %w", o.t.name(), err)
	}
	return true, nil
}

// Remove deletes the table, whoever wrote it. It reports whether there was
// one; no table, or no nftables at all, is not an error.
func (t Table) Remove() (bool, error) {
	c, err := t.conn()
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return false, nil
		}
		return false, err
	}
	ok, err := t.exists(c)
	if err != nil || !ok {
		if errors.Is(err, ErrUnavailable) {
			err = nil
		}
		return false, err
	}
	c.DelTable(t.table())
	if err := c.Flush(); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("nftables: removing table inet %s: %w", t.name(), err)
	}
	return true, nil
}

// Exists reports whether the table is there.
func (t Table) Exists() (bool, error) {
	c, err := t.conn()
	if err != nil {
		return false, err
	}
	return t.exists(c)
}

func (t Table) exists(c *nftables.Conn) (bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, classify(fmt.Errorf("nftables: listing tables: %w", err))
	}
	return slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == t.name() }), nil
}

// Rules lists the table's rules as "chain: ip daddr A udp dport P notrack"
// (rules it did not write are shown as "chain: ?"), in kernel order.
func (t Table) Rules() ([]string, error) {
	var out []string
	err := t.eachRule(func(ch *nftables.Chain, r *nftables.Rule) {
		out = append(out, ch.Name+": "+Describe(r.Exprs))
	})
	return out, err
}

// Owners lists the owner tokens in the rules' comments (one, normally).
func (t Table) Owners() ([]string, error) {
	var out []string
	err := t.eachRule(func(_ *nftables.Chain, r *nftables.Rule) {
		if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
			if tok, ok := strings.CutPrefix(s, commentPrefix); ok && !slices.Contains(out, tok) {
				out = append(out, tok)
			}
		}
	})
	return out, err
}

// eachRule calls f for every rule of the table's chains, in kernel order.
func (t Table) eachRule(f func(*nftables.Chain, *nftables.Rule)) error {
	c, err := t.conn()
	if err != nil {
		return err
	}
	tb := t.table()
	for _, ch := range t.chains(tb) {
		rules, err := c.GetRules(tb, ch)
		if err != nil {
			return fmt.Errorf("nftables: listing chain %s of table inet %s: %w", ch.Name, t.name(), err)
		}
		for _, r := range rules {
			f(ch, r)
		}
	}
	return nil
}

type direction bool

const (
	toServer   direction = false // daddr, dport
	fromServer direction = true  // saddr, sport
)

// match is "ip[6] daddr|saddr a udp|tcp dport|sport port notrack".
func match(a netip.Addr, port uint16, dir direction, proto byte) []expr.Any {
	nfproto, off := byte(unix.NFPROTO_IPV4), uint32(16) // IPv4 daddr
	if a.Is6() {
		nfproto, off = unix.NFPROTO_IPV6, 24
	}
	portOff := uint32(2) // dport
	if dir == fromServer {
		portOff = 0
		if a.Is6() {
			off = 8
		} else {
			off = 12
		}
	}
	raw := a.AsSlice()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(raw))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: raw},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: portOff, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(port >> 8), byte(port)}},
		&expr.Notrack{},
	}
}

// Describe renders expressions written by Ensure in nft syntax; anything
// else is "?".
func Describe(es []expr.Any) string {
	if len(es) != 9 {
		return "?"
	}
	m1, ok1 := es[0].(*expr.Meta)
	c1, ok2 := es[1].(*expr.Cmp)
	p1, ok3 := es[2].(*expr.Payload)
	c2, ok4 := es[3].(*expr.Cmp)
	m2, ok5 := es[4].(*expr.Meta)
	c3, ok6 := es[5].(*expr.Cmp)
	p2, ok7 := es[6].(*expr.Payload)
	c4, ok8 := es[7].(*expr.Cmp)
	_, ok9 := es[8].(*expr.Notrack)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7 && ok8 && ok9) ||
		m1.Key != expr.MetaKeyNFPROTO || m2.Key != expr.MetaKeyL4PROTO || len(c1.Data) != 1 || len(c3.Data) != 1 || len(c4.Data) != 2 ||
		p1.Base != expr.PayloadBaseNetworkHeader || p2.Base != expr.PayloadBaseTransportHeader {
		return "?"
	}
	a, ok := netip.AddrFromSlice(c2.Data)
	if !ok {
		return "?"
	}
	family, addrDir := "ip", ""
	switch {
	case c1.Data[0] == unix.NFPROTO_IPV4 && a.Is4() && p1.Offset == 16:
		addrDir = "daddr"
	case c1.Data[0] == unix.NFPROTO_IPV4 && a.Is4() && p1.Offset == 12:
		addrDir = "saddr"
	case c1.Data[0] == unix.NFPROTO_IPV6 && a.Is6() && p1.Offset == 24:
		family, addrDir = "ip6", "daddr"
	case c1.Data[0] == unix.NFPROTO_IPV6 && a.Is6() && p1.Offset == 8:
		family, addrDir = "ip6", "saddr"
	default:
		return "?"
	}
	proto := map[byte]string{unix.IPPROTO_UDP: "udp", unix.IPPROTO_TCP: "tcp"}[c3.Data[0]]
	portDir := map[uint32]string{2: "dport", 0: "sport"}[p2.Offset]
	if proto == "" || portDir == "" || (addrDir == "daddr") != (portDir == "dport") {
		return "?"
	}
	port := uint16(c4.Data[0])<<8 | uint16(c4.Data[1])
	return fmt.Sprintf("%s %s %s %s %s %d notrack", family, addrDir, a, proto, portDir, port)
}

// classify wraps errors that mean "no nftables here" in ErrUnavailable.
func classify(err error) error {
	for _, e := range []error{unix.EPROTONOSUPPORT, unix.EAFNOSUPPORT, unix.EOPNOTSUPP, unix.EPERM, unix.EACCES} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	return err
}
