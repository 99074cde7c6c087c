// Package policyagent turns Kubernetes NetworkPolicies, Pods and Namespaces
// into datapath/policy's identities, endpoints and rules.
package policyagent

import (
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dnsaccel/dnsaccel/datapath/policy"
)

// IdentityNodeDNS is the identity of node-cache's local addresses
// (Config.NodeDNS): a peer that selects any kube-dns pod also selects them,
// so DNS steered to the node cache is allowed wherever DNS to kube-dns is.
const IdentityNodeDNS policy.Identity = 3

// firstIdentity: identities below are reserved.
const firstIdentity policy.Identity = 256

// Pod is what the translation needs of a pod.
type Pod struct {
	UID       types.UID
	Namespace string
	Name      string
	Labels    map[string]string
	IPs       []netip.Addr
	Local     bool // on this node: an endpoint
	// Ports are its containers' named ports.
	Ports []corev1.ContainerPort
}

// PodFrom converts a Pod object.
func PodFrom(p *corev1.Pod, node string) Pod {
	out := Pod{UID: p.UID, Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, Local: p.Spec.NodeName == node}
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out.IPs = append(out.IPs, a)
		}
	}
	if len(out.IPs) == 0 && p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out.IPs = append(out.IPs, a)
		}
	}
	if p.Spec.HostNetwork {
		out.IPs = nil // the node's addresses: not a pod identity
	}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name != "" {
				out.Ports = append(out.Ports, cp)
			}
		}
	}
	return out
}

// State is the cluster as the translation sees it.
type State struct {
	Namespaces map[string]map[string]string // name -> labels
	Pods       []Pod
	Policies   []*networkingv1.NetworkPolicy
	// DNSPods selects the kube-dns pods (namespace, labels) for
	// IdentityNodeDNS; nil: no node cache.
	DNSNamespace string
	DNSPods      labels.Selector
}

// Endpoint is one local pod's enforcement.
type Endpoint struct {
	Pod      Pod
	Endpoint policy.Endpoint
	Rules    []policy.Rule
	// Policies selecting it (namespace/name), by id in the rules.
	Policies []string
}

// Result is the translation.
type Result struct {
	Identities map[netip.Addr]policy.Identity
	Endpoints  []Endpoint
	// PolicyNames: policy id -> namespace/name.
	PolicyNames map[uint32]string
}

// Translator keeps identities and ids stable across translations.
type Translator struct {
	ids     map[string]policy.Identity
	nextID  policy.Identity
	eps     map[types.UID]uint32
	nextEP  uint32
	pols    map[string]uint32
	nextPol uint32
}

// NewTranslator returns an empty Translator.
func NewTranslator() *Translator {
	return &Translator{ids: map[string]policy.Identity{}, nextID: firstIdentity,
		eps: map[types.UID]uint32{}, nextEP: 1, pols: map[string]uint32{}, nextPol: 1}
}

func labelKey(ns string, l map[string]string) string {
	ks := make([]string, 0, len(l))
	for k, v := range l {
		ks = append(ks, k+"="+v)
	}
	sort.Strings(ks)
	return ns + "/" + strings.Join(ks, ",")
}

// Identity is the identity of a (namespace, label set).
func (t *Translator) Identity(ns string, l map[string]string) policy.Identity {
	k := labelKey(ns, l)
	id, ok := t.ids[k]
	if !ok {
		id = t.nextID
		t.nextID++
		t.ids[k] = id
	}
	return id
}

func (t *Translator) policyID(key string) uint32 {
	id, ok := t.pols[key]
	if !ok {
		id = t.nextPol
		t.nextPol++
		t.pols[key] = id
	}
	return id
}

