// Package realnode brings up one real Kubernetes node on this machine, next
// to test/cluster's etcd + kube-apiserver: kube-controller-manager,
// kube-scheduler, kube-proxy (nftables mode), containerd (built from its Go
// module) with runc, and a kubelet, all of Kubernetes KubeVersion. The
// recipe and its traps are ../../docs/realnode.md (and verified-here.md of
// the project's references). dnsaccel itself comes as a user deploys it:
// `kubectl apply -k manifests/overlays/realnode` (the images are imported
// from `make images`); eni-cni, installed by its init container, becomes
// the node's CNI.
//
//	host netns:  bridge dnsarn0 10.230.128.1/24 (the node IP; nothing attached)
//	             kube-apiserver 127.0.0.1:P (+ a proxy on 10.230.128.1:P, the
//	               kubernetes Service's endpoint), etcd, KCM, scheduler
//	             cloud-emulator 10.230.128.1:8380 (+ PrivateZone DNS :53),
//	               --local-enis: the VPC 192.168.0.0/16 is namespace "vpc"
//	             kube-proxy (nftables), kubelet, containerd
//	pods:        eni-cni (veth mode) addresses from the VPC
//
// Everything host-global the node uses is named here and removed by Down
// (and by the next Up after a crash); one node runs per machine at a time,
// holding the lock test/node holds (both use the emulator's "vpc"
// namespace).
package realnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/cnitest"
	"github.com/dnsaccel/dnsaccel/test/internal/proc"
)

// Fixed facts of the node. The overlay manifests/overlays/realnode names
// the same addresses and paths.
const (
	NodeName = "dnsaccel-realnode"
	// Bridge carries NodeIP: the kubelet's node IP cannot be loopback.
	Bridge = "dnsarn0"
	// NodeIP is the kubelet's --node-ip, the emulator's address and the
	// kubernetes Service's endpoint (proxied to the API server).
	NodeIP = "10.230.128.1"
	// ServiceCIDR is the API server's Service range; routed into Bridge so
	// that nothing kube-proxy does not catch leaves the machine.
	ServiceCIDR = "10.230.0.0/20"
	// ClusterDNS is Service kube-system/kube-dns's ClusterIP, the
	// kubelet's clusterDNS.
	ClusterDNS = "10.230.0.10"
	// LocalDNS is node-cache's --local-ip in the overlay.
	LocalDNS = "169.254.33.10"
	// NotrackTable is node-cache's --notrack-table in the overlay.
	NotrackTable = "dnsaccel-realnode"
	// EmulatorAddr is bin/cloud-emulator's OpenAPI endpoint (ECS, metadata,
	// PrivateZone); its PrivateZone DNS answers on NodeIP:53 (the node's
	// resolv.conf: pods with dnsPolicy Default, node-cache's upstream).
	EmulatorAddr = NodeIP + ":8380"
	// VPCCIDR is the emulator's VPC: pods' addresses.
	VPCCIDR = "192.168.0.0/16"
	// VPCNetns is the emulator's VPC namespace (--local-enis).
	VPCNetns = "vpc"
	// HostDir holds the node's host paths the manifests mount (CNI bin and
	// conf, eni-agent's socket and state, a bpf file system); a shared
	// mount, as HostToContainer propagation requires.
	HostDir = "/run/dnsaccel-realnode"
	// CNIBinDir and CNIConfDir are containerd's CNI directories, where
	// eni-cni's init container installs it.
	CNIBinDir  = HostDir + "/cni/bin"
	CNIConfDir = HostDir + "/cni/net.d"
	// BPFFS is a bpf file system of the node's own (node-cache --bpffs).
	BPFFS = HostDir + "/bpffs"
	// PauseImage is the sandbox image, built by `make images`.
	PauseImage = "registry.k8s.io/pause:3.10.1"

	// lockPath is test/node's lock: one node per machine.
	lockPath  = "/run/dnsaccel-demo-node.lock"
	stateFile = HostDir + ".json"
)

// Binaries of bin/ the node runs on the host (the rest runs in pods).
var Binaries = []string{"cloud-emulator", "node-cache"}

// sysctls the kubelet (and kube-proxy) may rewrite; Up saves them, Down
// restores them.
var sysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
	"net/ipv4/conf/all/route_localnet", "net/ipv4/ip_forward",
	"net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
	"net/netfilter/nf_conntrack_tcp_timeout_close_wait", "net/netfilter/nf_conntrack_tcp_be_liberal",
	"net/netfilter/nf_conntrack_udp_timeout", "net/netfilter/nf_conntrack_udp_timeout_stream",
}

