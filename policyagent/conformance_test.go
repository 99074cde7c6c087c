package policyagent

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/dnsaccel/dnsaccel/datapath/policy"
	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/svctest"
)

// The cases of the upstream e2e suite (kubernetes test/e2e/network/netpol,
// network_policy.go): namespaces x, y, z with pods a, b, c each, servers on
// ports 80 and 81 over TCP and UDP, and each case's full reachability
// matrix (72 pod pairs x 4 probes; a pod reaching itself goes over its
// loopback and is not probed, as upstream's ignoreLoopback). All 42 cases of
// upstream's "NetworkPolicy between server and client" context with its
// policies and expectations, probed on TCP and UDP 80/81 (upstream probes
// one protocol/port per step), plus the "using UDP" context's Ports case
// (its other two are the same policies as TCP cases above, whose matrix
// includes UDP) and one case of ours (endPort). Not run: the SCTP context
// (3 cases; no SCTP probes here).

var (
	nsNames  = []string{"x", "y", "z"}
	podNames = []string{"a", "b", "c"}
)

type pp struct{ ns, pod string }

func (p pp) String() string { return p.ns + "/" + p.pod }

type probe struct {
	proto string // "tcp" or "udp"
	port  uint16
}

var probes = []probe{{"tcp", 80}, {"tcp", 81}, {"udp", 80}, {"udp", 81}}

// world is the test's cluster: netns pods with servers, their labels, the
// namespaces' labels, and the datapath they are enforced by.
type world struct {
	t      *testing.T
	pods   map[pp]*svctest.Backend
	labels map[pp]map[string]string
	nsl    map[string]map[string]string
	tr     *Translator
	ap     *Applier
	dp     *policy.Datapath
	uids   map[pp]types.UID
}

func newWorld(t *testing.T) *world {
	w := &world{t: t, pods: map[pp]*svctest.Backend{}, labels: map[pp]map[string]string{},
		nsl: map[string]map[string]string{}, tr: NewTranslator(), uids: map[pp]types.UID{}}
	dp, err := policy.Open(policy.Options{})
	if err != nil {
		t.Fatalf("policy.Open: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	w.dp = dp
	w.ap = &Applier{DP: dp}
	var all []*netns.Pod
	for _, ns := range nsNames {
		for _, name := range podNames {
			b := svctest.NewBackend(t, "pol-"+ns+"-"+name)
			for _, port := range []uint16{80, 81} {
				b.ServeHTTP(t, port)
				b.ServeEcho(t, port)
			}
			k := pp{ns, name}
			w.pods[k] = b
			w.uids[k] = types.UID(k.String())
			all = append(all, b.Pod)
			l, err := netlink.LinkByName(b.Pod.HostVeth)
			if err != nil {
				t.Fatal(err)
			}
			if err := dp.AttachTC(l.Attrs().Index, policy.HostEnd); err != nil {
				t.Fatalf("AttachTC: %v", err)
			}
		}
	}
	svctest.Forward(t, all...)
	w.reset()
	return w
}

// reset restores upstream's labels: pod=<name>, ns=<name> plus
// kubernetes.io/metadata.name.
func (w *world) reset() {
	for k := range w.pods {
		w.labels[k] = map[string]string{"pod": k.pod}
	}
	for _, ns := range nsNames {
		w.nsl[ns] = map[string]string{"ns": ns, "kubernetes.io/metadata.name": ns}
	}
}

func (w *world) state(pols []*networkingv1.NetworkPolicy) State {
	st := State{Namespaces: w.nsl, Policies: pols}
	for k, b := range w.pods {
		p := Pod{UID: w.uids[k], Namespace: k.ns, Name: k.pod, Labels: w.labels[k], IPs: []netip.Addr{b.Pod.IP}, Local: true}
		for _, port := range []int32{80, 81} {
			p.Ports = append(p.Ports,
				corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-tcp", port), ContainerPort: port, Protocol: corev1.ProtocolTCP},
				corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-udp", port), ContainerPort: port, Protocol: corev1.ProtocolUDP})
		}
		st.Pods = append(st.Pods, p)
	}
	return st
}

func (w *world) apply(pols []*networkingv1.NetworkPolicy) {
	w.t.Helper()
	if err := w.ap.Apply(w.tr.Translate(w.state(pols))); err != nil {
		w.t.Fatalf("Apply: %v", err)
	}
}

func (w *world) reach(from, to pp, pr probe, timeout time.Duration) bool {
	src, dst := w.pods[from], w.pods[to]
	addr := netip.AddrPortFrom(dst.Pod.IP, pr.port)
	var r svctest.Result
	if pr.proto == "tcp" {
		r = svctest.HTTPGet(src.Pod, addr, timeout)
	} else {
		r = svctest.UDPEcho(src.Pod, addr, "ping", svctest.UDPOptions{}, timeout)
	}
	return r.Err == nil && r.Backend == dst.Name
}

type expectFn func(from, to pp, pr probe) bool

// check probes the whole matrix in parallel; a probe that disagrees is
// tried again with a longer timeout before it counts.
func (w *world) check(want expectFn) (wrong []string) {
	type job struct {
		from, to pp
		pr       probe
	}
	var jobs []job
	for f := range w.pods {
		for to := range w.pods {
			if f == to {
				continue
			}
			for _, pr := range probes {
				jobs = append(jobs, job{f, to, pr})
			}
		}
	}
	var mu sync.Mutex
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			exp := want(j.from, j.to, j.pr)
			got := w.reach(j.from, j.to, j.pr, 700*time.Millisecond)
			if got != exp {
				got = w.reach(j.from, j.to, j.pr, 3*time.Second)
			}
			if got != exp {
				mu.Lock()
				wrong = append(wrong, fmt.Sprintf("%s -> %s %s/%d: got %v, want %v", j.from, j.to, j.pr.proto, j.pr.port, got, exp))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return wrong
}

// Policy builders.

func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func expr(key string, op metav1.LabelSelectorOperator, vals ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: vals}}}
}

func np(ns, name string, pod *metav1.LabelSelector, types []networkingv1.PolicyType,
	in []networkingv1.NetworkPolicyIngressRule, out []networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	if pod == nil {
		pod = &metav1.LabelSelector{}
	}
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *pod, PolicyTypes: types, Ingress: in, Egress: out}}
}