// Translate computes everything for st.
func (t *Translator) Translate(st State) Result {
	res := Result{Identities: map[netip.Addr]policy.Identity{}, PolicyNames: map[uint32]string{}}
	podID := make([]policy.Identity, len(st.Pods))
	for i, p := range st.Pods {
		podID[i] = t.Identity(p.Namespace, p.Labels)
		for _, a := range p.IPs {
			res.Identities[a] = podID[i]
		}
	}
	dnsIDs := map[policy.Identity]bool{}
	if st.DNSPods != nil {
		for i, p := range st.Pods {
			if p.Namespace == st.DNSNamespace && st.DNSPods.Matches(labels.Set(p.Labels)) {
				dnsIDs[podID[i]] = true
			}
		}
	}
	// peerPods is the indexes of the pods a peer selects.
	peerPods := func(polNS string, peer networkingv1.NetworkPolicyPeer) []int {
		var nsSel, podSel labels.Selector = nil, labels.Everything()
		if peer.NamespaceSelector != nil {
			s, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
			if err != nil {
				return nil
			}
			nsSel = s
		}
		if peer.PodSelector != nil {
			s, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
			if err != nil {
				return nil
			}
			podSel = s
		}
		var out []int
		for i, p := range st.Pods {
			if len(p.IPs) == 0 {
				continue
			}
			if nsSel == nil {
				if p.Namespace != polNS {
					continue
				}
			} else if !nsSel.Matches(labels.Set(st.Namespaces[p.Namespace])) {
				continue
			}
			if podSel.Matches(labels.Set(p.Labels)) {
				out = append(out, i)
			}
		}
		return out
	}
	idsOf := func(idx []int) []policy.Identity {
		var ids []policy.Identity
		dns := false
		for _, i := range idx {
			if !slices.Contains(ids, podID[i]) {
				ids = append(ids, podID[i])
			}
			dns = dns || dnsIDs[podID[i]]
		}
		if dns {
			ids = append(ids, IdentityNodeDNS)
		}
		return ids
	}

	pols := slices.Clone(st.Policies)
	sort.Slice(pols, func(i, j int) bool {
		return pols[i].Namespace+"/"+pols[i].Name < pols[j].Namespace+"/"+pols[j].Name
	})
	for i, p := range st.Pods {
		if !p.Local || len(p.IPs) == 0 {
			continue
		}
		ep := Endpoint{Pod: p}
		ep.Endpoint = policy.Endpoint{ID: t.endpointID(p.UID), Identity: podID[i], Addrs: p.IPs}
		for _, np := range pols {
			if np.Namespace != p.Namespace {
				continue
			}
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			if err != nil || !sel.Matches(labels.Set(p.Labels)) {
				continue
			}
			key := np.Namespace + "/" + np.Name
			pid := t.policyID(key)
			res.PolicyNames[pid] = key
			ep.Policies = append(ep.Policies, key)
			ingress, egress := policyTypes(np)
			if ingress {
				if !ep.Endpoint.Ingress {
					ep.Endpoint.DenyPolicy[policy.Ingress] = pid
				}
				ep.Endpoint.Ingress = true
				for _, r := range np.Spec.Ingress {
					ep.Rules = append(ep.Rules, t.rules(pid, policy.Ingress, np.Namespace, r.From, r.Ports, p, st, peerPods, idsOf)...)
				}
			}
			if egress {
				if !ep.Endpoint.Egress {
					ep.Endpoint.DenyPolicy[policy.Egress] = pid
				}
				ep.Endpoint.Egress = true
				for _, r := range np.Spec.Egress {
					ep.Rules = append(ep.Rules, t.rules(pid, policy.Egress, np.Namespace, r.To, r.Ports, p, st, peerPods, idsOf)...)
				}
			}
		}
		res.Endpoints = append(res.Endpoints, ep)
	}
	return res
}

func (t *Translator) endpointID(uid types.UID) uint32 {
	id, ok := t.eps[uid]
	if !ok {
		id = t.nextEP
		t.nextEP++
		t.eps[uid] = id
	}
	return id
}

// Forget drops the endpoint id of a deleted pod.
func (t *Translator) Forget(uid types.UID) { delete(t.eps, uid) }

// EndpointID is the id of a pod's endpoint, if it has one.
func (t *Translator) EndpointID(uid types.UID) (uint32, bool) {
	id, ok := t.eps[uid]
	return id, ok
}

func policyTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, pt := range np.Spec.PolicyTypes {
		switch pt {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

func protoOf(p *corev1.Protocol) uint8 {
	if p == nil {
		return policy.TCP
	}
	switch *p {
	case corev1.ProtocolUDP:
		return policy.UDP
	case corev1.ProtocolSCTP:
		return policy.SCTP
	}
	return policy.TCP
}

// namedPort resolves a port name against a pod's container ports.
func namedPort(p Pod, name string, proto uint8) (uint16, bool) {
	for _, cp := range p.Ports {
		if cp.Name == name && protoOf(&cp.Protocol) == proto {
			return uint16(cp.ContainerPort), true
		}
	}
	return 0, false
}

// rules turns one ingress/egress rule into datapath rules. Named ports are
// the selected pod's own (ingress) or the peer pods' (egress, one rule per
// peer identity).
func (t *Translator) rules(pid uint32, dir policy.Direction, ns string, peers []networkingv1.NetworkPolicyPeer,
	ports []networkingv1.NetworkPolicyPort, self Pod, st State,
	peerPods func(string, networkingv1.NetworkPolicyPeer) []int, idsOf func([]int) []policy.Identity) []policy.Rule {
	var dp []policy.Peer
	var peerIdx []int
	anyPeer := len(peers) == 0
	for _, pe := range peers {
		if pe.IPBlock != nil {
			c, err := netip.ParsePrefix(pe.IPBlock.CIDR)
			if err != nil {
				continue
			}
			peer := policy.Peer{CIDR: c}
			for _, e := range pe.IPBlock.Except {
				if x, err := netip.ParsePrefix(e); err == nil {
					peer.Except = append(peer.Except, x)
				}
			}
			dp = append(dp, peer)
			continue
		}
		idx := peerPods(ns, pe)
		peerIdx = append(peerIdx, idx...)
		for _, id := range idsOf(idx) {
			dp = append(dp, policy.Peer{Identity: id})
		}
	}
	if !anyPeer && len(dp) == 0 {
		return nil // selects no peer (yet)
	}
	var fixed []policy.PortRange
	var named []networkingv1.NetworkPolicyPort
	for _, pp := range ports {
		proto := protoOf(pp.Protocol)
		switch {
		case pp.Port == nil:
			fixed = append(fixed, policy.PortRange{Proto: proto})
		case pp.Port.StrVal != "" || pp.Port.Type == 1:
			if dir == policy.Ingress {
				if n, ok := namedPort(self, pp.Port.StrVal, proto); ok {
					fixed = append(fixed, policy.PortRange{Proto: proto, Port: n})
				}
			} else {
				named = append(named, pp)
			}
		default:
			r := policy.PortRange{Proto: proto, Port: uint16(pp.Port.IntVal)}
			if pp.EndPort != nil {
				r.EndPort = uint16(*pp.EndPort)
			}
			fixed = append(fixed, r)
		}
	}
	var out []policy.Rule
	if len(ports) == 0 || len(fixed) > 0 {
		out = append(out, policy.Rule{Policy: pid, Dir: dir, Peers: dp, Ports: fixed})
	}
	if len(named) > 0 {
		// Egress to named ports: per peer pod, its own port numbers.
		cand := peerIdx
		if anyPeer {
			cand = nil
			for i := range st.Pods {
				cand = append(cand, i)
			}
		}
		for _, i := range cand {
			p := st.Pods[i]
			var rs []policy.PortRange
			for _, pp := range named {
				proto := protoOf(pp.Protocol)
				if n, ok := namedPort(p, pp.Port.StrVal, proto); ok {
					rs = append(rs, policy.PortRange{Proto: proto, Port: n})
				}
			}
			if len(rs) > 0 && len(p.IPs) > 0 {
				out = append(out, policy.Rule{Policy: pid, Dir: dir, Peers: []policy.Peer{{Identity: t.Identity(p.Namespace, p.Labels)}}, Ports: rs})
			}
		}
	}
	return out
}
