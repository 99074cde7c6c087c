// Package svcagent is the Kubernetes half of bin/datapath-agent's Service
// load balancing: it watches Services, EndpointSlices and this node's Node
// and writes what kube-proxy would program into the eBPF Service tables of
// datapath/lb (which knows nothing about Kubernetes).
//
// Translate is the pure part: one Service and its EndpointSlices in, the
// frontends and backends out (named target ports resolved from the slices,
// endpoint conditions as kube-proxy reads them, traffic policies,
// affinity), or the reason the object is skipped. Agent is the controller
// around it.
package svcagent

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/dnsaccel/dnsaccel/datapath/lb"
)

// DefaultAffinityTimeout is Kubernetes' default sessionAffinityConfig
// clientIP timeoutSeconds (3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// Node is what the translation needs to know about this node.
type Node struct {
	Name string
	// NodePortAddrs are the addresses NodePort frontends are opened on.
	NodePortAddrs []netip.Addr
}

// Desired is the frontends of one Service with their backends.
type Desired map[lb.Service][]lb.Backend

// Problem is a reason part of an object was skipped.
type Problem struct {
	Reason  string // short, CamelCase: the Event reason and metric label
	Message string
}

func (p Problem) Error() string { return p.Reason + ": " + p.Message }

// Translate computes the frontends of svc with their backends from its
// EndpointSlices. A Service that cannot be programmed at all (no ports,
// duplicate ports, no valid IP) returns a Problem and nothing; parts that
// cannot (one bad address, an SCTP port, an unusable endpoint) are skipped
// and named in the problems, the rest is programmed.
func Translate(svc *corev1.Service, slices []*discoveryv1.EndpointSlice, node Node) (Desired, []Problem) {
	var probs []Problem
	bad := func(reason, format string, args ...any) {
		probs = append(probs, Problem{Reason: reason, Message: fmt.Sprintf(format, args...)})
	}
	switch svc.Spec.Type {
	case corev1.ServiceTypeExternalName:
		return nil, nil // DNS only
	}
	if len(svc.Spec.Ports) == 0 {
		bad("NoPorts", "Service %s/%s has no ports", svc.Namespace, svc.Name)
		return nil, probs
	}
	type pk struct {
		port  int32
		proto corev1.Protocol
	}
	seen := map[pk]bool{}
	for _, p := range svc.Spec.Ports {
		k := pk{p.Port, p.Protocol}
		if seen[k] {
			bad("DuplicatePort", "Service %s/%s has port %d/%s twice", svc.Namespace, svc.Name, p.Port, p.Protocol)
			return nil, probs
		}
		seen[k] = true
	}
	var clusterIPs []netip.Addr
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	headless := false
	for _, s := range ips {
		if s == corev1.ClusterIPNone {
			headless = true
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || !unicast(a) {
			bad("BadClusterIP", "Service %s/%s: clusterIP %q is not a unicast IP", svc.Namespace, svc.Name, s)
			continue
		}
		clusterIPs = append(clusterIPs, a.Unmap())
	}
	if headless {
		return nil, probs // DNS only
	}
	affinity := time.Duration(0)
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		affinity = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
		if affinity <= 0 || affinity > 86400*time.Second {
			bad("BadAffinityTimeout", "Service %s/%s: sessionAffinity timeout %s out of range; using %s", svc.Namespace, svc.Name, affinity, DefaultAffinityTimeout)
			affinity = DefaultAffinityTimeout
		}
	}
	itpLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	etpLocal := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	var externalIPs, lbIPs []netip.Addr
	for _, s := range svc.Spec.ExternalIPs {
		a, err := netip.ParseAddr(s)
		if err != nil || !unicast(a) {
			bad("BadExternalIP", "Service %s/%s: externalIP %q is not a unicast IP", svc.Namespace, svc.Name, s)
			continue
		}
		externalIPs = append(externalIPs, a.Unmap())
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, ing := range svc.Status.LoadBalancer.Ingress {
			if ing.IP == "" {
				continue // hostname-only ingress
			}
			if ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy {
				continue // the load balancer proxies: traffic arrives for the node, as kube-proxy skips it
			}
			a, err := netip.ParseAddr(ing.IP)
			if err != nil || !unicast(a) {
				bad("BadLoadBalancerIP", "Service %s/%s: load balancer ingress IP %q is not a unicast IP", svc.Namespace, svc.Name, ing.IP)
				continue
			}
			lbIPs = append(lbIPs, a.Unmap())
		}
	}
	nodePorts := svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer

	out := Desired{}
	for _, sp := range svc.Spec.Ports {
		var proto lb.Proto
		switch sp.Protocol {
		case corev1.ProtocolTCP, "":
			proto = lb.TCP
		case corev1.ProtocolUDP:
			proto = lb.UDP
		default:
			bad("UnsupportedProtocol", "Service %s/%s: port %d/%s: only TCP and UDP are load-balanced", svc.Namespace, svc.Name, sp.Port, sp.Protocol)
			continue
		}
		if sp.Port <= 0 || sp.Port > 65535 {
			bad("BadPort", "Service %s/%s: port %d out of range", svc.Namespace, svc.Name, sp.Port)
			continue
		}
		backends := map[bool][]lb.Backend{
			false: endpointsFor(svc, sp, slices, false, node.Name, bad),
			true:  endpointsFor(svc, sp, slices, true, node.Name, bad),
		}
		add := func(addr netip.Addr, port int32, typ lb.Type, local bool) {
			s := lb.Service{Frontend: lb.Frontend{Addr: addr, Port: uint16(port), Proto: proto}, Type: typ, Affinity: affinity, TrafficLocal: local}
			out[s] = backends[addr.Is6()]
		}
		for _, a := range clusterIPs {
			add(a, sp.Port, lb.ClusterIP, itpLocal)
		}
		for _, a := range externalIPs {
			add(a, sp.Port, lb.ExternalIP, etpLocal)
		}
		for _, a := range lbIPs {
			add(a, sp.Port, lb.LoadBalancer, etpLocal)
		}
		if nodePorts && sp.NodePort > 0 && sp.NodePort <= 65535 {
			for _, a := range node.NodePortAddrs {
				add(a, sp.NodePort, lb.NodePort, etpLocal)
			}
		}
	}
	return out, probs
}

