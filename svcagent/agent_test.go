package svcagent_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/dnsaccel/dnsaccel/datapath/lb"
	"github.com/dnsaccel/dnsaccel/svcagent"
	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/steertest"
	"github.com/dnsaccel/dnsaccel/test/svctest"
)

func ptr[T any](v T) *T { return &v }

// programmed renders what the table holds, sorted.
func programmed(tbl *lb.Table) []string {
	var out []string
	for s, bs := range tbl.Services() {
		var b []string
		for _, x := range bs {
			b = append(b, x.Addr.String())
		}
		slices.Sort(b)
		out = append(out, fmt.Sprintf("%s %s [%s]", s.Frontend, s.Type, strings.Join(b, " ")))
	}
	slices.Sort(out)
	return out
}

// TestAgentSync drives the controller from an in-memory API (client-go's
// fake clientset: the EndpointSlices are written by the test) into the real
// eBPF tables: programming, updates, deletion, an SCTP port skipped with an
// Event, and a restarted agent removing what belongs to no Service any more.
func TestAgentSync(t *testing.T) {
	cg := svctest.EmptyCgroup(t)
	bpffs := steertest.BPFFS(t)
	cs := fake.NewClientset()
	ctx := context.Background()
	events := record.NewFakeRecorder(100)

	run := func() (*lb.Table, func()) {
		tbl, err := lb.Open(lb.Options{Cgroup: cg, BPFFS: bpffs})
		if err != nil {
			t.Fatal(err)
		}
		a, err := svcagent.New(svcagent.Config{Client: cs, Table: tbl, NodeName: "node-a", Recorder: events})
		if err != nil {
			t.Fatal(err)
		}
		actx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- a.Run(actx) }()
		steertest.WaitFor(t, "the first sync", 10*time.Second, a.Ready)
		return tbl, func() { cancel(); <-done; tbl.Close() }
	}
	tbl, stop := run()
	t.Cleanup(func() { lb.Cleanup(bpffs) })

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.7.1", ClusterIPs: []string{"10.96.7.1"}, Type: corev1.ServiceTypeClusterIP,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
	if _, err := cs.CoreV1().Services("ns").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.5.1"}, NodeName: ptr("node-a")},
			{Addresses: []string{"10.244.5.2"}, NodeName: ptr("node-b")},
		},
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("ns").Create(ctx, es, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want := func(what string, w ...string) {
		t.Helper()
		var got []string
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if got = programmed(tbl); slices.Equal(got, w) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("%s: the table holds\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(w, "\n  "))
	}
	want("programmed", "10.96.7.1:80/tcp ClusterIP [10.244.5.1:8080 10.244.5.2:8080]")

	es.Endpoints = es.Endpoints[:1]
	if _, err := cs.DiscoveryV1().EndpointSlices("ns").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("an endpoint left", "10.96.7.1:80/tcp ClusterIP [10.244.5.1:8080]")

	svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "sctp", Port: 9, Protocol: corev1.ProtocolSCTP})
	if _, err := cs.CoreV1().Services("ns").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-events.Events:
		if !strings.Contains(e, "UnsupportedProtocol") {
			t.Errorf("event %q", e)
		}
	case <-time.After(10 * time.Second):
		t.Error("no Event for the SCTP port")
	}

	// Another Service, then the agent stops; while it is away the Service
	// is deleted: the next agent removes its frontends at its first sync.
	other := svc.DeepCopy()
	other.Name, other.ResourceVersion = "other", ""
	other.Spec.ClusterIP, other.Spec.ClusterIPs = "10.96.7.2", []string{"10.96.7.2"}
	other.Spec.Ports = other.Spec.Ports[:1]
	if _, err := cs.CoreV1().Services("ns").Create(ctx, other, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("a second Service", "10.96.7.1:80/tcp ClusterIP [10.244.5.1:8080]", "10.96.7.2:80/tcp ClusterIP []")
	stop()
	if err := cs.CoreV1().Services("ns").Delete(ctx, "other", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	tbl, stop = run()
	defer stop()
	want("after a restart", "10.96.7.1:80/tcp ClusterIP [10.244.5.1:8080]")

	if err := cs.CoreV1().Services("ns").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want("deleted")
}

// recordTC records AttachTC calls (attaching for real would touch every
// veth of the machine, other tests' too).
type recordTC struct {
	mu  sync.Mutex
	got map[int]lb.Where
}

func (r *recordTC) AttachTC(ifindex int, where lb.Where) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got[ifindex] = where
	return nil
}

func (r *recordTC) where(ifindex int) (lb.Where, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	w, ok := r.got[ifindex]
	return w, ok
}

// TestAttachInterfaces: the per-packet load balancer goes on the host end
// of a pod's veth, also one created after the start.
func TestAttachInterfaces(t *testing.T) {
	netns.Require(t)
	rec := &recordTC{got: map[int]lb.Where{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		svcagent.AttachInterfaces(ctx, rec, func() []netip.Addr { return nil }, slog.Default())
		close(done)
	}()
	defer func() { cancel(); <-done }()
	pod := netns.NewPod(t, netns.Options{PodName: "late"})
	l, err := netlink.LinkByName(pod.HostVeth)
	if err != nil {
		t.Fatal(err)
	}
	steertest.WaitFor(t, "the new veth to get the program", 15*time.Second, func() bool {
		w, ok := rec.where(l.Attrs().Index)
		return ok && w == lb.PodInterface
	})
}
