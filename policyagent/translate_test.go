package policyagent

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dnsaccel/dnsaccel/datapath/policy"
)

func tPod(ns, name string, ip string, local bool, l map[string]string, ports ...corev1.ContainerPort) Pod {
	return Pod{UID: types.UID("uid-" + ns + "-" + name), Namespace: ns, Name: name, Labels: l, IPs: []netip.Addr{netip.MustParseAddr(ip)}, Local: local, Ports: ports}
}

func TestTranslate(t *testing.T) {
	st := State{
		Namespaces: map[string]map[string]string{"app": {"team": "a"}, "kube-system": {"kubernetes.io/metadata.name": "kube-system"}},
		Pods: []Pod{
			tPod("app", "web-1", "10.0.0.1", true, map[string]string{"app": "web"}, corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}),
			tPod("app", "web-2", "10.0.0.2", false, map[string]string{"app": "web"}, corev1.ContainerPort{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}),
			tPod("app", "cli", "10.0.0.3", true, map[string]string{"app": "cli"}),
			tPod("kube-system", "coredns", "10.0.0.53", false, map[string]string{"k8s-app": "kube-dns"}),
		},
		DNSNamespace: "kube-system", DNSPods: labels.SelectorFromSet(labels.Set{"k8s-app": "kube-dns"}),
		Policies: []*networkingv1.NetworkPolicy{
			// No policyTypes, no egress rules: Ingress only.
			np("app", "web-in", sel("app", "web"), nil, fromPorts(ports(port(tcp, "http"), port(tcp, "nope")), peer(nil, sel("app", "cli"))), nil),
			// Egress to a named port of the peers, and DNS.
			np("app", "cli-out", sel("app", "cli"), tOut, nil, append(toPorts(ports(port(tcp, "http")), peer(nil, sel("app", "web"))),
				toPorts(ports(port(udp, 53)), peer(sel("kubernetes.io/metadata.name", "kube-system"), sel("k8s-app", "kube-dns")))...)),
			// Selects nothing.
			np("app", "none", sel("app", "nothing"), tBoth, nil, nil),
		},
	}
	tr := NewTranslator()
	res := tr.Translate(st)
	if len(res.Endpoints) != 2 {
		t.Fatalf("%d endpoints, want the 2 local pods", len(res.Endpoints))
	}
	webID := res.Identities[netip.MustParseAddr("10.0.0.1")]
	if res.Identities[netip.MustParseAddr("10.0.0.2")] != webID {
		t.Errorf("same labels and namespace, different identities")
	}
	cliID := res.Identities[netip.MustParseAddr("10.0.0.3")]
	dnsID := res.Identities[netip.MustParseAddr("10.0.0.53")]
	for _, ep := range res.Endpoints {
		switch ep.Pod.Name {
		case "web-1":
			if !ep.Endpoint.Ingress || ep.Endpoint.Egress {
				t.Errorf("web-1 enforcement in=%v out=%v, want ingress only", ep.Endpoint.Ingress, ep.Endpoint.Egress)
			}
			want := []policy.Rule{{Policy: ep.Endpoint.DenyPolicy[policy.Ingress], Dir: policy.Ingress, Peers: []policy.Peer{{Identity: cliID}}, Ports: []policy.PortRange{{Proto: policy.TCP, Port: 8080}}}}
			if !rulesEqual(ep.Rules, want) {
				t.Errorf("web-1 rules %+v, want %+v (the unknown named port matches nothing)", ep.Rules, want)
			}
		case "cli":
			if ep.Endpoint.Ingress || !ep.Endpoint.Egress {
				t.Errorf("cli enforcement in=%v out=%v, want egress only", ep.Endpoint.Ingress, ep.Endpoint.Egress)
			}
			var http, dns bool
			for _, r := range ep.Rules {
				if slices.Equal(r.Ports, []policy.PortRange{{Proto: policy.TCP, Port: 8080}}) && r.Peers[0].Identity == webID {
					http = true
				}
				if slices.Equal(r.Ports, []policy.PortRange{{Proto: policy.UDP, Port: 53}}) &&
					slices.ContainsFunc(r.Peers, func(p policy.Peer) bool { return p.Identity == dnsID }) &&
					slices.ContainsFunc(r.Peers, func(p policy.Peer) bool { return p.Identity == IdentityNodeDNS }) {
					dns = true
				}
			}
			if !http || !dns {
				t.Errorf("cli rules %+v: egress named port %v, DNS incl. node-cache %v", ep.Rules, http, dns)
			}
		}
	}
	// Stable identities and endpoint ids across translations.
	res2 := tr.Translate(st)
	if res2.Identities[netip.MustParseAddr("10.0.0.1")] != webID || res2.Endpoints[0].Endpoint.ID != res.Endpoints[0].Endpoint.ID {
		t.Errorf("identities or endpoint ids changed between translations")
	}
}
