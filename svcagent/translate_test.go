package svcagent

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/dnsaccel/dnsaccel/datapath/lb"
)

func ptr[T any](v T) *T { return &v }

func service(mut func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  "10.96.0.10",
			ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("web")},
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(5353)},
			},
		},
	}
	if mut != nil {
		mut(s)
	}
	return s
}

type ep struct {
	addr                        string
	node                        string
	ready, serving, terminating *bool
}

func slice(name string, family discoveryv1.AddressType, ports map[string]int32, eps ...ep) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: family,
	}
	for n, p := range ports {
		proto := corev1.ProtocolTCP
		if n == "dns" {
			proto = corev1.ProtocolUDP
		}
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr(n), Port: ptr(p), Protocol: ptr(proto)})
	}
	for _, e := range eps {
		x := discoveryv1.Endpoint{Addresses: []string{e.addr}, Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating}}
		if e.node != "" {
			x.NodeName = ptr(e.node)
		}
		es.Endpoints = append(es.Endpoints, x)
	}
	return es
}

// render prints a Desired compactly and sorted: "10.96.0.10:80/tcp ClusterIP [10.244.0.1:8080 ...]".
func render(d Desired) []string {
	var out []string
	for s, bs := range d {
		var b []string
		for _, x := range bs {
			t := x.Addr.String()
			if x.Terminating {
				t += "(t)"
			}
			if x.Local {
				t += "(l)"
			}
			b = append(b, t)
		}
		extra := ""
		if s.Affinity > 0 {
			extra += fmt.Sprintf(" affinity=%s", s.Affinity)
		}
		if s.TrafficLocal {
			extra += " local"
		}
		out = append(out, fmt.Sprintf("%s %s%s [%s]", s.Frontend, s.Type, extra, strings.Join(b, " ")))
	}
	slices.Sort(out)
	return out
}

