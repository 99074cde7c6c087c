// Package node brings a whole dnsaccel node up on one machine, and down
// again: the test API server (test/cluster: etcd + kube-apiserver), the
// cloud emulator (bin/cloud-emulator: PrivateZone, ECS with --local-enis,
// instance metadata), a central CoreDNS (bin/coredns with the kubernetes
// plugin) in its own network namespace holding the kube-dns Service VIP,
// bin/eni-agent with bin/eni-cni giving two pods VPC addresses, bin/node-cache
// steering the pods' queries for the VIP with eBPF and expanding their
// search paths (k8s_autopath), and bin/pvtz-sync publishing the Services to
// PrivateZone. `make demo` (hack/demo) and test/e2e both run it.
//
//	pod A, pod B (ENI addresses, veth) --> host: node-cache on LocalIP (steered from VIP:53)
//	                                         |  cluster.local -> VIP:53 (route + rule)
//	                                         v
//	                          central netns: VIP on lo, bin/coredns (kubernetes, whoami)
//	                                         |  other names -> the emulator's PrivateZone DNS
//
// Everything lives on loopback or in namespaces the node creates; the bpf
// pins are on a private bpf file system. One node runs at a time per machine
// (a lock file), because the emulator's VPC namespace has a fixed name.
package node

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/dnsaccel/dnsaccel/cni/api"
	"github.com/dnsaccel/dnsaccel/cni/netsetup"
	"github.com/dnsaccel/dnsaccel/datapath"
	"github.com/dnsaccel/dnsaccel/datapath/steer"
	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/cnitest"
	"github.com/dnsaccel/dnsaccel/test/dnstest"
	"github.com/dnsaccel/dnsaccel/test/internal/proc"
	"github.com/dnsaccel/dnsaccel/test/netns"
	"github.com/dnsaccel/dnsaccel/test/steertest"
)

// Fixed facts of the node.
const (
	// NodeName is the Node object and every component's --node-name.
	NodeName = "dnsaccel-demo-node"
	// Zone is the PrivateZone zone pvtz-sync publishes Services to.
	Zone = "demo.internal"
	// OwnerID is pvtz-sync's --owner-id.
	OwnerID = "demo-node"
	// VPCNetns is the network namespace bin/cloud-emulator --local-enis
	// makes for the VPC (its default name).
	VPCNetns = "vpc"
	// ServiceNamespace holds the demo Service "web" and the pods.
	ServiceNamespace = "default"
	// ServiceName is the Service published to PrivateZone and resolved
	// from the pods.
	ServiceName = "web"
	// WhoamiZone is answered by the central CoreDNS with the client
	// address it sees: the pod's own when a query reached it directly, the
	// node's when node-cache forwarded it.
	WhoamiZone = "whoami.cluster.local."

	lockPath     = "/run/dnsaccel-demo-node.lock"
	vpcMarker    = "/run/dnsaccel-demo-node.vpc"
	bpffsPrefix  = "dnsaccel-node-bpffs-"
	vipRulePrio  = 500 // ahead of eni-cni's rules (512 to pods, 2048 from pods)
	apiProxyPort = 6443
)

// Emulator facts (bin/cloud-emulator's defaults).
var (
	// VPCCIDR is the emulated VPC; pods' and the node's addresses are in it.
	VPCCIDR = netip.MustParsePrefix("192.168.0.0/16")
	// KubeDNSVIP is the ClusterIP of Service kube-system/kube-dns.
	KubeDNSVIP = netip.MustParseAddr("10.96.0.10")
)

const (
	emulatorVPCID = "vpc-dnsaccelemu0000000001"
	accessKeyID   = "emulator-access-key-id"
	accessSecret  = "emulator-access-key-secret"
)

// Binaries the node runs, from Options.BinDir.
var Binaries = []string{"coredns", "node-cache", "pvtz-sync", "pvtzctl", "cloud-emulator", "eni-cni", "eni-agent", "dnsaccelctl"}

// Tools the node and its steps run from $PATH.
var Tools = []string{"ip", "dig", "getent", "tcpdump"}

// Options configures Up.
type Options struct {
	// BinDir holds Binaries (default: bin/ of the repository).
	BinDir string
	// HeartbeatTimeout is node-cache's --heartbeat-timeout (default 1s).
	HeartbeatTimeout time.Duration
	// Logf, if set, is told what Up is doing.
	Logf func(format string, args ...any)
}

// Pod is a pod of the node: a network namespace wired by eni-cni, and its
// Pod object.
type Pod struct {
	Name      string // Pod object (namespace ServiceNamespace)
	Netns     string // network namespace
	IP        netip.Addr
	ENI       string // the ENI its address is a secondary IP of
	VSwitch   string // that ENI's vSwitch CIDR
	HostVeth  string // host end of its veth
	Object    *corev1.Pod
	cni       *cnitest.Pod
	etcNetns  string
	addedToCN bool
}

