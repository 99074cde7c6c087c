// Package smoke proves the test harness works end to end: a real API server
// (test/cluster) watched by client-go informers, and network-namespace pods
// (test/netns) that reach the host through their veth and resolve names
// with glibc against a DNS server on the host side.
package smoke

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/netns"
)

// helperEnv makes the test binary act as a UDP client (run inside a pod).
const helperEnv = "DNSACCEL_SMOKE_HELPER_UDP"

func TestMain(m *testing.M) {
	if addr := os.Getenv(helperEnv); addr != "" {
		os.Exit(udpClient(addr))
	}
	cluster.Main(m)
}

// udpClient sends "hello" to addr and prints the reply.
func udpClient(addr string) int {
	c, err := net.Dial("udp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hello")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%s\n", buf[:n])
	return 0
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Test 1: objects written to the API server arrive in informer caches.
func TestInformerSeesServiceAndPod(t *testing.T) {
	c := cluster.Shared(t)
	ctx := timeout(t, time.Minute)
	ns := c.CreateNamespace(t, "smoke-")

	factory := informers.NewSharedInformerFactoryWithOptions(c.Client, 0, informers.WithNamespace(ns))
	svcs := factory.Core().V1().Services().Lister()
	pods := factory.Core().V1().Pods().Lister()
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); factory.Shutdown() })
	factory.Start(stop)
	for typ, ok := range factory.WaitForCacheSync(stop) {
		if !ok {
			t.Fatalf("cache of %v did not sync", typ)
		}
	}

	// Created after the caches synced, so they arrive as watch events.
	svc := c.MustCreateService(t, cluster.ServiceOptions{Namespace: ns, Name: "kube-dns", Selector: map[string]string{"k8s-app": "kube-dns"}})
	c.MustCreatePod(t, cluster.PodOptions{Namespace: ns, Name: "coredns-1", Labels: map[string]string{"k8s-app": "kube-dns"}, PodIPs: []string{"10.244.7.7"}, HostIP: "127.0.0.1"})

	var gotSvc *corev1.Service
	var gotPod *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		gotSvc, _ = svcs.Services(ns).Get("kube-dns")
		gotPod, _ = pods.Pods(ns).Get("coredns-1")
		return gotSvc != nil && gotPod != nil && gotPod.Status.PodIP != "", nil
	})
	if err != nil {
		t.Fatalf("informer did not deliver the objects: service=%v pod=%v: %v", gotSvc != nil, gotPod != nil, err)
	}
	if gotSvc.Spec.ClusterIP == "" || gotSvc.Spec.ClusterIP != svc.Spec.ClusterIP || !netip.MustParsePrefix(cluster.DefaultServiceCIDR).Contains(netip.MustParseAddr(gotSvc.Spec.ClusterIP)) {
		t.Errorf("service ClusterIP in cache = %q, created %q", gotSvc.Spec.ClusterIP, svc.Spec.ClusterIP)
	}
	if len(gotSvc.Spec.Ports) != 2 || gotSvc.Spec.Ports[0].Port != 53 {
		t.Errorf("service ports = %+v", gotSvc.Spec.Ports)
	}
	if gotPod.Status.PodIP != "10.244.7.7" || gotPod.Status.Phase != corev1.PodRunning || gotPod.Status.HostIP != "127.0.0.1" || gotPod.Spec.NodeName != cluster.DefaultNodeName {
		t.Errorf("pod in cache: podIP=%s phase=%s hostIP=%s node=%s", gotPod.Status.PodIP, gotPod.Status.Phase, gotPod.Status.HostIP, gotPod.Spec.NodeName)
	}
}

// A netns pod registered in the API server shows up with its real address.
func TestNetnsPodRegistered(t *testing.T) {
	netns.Require(t)
	c := cluster.Shared(t)
	ns := c.CreateNamespace(t, "smoke-")
	p := netns.NewPod(t, netns.Options{Namespace: ns, Client: c.Client, Labels: map[string]string{"app": "client"}})
	got, err := c.Client.CoreV1().Pods(ns).Get(timeout(t, 10*time.Second), p.PodName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.PodIP != p.IP.String() || got.Status.Phase != corev1.PodRunning || got.Labels["app"] != "client" {
		t.Errorf("registered pod: podIP=%s (want %s) phase=%s labels=%v", got.Status.PodIP, p.IP, got.Status.Phase, got.Labels)
	}
}

// udpEcho serves UDP echo on addr and reports the source address of each request.
func udpEcho(t *testing.T, addr netip.Addr) (*net.UDPConn, <-chan netip.Addr) {
	t.Helper()
	srv, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	from := make(chan netip.Addr, 16)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, peer, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			from <- peer.Addr().Unmap()
			srv.WriteToUDPAddrPort(buf[:n], peer)
		}
	}()
	return srv, from
}