var (
	tIn    = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	tOut   = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	tBoth  = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	tcp    = corev1.ProtocolTCP
	udp    = corev1.ProtocolUDP
	sctp   = corev1.ProtocolSCTP
	allIn  = []networkingv1.NetworkPolicyIngressRule{{}}
	port80 = intstr.FromInt32(80)
	allOut = []networkingv1.NetworkPolicyEgressRule{{}}
)

func peer(ns, pod *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: ns, PodSelector: pod}
}

func port(proto corev1.Protocol, p any) networkingv1.NetworkPolicyPort {
	r := networkingv1.NetworkPolicyPort{Protocol: &proto}
	switch v := p.(type) {
	case int:
		x := intstr.FromInt32(int32(v))
		r.Port = &x
	case string:
		x := intstr.FromString(v)
		r.Port = &x
	}
	return r
}

func portRange(proto corev1.Protocol, from, to int32) networkingv1.NetworkPolicyPort {
	r := port(proto, int(from))
	r.EndPort = &to
	return r
}

func from(peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyIngressRule {
	return []networkingv1.NetworkPolicyIngressRule{{From: peers}}
}

func fromPorts(ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyIngressRule {
	return []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: ports}}
}

func to(peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyEgressRule {
	return []networkingv1.NetworkPolicyEgressRule{{To: peers}}
}

func toPorts(ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyEgressRule {
	return []networkingv1.NetworkPolicyEgressRule{{To: peers, Ports: ports}}
}

func ports(p ...networkingv1.NetworkPolicyPort) []networkingv1.NetworkPolicyPort { return p }

func is(p pp, s string) bool { return p.String() == s }

// step is one state of a case: label changes, the policies, the matrix.
type step struct {
	relabel func(w *world)
	pols    func(w *world) []*networkingv1.NetworkPolicy
	want    expectFn
}

type netpolCase struct {
	name  string // upstream's It(...) text
	steps []step
}

func one(pols func(w *world) []*networkingv1.NetworkPolicy, want expectFn) []step {
	return []step{{pols: pols, want: want}}
}

func static(p ...*networkingv1.NetworkPolicy) func(*world) []*networkingv1.NetworkPolicy {
	return func(*world) []*networkingv1.NetworkPolicy { return p }
}

func cidr(w *world, k pp) string { return w.pods[k].Pod.IP.String() + "/32" }

// large is upstream's makeLargeCIDRForIP: the /4 holding the pod's address.
func large(w *world, k pp) string { return netip.PrefixFrom(w.pods[k].Pod.IP, 4).Masked().String() }

var xa = pp{"x", "a"}

func netpolCases() []netpolCase {
	all := func(from, to pp, pr probe) bool { return true }
	return []netpolCase{
		{"should support a 'default-deny-ingress' policy", one(
			static(np("x", "deny-ingress", nil, tIn, nil, nil)),
			func(f, t pp, pr probe) bool { return t.ns != "x" })},
		{"should support a 'default-deny-all' policy", one(
			static(np("x", "deny-all", nil, tBoth, nil, nil)),
			func(f, t pp, pr probe) bool { return t.ns != "x" && f.ns != "x" })},
		{"should enforce policy to allow traffic from pods within server namespace based on PodSelector", one(
			static(np("x", "allow-b", sel("pod", "a"), tIn, from(peer(nil, sel("pod", "b"))), nil)),
			func(f, t pp, pr probe) bool { return t != xa || is(f, "x/b") })},
		{"should enforce policy to allow ingress traffic for a target", one(
			static(np("x", "deny-ingress", nil, tIn, nil, nil), np("x", "allow-a", sel("pod", "a"), tIn, from(peer(&metav1.LabelSelector{}, &metav1.LabelSelector{})), nil)),
			func(f, t pp, pr probe) bool { return t.ns != "x" || t == xa })},
		{"should enforce policy to allow ingress traffic from pods in all namespaces", one(
			static(np("x", "allow-all-ns", sel("pod", "a"), tIn, from(peer(&metav1.LabelSelector{}, nil)), nil)),
			all)},
		{"should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector", one(
			static(np("x", "allow-y", sel("pod", "a"), tIn, from(peer(sel("kubernetes.io/metadata.name", "y"), nil)), nil)),
			func(f, t pp, pr probe) bool { return t != xa || f.ns == "y" })},
		{"should enforce policy based on PodSelector with MatchExpressions", one(
			static(np("x", "allow-b", sel("pod", "a"), tIn, from(peer(nil, expr("pod", metav1.LabelSelectorOpIn, "b"))), nil)),
			func(f, t pp, pr probe) bool { return t != xa || is(f, "x/b") })},
		{"should enforce policy based on NamespaceSelector with MatchExpressions", one(
			static(np("x", "allow-y", sel("pod", "a"), tIn, from(peer(expr("ns", metav1.LabelSelectorOpIn, "y"), nil)), nil)),
			func(f, t pp, pr probe) bool { return t != xa || f.ns == "y" })},
		{"should enforce policy based on PodSelector or NamespaceSelector", one(
			static(np("x", "allow-b-or-y", sel("pod", "a"), tIn, from(peer(expr("ns", metav1.LabelSelectorOpNotIn, "x"), nil), peer(nil, sel("pod", "b"))), nil)),
			func(f, t pp, pr probe) bool { return t != xa || f.ns != "x" || f.pod == "b" })},
		{"should enforce policy based on PodSelector and NamespaceSelector", one(
			static(np("x", "allow-notx-b", sel("pod", "a"), tIn, from(peer(expr("ns", metav1.LabelSelectorOpNotIn, "x"), sel("pod", "b"))), nil)),
			func(f, t pp, pr probe) bool { return t != xa || (f.ns != "x" && f.pod == "b") })},
		{"should enforce policy based on Multiple PodSelectors and NamespaceSelectors", one(
			static(np("x", "allow-notx-bc", sel("pod", "a"), tIn, from(peer(expr("ns", metav1.LabelSelectorOpNotIn, "x"), expr("pod", metav1.LabelSelectorOpIn, "b", "c"))), nil)),
			func(f, t pp, pr probe) bool { return t != xa || (f.ns != "x" && f.pod != "a") })},
		{"should enforce policy based on any PodSelectors", one(
			static(np("x", "allow-b-c", sel("pod", "a"), tIn, from(peer(nil, sel("pod", "b")), peer(nil, sel("pod", "c"))), nil)),
			func(f, t pp, pr probe) bool { return t != xa || (f.ns == "x" && f.pod != "a") })},
		{"should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector", one(
			static(np("x", "allow-ya", sel("pod", "a"), tIn, from(peer(sel("ns", "y"), sel("pod", "a"))), nil)),
			func(f, t pp, pr probe) bool { return t != xa || is(f, "y/a") })},
		{"should enforce policy based on Ports", one(
			static(np("x", "allow-81", sel("pod", "a"), tIn, fromPorts(ports(port(tcp, 81)), peer(sel("ns", "y"), nil)), nil)),
			func(f, t pp, pr probe) bool { return t != xa || (f.ns == "y" && pr == probe{"tcp", 81}) })},
		{"should enforce multiple, stacked policies with overlapping podSelectors", one(
			static(np("x", "allow-81", sel("pod", "a"), tIn, fromPorts(ports(port(tcp, 81)), peer(sel("ns", "y"), nil)), nil),
				np("x", "allow-80", sel("pod", "a"), tIn, fromPorts(ports(port(tcp, 80)), peer(sel("ns", "y"), nil)), nil)),
			func(f, t pp, pr probe) bool { return t != xa || (f.ns == "y" && pr.proto == "tcp") })},
		{"should support allow-all policy", one(
			static(np("x", "allow-all", nil, tIn, allIn, nil)), all)},
		{"should allow ingress access on one named port", one(
			static(np("x", "allow-81", nil, tIn, fromPorts(ports(port(tcp, "serve-81-tcp"))), nil)),
			func(f, t pp, pr probe) bool { return t.ns != "x" || pr == probe{"tcp", 81} })},
		{"should allow ingress access from namespace on one named port", one(
			static(np("x", "allow-y-80", nil, tIn, fromPorts(ports(port(tcp, "serve-80-tcp")), peer(sel("ns", "y"), nil)), nil)),
			func(f, t pp, pr probe) bool { return t.ns != "x" || (f.ns == "y" && pr == probe{"tcp", 80}) })},
		{"should allow egress access on one named port", one(
			static(np("x", "allow-80", nil, tOut, nil, toPorts(ports(port(tcp, "serve-80-tcp"))))),
			func(f, t pp, pr probe) bool { return f.ns != "x" || pr == probe{"tcp", 80} })},
		{"should enforce updated policy", []step{
			{pols: static(np("x", "allow-all-mutate", nil, tIn, allIn, nil)), want: all},
			{pols: static(np("x", "allow-all-mutate", nil, tIn, []networkingv1.NetworkPolicyIngressRule{}, nil)),
				want: func(f, t pp, pr probe) bool { return t.ns != "x" }},
		}},
		{"should allow ingress access from updated namespace", []step{
			{pols: static(np("x", "allow-ns-y-new", sel("pod", "a"), tIn, from(peer(sel("ns2", "updated"), nil)), nil)),
				want: func(f, t pp, pr probe) bool { return t != xa }},
			{relabel: func(w *world) { w.nsl["y"]["ns2"] = "updated" },
				pols: static(np("x", "allow-ns-y-new", sel("pod", "a"), tIn, from(peer(sel("ns2", "updated"), nil)), nil)),
				want: func(f, t pp, pr probe) bool { return t != xa || f.ns == "y" }},
		}},
		{"should allow ingress access from updated pod", []step{
			{pols: static(np("x", "allow-pod-b-new", sel("pod", "a"), tIn, from(peer(nil, sel("pod", "b", "pod2", "updated"))), nil)),
				want: func(f, t pp, pr probe) bool { return t != xa }},
			{relabel: func(w *world) { w.labels[pp{"x", "b"}]["pod2"] = "updated" },
				pols: static(np("x", "allow-pod-b-new", sel("pod", "a"), tIn, from(peer(nil, sel("pod", "b", "pod2", "updated"))), nil)),
				want: func(f, t pp, pr probe) bool { return t != xa || is(f, "x/b") }},
		}},
		{"should deny ingress from pods on other namespaces", one(
			static(np("x", "deny-other-ns", nil, tIn, from(peer(nil, &metav1.LabelSelector{})), nil)),
			func(f, t pp, pr probe) bool { return t.ns != "x" || f.ns == "x" })},
		{"should deny ingress access to updated pod", []step{
			{pols: static(np("x", "deny-ingress-via-label", sel("target", "isolated"), tIn, nil, nil)), want: all},
			{relabel: func(w *world) { w.labels[xa]["target"] = "isolated" },
				pols: static(np("x", "deny-ingress-via-label", sel("target", "isolated"), tIn, nil, nil)),
				want: func(f, t pp, pr probe) bool { return t != xa }},
		}},
		{"should deny egress from pods based on PodSelector", one(
			static(np("x", "deny-egress-a", sel("pod", "a"), tOut, nil, nil)),
			func(f, t pp, pr probe) bool { return f != xa })},
		{"should deny egress from all pods in a namespace", one(
			static(np("x", "deny-egress", nil, tOut, nil, nil)),
			func(f, t pp, pr probe) bool { return f.ns != "x" })},
		{"should work with Ingress, Egress specified together", one(
			static(np("x", "in-out", sel("pod", "a"), tBoth, from(peer(nil, sel("pod", "b"))),
				[]networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &port80}}}})),
			func(f, t pp, pr probe) bool {
				if t == xa {
					return is(f, "x/b")
				}
				if f == xa {
					return pr == probe{"tcp", 80}
				}
				return true
			})},
		{"should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)", one(
			static(np("x", "allow-to-y-a", sel("pod", "a"), tOut, nil, to(peer(sel("ns", "y"), sel("pod", "a")))),
				np("y", "allow-from-xa-on-ya", sel("pod", "a"), tIn, from(peer(sel("ns", "x"), sel("pod", "a"))), nil),
				np("y", "allow-from-xa-on-yb", sel("pod", "b"), tIn, from(peer(sel("ns", "x"), sel("pod", "a"))), nil)),
			func(f, t pp, pr probe) bool {
				if f == xa {
					return is(t, "y/a")
				}
				return !is(t, "y/a") && !is(t, "y/b")
			})},
		{"should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector", one(
			static(np("x", "allow-to-y-a", sel("pod", "a"), tOut, nil, to(peer(sel("ns", "y"), sel("pod", "a"))))),
			func(f, t pp, pr probe) bool { return f != xa || is(t, "y/a") })},
		{"should enforce ingress policy allowing any port traffic to a server on a specific protocol", one(
			static(np("x", "allow-tcp", sel("pod", "a"), tIn, fromPorts(ports(networkingv1.NetworkPolicyPort{Protocol: &tcp})), nil)),
			func(f, t pp, pr probe) bool { return t != xa || pr.proto == "tcp" })},
		{"should enforce multiple ingress policies with ingress allow-all policy taking precedence", []step{
			{pols: static(np("x", "allow-80", nil, tIn, fromPorts(ports(port(tcp, 80))), nil)),
				want: func(f, t pp, pr probe) bool { return t.ns != "x" || pr == probe{"tcp", 80} }},
			{pols: static(np("x", "allow-80", nil, tIn, fromPorts(ports(port(tcp, 80))), nil), np("x", "allow-all", nil, tIn, allIn, nil)),
				want: all},
		}},
		{"should enforce multiple egress policies with egress allow-all policy taking precedence", []step{
			{pols: static(np("x", "allow-80", nil, tOut, nil, toPorts(ports(port(tcp, 80))))),
				want: func(f, t pp, pr probe) bool { return f.ns != "x" || pr == probe{"tcp", 80} }},
			{pols: static(np("x", "allow-80", nil, tOut, nil, toPorts(ports(port(tcp, 80)))), np("x", "allow-all", nil, tOut, nil, allOut)),
				want: all},
		}},
		{"should stop enforcing policies after they are deleted", []step{
			{pols: static(np("x", "deny-all", nil, tBoth, nil, nil)),
				want: func(f, t pp, pr probe) bool { return t.ns != "x" && f.ns != "x" }},
			{pols: static(), want: all},
		}},
		{"should allow egress access to server in CIDR block", one(
			func(w *world) []*networkingv1.NetworkPolicy {
				return []*networkingv1.NetworkPolicy{np("x", "allow-cidr", sel("pod", "a"), tOut, nil,
					to(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr(w, pp{"y", "b"})}}))}
			},
			func(f, t pp, pr probe) bool { return f != xa || is(t, "y/b") })},
		{"should enforce except clause while egress access to server in CIDR block", one(
			func(w *world) []*networkingv1.NetworkPolicy {
				return []*networkingv1.NetworkPolicy{np("x", "deny-except", sel("pod", "a"), tOut, nil,
					to(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: large(w, pp{"x", "b"}), Except: []string{cidr(w, pp{"x", "b"})}}}))}
			},
			func(f, t pp, pr probe) bool { return f != xa || !is(t, "x/b") })},
		{"should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed", []step{
			{pols: func(w *world) []*networkingv1.NetworkPolicy {
				return []*networkingv1.NetworkPolicy{np("x", "allow-cidr", sel("pod", "a"), tOut, nil,
					to(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: large(w, pp{"x", "b"}), Except: []string{cidr(w, pp{"x", "b"})}}}))}
			}, want: func(f, t pp, pr probe) bool { return f != xa || !is(t, "x/b") }},
			// upstream updates the same policy to allow only x/b's address
			{pols: func(w *world) []*networkingv1.NetworkPolicy {
				return []*networkingv1.NetworkPolicy{np("x", "allow-cidr", sel("pod", "a"), tOut, nil,
					to(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr(w, pp{"x", "b"})}}))}
			}, want: func(f, t pp, pr probe) bool { return f != xa || is(t, "x/b") }},
		}},
		{"should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector", []step{
			{pols: static(np("x", "allow-egress-for-target", sel("pod", "a"), tOut, nil, allOut)), want: all},
			{pols: static(np("x", "allow-egress-for-target", sel("pod", "a"), tOut, nil, allOut), np("x", "deny-ingress-via-label-selector", sel("pod", "a"), tIn, nil, nil)),
				want: func(f, t pp, pr probe) bool { return t != xa }},
		}},
		{"should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP", one(
			static(np("x", "deny-ingress", nil, tIn, nil, nil), np("x", "allow-only-sctp-81", sel("pod", "a"), tIn, fromPorts(ports(port(sctp, 81))), nil)),
			func(f, t pp, pr probe) bool { return t.ns != "x" })},
		{"should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP", one(
			static(np("x", "allow-only-sctp-80", sel("pod", "a"), tIn, fromPorts(ports(port(sctp, 80))), nil)),
			func(f, t pp, pr probe) bool { return t != xa })},
		{"should not allow access by TCP when a policy specifies only UDP", one(
			static(np("x", "allow-udp-81", sel("pod", "a"), tIn, fromPorts(ports(port(udp, 81))), nil)),
			func(f, t pp, pr probe) bool { return t != xa || pr == probe{"udp", 81} })},
		{"should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label", one(
			static(np("x", "allow-y", sel("pod", "a"), tIn, from(peer(sel("kubernetes.io/metadata.name", "y"), nil)), nil)),
			func(f, t pp, pr probe) bool { return t != xa || f.ns == "y" })},
		{"should enforce policy based on NamespaceSelector with MatchExpressions using default ns label", one(
			static(np("x", "allow-not-y", sel("pod", "a"), tOut, nil, to(peer(expr("kubernetes.io/metadata.name", metav1.LabelSelectorOpNotIn, "y"), nil)))),
			func(f, t pp, pr probe) bool { return f != xa || t.ns != "y" })},
		{"using UDP: should enforce policy based on Ports", one(
			static(np("x", "allow-81", sel("pod", "a"), tIn, fromPorts(ports(port(udp, 81)), peer(sel("ns", "y"), nil)), nil)),
			func(f, t pp, pr probe) bool { return t != xa || (f.ns == "y" && pr == probe{"udp", 81}) })},
		{"(not upstream) should support a port range (endPort)", one(
			static(np("x", "allow-80-81", sel("pod", "a"), tIn, fromPorts(ports(portRange(tcp, 80, 81), portRange(udp, 81, 90)), peer(sel("ns", "y"), nil)), nil)),
			func(f, t pp, pr probe) bool { return t != xa || (f.ns == "y" && pr != probe{"udp", 80}) })},
	}
}

func TestNetpolConformance(t *testing.T) {
	w := newWorld(t)
	// Control: the matrix check sees drops (a test that cannot fail proves
	// nothing).
	w.apply([]*networkingv1.NetworkPolicy{np("x", "control", nil, tIn, nil, nil)})
	if wrong := w.check(func(pp, pp, probe) bool { return true }); len(wrong) != 3*8*len(probes) {
		t.Fatalf("control: default-deny-ingress in x made %d probes fail, want %d", len(wrong), 3*8*len(probes))
	}
	w.apply(nil)
	cases := netpolCases()
	passed := 0
	for _, c := range cases {
		ok := t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			w.reset()
			defer w.apply(nil)
			for i, s := range c.steps {
				if s.relabel != nil {
					s.relabel(w)
				}
				w.apply(s.pols(w))
				if wrong := w.check(s.want); len(wrong) > 0 {
					t.Errorf("step %d: %d of %d probes wrong:\n%s", i, len(wrong), 9*8*len(probes), strings.Join(wrong, "\n"))
				}
			}
		})
		if ok {
			passed++
		}
	}
	t.Logf("netpol conformance: %d of %d cases pass", passed, len(cases))
}
