// Package cnitest runs the ENI CNI end to end for tests and the benchmark:
// the ECS emulator in-process with --local-enis (attached ENIs are real
// interfaces, the VPC a namespace), the real bin/eni-agent as a process and
// bin/eni-cni driven through libcni, pods as bare network namespaces. Linux
// and root only.
package cnitest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/dnsaccel/dnsaccel/cloud/ecs"
	"github.com/dnsaccel/dnsaccel/cloud/ecs/ecstest"
	"github.com/dnsaccel/dnsaccel/cloud/openapi"
	"github.com/dnsaccel/dnsaccel/cni/api"
	testnetns "github.com/dnsaccel/dnsaccel/test/netns"
)

// Name prefixes of what this package creates (Sweep removes leftovers).
const (
	PodNetnsPrefix = "dnsaccel-pod-"
	VPCNetnsPrefix = "dnsaccel-vpc-"
)

// NodeLocalDNS is the node-local DNS address of the tests.
var NodeLocalDNS = netip.MustParseAddr("169.254.20.10")

// Check reports whether the end-to-end environment can run here.
func Check() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, veth, policy routing)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("needs iproute2 (ip)")
	}
	return nil
}

// RepoRoot finds the module root from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/dnsaccel/dnsaccel\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("repository root not found above the working directory")
		}
		dir = parent
	}
}

// Build compiles bin/eni-cni and bin/eni-agent into dir.
func Build(dir string) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	for _, b := range []string{"eni-cni", "eni-agent"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b), "./cmd/"+b)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", b, err, out)
		}
	}
	return nil
}

// Options configures an Env.
type Options struct {
	Dir    string // scratch directory (state, socket, logs, CNI cache)
	BinDir string // holds eni-cni and eni-agent (Build)
	// Net is the VPC's /16 base, e.g. "10.211" (vSwitches .1.0/24 and
	// .2.0/24, VPC host .255.1); distinct per concurrent test binary.
	Net          string
	VSwitches    []ecs.VSwitchConfig // default: two /24s in Net
	InstanceType string              // default ecs.g7.4xlarge (8 ENIs x 30)
	API          openapi.Config      // latency, throttling, faults
	AttachDelay  time.Duration       // default 50 ms
	Kubeconfig   string
	NodeName     string
	MinIdle      int
	MaxIdle      int
	QPS          float64
	AgentArgs    []string
	AgentEnv     []string // added to the agent's environment (after the emulator's key: overrides it)
}

// Env is a running emulator + agent.
type Env struct {
	Opt      Options
	Emu      *ecstest.Emulator
	Socket   string
	State    string
	VPCNetns string
	VPCHost  netip.Addr // an address in the VPC namespace
	CNI      *libcni.CNIConfig

	emuLog *os.File
	mu     sync.Mutex
	agent  *exec.Cmd
	done   chan struct{}
	starts int
}

