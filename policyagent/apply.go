package policyagent

import (
	"errors"
	"net/netip"
	"slices"

	"github.com/dnsaccel/dnsaccel/datapath/policy"
)

// Datapath is what Applier needs of datapath/policy.
type Datapath interface {
	SetIdentity(netip.Addr, policy.Identity) error
	DeleteIdentity(netip.Addr) error
	SetEndpoint(policy.Endpoint) error
	DeleteEndpoint(uint32) error
	SetRules(uint32, []policy.Rule) error
}

// Applier writes translations to a Datapath, only what changed since the
// last one (identities, endpoints and rules compared in Go; the datapath
// writes only the rule entries that differ).
type Applier struct {
	DP    Datapath
	ids   map[netip.Addr]policy.Identity
	eps   map[uint32]Endpoint
	extra map[netip.Addr]policy.Identity
	host  []netip.Addr
}

// SetHostAddrs replaces the node's own addresses (policy.IdentityHost from
// the next Apply on: traffic between a pod and its node is always allowed).
func (a *Applier) SetHostAddrs(addrs []netip.Addr) { a.host = addrs }

// SetExtraIdentity gives an address a fixed identity (node-cache's local
// addresses: IdentityNodeDNS) on every Apply.
func (a *Applier) SetExtraIdentity(addr netip.Addr, id policy.Identity) {
	if a.extra == nil {
		a.extra = map[netip.Addr]policy.Identity{}
	}
	a.extra[addr] = id
}

// Apply writes r.
func (a *Applier) Apply(r Result) error {
	if a.ids == nil {
		a.ids = map[netip.Addr]policy.Identity{}
		a.eps = map[uint32]Endpoint{}
	}
	var errs []error
	want := map[netip.Addr]policy.Identity{}
	for k, v := range r.Identities {
		want[k] = v
	}
	for _, h := range a.host {
		if _, pod := want[h]; !pod {
			want[h] = policy.IdentityHost
		}
	}
	for k, v := range a.extra {
		want[k] = v
	}
	for addr, id := range want {
		if old, ok := a.ids[addr]; ok && old == id {
			continue
		}
		if err := a.DP.SetIdentity(addr, id); err != nil {
			errs = append(errs, err)
			continue
		}
		a.ids[addr] = id
	}
	seen := map[uint32]bool{}
	for _, ep := range r.Endpoints {
		id := ep.Endpoint.ID
		seen[id] = true
		old, ok := a.eps[id]
		if ok && sameEndpoint(old.Endpoint, ep.Endpoint) && rulesEqual(old.Rules, ep.Rules) {
			continue
		}
		if !ok || !sameEndpoint(old.Endpoint, ep.Endpoint) {
			if err := a.DP.SetEndpoint(ep.Endpoint); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := a.DP.SetRules(id, ep.Rules); err != nil {
			errs = append(errs, err)
			continue
		}
		a.eps[id] = ep
	}
	for id := range a.eps {
		if !seen[id] {
			errs = append(errs, a.DP.DeleteEndpoint(id))
			delete(a.eps, id)
		}
	}
	for addr := range a.ids {
		if _, ok := want[addr]; !ok {
			errs = append(errs, a.DP.DeleteIdentity(addr))
			delete(a.ids, addr)
		}
	}
	return errors.Join(errs...)
}

func sameEndpoint(a, b policy.Endpoint) bool {
	return a.ID == b.ID && a.Identity == b.Identity && a.Ingress == b.Ingress && a.Egress == b.Egress &&
		a.DenyPolicy == b.DenyPolicy && slices.Equal(a.Addrs, b.Addrs)
}

func rulesEqual(a, b []policy.Rule) bool {
	return slices.EqualFunc(a, b, func(x, y policy.Rule) bool {
		return x.Policy == y.Policy && x.Dir == y.Dir && slices.Equal(x.Ports, y.Ports) &&
			slices.EqualFunc(x.Peers, y.Peers, func(p, q policy.Peer) bool {
				return p.Identity == q.Identity && p.CIDR == q.CIDR && slices.Equal(p.Except, q.Except)
			})
	})
}