// hostPaths are host-global paths the kubelet, containerd and runc use
// whatever their configuration; Down removes those that did not exist
// before Up.
var hostPaths = []string{
	"/var/log/containers", "/var/log/pods", "/var/lib/kubelet", "/var/lib/cni", "/run/containerd",
	"/opt/containerd", "/etc/cni", "/opt/cni", "/run/nri", "/var/run/nri", "/etc/cdi", "/var/run/cdi", "/run/dnsaccel",
	"/var/lib/dnsaccel",
}

// Options configures Up.
type Options struct {
	// BinDir holds Binaries (default bin/ of the repository).
	BinDir string
	// ImagesDir holds the image tars of `make images` (default
	// bin/images), all imported into containerd.
	ImagesDir string
	// Logf, if set, is told what Up and Down do.
	Logf func(format string, args ...any)
}

// Node is a running node. Its fields are for reading.
type Node struct {
	Opt Options
	// Dir is the harness directory (configs, logs, containerd's and the
	// kubelet's state), under $TMPDIR.
	Dir     string
	Cluster *cluster.Cluster
	// Kubeconfig is an admin kubeconfig (kubectl --kubeconfig).
	Kubeconfig string
	// ContainerdSocket is containerd's gRPC socket (ctr --address).
	ContainerdSocket string
	// Ctr is the ctr binary.
	Ctr string
	// Images are the references imported into containerd.
	Images []string

	Emulator, KCM, Scheduler, Containerd, KubeProxy, Kubelet *Proc

	kubeletCA  string
	lock       *os.File
	savedSysct map[string]string
	hadPaths   map[string]bool
	apiProxy   net.Listener
	proxyWG    sync.WaitGroup
	started    time.Time
	procs      []*Proc
	downOnce   sync.Once
	downErr    error
}

func (n *Node) logf(format string, args ...any) {
	if n.Opt.Logf != nil {
		n.Opt.Logf(format, args...)
	}
}

// Check reports why this machine cannot run a node, naming the missing
// part; nil if it can. The error wraps cluster.ErrUnavailable for a missing
// part of the machine (not for missing build outputs).
func Check(binDir string) error {
	unavail := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", cluster.ErrUnavailable, fmt.Sprintf(format, args...))
	}
	if os.Geteuid() != 0 {
		return unavail("a real node needs root (containerd, runc, the kubelet, mounts, cgroups)")
	}
	var caps unix.CapUserHeader
	caps.Version = unix.LINUX_CAPABILITY_VERSION_3
	var data [2]unix.CapUserData
	if err := unix.Capget(&caps, &data[0]); err != nil {
		return unix.Capget(&caps, &data[0])
	}
	for _, c := range []struct {
		bit  uint
		name string
	}{{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN (mounts, namespaces)"}, {unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"}, {unix.CAP_SYS_CHROOT, "CAP_SYS_CHROOT (runc pivot_root)"}, {unix.CAP_MKNOD, "CAP_MKNOD"}} {
		if data[c.bit/32].Effective&(1<<(c.bit%32)) == 0 {
			return unavail("this process lacks %s", c.name)
		}
	}
	// CAP_SYS_RESOURCE is missing on this machine kind: containerd's
	// restrict_oom_score_adj works around it (see containerdConfig).
	fss, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return err
	}
	for _, fs := range []string{"overlay", "cgroup", "bpf"} {
		if !strings.Contains(string(fss), "\t"+fs+"\n") {
			return unavail("the kernel has no %s file system (/proc/filesystems): containerd's overlayfs snapshotter / the kubelet's cgroups / node-cache's pins need it", fs)
		}
	}
	for _, ctl := range []string{"cpu", "memory", "pids"} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", ctl, "cgroup.procs")); err != nil {
			if _, err2 := os.Stat("/sys/fs/cgroup/cgroup.subtree_control"); err2 != nil {
				return unavail("no cgroup v1 %s controller at /sys/fs/cgroup/%s and no cgroup v2 at /sys/fs/cgroup: the kubelet needs one", ctl, ctl)
			}
		}
	}
	for _, t := range []string{"runc", "nft", "ip", "iptables"} {
		if _, err := exec.LookPath(t); err != nil {
			return unavail("%s is not installed (`./hack/deps.sh` installs it)", t)
		}
	}
	if _, err := cluster.EtcdPath(); err != nil {
		return err
	}
	for _, b := range Binaries {
		if !isExecutable(filepath.Join(binDir, b)) {
			return fmt.Errorf("%s missing: run `make build` first", filepath.Join(binDir, b))
		}
	}
	return nil
}