// Start starts the emulator (the agent: StartAgent).
func Start(o Options) (*Env, error) {
	if o.Net == "" {
		o.Net = "10.211"
	}
	if len(o.VSwitches) == 0 {
		o.VSwitches = []ecs.VSwitchConfig{{ID: "vsw-e2e-a", CIDR: o.Net + ".1.0/24"}, {ID: "vsw-e2e-b", CIDR: o.Net + ".2.0/24"}}
	}
	if o.InstanceType == "" {
		o.InstanceType = "ecs.g7.4xlarge"
	}
	if o.AttachDelay == 0 {
		o.AttachDelay = 50 * time.Millisecond
	}
	if o.QPS == 0 {
		o.QPS = 50
	}
	Sweep()
	e := &Env{Opt: o, Socket: filepath.Join(o.Dir, "eni-agent.sock"), State: filepath.Join(o.Dir, "eni.db"),
		VPCNetns: VPCNetnsPrefix + strconv.Itoa(os.Getpid()), VPCHost: netip.MustParseAddr(o.Net + ".255.1")}
	cfg := ecs.DefaultConfig()
	cfg.InstanceType = o.InstanceType
	cfg.VPCCIDR = o.Net + ".0.0/16"
	cfg.VSwitches = o.VSwitches
	cfg.AttachDelay, cfg.DetachDelay = o.AttachDelay, o.AttachDelay/2
	cfg.Local = &ecs.LocalConfig{Netns: e.VPCNetns, LinkPrefix: "enx", VPCAddresses: []netip.Addr{e.VPCHost}}
	lf, err := os.OpenFile(filepath.Join(o.Dir, "emulator.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	e.emuLog = lf
	cfg.Logger = slog.New(slog.NewTextHandler(lf, nil))
	emu, err := ecstest.StartErr(o.API, cfg)
	if err != nil {
		lf.Close()
		return nil, err
	}
	e.Emu = emu
	e.CNI = libcni.NewCNIConfigWithCacheDir([]string{o.BinDir}, filepath.Join(o.Dir, "cni-cache"), nil)
	return e, nil
}

// NodeIP is the node's address (the primary ENI's, on a host interface).
func (e *Env) NodeIP() netip.Addr {
	for _, x := range e.Emu.Store.ENIs() {
		if x.Type == "Primary" {
			return x.Primary
		}
	}
	return netip.Addr{}
}

// StartAgent starts bin/eni-agent and waits until its socket serves.
func (e *Env) StartAgent(ctx context.Context) error {
	e.mu.Lock()
	if e.agent != nil {
		e.mu.Unlock()
		return errors.New("agent already running")
	}
	e.starts++
	n := e.starts
	e.mu.Unlock()
	args := []string{"--endpoint", e.Emu.URL, "--metadata-endpoint", e.Emu.URL, "--socket", e.Socket, "--state", e.State,
		"--min-idle", strconv.Itoa(e.Opt.MinIdle), "--max-idle", strconv.Itoa(e.Opt.MaxIdle), "--qps", fmt.Sprint(e.Opt.QPS)}
	if e.Opt.Kubeconfig != "" {
		args = append(args, "--kubeconfig", e.Opt.Kubeconfig, "--node-name", e.Opt.NodeName)
	}
	args = append(args, e.Opt.AgentArgs...)
	logf, err := os.OpenFile(filepath.Join(e.Opt.Dir, fmt.Sprintf("agent-%d.log", n)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(e.Opt.BinDir, "eni-agent"), args...)
	cmd.Env = append(os.Environ(), "ALIBABA_CLOUD_ACCESS_KEY_ID="+ecstest.AccessKeyID, "ALIBABA_CLOUD_ACCESS_KEY_SECRET="+ecstest.AccessKeySecret)
	cmd.Env = append(cmd.Env, e.Opt.AgentEnv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	e.mu.Lock()
	e.agent, e.done = cmd, done
	e.mu.Unlock()
	cl := api.NewClient(e.Socket)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cl.Status(cctx, api.ModeVeth)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			e.mu.Lock()
			e.agent = nil
			e.mu.Unlock()
			b, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("eni-agent exited: %s", tail(string(b), 15))
		case <-ctx.Done():
			e.KillAgent()
			return fmt.Errorf("eni-agent not serving: %w (last: %v)", ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// AgentLog returns the current agent's log.
func (e *Env) AgentLog() string {
	b, _ := os.ReadFile(filepath.Join(e.Opt.Dir, fmt.Sprintf("agent-%d.log", e.starts)))
	return string(b)
}

// KillAgent SIGKILLs the agent and waits for it to die.
func (e *Env) KillAgent() { e.stopAgent(syscall.SIGKILL) }

// StopAgent stops the agent gracefully (SIGTERM).
func (e *Env) StopAgent() { e.stopAgent(syscall.SIGTERM) }

func (e *Env) stopAgent(sig syscall.Signal) {
	e.mu.Lock()
	cmd, done := e.agent, e.done
	e.agent = nil
	e.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Close stops the agent and the emulator (removing the VPC namespace and
// every ENI interface).
func (e *Env) Close() {
	e.StopAgent()
	e.Emu.Close()
	e.emuLog.Close()
	RemoveRules(netip.MustParsePrefix(e.Opt.Net + ".0.0/16"))
}

// RemoveRules deletes policy rules from or to addresses in p (what pods
// that were never DELeted leave behind).
func RemoveRules(p netip.Prefix) {
	rules, err := netlink.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return
	}
	in := func(n *net.IPNet) bool {
		if n == nil {
			return false
		}
		a, ok := netip.AddrFromSlice(n.IP.To4())
		return ok && p.Contains(a)
	}
	for i := range rules {
		if in(rules[i].Src) || in(rules[i].Dst) {
			_ = netlink.RuleDel(&rules[i])
		}
	}
}

// EmulatorLog returns the emulator's log (kernel-side errors).
func (e *Env) EmulatorLog() string {
	b, _ := os.ReadFile(filepath.Join(e.Opt.Dir, "emulator.log"))
	return string(b)
}

// ConfList is the network configuration list for mode.
func (e *Env) ConfList(mode api.Mode) (*libcni.NetworkConfigList, error) {
	return libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"dnsaccel","plugins":[{"type":"eni-cni","mode":%q,"agentSocket":%q,"nodeLocalDNS":%q}]}`,
		mode, e.Socket, NodeLocalDNS)))
}

// Pod is a bare network namespace a CNI ADD wires.
type Pod struct {
	Name        string // netns name
	Path        string
	ContainerID string
	Namespace   string // Kubernetes
	PodName     string
	h           netns.NsHandle
}

var podSeq atomic.Int64

// NewPod creates a pod namespace.
func NewPod(k8sNamespace, k8sName string) (*Pod, error) {
	n := podSeq.Add(1)
	name := fmt.Sprintf("%s%d-%d", PodNetnsPrefix, os.Getpid(), n)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = exec.Command("ip", "netns", "delete", name).Run()
		return nil, err
	}
	p := &Pod{Name: name, Path: "/run/netns/" + name, ContainerID: fmt.Sprintf("ctr%d%09d", os.Getpid(), n), Namespace: k8sNamespace, PodName: k8sName, h: h}
	if p.PodName == "" {
		p.PodName = name
	}
	// lo up, as a runtime does.
	if err := p.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// Close deletes the namespace (and whatever is left in it).
func (p *Pod) Close() error {
	if p.h != netns.None() {
		p.h.Close()
		p.h = netns.None()
	}
	if _, err := os.Stat(p.Path); err != nil {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "delete", p.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns delete %s: %v: %s", p.Name, err, out)
	}
	return nil
}

// Do runs f on a thread inside the pod namespace.
func (p *Pod) Do(f func() error) error { return testnetns.DoIn(p.h, f) }

// RuntimeConf is the libcni runtime configuration for the pod.
func (p *Pod) RuntimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: p.Path, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.PodName}}}
}

// Add runs CNI ADD for the pod.
func (e *Env) Add(ctx context.Context, mode api.Mode, p *Pod) (*current.Result, error) {
	l, err := e.ConfList(mode)
	if err != nil {
		return nil, err
	}
	r, err := e.CNI.AddNetworkList(ctx, l, p.RuntimeConf())
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(r)
}

// Check runs CNI CHECK.
func (e *Env) Check(ctx context.Context, mode api.Mode, p *Pod) error {
	l, err := e.ConfList(mode)
	if err != nil {
		return err
	}
	return e.CNI.CheckNetworkList(ctx, l, p.RuntimeConf())
}

// Del runs CNI DEL.
func (e *Env) Del(ctx context.Context, mode api.Mode, p *Pod) error {
	l, err := e.ConfList(mode)
	if err != nil {
		return err
	}
	return e.CNI.DelNetworkList(ctx, l, p.RuntimeConf())
}

// Status runs CNI STATUS.
func (e *Env) Status(ctx context.Context, mode api.Mode) error {
	l, err := e.ConfList(mode)
	if err != nil {
		return err
	}
	return e.CNI.GetStatusNetworkList(ctx, l)
}

// GC runs CNI GC with the pods' attachments as the valid ones.
func (e *Env) GC(ctx context.Context, valid []*Pod) error {
	l, err := e.ConfList(api.ModeVeth)
	if err != nil {
		return err
	}
	args := &libcni.GCArgs{}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.ContainerID, IfName: "eth0"})
	}
	return e.CNI.GCNetworkList(ctx, l, args)
}

// CNICode returns the CNI error code of err (0 if none).
func CNICode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// Sweep removes pod and VPC namespaces of test processes that are gone.
func Sweep() {
	m, _ := filepath.Glob("/run/netns/dnsaccel-*")
	for _, p := range m {
		name := filepath.Base(p)
		var rest string
		switch {
		case strings.HasPrefix(name, PodNetnsPrefix):
			rest = strings.TrimPrefix(name, PodNetnsPrefix)
		case strings.HasPrefix(name, VPCNetnsPrefix):
			rest = strings.TrimPrefix(name, VPCNetnsPrefix)
		default:
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue
		}
		_ = exec.Command("ip", "netns", "delete", name).Run()
	}
}

// Echo serves UDP echo on addr inside h (netns.None(): here) until ctx
// ends; it returns the bound address.
func Echo(ctx context.Context, h netns.NsHandle, addr string) (string, error) {
	var pc net.PacketConn
	listen := func() error {
		var err error
		pc, err = net.ListenPacket("udp4", addr)
		return err
	}
	var err error
	if h == netns.None() {
		err = listen()
	} else {
		err = testnetns.DoIn(h, listen)
	}
	if err != nil {
		return "", err
	}
	go func() { <-ctx.Done(); pc.Close() }()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().String(), nil
}

// RoundTrip sends a UDP datagram from inside h to dst and waits for the
// echo (retrying a few times within timeout: the first packet may wait for
// ARP).
func RoundTrip(h netns.NsHandle, dst string, timeout time.Duration) error {
	var conn net.Conn
	dial := func() error {
		var err error
		conn, err = net.Dial("udp4", dst)
		return err
	}
	var err error
	if h == netns.None() {
		err = dial()
	} else {
		err = testnetns.DoIn(h, dial)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	deadline := time.Now().Add(timeout)
	msg := []byte("dnsaccel-" + dst)
	buf := make([]byte, 1500)
	for time.Now().Before(deadline) {
		if _, err := conn.Write(msg); err != nil {
			return fmt.Errorf("send to %s: %w", dst, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := conn.Read(buf)
		if err == nil && string(buf[:n]) == string(msg) {
			return nil
		}
	}
	return fmt.Errorf("no echo from %s within %s", dst, timeout)
}