// Node is a running node. Its fields are for reading.
type Node struct {
	Opt     Options
	Dir     string
	Cluster *cluster.Cluster
	// Central is the central CoreDNS's namespace (VIP on its lo).
	Central *netns.Pod
	VIP     netip.Addr
	// LocalIP is node-cache's address (on lo), where the VIP is steered.
	LocalIP netip.Addr
	// NodeIP is the primary ENI's address (on a host interface).
	NodeIP netip.Addr
	// ServiceIP is the ClusterIP of Service ServiceNamespace/ServiceName.
	ServiceIP netip.Addr
	Pods      []*Pod

	EmulatorURL string // OpenAPI endpoint (PrivateZone, ECS, metadata)
	PvtzDNS     string // the emulator's PrivateZone DNS (the VPC resolver), IP:53

	NodeCacheMetrics, NodeCacheHealth, NodeCacheListen string
	NodeCacheObserve                                   string // --observe: dnsaccelctl's endpoint
	BPFFS                                              string

	Emulator, CentralDNS, Agent, NodeCache, PvtzSync *Proc

	agentSocket   string
	cni           *libcni.CNIConfig
	confList      *libcni.NetworkConfigList
	unmountBPFFS  func()
	apiProxy      net.Listener
	proxyWG       sync.WaitGroup
	lock          *os.File
	vipRoute      *netlink.Route
	vipRule       *netlink.Rule
	nodeCacheRuns int
	// what Down must find gone (Leftovers)
	made made
}

// made records what the node created, for Leftovers.
type made struct {
	netns     []string
	links     []string
	addrs     []netip.Addr
	pids      []int
	listeners []string  // TCP addresses the node's processes listened on
	pins      steer.IDs // the steering's kernel objects, over every node-cache
	files     []string
	tables    []int
}

func (n *Node) logf(format string, args ...any) {
	if n.Opt.Logf != nil {
		n.Opt.Logf(format, args...)
	}
}

// Check reports what this machine lacks to run a node.
func Check(binDir string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: a node needs root (network namespaces, eBPF, policy routing)", cluster.ErrUnavailable)
	}
	for _, t := range Tools {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%w: %s not installed (make deps installs it)", cluster.ErrUnavailable, t)
		}
	}
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			return fmt.Errorf("%s missing: run `make build` first", filepath.Join(binDir, b))
		}
	}
	if _, err := cluster.EtcdPath(); err != nil {
		return err
	}
	cg, err := datapath.DetectCgroup2()
	if err != nil {
		return fmt.Errorf("%w: %v", cluster.ErrUnavailable, err)
	}
	if err := datapath.Check(cg); err != nil {
		return fmt.Errorf("%w: %v", cluster.ErrUnavailable, err)
	}
	return netns.Check()
}

// DefaultBinDir is bin/ of the repository around the working directory.
func DefaultBinDir() (string, error) {
	root, err := cnitest.RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin"), nil
}

// Up brings the node up. On error everything already started is removed
// again. The caller must call Down.
func Up(ctx context.Context, o Options) (_ *Node, err error) {
	if o.BinDir == "" {
		d, err := DefaultBinDir()
		if err != nil {
			return nil, err
		}
		o.BinDir = d
	}
	if o.HeartbeatTimeout == 0 {
		o.HeartbeatTimeout = time.Second
	}
	if err := Check(o.BinDir); err != nil {
		return nil, err
	}
	n := &Node{Opt: o}
	if err := n.takeLock(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if derr := n.Down(); derr != nil {
				err = fmt.Errorf("%w\n(and tearing down: %v)", err, derr)
			}
			if left := n.Leftovers(); len(left) > 0 {
				err = fmt.Errorf("%w\n(and left behind: %s)", err, strings.Join(left, "; "))
			}
		}
	}()
	sweep()
	if _, err := os.Stat(filepath.Join("/run/netns", VPCNetns)); err == nil {
		return nil, fmt.Errorf("network namespace %q exists, not made by a demo node (`ip netns delete %s` if it is a leftover)", VPCNetns, VPCNetns)
	}
	if n.Dir, err = os.MkdirTemp("", "dnsaccel-node-"); err != nil {
		return nil, err
	}
	steps := []struct {
		what string
		fn   func(context.Context) error
	}{
		{"API server (etcd + kube-apiserver)", n.startCluster},
		{"central DNS namespace and the kube-dns VIP", n.startCentralNetns},
		{"cloud emulator", n.startEmulator},
		{"central CoreDNS", n.startCentralDNS},
		{"eni-agent", n.startAgent},
		{"pods (eni-cni)", n.startPods},
		{"pvtz-sync", n.startPvtzSync},
		{"node-cache", n.StartNodeCache},
	}
	for _, s := range steps {
		t0 := time.Now()
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("starting the %s: %w", s.what, err)
		}
		n.logf("  up: %-44s %s", s.what, time.Since(t0).Round(time.Millisecond))
	}
	n.recordENIs()
	return n, nil
}