// DefaultBinDir is bin/ of the repository around the working directory.
func DefaultBinDir() (string, error) {
	root, err := cnitest.RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "bin"), nil
}

// Binaries the node needs from the cache; building them takes minutes.
func kubeBinaries(ctx context.Context) (map[string]string, error) {
	m := map[string]string{}
	for _, b := range []string{"kube-apiserver", "kubectl", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet"} {
		p, err := cluster.EnsureBinary(ctx, b)
		if err != nil {
			return nil, err
		}
		m[b] = p
	}
	return m, nil
}

// state is what a crashed node left, for the next Up's sweep.
type state struct {
	Pid    int             `json:"pid"`
	Dir    string          `json:"dir"`
	Had    map[string]bool `json:"had"`
	Sysctl map[string]string
}

// Up brings the node up: the API server with controller manager and
// scheduler, the emulator, containerd with the images of opt.ImagesDir,
// kube-proxy and the kubelet, and waits until the Node is registered (it
// becomes Ready once a CNI is installed: apply the overlay). On error
// everything is removed again.
func Up(ctx context.Context, o Options) (_ *Node, err error) {
	if o.BinDir == "" {
		if o.BinDir, err = DefaultBinDir(); err != nil {
			return nil, err
		}
	}
	if o.ImagesDir == "" {
		o.ImagesDir = filepath.Join(o.BinDir, "images")
	}
	if err := Check(o.BinDir); err != nil {
		return nil, err
	}
	bins, err := kubeBinaries(ctx)
	if err != nil {
		return nil, err
	}
	ctrDir, err := EnsureContainerd(ctx)
	if err != nil {
		return nil, err
	}
	n := &Node{Opt: o, started: time.Now()}
	if err := n.takeLock(ctx); err != nil {
		return nil, err
	}
	if err := sweep(n.logf); err != nil {
		n.releaseLock()
		return nil, fmt.Errorf("removing what an earlier node left: %w", err)
	}
	if err := checkNoOtherKubeProxy(); err != nil {
		n.releaseLock()
		return nil, err
	}
	defer func() {
		if err != nil {
			if derr := n.Down(); derr != nil {
				err = fmt.Errorf("%w\n(and tearing down: %v)", err, derr)
			}
		}
	}()
	n.hadPaths = map[string]bool{}
	for _, p := range hostPaths {
		_, err := os.Lstat(p)
		n.hadPaths[p] = err == nil
	}
	n.savedSysct = map[string]string{}
	for _, s := range sysctls {
		if b, err := os.ReadFile("/proc/sys/" + s); err == nil {
			n.savedSysct[s] = strings.TrimSpace(string(b))
		}
	}
	if n.Dir, err = os.MkdirTemp("", "dnsaccel-realnode-"); err != nil {
		return nil, err
	}
	if err := n.writeState(); err != nil {
		return nil, err
	}
	steps := []struct {
		what string
		fn   func(context.Context) error
	}{
		{"host paths and the node bridge", n.setupHost},
		{"API server, controller manager, scheduler", func(ctx context.Context) error { return n.startControlPlane(ctx, bins) }},
		{"cloud emulator", n.startEmulator},
		{"containerd and the images", func(ctx context.Context) error { return n.startContainerd(ctx, ctrDir) }},
		{"kube-proxy (nftables)", func(ctx context.Context) error { return n.startKubeProxy(ctx, bins["kube-proxy"]) }},
		{"kubelet", func(ctx context.Context) error { return n.startKubelet(ctx, bins["kubelet"]) }},
	}
	for _, s := range steps {
		t0 := time.Now()
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("starting the %s: %w", s.what, err)
		}
		n.logf("  up: %-44s %s", s.what, time.Since(t0).Round(time.Millisecond))
	}
	return n, nil
}