func unicast(a netip.Addr) bool {
	return a.IsValid() && !a.IsUnspecified() && !a.IsMulticast() && a.Zone() == ""
}

// endpointsFor collects the backends of one Service port of one IP family
// from the Service's EndpointSlices, as kube-proxy reads them: the slice
// port with the same name and protocol (so a named targetPort resolves per
// endpoint), ready endpoints as ready backends, serving+terminating ones as
// terminating backends (used only when no ready one is left), others not
// at all; duplicates (an endpoint in two slices while they are rebalanced)
// once, ready winning.
func endpointsFor(svc *corev1.Service, sp corev1.ServicePort, eps []*discoveryv1.EndpointSlice, v6 bool, nodeName string, bad func(reason, format string, args ...any)) []lb.Backend {
	want := discoveryv1.AddressTypeIPv4
	if v6 {
		want = discoveryv1.AddressTypeIPv6
	}
	proto := cmp.Or(sp.Protocol, corev1.ProtocolTCP)
	byAddr := map[netip.AddrPort]lb.Backend{}
	for _, es := range eps {
		if es.AddressType != want {
			continue
		}
		var port int32
		for _, p := range es.Ports {
			pname := ""
			if p.Name != nil {
				pname = *p.Name
			}
			pproto := corev1.ProtocolTCP
			if p.Protocol != nil {
				pproto = *p.Protocol
			}
			if pname == sp.Name && pproto == proto && p.Port != nil {
				port = *p.Port
				break
			}
		}
		if port <= 0 || port > 65535 {
			continue
		}
		for _, ep := range es.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			serving := ready
			if ep.Conditions.Serving != nil {
				serving = *ep.Conditions.Serving
			}
			terminating := ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
			if !ready && !(serving && terminating) {
				continue
			}
			local := ep.NodeName != nil && *ep.NodeName == nodeName && nodeName != ""
			for _, s := range ep.Addresses {
				a, err := netip.ParseAddr(s)
				if err != nil || !unicast(a) || a.Is6() != v6 {
					bad("BadEndpoint", "EndpointSlice %s/%s: address %q is not a unicast %s address", es.Namespace, es.Name, s, want)
					continue
				}
				ap := netip.AddrPortFrom(a.Unmap(), uint16(port))
				b := lb.Backend{Addr: ap, Terminating: !ready, Local: local}
				if old, ok := byAddr[ap]; ok && !old.Terminating {
					continue
				}
				byAddr[ap] = b
				// Kubernetes requires one address per endpoint; the
				// rest are the same endpoint.
				break
			}
		}
	}
	out := make([]lb.Backend, 0, len(byAddr))
	for _, b := range byAddr {
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b lb.Backend) int { return a.Addr.Compare(b.Addr) })
	return out
}