func (n *Node) takeLock(ctx context.Context) error {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			n.lock = f
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return fmt.Errorf("lock %s: %w", lockPath, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return fmt.Errorf("another demo node runs on this machine (%s is locked): %w", lockPath, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (n *Node) path(name string) string { return filepath.Join(n.Dir, name) }
func (n *Node) bin(name string) string  { return filepath.Join(n.Opt.BinDir, name) }

func credsEnv() []string {
	return []string{"ALIBABA_CLOUD_ACCESS_KEY_ID=" + accessKeyID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET=" + accessSecret}
}

func (n *Node) start(name string, env []string, argv ...string) (*Proc, error) {
	p, err := startProc(name, n.path(strings.ReplaceAll(name, " ", "-")+".log"), env, argv...)
	if err != nil {
		return nil, err
	}
	n.made.pids = append(n.made.pids, p.Pid())
	return p, nil
}

func (n *Node) freeAddr() (string, error) {
	a, err := dnstest.FreeAddr()
	if err == nil {
		n.made.listeners = append(n.made.listeners, a)
	}
	return a, err
}

// freeAddrs is freeAddr for each of dst.
func (n *Node) freeAddrs(dst ...*string) error {
	for _, d := range dst {
		a, err := n.freeAddr()
		if err != nil {
			return err
		}
		*d = a
	}
	return nil
}

func (n *Node) startCluster(ctx context.Context) error {
	c, err := cluster.Start(ctx)
	if err != nil {
		return err
	}
	n.Cluster = c
	n.made.listeners = append(n.made.listeners, strings.TrimPrefix(c.URL, "https://"), strings.TrimPrefix(c.EtcdURL, "http://"))
	_, err = cluster.CreateNode(ctx, c.Client, NodeName, "")
	return err
}

// startCentralNetns makes the central DNS's namespace (a veth pair from
// test/netns), puts the VIP on its lo and routes the VIP there from the
// host, ahead of the pods' ENI policy routing; creates Service kube-dns
// with that ClusterIP; and proxies the API server into the namespace's
// loopback for the CoreDNS there.
func (n *Node) startCentralNetns(ctx context.Context) error {
	ns, err := netns.New(ctx, netns.Options{Namespace: "kube-system", PodName: "coredns", NoSearch: true})
	if err != nil {
		return err
	}
	n.Central = ns
	n.made.netns = append(n.made.netns, ns.Name)
	n.made.links = append(n.made.links, ns.HostVeth)
	n.made.addrs = append(n.made.addrs, ns.HostIP)
	n.VIP = KubeDNSVIP
	if _, err := cluster.CreateService(ctx, n.Cluster.Client, cluster.ServiceOptions{Namespace: "kube-system", Name: "kube-dns",
		ClusterIP: n.VIP.String(), Labels: map[string]string{"k8s-app": "kube-dns"}, Selector: map[string]string{"k8s-app": "kube-dns"}}); err != nil {
		return err
	}
	nl := ns.Netlink()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := nl.AddrAdd(lo, &netlink.Addr{IPNet: host32(n.VIP)}); err != nil {
		return fmt.Errorf("VIP %s on the central namespace's lo: %w", n.VIP, err)
	}
	hv, err := netlink.LinkByName(ns.HostVeth)
	if err != nil {
		return err
	}
	n.made.addrs = append(n.made.addrs, n.VIP)
	r := &netlink.Route{LinkIndex: hv.Attrs().Index, Dst: host32(n.VIP), Scope: netlink.SCOPE_LINK, Src: net.IP(ns.HostIP.AsSlice())}
	if err := netlink.RouteAdd(r); err != nil {
		return fmt.Errorf("route %s dev %s: %w (is the VIP routed elsewhere already?)", n.VIP, ns.HostVeth, err)
	}
	n.vipRoute = r
	rule := netlink.NewRule()
	rule.Dst, rule.Table, rule.Priority = host32(n.VIP), unix.RT_TABLE_MAIN, vipRulePrio
	if err := netlink.RuleAdd(rule); err != nil {
		return fmt.Errorf("rule to %s: %w", n.VIP, err)
	}
	n.vipRule = rule
	if err := os.WriteFile(filepath.Join("/proc/sys/net/ipv4/conf", ns.HostVeth, "forwarding"), []byte("1"), 0o644); err != nil {
		return err
	}
	// The API server listens on the host's 127.0.0.1; the central CoreDNS
	// reaches it at 127.0.0.1:6443 of its own namespace, through this
	// process.
	if err := ns.Do(func() error {
		var err error
		n.apiProxy, err = net.Listen("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), apiProxyPort).String())
		return err
	}); err != nil {
		return fmt.Errorf("API proxy in %s: %w", ns.Name, err)
	}
	apiHost := strings.TrimPrefix(n.Cluster.URL, "https://")
	n.proxyWG.Add(1)
	go func() {
		defer n.proxyWG.Done()
		for {
			c, err := n.apiProxy.Accept()
			if err != nil {
				return
			}
			n.proxyWG.Add(1)
			go func() {
				defer n.proxyWG.Done()
				proxy(c, apiHost) // ends when either side closes
			}()
		}
	}()
	return writeKubeconfig(n.path("central-kubeconfig"), fmt.Sprintf("https://127.0.0.1:%d", apiProxyPort), n.Cluster.RestConfig.CAData, n.Cluster.Token)
}

func proxy(c net.Conn, to string) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", to, 5*time.Second)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
	<-done
}

func writeKubeconfig(path, server string, ca []byte, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["demo"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["demo"] = &clientcmdapi.Context{Cluster: "demo", AuthInfo: "admin"}
	cfg.CurrentContext = "demo"
	return clientcmd.WriteToFile(*cfg, path)
}

// startEmulator runs bin/cloud-emulator with --local-enis; its PrivateZone
// DNS (the VPC's resolver) listens on the host end of the central
// namespace's veth, which both node-cache and the central CoreDNS reach.
func (n *Node) startEmulator(ctx context.Context) error {
	addr, err := n.freeAddr()
	if err != nil {
		return err
	}
	n.EmulatorURL = "http://" + addr
	n.PvtzDNS = net.JoinHostPort(n.Central.HostIP.String(), "53")
	n.made.netns = append(n.made.netns, VPCNetns)
	// A node killed before its Down leaves the vpc namespace behind (the
	// emulator dies with it, by Pdeathsig): this marker lets the next Up
	// remove it.
	n.made.files = append(n.made.files, vpcMarker)
	if err := os.WriteFile(vpcMarker, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	before, _ := linkNames()
	n.Emulator, err = n.start("cloud-emulator", nil, n.bin("cloud-emulator"), "--listen", addr, "--local-enis", "--dns", n.PvtzDNS)
	if err != nil {
		return err
	}
	if err := n.waitHTTP(ctx, n.Emulator, n.EmulatorURL+"/_emulator/healthz", 30*time.Second); err != nil {
		return err
	}
	// The primary ENI is a host interface with the node's address.
	after, _ := linkNames()
	for name := range after {
		if !before[name] && strings.HasPrefix(name, "eni") {
			n.made.links = append(n.made.links, name)
		}
	}
	return nil
}

// startCentralDNS runs bin/coredns in the central namespace on the VIP:
// the cluster domain from the API server (kubernetes plugin), whoami, the
// rest from the PrivateZone resolver.
func (n *Node) startCentralDNS(ctx context.Context) error {
	conf := n.path("Corefile.central")
	vip := n.VIP.String()
	corefile := fmt.Sprintf(`cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind %[1]s
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %[2]s demo
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
}
%[4]s:53 {
    bind %[1]s
    whoami
}
.:53 {
    bind %[1]s
    errors
    forward . %[3]s
}
`, vip, n.path("central-kubeconfig"), n.PvtzDNS, strings.TrimSuffix(WhoamiZone, "."))
	if err := os.WriteFile(conf, []byte(corefile), 0o644); err != nil {
		return err
	}
	var err error
	n.CentralDNS, err = n.start("central coredns", nil, "ip", "netns", "exec", n.Central.Name, n.bin("coredns"), "-conf", conf)
	if err != nil {
		return err
	}
	// Ready when the kubernetes Service resolves, asked inside the
	// namespace (nothing steers there).
	return n.poll(ctx, "the central CoreDNS answering kubernetes.default.svc.cluster.local", 60*time.Second, n.CentralDNS, func() bool {
		var ok bool
		_ = n.Central.Do(func() error {
			r, _, err := steertest.Query(netip.AddrPortFrom(n.VIP, 53), "kubernetes.default.svc.cluster.local.", false, 300*time.Millisecond)
			ok = err == nil && firstA(r) == "10.96.0.1"
			return nil
		})
		return ok
	})
}

func (n *Node) startAgent(ctx context.Context) error {
	n.agentSocket = n.path("eni-agent.sock")
	var metrics, health string
	err := n.freeAddrs(&metrics, &health)
	if err != nil {
		return err
	}
	n.Agent, err = n.start("eni-agent", credsEnv(), n.bin("eni-agent"), "--endpoint", n.EmulatorURL, "--metadata-endpoint", n.EmulatorURL,
		"--socket", n.agentSocket, "--state", n.path("eni.db"), "--min-idle", "2", "--max-idle", "4",
		"--kubeconfig", n.Cluster.Kubeconfig, "--node-name", NodeName, "--metrics", metrics, "--health", health)
	if err != nil {
		return err
	}
	if err := n.waitHTTP(ctx, n.Agent, "http://"+health+"/readyz", 60*time.Second); err != nil {
		return err
	}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{n.Opt.BinDir}, n.path("cni-cache"), nil)
	return nil
}

// startPods creates pods "pod-a" and "pod-b": the Pod object, the namespace, a CNI
// ADD through libcni (eni-cni, veth mode), the address into the Pod's
// status, and a resolv.conf as the kubelet writes it for ClusterFirst.
func (n *Node) startPods(ctx context.Context) error {
	var err error
	n.confList, err = libcni.ConfListFromBytes(fmt.Appendf(nil,
		`{"cniVersion":"1.1.0","name":"dnsaccel","plugins":[{"type":"eni-cni","mode":"veth","agentSocket":%q,"nodeLocalDNS":%q}]}`,
		n.agentSocket, n.localIP()))
	if err != nil {
		return err
	}
	svc, err := cluster.CreateService(ctx, n.Cluster.Client, cluster.ServiceOptions{Namespace: ServiceNamespace, Name: ServiceName,
		Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}, Selector: map[string]string{"app": ServiceName}})
	if err != nil {
		return err
	}
	if n.ServiceIP, err = netip.ParseAddr(svc.Spec.ClusterIP); err != nil {
		return fmt.Errorf("Service %s/%s: ClusterIP %q: %w", ServiceNamespace, ServiceName, svc.Spec.ClusterIP, err)
	}
	// pod-b's Pod object sets ndots in its dnsConfig (the same 5 its
	// resolv.conf has): k8s_autopath leaves such pods alone, so pod-b
	// shows what a pod's search walk costs without it.
	ndots := "5"
	for _, pc := range []struct {
		name string
		dns  *corev1.PodDNSConfig
	}{{"pod-a", nil}, {"pod-b", &corev1.PodDNSConfig{Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &ndots}}}}} {
		p, err := n.addPod(ctx, pc.name, pc.dns)
		if p != nil {
			n.Pods = append(n.Pods, p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) addPod(ctx context.Context, name string, dnsConfig *corev1.PodDNSConfig) (*Pod, error) {
	obj, err := cluster.CreatePod(ctx, n.Cluster.Client, cluster.PodOptions{Namespace: ServiceNamespace, Name: name, NodeName: NodeName,
		Labels: map[string]string{"app": ServiceName}, DNSConfig: dnsConfig})
	if err != nil {
		return nil, err
	}
	cp, err := cnitest.NewPod(ServiceNamespace, name)
	if err != nil {
		return nil, err
	}
	p := &Pod{Name: name, Netns: cp.Name, cni: cp, Object: obj}
	n.made.netns = append(n.made.netns, cp.Name)
	p.HostVeth = hostVethName(cp.ContainerID)
	n.made.links = append(n.made.links, p.HostVeth)
	p.addedToCN = true
	r, err := n.cni.AddNetworkList(ctx, n.confList, cp.RuntimeConf())
	if err != nil {
		return p, fmt.Errorf("CNI ADD %s: %w", name, err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return p, err
	}
	if len(res.IPs) != 1 {
		return p, fmt.Errorf("CNI ADD %s: %d addresses in the result", name, len(res.IPs))
	}
	p.IP, _ = netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	n.made.addrs = append(n.made.addrs, p.IP)
	a, err := api.NewClient(n.agentSocket).Get(ctx, api.Key{ContainerID: cp.ContainerID, IfName: "eth0"})
	if err != nil {
		return p, fmt.Errorf("eni-agent allocation of %s: %w", name, err)
	}
	p.ENI, p.VSwitch = a.ENIID, a.VSwitchCIDR
	if n.NodeIP, err = netip.ParseAddr(a.NodeIP); err == nil {
		n.made.addrs = append(n.made.addrs, n.NodeIP)
	}
	if p.Object, err = cluster.UpdatePodStatus(ctx, n.Cluster.Client, ServiceNamespace, name, func(st *corev1.PodStatus) {
		st.PodIP, st.PodIPs = p.IP.String(), []corev1.PodIP{{IP: p.IP.String()}}
		st.HostIP, st.HostIPs = a.NodeIP, []corev1.HostIP{{IP: a.NodeIP}}
	}); err != nil {
		return p, err
	}
	p.etcNetns = filepath.Join("/etc/netns", cp.Name)
	n.made.files = append(n.made.files, p.etcNetns)
	if err := os.MkdirAll(p.etcNetns, 0o755); err != nil {
		return p, err
	}
	resolv := fmt.Sprintf("nameserver %s\nsearch %s.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n", n.VIP, ServiceNamespace)
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", p.IP, name)
	if err := os.WriteFile(filepath.Join(p.etcNetns, "resolv.conf"), []byte(resolv), 0o644); err != nil {
		return p, err
	}
	return p, os.WriteFile(filepath.Join(p.etcNetns, "hosts"), []byte(hosts), 0o644)
}

// hostVethName is eni-cni's host-side interface name of a pod's eth0.
func hostVethName(containerID string) string {
	return netsetup.HostIfName(containerID, "eth0")
}

func (n *Node) startPvtzSync(ctx context.Context) error {
	var metrics, health string
	err := n.freeAddrs(&metrics, &health)
	if err != nil {
		return err
	}
	n.PvtzSync, err = n.start("pvtz-sync", credsEnv(), n.bin("pvtz-sync"), "--kubeconfig", n.Cluster.Kubeconfig,
		"--zone", Zone, "--create-zone", "--vpc-id", emulatorVPCID, "--endpoint", n.EmulatorURL, "--policy", "sync",
		"--owner-id", OwnerID, "--source", "service", "--interval", "30s", "--metrics", metrics, "--health", health)
	if err != nil {
		return err
	}
	if err := n.waitHTTP(ctx, n.PvtzSync, "http://"+health+"/readyz", 60*time.Second); err != nil {
		return err
	}
	// The Service's record answers in the VPC's resolver.
	name := PrivateZoneName() + "."
	return n.poll(ctx, name+" in PrivateZone", 30*time.Second, n.PvtzSync, func() bool {
		r, _, err := steertest.Query(netip.MustParseAddrPort(n.PvtzDNS), name, false, 300*time.Millisecond)
		return err == nil && firstA(r) == n.ServiceIP.String()
	})
}

func (n *Node) localIP() netip.Addr {
	if !n.LocalIP.IsValid() {
		n.LocalIP = freeLinkLocal()
	}
	return n.LocalIP
}

// StartNodeCache runs bin/node-cache in Kubernetes mode: the VIP to steer
// comes from Service kube-system/kube-dns, the cluster upstream too (its
// own sockets are never steered), other names go to the PrivateZone
// resolver; k8s_autopath indexes the node's pods. It waits until node-cache
// is ready and its pod index has synced. Used by Up and to restart it.
func (n *Node) StartNodeCache(ctx context.Context) error {
	if n.NodeCache != nil && !n.NodeCache.Exited() {
		return errors.New("node-cache already runs")
	}
	var err error
	if n.BPFFS == "" {
		// The tag names the local IP, for sweep to remove after a crash.
		n.BPFFS, n.unmountBPFFS, err = steertest.PrivateBPFFS(bpffsPrefix, n.localIP().String())
		if err != nil {
			return err
		}
		if err := n.freeAddrs(&n.NodeCacheMetrics, &n.NodeCacheHealth, &n.NodeCacheListen, &n.NodeCacheObserve); err != nil {
			return err
		}
		if err := os.WriteFile(n.path("node-resolv.conf"), []byte("nameserver "+n.Central.HostIP.String()+"\n"), 0o644); err != nil {
			return err
		}
		n.made.addrs = append(n.made.addrs, n.localIP())
	}
	n.nodeCacheRuns++
	n.NodeCache, err = n.start(fmt.Sprintf("node-cache %d", n.nodeCacheRuns), nil, append([]string{n.bin("node-cache")}, n.NodeCacheArgs()...)...)
	if err != nil {
		return err
	}
	if err := n.waitHTTP(ctx, n.NodeCache, "http://"+n.NodeCacheHealth+"/ready", 60*time.Second); err != nil {
		return err
	}
	synced := fmt.Sprintf(`coredns_k8s_autopath_index_synced{node=%q} 1`, NodeName)
	if err := n.poll(ctx, "node-cache's pod index synced", 30*time.Second, n.NodeCache, func() bool {
		b, err := httpBody("http://" + n.NodeCacheMetrics + "/metrics")
		return err == nil && strings.Contains(b, synced)
	}); err != nil {
		return err
	}
	return n.recordPins()
}

// NodeCacheArgs are node-cache's flags on this node.
func (n *Node) NodeCacheArgs() []string {
	return []string{"--kubeconfig", n.Cluster.Kubeconfig, "--node-name", NodeName,
		"--listen", n.NodeCacheListen, "--upstream", n.PvtzDNS, "--resolv-conf", n.path("node-resolv.conf"),
		"--local-ip", n.localIP().String(), "--interface", "lo", "--bpffs", n.BPFFS,
		"--heartbeat-timeout", n.Opt.HeartbeatTimeout.String(), "--kernel-cache-interfaces", n.kernelCacheInterfaces(),
		"--metrics", n.NodeCacheMetrics, "--health", n.NodeCacheHealth, "--observe", n.NodeCacheObserve}
}

// kernelCacheInterfaces matches the host ends of this node's pods' veths
// only: the kernel cache's tc program goes on no other interface.
func (n *Node) kernelCacheInterfaces() string {
	var names []string
	for _, p := range n.Pods {
		names = append(names, regexp.QuoteMeta(p.HostVeth))
	}
	return "^(" + strings.Join(names, "|") + ")$"
}

// recordPins notes the kernel IDs of the pinned steering objects, which
// Leftovers checks are gone after Down. A restarted node-cache keeps the
// maps and links and replaces the programs.
func (n *Node) recordPins() error {
	pins, _, err := steertest.ReadPins(n.BPFFS)
	if err != nil {
		return err
	}
	if len(pins.Programs) == 0 || len(pins.Links) == 0 {
		return fmt.Errorf("node-cache pinned no programs under %s", n.BPFFS)
	}
	n.made.pins = steertest.AddIDs(n.made.pins, pins)
	return nil
}

// recordENIs notes the host's ENI interfaces and their route tables: the
// primary (recorded when the emulator made it) and those attached for the
// pods after it, whose MACs are ones the emulator gave out
// (DescribeNetworkInterfaces is overkill: the pods' allocations name them).
func (n *Node) recordENIs() {
	links, _ := netlink.LinkList()
	var macs []string
	if al, err := api.NewClient(n.agentSocket).Allocations(context.Background()); err == nil {
		for _, a := range al {
			macs = append(macs, strings.ToLower(a.MAC))
		}
	}
	for _, l := range links {
		name := l.Attrs().Name
		if !strings.HasPrefix(name, "eni") || strings.HasPrefix(name, "enip") {
			continue
		}
		if !slices.Contains(n.made.links, name) {
			if !slices.Contains(macs, strings.ToLower(l.Attrs().HardwareAddr.String())) {
				continue
			}
			n.made.links = append(n.made.links, name)
		}
		n.made.tables = append(n.made.tables, netsetup.TableBase+l.Attrs().Index)
	}
}

// KillNodeCache sends node-cache SIGKILL and waits until it is gone.
func (n *Node) KillNodeCache() { n.NodeCache.Kill() }

// Down removes everything Up made, in reverse order, also after a partial
// Up; it returns what could not be removed. Safe to call twice.
func (n *Node) Down() error {
	var errs []error
	add := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	const grace = 10 * time.Second
	if n.NodeCache != nil {
		add("stopping node-cache", n.NodeCache.Stop(grace))
	}
	if n.BPFFS != "" {
		out, err := exec.Command(n.bin("node-cache"), "--cleanup", "--bpffs", n.BPFFS, "--local-ip", n.LocalIP.String(), "--interface", "lo").CombinedOutput()
		if err != nil {
			add("node-cache --cleanup", fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out))))
		}
		// Should --cleanup have failed: the address goes anyway, and
		// unmounting the bpffs frees the programs (nothing else holds them).
		if lo, err := netlink.LinkByName("lo"); err == nil {
			if err := netlink.AddrDel(lo, &netlink.Addr{IPNet: host32(n.LocalIP)}); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				add("removing "+n.LocalIP.String()+" from lo", err)
			}
		}
		n.unmountBPFFS()
		n.BPFFS = ""
	}
	if n.PvtzSync != nil {
		add("stopping pvtz-sync", n.PvtzSync.Stop(grace))
	}
	for _, p := range n.Pods {
		if p.addedToCN && n.Agent != nil && !n.Agent.Exited() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			add("CNI DEL "+p.Name, n.cni.DelNetworkList(ctx, n.confList, p.cni.RuntimeConf()))
			cancel()
			p.addedToCN = false
		}
		if p.cni != nil {
			add("deleting the namespace of "+p.Name, p.cni.Close())
		}
		if p.etcNetns != "" {
			add("removing "+p.etcNetns, os.RemoveAll(p.etcNetns))
		}
	}
	n.Pods = nil
	if n.Agent != nil {
		add("stopping eni-agent", n.Agent.Stop(grace))
	}
	if n.CentralDNS != nil {
		add("stopping the central CoreDNS", n.CentralDNS.Stop(grace))
	}
	if n.apiProxy != nil {
		// The central CoreDNS is gone, so are its connections: the
		// proxy's goroutines end.
		n.apiProxy.Close()
		n.proxyWG.Wait()
		n.apiProxy = nil
	}
	if n.vipRule != nil {
		add("deleting the rule to the VIP", netlink.RuleDel(n.vipRule))
		n.vipRule = nil
	}
	if n.vipRoute != nil {
		if err := netlink.RouteDel(n.vipRoute); err != nil && !errors.Is(err, unix.ESRCH) {
			add("deleting the route to the VIP", err)
		}
		n.vipRoute = nil
	}
	if n.Central != nil {
		add("deleting the central namespace", n.Central.Close())
		n.Central = nil
	}
	if n.Emulator != nil {
		// SIGTERM: the emulator deletes the vpc namespace, and with it
		// every ENI's veth (and the node's address on the primary one).
		add("stopping the cloud emulator", n.Emulator.Stop(grace))
		if _, err := os.Stat(filepath.Join("/run/netns", VPCNetns)); err == nil {
			add("deleting the vpc namespace", exec.Command("ip", "netns", "delete", VPCNetns).Run())
		}
		cnitest.RemoveRules(VPCCIDR)
		if _, err := os.Stat(filepath.Join("/run/netns", VPCNetns)); err != nil {
			_ = os.Remove(vpcMarker)
		}
	}
	if n.Cluster != nil {
		n.Cluster.Stop()
		n.Cluster = nil
	}
	if n.Dir != "" {
		add("removing "+n.Dir, os.RemoveAll(n.Dir))
		n.made.files = append(n.made.files, n.Dir)
	}
	if n.lock != nil {
		n.lock.Close()
		n.lock = nil
	}
	return errors.Join(errs...)
}

// poll waits for ok, failing early if p (when set) exits.
func (n *Node) poll(ctx context.Context, what string, within time.Duration, p *Proc, ok func() bool) error {
	return proc.Poll(ctx, what, within, 25*time.Millisecond, p, ok)
}

func (n *Node) waitHTTP(ctx context.Context, p *Proc, url string, within time.Duration) error {
	return n.poll(ctx, url, within, p, func() bool {
		c, _, err := httpGet(url)
		return err == nil && c == http.StatusOK
	})
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

func httpGet(url string) (int, string, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func httpBody(url string) (string, error) {
	code, b, err := httpGet(url)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("GET %s: HTTP %d", url, code)
	}
	return b, err
}

func firstA(r *dns.Msg) string {
	if r == nil {
		return ""
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}

func host32(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func linkNames() (map[string]bool, error) {
	ls, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	m := map[string]bool{}
	for _, l := range ls {
		m[l.Attrs().Name] = true
	}
	return m, nil
}

// freeLinkLocal is a random 169.254.X.Y no interface holds (not the
// production default 169.254.20.10 nor the metadata address).
func freeLinkLocal() netip.Addr {
	used := map[netip.Addr]bool{netip.MustParseAddr("169.254.20.10"): true, netip.MustParseAddr("169.254.169.254"): true, netip.MustParseAddr("169.254.1.1"): true}
	if addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4); err == nil {
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				used[ip.Unmap()] = true
			}
		}
	}
	for {
		var b [2]byte
		_, _ = rand.Read(b[:])
		if b[0] == 0 || b[0] == 255 || b[1] == 0 || b[1] == 255 {
			continue
		}
		a := netip.AddrFrom4([4]byte{169, 254, b[0], b[1]})
		if !used[a] {
			return a
		}
	}
}

// decodeJSONLine decodes the first JSON line of a log that has key.
func decodeJSONLine(path, key string, into any) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, `"`+key+`":`) && json.Unmarshal([]byte(l), into) == nil {
			return true
		}
	}
	return false
}