func (n *Node) writeState() error {
	b, err := json.Marshal(state{Pid: os.Getpid(), Dir: n.Dir, Had: n.hadPaths, Sysctl: n.savedSysct})
	if err != nil {
		return err
	}
	return os.WriteFile(stateFile, b, 0o644)
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
			return fmt.Errorf("another node (test/node or test/realnode) runs on this machine (%s is locked): %w", lockPath, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (n *Node) releaseLock() {
	if n.lock != nil {
		n.lock.Close()
		n.lock = nil
	}
}

func (n *Node) path(elem ...string) string { return filepath.Join(append([]string{n.Dir}, elem...)...) }

func (n *Node) start(name string, env []string, argv ...string) (*Proc, error) {
	p, err := startProc(name, n.path(strings.ReplaceAll(name, " ", "-")+".log"), env, argv...)
	if err != nil {
		return nil, err
	}
	n.procs = append(n.procs, p)
	return p, nil
}

// setupHost makes HostDir a shared mount with the node's host paths and a
// bpf file system, the bridge with NodeIP, and the route of the Service
// range into it.
func (n *Node) setupHost(context.Context) error {
	if err := os.MkdirAll(HostDir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(HostDir, HostDir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind-mounting %s onto itself: %w", HostDir, err)
	}
	if err := unix.Mount("", HostDir, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s a shared mount: %w", HostDir, err)
	}
	for _, d := range []string{CNIBinDir, CNIConfDir, BPFFS, HostDir + "/eni-agent", HostDir + "/netns"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("bpffs", BPFFS, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting a bpf file system at %s: %w", BPFFS, err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("bridge %s: %w", Bridge, err)
	}
	l, err := netlink.LinkByName(Bridge)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(NodeIP), Mask: net.CIDRMask(24, 32)}}); err != nil {
		return fmt.Errorf("%s on %s: %w", NodeIP, Bridge, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return err
	}
	_, svc, _ := net.ParseCIDR(ServiceCIDR)
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: svc}); err != nil {
		return fmt.Errorf("route %s dev %s: %w", ServiceCIDR, Bridge, err)
	}
	resolv := fmt.Sprintf("nameserver %s\n", NodeIP)
	return os.WriteFile(n.path("resolv.conf"), []byte(resolv), 0o644)
}