func TestTranslate(t *testing.T) {
	yes, no := ptr(true), ptr(false)
	node := Node{Name: "node-a", NodePortAddrs: []netip.Addr{netip.MustParseAddr("192.168.0.1")}}
	v4 := slice("web-1", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080, "dns": 5353},
		ep{addr: "10.244.0.1", node: "node-a"},
		ep{addr: "10.244.0.2", node: "node-b", ready: yes},
		ep{addr: "10.244.0.3", ready: no, serving: yes, terminating: yes},
		ep{addr: "10.244.0.4", ready: no, serving: no, terminating: yes},
		ep{addr: "10.244.0.5", ready: no})
	cases := []struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   []string
		probs  []string
	}{
		{"ClusterIP, named target port, endpoint conditions", service(nil), []*discoveryv1.EndpointSlice{v4}, []string{
			"10.96.0.10:53/udp ClusterIP [10.244.0.1:5353(l) 10.244.0.2:5353 10.244.0.3:5353(t)]",
			"10.96.0.10:80/tcp ClusterIP [10.244.0.1:8080(l) 10.244.0.2:8080 10.244.0.3:8080(t)]",
		}, nil},
		{"no EndpointSlices", service(nil), nil, []string{
			"10.96.0.10:53/udp ClusterIP []", "10.96.0.10:80/tcp ClusterIP []",
		}, nil},
		{"a port the slice does not name has no backends", service(nil),
			[]*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, ep{addr: "10.244.0.1"})},
			[]string{"10.96.0.10:53/udp ClusterIP []", "10.96.0.10:80/tcp ClusterIP [10.244.0.1:8080]"}, nil},
		{"dual-stack", service(func(s *corev1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:96::10"}
			s.Spec.Ports = s.Spec.Ports[:1]
		}), []*discoveryv1.EndpointSlice{v4, slice("web-2", discoveryv1.AddressTypeIPv6, map[string]int32{"http": 8080}, ep{addr: "fd00:244::1"})}, []string{
			"10.96.0.10:80/tcp ClusterIP [10.244.0.1:8080(l) 10.244.0.2:8080 10.244.0.3:8080(t)]",
			"[fd00:96::10]:80/tcp ClusterIP [[fd00:244::1]:8080]",
		}, nil},
		{"NodePort, externalIPs, LoadBalancer ingress, eTP Local, affinity", service(func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.Ports = s.Spec.Ports[:1]
			s.Spec.Ports[0].NodePort = 30080
			s.Spec.ExternalIPs = []string{"203.0.113.7", "not-an-ip"}
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr(int32(60))}}
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.9"}, {Hostname: "lb.example"}, {IP: "198.51.100.10", IPMode: ptr(corev1.LoadBalancerIPModeProxy)}}
		}), []*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, ep{addr: "10.244.0.1", node: "node-a"})}, []string{
			"10.96.0.10:80/tcp ClusterIP affinity=1m0s [10.244.0.1:8080(l)]",
			"192.168.0.1:30080/tcp NodePort affinity=1m0s local [10.244.0.1:8080(l)]",
			"198.51.100.9:80/tcp LoadBalancer affinity=1m0s local [10.244.0.1:8080(l)]",
			"203.0.113.7:80/tcp ExternalIP affinity=1m0s local [10.244.0.1:8080(l)]",
		}, []string{"BadExternalIP"}},
		{"internalTrafficPolicy Local", service(func(s *corev1.Service) {
			s.Spec.InternalTrafficPolicy = ptr(corev1.ServiceInternalTrafficPolicyLocal)
			s.Spec.Ports = s.Spec.Ports[:1]
		}), []*discoveryv1.EndpointSlice{v4}, []string{
			"10.96.0.10:80/tcp ClusterIP local [10.244.0.1:8080(l) 10.244.0.2:8080 10.244.0.3:8080(t)]",
		}, nil},
		{"headless: DNS only", service(func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.ClusterIPs = "None", []string{"None"} }), []*discoveryv1.EndpointSlice{v4}, nil, nil},
		{"ExternalName: DNS only", service(func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName }), nil, nil, nil},
		{"no ports", service(func(s *corev1.Service) { s.Spec.Ports = nil }), nil, nil, []string{"NoPorts"}},
		{"duplicate ports", service(func(s *corev1.Service) { s.Spec.Ports[1] = s.Spec.Ports[0] }), nil, nil, []string{"DuplicatePort"}},
		{"bad cluster IP", service(func(s *corev1.Service) { s.Spec.ClusterIPs = []string{"10.96.0.300"} }), nil, nil, []string{"BadClusterIP"}},
		{"SCTP", service(func(s *corev1.Service) {
			s.Spec.Ports[1].Protocol = corev1.ProtocolSCTP
		}), nil, []string{"10.96.0.10:80/tcp ClusterIP []"}, []string{"UnsupportedProtocol"}},
		{"bad endpoint address", service(func(s *corev1.Service) { s.Spec.Ports = s.Spec.Ports[:1] }),
			[]*discoveryv1.EndpointSlice{slice("web-1", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, ep{addr: "10.244.0.999"}, ep{addr: "10.244.0.1"})},
			[]string{"10.96.0.10:80/tcp ClusterIP [10.244.0.1:8080]"}, []string{"BadEndpoint"}},
		{"an endpoint in two slices: once, ready wins", service(func(s *corev1.Service) { s.Spec.Ports = s.Spec.Ports[:1] }),
			[]*discoveryv1.EndpointSlice{
				slice("web-1", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, ep{addr: "10.244.0.1", ready: no, serving: yes, terminating: yes}),
				slice("web-2", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, ep{addr: "10.244.0.1"}),
			},
			[]string{"10.96.0.10:80/tcp ClusterIP [10.244.0.1:8080]"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, probs := Translate(c.svc, c.slices, node)
			if r := render(got); !slices.Equal(r, c.want) {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(r, "\n  "), strings.Join(c.want, "\n  "))
			}
			var reasons []string
			for _, p := range probs {
				reasons = append(reasons, p.Reason)
			}
			if !slices.Equal(reasons, c.probs) {
				t.Errorf("problems %v, want %v", probs, c.probs)
			}
		})
	}
}

func TestDefaultAffinity(t *testing.T) {
	s := service(func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP })
	d, _ := Translate(s, nil, Node{})
	for svc := range d {
		if svc.Affinity != 3*time.Hour {
			t.Errorf("%s: affinity %s, want Kubernetes' default 3h", svc.Frontend, svc.Affinity)
		}
	}
	_ = lb.ClusterIP
}