// sweep removes what a node killed before its Down left (the caller holds
// the lock, so no node is running): its pod namespaces and /etc/netns
// files, its central namespace (test/netns sweeps it), its private bpffs
// (which frees the programs) and local IP, its vpc namespace and rules.
func sweep() {
	cnitest.Sweep()
	_ = netns.Sweep()
	steertest.SweepBPFFS(bpffsPrefix, func(tag string) {
		a, err := netip.ParseAddr(tag)
		if err != nil || !a.IsLinkLocalUnicast() {
			return
		}
		if lo, err := netlink.LinkByName("lo"); err == nil {
			_ = netlink.AddrDel(lo, &netlink.Addr{IPNet: host32(a)})
		}
	})
	dirs, _ := filepath.Glob(filepath.Join("/etc/netns", cnitest.PodNetnsPrefix+"*"))
	for _, d := range dirs {
		pid, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), cnitest.PodNetnsPrefix), "-")
		if _, err := os.Stat("/proc/" + pid); err != nil {
			_ = os.RemoveAll(d)
		}
	}
	if _, err := os.Stat(vpcMarker); err == nil {
		if _, err := os.Stat(filepath.Join("/run/netns", VPCNetns)); err == nil {
			_ = exec.Command("ip", "netns", "delete", VPCNetns).Run()
		}
		cnitest.RemoveRules(VPCCIDR)
		cnitest.RemoveRules(netip.PrefixFrom(KubeDNSVIP, 32))
		_ = os.Remove(vpcMarker)
	}
}