// startControlPlane runs test/cluster's etcd + kube-apiserver (with the
// ServiceAccount admission plugin, the Service range, the kubelet client
// certificate and the node address as the kubernetes Service's endpoint),
// proxies NodeIP:port to it, and runs kube-controller-manager and
// kube-scheduler.
func (n *Node) startControlPlane(ctx context.Context, bins map[string]string) error {
	if err := os.MkdirAll(n.path("pki"), 0o700); err != nil {
		return err
	}
	ca, cert, key, err := writeKubeletClientPKI(n.path("pki"))
	if err != nil {
		return err
	}
	n.kubeletCA = ca
	c, err := cluster.Start(ctx, cluster.WithServiceCIDR(ServiceCIDR), cluster.WithServiceAccountAdmission(), cluster.WithAPIServerArgs(
		"--advertise-address="+NodeIP,
		"--endpoint-reconciler-type=lease",
		"--kubelet-client-certificate="+cert,
		"--kubelet-client-key="+key,
		"--kubelet-preferred-address-types=InternalIP,Hostname",
	))
	if err != nil {
		return err
	}
	n.Cluster = c
	n.Kubeconfig = c.Kubeconfig
	port := c.URL[strings.LastIndexByte(c.URL, ':')+1:]
	if n.apiProxy, err = net.Listen("tcp", net.JoinHostPort(NodeIP, port)); err != nil {
		return fmt.Errorf("API server proxy on %s:%s: %w", NodeIP, port, err)
	}
	to := "127.0.0.1:" + port
	n.proxyWG.Add(1)
	go func() {
		defer n.proxyWG.Done()
		for {
			conn, err := n.apiProxy.Accept()
			if err != nil {
				return
			}
			n.proxyWG.Add(1)
			go func() { defer n.proxyWG.Done(); proxy(conn, to) }()
		}
	}()
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	kc := c.Kubeconfig
	n.KCM, err = n.start("kube-controller-manager", nil, bins["kube-controller-manager"],
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(ports[0]), "--leader-elect=false",
		"--root-ca-file="+filepath.Join(c.Dir, "certs", "apiserver.crt"),
		"--service-account-private-key-file="+filepath.Join(c.Dir, "sa.key"),
		"--cluster-name="+NodeName, "--service-cluster-ip-range="+ServiceCIDR,
		"--cert-dir="+n.path("kcm-certs"))
	if err != nil {
		return err
	}
	n.Scheduler, err = n.start("kube-scheduler", nil, bins["kube-scheduler"],
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(ports[1]), "--leader-elect=false",
		"--cert-dir="+n.path("scheduler-certs"))
	if err != nil {
		return err
	}
	// The controller manager is working once it made the default
	// ServiceAccount (pods need it, with ServiceAccount admission).
	return n.poll(ctx, "ServiceAccount default/default (made by kube-controller-manager)", 90*time.Second, n.KCM, func() bool {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil && !n.Scheduler.Exited()
	})
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

func freePorts(k int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for i := 0; i < k; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// startEmulator runs bin/cloud-emulator on EmulatorAddr with --local-enis
// (the primary ENI becomes a host interface with the node's VPC address)
// and its PrivateZone DNS on NodeIP:53.
func (n *Node) startEmulator(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join("/run/netns", VPCNetns)); err == nil {
		return fmt.Errorf("network namespace %q exists, not made by this node (`ip netns delete %s` if it is a leftover)", VPCNetns, VPCNetns)
	}
	var err error
	n.Emulator, err = n.start("cloud-emulator", nil, filepath.Join(n.Opt.BinDir, "cloud-emulator"),
		"--listen", EmulatorAddr, "--local-enis", "--dns", NodeIP+":53")
	if err != nil {
		return err
	}
	return n.waitHTTP(ctx, n.Emulator, "http://"+EmulatorAddr+"/_emulator/healthz", 30*time.Second)
}

// startContainerd writes its configuration, starts it, waits for its
// socket and imports every image tar of Options.ImagesDir.
func (n *Node) startContainerd(ctx context.Context, ctrDir string) error {
	runc, err := exec.LookPath("runc")
	if err != nil {
		return err
	}
	n.ContainerdSocket = n.path("containerd", "containerd.sock")
	n.Ctr = filepath.Join(ctrDir, "ctr")
	if err := os.MkdirAll(n.path("containerd"), 0o711); err != nil {
		return err
	}
	conf := n.path("containerd", "config.toml")
	if err := os.WriteFile(conf, []byte(containerdConfig(n.Dir, n.ContainerdSocket, runc)), 0o644); err != nil {
		return err
	}
	env := []string{"PATH=" + ctrDir + ":" + os.Getenv("PATH")}
	n.Containerd, err = n.start("containerd", env, filepath.Join(ctrDir, "containerd"), "--config", conf)
	if err != nil {
		return err
	}
	if err := n.poll(ctx, "containerd's socket", 30*time.Second, n.Containerd, func() bool {
		return exec.Command(n.Ctr, "--address", n.ContainerdSocket, "version").Run() == nil
	}); err != nil {
		return err
	}
	if n.Images, err = ImportImages(ctx, n.Ctr, n.ContainerdSocket, n.Opt.ImagesDir); err != nil {
		return err
	}
	found := false
	for _, i := range n.Images {
		found = found || i == PauseImage
	}
	if !found {
		return fmt.Errorf("the sandbox image %s is not among the imported images %v (make images builds it)", PauseImage, n.Images)
	}
	return nil
}

// ImportImages imports every image tar of dir into containerd (namespace
// k8s.io, where the CRI finds them) and returns the image references it
// then holds.
func ImportImages(ctx context.Context, ctr, socket, dir string) ([]string, error) {
	tars, _ := filepath.Glob(filepath.Join(dir, "*.tar"))
	if len(tars) == 0 {
		return nil, fmt.Errorf("no image tars in %s: run `make images` first", dir)
	}
	for _, t := range tars {
		out, err := exec.CommandContext(ctx, ctr, "--address", socket, "-n", "k8s.io", "images", "import", t).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("ctr images import %s: %v\n%s", t, err, out)
		}
	}
	out, err := exec.CommandContext(ctx, ctr, "--address", socket, "-n", "k8s.io", "images", "ls", "-q").Output()
	if err != nil {
		return nil, fmt.Errorf("ctr images ls: %w", err)
	}
	var refs []string
	for _, l := range strings.Fields(string(out)) {
		if !strings.HasPrefix(l, "sha256:") {
			refs = append(refs, l)
		}
	}
	return refs, nil
}

// Sweep removes what a node killed before its Down left, holding the node
// lock (it waits while a node runs, until ctx ends).
func Sweep(ctx context.Context) error {
	n := &Node{}
	if err := n.takeLock(ctx); err != nil {
		return err
	}
	defer n.releaseLock()
	return sweep(nil)
}