// Test 2: processes in a pod reach a UDP server on the host side of the
// veth, and the server sees the pod IP as source.
func TestPodReachesHostUDP(t *testing.T) {
	p := netns.NewPod(t, netns.Options{})
	ctx := timeout(t, 30*time.Second)
	srv, from := udpEcho(t, p.HostIP)

	t.Run("Do", func(t *testing.T) {
		var reply string
		err := p.Do(func() error {
			c, err := net.Dial("udp", srv.LocalAddr().String())
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("ping")); err != nil {
				return err
			}
			buf := make([]byte, 64)
			n, err := c.Read(buf)
			reply = string(buf[:n])
			return err
		})
		if err != nil || reply != "ping" {
			t.Fatalf("echo from inside the pod: reply %q, %v", reply, err)
		}
		if src := <-from; src != p.IP {
			t.Errorf("server saw source %s, want pod IP %s", src, p.IP)
		}
	})

	t.Run("process", func(t *testing.T) {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := p.Command(ctx, exe)
		cmd.Env = append(os.Environ(), helperEnv+"="+srv.LocalAddr().String())
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "hello" {
			t.Fatalf("client process in pod: %v: %s", err, out)
		}
		if src := <-from; src != p.IP {
			t.Errorf("server saw source %s, want pod IP %s", src, p.IP)
		}
	})
}

// dnsServer answers A queries for the names in records (NXDOMAIN for other
// names, empty answers for other types) on addr:53 (UDP and TCP).
type dnsServer struct {
	mu      sync.Mutex
	queries []string // "name type from"
}

func startDNS(t *testing.T, addr netip.Addr, records map[string]netip.Addr) *dnsServer {
	t.Helper()
	s := &dnsServer{}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		q := req.Question[0]
		from, _ := netip.ParseAddrPort(w.RemoteAddr().String())
		s.mu.Lock()
		s.queries = append(s.queries, fmt.Sprintf("%s %s %s", strings.ToLower(q.Name), dns.TypeToString[q.Qtype], from.Addr().Unmap()))
		s.mu.Unlock()
		ip, ok := records[strings.ToLower(q.Name)]
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: ip.AsSlice()})
		}
		w.WriteMsg(m)
	})
	ap := netip.AddrPortFrom(addr, 53).String()
	pc, err := net.ListenPacket("udp", ap)
	if err != nil {
		t.Fatalf("DNS server on %s: %v", ap, err)
	}
	l, err := net.Listen("tcp", ap)
	if err != nil {
		pc.Close()
		t.Fatalf("DNS server on %s: %v", ap, err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: l, Handler: h}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() {
		udp.Shutdown()
		tcp.Shutdown()
		pc.Close()
		l.Close()
	})
	return s
}

func (s *dnsServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.queries...)
}

// Test 3: glibc in the pod resolves through the pod's resolv.conf (search
// list, ndots:5) against a DNS server on the host-side address.
func TestGlibcResolutionInPod(t *testing.T) {
	p := netns.NewPod(t, netns.Options{Namespace: "smoke"})
	ctx := timeout(t, 30*time.Second)
	const fqdn = "myname.smoke.svc.cluster.local."
	want := netip.MustParseAddr("198.51.100.7") // TEST-NET-2: only data, never contacted
	srv := startDNS(t, p.HostIP, map[string]netip.Addr{fqdn: want})

	out, err := p.Exec(ctx, "getent", "ahosts", "myname")
	if err != nil {
		t.Fatalf("getent ahosts myname in pod: %v\nqueries seen: %v", err, srv.seen())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if f := strings.Fields(lines[0]); len(f) < 3 || f[0] != want.String() || !strings.HasPrefix(fqdn, f[2]) {
		t.Errorf("getent ahosts myname:\n%s\nwant %s (canonical name %s)", out, want, fqdn)
	}
	found := false
	for _, q := range srv.seen() {
		if q == fqdn+" A "+p.IP.String() {
			found = true
		}
	}
	if !found {
		t.Errorf("DNS server did not see an A query for %s from pod IP %s; saw %v", fqdn, p.IP, srv.seen())
	}

	// A name outside the search list fails cleanly (NXDOMAIN for every candidate).
	if out, err := p.Exec(ctx, "getent", "ahosts", "other"); err == nil {
		t.Errorf("getent ahosts other succeeded: %s", out)
	}
}
