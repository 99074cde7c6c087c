package lb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// tcObjects are the per-packet programs, loaded on first use over the
// Table's maps.
type tcObjects struct {
	In    *ebpf.Program `ebpf:"dnsa_lb_pkt_in"`
	ExtIn *ebpf.Program `ebpf:"dnsa_lb_ext_in"`
	Out   *ebpf.Program `ebpf:"dnsa_lb_pkt_out"`
}

func (o *tcObjects) Close() error {
	var errs []error
	for _, p := range []*ebpf.Program{o.In, o.ExtIn, o.Out} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	return errors.Join(errs...)
}

// tcPrograms loads the per-packet programs once.
func (t *Table) tcPrograms() (*tcObjects, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tc != nil {
		return t.tc, nil
	}
	spec, err := loadLb()
	if err != nil {
		return nil, err
	}
	var o tcObjects
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"dnsa_lb_svc": t.objs.DnsaLbSvc, "dnsa_lb_be": t.objs.DnsaLbBe, "dnsa_lb_revnat": t.objs.DnsaLbRevnat,
		"dnsa_lb_aff": t.objs.DnsaLbAff, "dnsa_lb_ct": t.objs.DnsaLbCt, "dnsa_lb_stats": t.objs.DnsaLbStats,
	}}
	if err := spec.LoadAndAssign(&o, opts); err != nil {
		return nil, fmt.Errorf("loading the per-packet load balancer: %w", err)
	}
	t.tc = &o
	return t.tc, nil
}

// Where is how an interface carries traffic to Services.
type Where uint8

// Interfaces.
const (
	// PodInterface: the host end of a pod's veth (or a pod's own
	// interface): requests from the pod to a frontend (every backend, as
	// for sockets on the node).
	PodInterface Where = iota
	// ExternalInterface: a node interface: requests from outside the node
	// (NodePort, externalIPs, LoadBalancer IPs; externalTrafficPolicy
	// Local applies).
	ExternalInterface
)

// AttachTC attaches the per-packet load balancer to interface ifindex
// (tcx, Linux 6.6+): requests entering it (ingress) to a frontend go to a
// backend; their replies leaving it (egress) are shown from the frontend.
// The links are pinned (link_dnsa_lb_tc_<ifindex>_in/out) and adopted by a
// later Open + AttachTC; they go with the interface.
func (t *Table) AttachTC(ifindex int, where Where) error {
	o, err := t.tcPrograms()
	if err != nil {
		return err
	}
	in := o.In
	if where == ExternalInterface {
		in = o.ExtIn
	}
	for _, h := range []struct {
		dir    string
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{{"in", in, ebpf.AttachTCXIngress}, {"out", o.Out, ebpf.AttachTCXEgress}} {
		p := filepath.Join(t.dir, fmt.Sprintf("link_%stc_%d_%s", pinPrefix, ifindex, h.dir))
		if l, err := link.LoadPinnedLink(p, nil); err == nil {
			err := l.Update(h.prog)
			l.Close()
			if err == nil {
				continue
			}
			os.Remove(p)
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: h.prog, Attach: h.attach})
		if err != nil {
			return fmt.Errorf("attaching the per-packet load balancer to interface %d (%s): %w", ifindex, h.dir, err)
		}
		if err := l.Pin(p); err != nil {
			l.Close()
			return fmt.Errorf("pin %s: %w", p, err)
		}
		l.Close()
	}
	return nil
}

// DetachTC removes the per-packet load balancer from interface ifindex.
func (t *Table) DetachTC(ifindex int) error {
	var errs []error
	for _, dir := range []string{"in", "out"} {
		p := filepath.Join(t.dir, fmt.Sprintf("link_%stc_%d_%s", pinPrefix, ifindex, dir))
		l, err := link.LoadPinnedLink(p, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			os.Remove(p)
			continue
		}
		errs = append(errs, l.Unpin())
		l.Close()
	}
	return errors.Join(errs...)
}