// checkNoOtherKubeProxy refuses to start next to another kube-proxy in this
// network namespace: at start kube-proxy removes the other modes' rules
// (nftables mode deletes iptables KUBE-* chains), which would break it.
func checkNoOtherKubeProxy() error {
	if out, err := exec.Command("nft", "list", "tables").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasSuffix(strings.TrimSpace(l), " kube-proxy") {
				return fmt.Errorf("%w: another kube-proxy (nftables mode) runs in this network namespace (%s): its rules and this node's would clash", cluster.ErrUnavailable, strings.TrimSpace(l))
			}
		}
	}
	if err := exec.Command("iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES").Run(); err == nil {
		return fmt.Errorf("%w: another kube-proxy (iptables mode) runs in this network namespace (chain KUBE-SERVICES in table nat): a kube-proxy in nftables mode would delete its rules at start", cluster.ErrUnavailable)
	}
	return nil
}

func (n *Node) startKubeProxy(ctx context.Context, bin string) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	conf := n.path("kube-proxy.yaml")
	if err := os.WriteFile(conf, []byte(kubeProxyConfig(n.Kubeconfig, ports[0], ports[1])), 0o644); err != nil {
		return err
	}
	n.KubeProxy, err = n.start("kube-proxy", nil, bin, "--config="+conf)
	if err != nil {
		return err
	}
	return n.waitHTTP(ctx, n.KubeProxy, fmt.Sprintf("http://127.0.0.1:%d/livez", ports[0]), 60*time.Second)
}

func (n *Node) startKubelet(ctx context.Context, bin string) error {
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	conf := n.path("kubelet.yaml")
	if err := os.WriteFile(conf, []byte(kubeletConfig(kubeletOpts{
		runtimeSocket: n.ContainerdSocket, podLogsDir: n.path("pod-logs"), volumePluginDir: n.path("volume-plugins"),
		resolvConf: n.path("resolv.conf"), clientCA: n.kubeletCA, port: ports[0], healthzPort: ports[1],
	})), 0o644); err != nil {
		return err
	}
	n.Kubelet, err = n.start("kubelet", nil, bin, "--config="+conf, "--kubeconfig="+n.Kubeconfig,
		"--root-dir="+n.path("kubelet"), "--cert-dir="+n.path("kubelet-pki"), "--hostname-override="+NodeName,
		"--node-ip="+NodeIP, "--node-labels=dnsaccel.io/eni-cni=true")
	if err != nil {
		return err
	}
	if err := n.waitHTTP(ctx, n.Kubelet, fmt.Sprintf("http://127.0.0.1:%d/healthz", ports[1]), 90*time.Second); err != nil {
		return err
	}
	return n.poll(ctx, "Node "+NodeName+" registered", 60*time.Second, n.Kubelet, func() bool {
		_, err := n.Cluster.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		return err == nil
	})
}

// WaitNodeReady waits until the Node is Ready (a CNI is installed).
func (n *Node) WaitNodeReady(ctx context.Context, within time.Duration) error {
	var last string
	err := n.poll(ctx, "Node "+NodeName+" Ready", within, n.Kubelet, func() bool {
		nd, err := n.Cluster.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false
		}
		for _, c := range nd.Status.Conditions {
			if c.Type == corev1.NodeReady {
				last = c.Reason + ": " + c.Message
				return c.Status == corev1.ConditionTrue
			}
		}
		return false
	})
	if err != nil {
		return fmt.Errorf("%w (last: %s)", err, last)
	}
	return nil
}

// Kubectl runs the cached kubectl with the node's kubeconfig.
func (n *Node) Kubectl(ctx context.Context, args ...string) (string, error) {
	bin, err := kubectlPath()
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", n.Kubeconfig}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func kubectlPath() (string, error) { return cluster.BinaryPath("kubectl") }

// Check returns an error if a process of the node has exited.
func (n *Node) Check() error {
	for _, p := range n.procs {
		if p.Exited() && !p.Stopped() {
			return p.ExitError()
		}
	}
	if n.Cluster != nil {
		return n.Cluster.Check()
	}
	return nil
}

// poll waits for ok, failing early if p (when set) exits.
func (n *Node) poll(ctx context.Context, what string, within time.Duration, p *Proc, ok func() bool) error {
	return proc.Poll(ctx, what, within, 100*time.Millisecond, p, ok)
}

func (n *Node) waitHTTP(ctx context.Context, p *Proc, url string, within time.Duration) error {
	return n.poll(ctx, url, within, p, func() bool {
		code, err := httpGet(url)
		return err == nil && code == 200
	})
}

// ignoreNotFound is for deletions.
func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
