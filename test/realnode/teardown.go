package realnode

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dnsaccel/dnsaccel/test/cnitest"
)

var httpClient = &http.Client{Timeout: 2 * time.Second}

func httpGet(url string) (int, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// eniAgentLabel selects eni-agent's pods: they go last, as eni-cni needs
// the agent to release the other pods' addresses.
const eniAgentSelector = "k8s-app=eni-agent"

// Drain deletes every workload and pod through the API and waits until
// the kubelet has stopped them (CNI DEL through eni-cni while eni-agent
// still runs), eni-agent's last. Down calls it; it is best effort.
func (n *Node) Drain(ctx context.Context, within time.Duration) error {
	if n.Cluster == nil || n.Kubelet == nil || n.Kubelet.Exited() {
		return nil
	}
	cs := n.Cluster.Client
	deadline := time.Now().Add(within)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	bg := metav1.DeletePropagationBackground
	del := metav1.DeleteOptions{PropagationPolicy: &bg}
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, ns := range nss.Items {
		name := ns.Name
		if dss, err := cs.AppsV1().DaemonSets(name).List(ctx, metav1.ListOptions{}); err == nil {
			for _, d := range dss.Items {
				if d.Name != "eni-agent" {
					_ = ignoreNotFound(cs.AppsV1().DaemonSets(name).Delete(ctx, d.Name, del))
				}
			}
		}
		_ = cs.AppsV1().Deployments(name).DeleteCollection(ctx, del, metav1.ListOptions{})
		_ = cs.AppsV1().StatefulSets(name).DeleteCollection(ctx, del, metav1.ListOptions{})
		_ = cs.BatchV1().Jobs(name).DeleteCollection(ctx, del, metav1.ListOptions{})
		_ = cs.AppsV1().ReplicaSets(name).DeleteCollection(ctx, del, metav1.ListOptions{})
	}
	grace := int64(5)
	if err := deletePodsAndWait(ctx, cs, "!k8s-app,k8s-app!=eni-agent", grace); err != nil {
		return fmt.Errorf("pods other than eni-agent's: %w", err)
	}
	if err := deletePodsAndWait(ctx, cs, "k8s-app!=eni-agent", grace); err != nil {
		return fmt.Errorf("pods other than eni-agent's: %w", err)
	}
	_ = ignoreNotFound(cs.AppsV1().DaemonSets("kube-system").Delete(ctx, "eni-agent", del))
	if err := deletePodsAndWait(ctx, cs, eniAgentSelector, grace); err != nil {
		return fmt.Errorf("eni-agent's pods: %w", err)
	}
	return nil
}

// deletePodsAndWait deletes the node's pods matching selector (again and
// again: controllers may still be replacing them) until none is left.
func deletePodsAndWait(ctx context.Context, cs kubernetes.Interface, selector string, grace int64) error {
	fs := "spec.nodeName=" + NodeName
	for {
		pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: selector, FieldSelector: fs})
		if err != nil {
			return err
		}
		if len(pods.Items) == 0 {
			return nil
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil {
				_ = ignoreNotFound(cs.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace}))
			}
		}
		select {
		case <-ctx.Done():
			var names []string
			for _, p := range pods.Items {
				names = append(names, p.Namespace+"/"+p.Name)
			}
			return fmt.Errorf("%w: still there: %s", ctx.Err(), strings.Join(names, ", "))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Down removes everything Up made, in reverse order, also after a partial
// Up: workloads (through the API, so that eni-cni releases addresses), the
// kubelet, containerd and whatever it left (shims, containers' processes,
// mounts, netns, cgroups), kube-proxy's nftables tables, node-cache's pins
// and address, the emulator (and with it the VPC namespace and the ENIs),
// the control plane, the bridge, the host paths, the sysctls. It returns
// what could not be removed. Safe to call twice.
func (n *Node) Down() error {
	n.downOnce.Do(func() { n.downErr = n.down() })
	return n.downErr
}

func (n *Node) down() error {
	var errs []error
	add := func(what string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", what, err))
		}
	}
	t0 := time.Now()
	add("draining the node", n.Drain(context.Background(), 90*time.Second))
	n.logf("  down: workloads drained in %s", time.Since(t0).Round(time.Millisecond))
	const grace = 15 * time.Second
	// The kubelet before containerd (verified-here.md).
	if n.Kubelet != nil {
		add("stopping the kubelet", n.Kubelet.Stop(grace))
	}
	if n.KubeProxy != nil {
		add("stopping kube-proxy", n.KubeProxy.Stop(grace))
	}
	if n.Containerd != nil {
		add("stopping containerd", n.Containerd.Stop(grace))
	}
	if n.Dir != "" {
		add("removing the containers' leftovers", cleanRuntime(n.Dir, n.Opt.BinDir))
	}
	for _, p := range []*Proc{n.Scheduler, n.KCM} {
		if p != nil {
			add("stopping "+p.Name, p.Stop(grace))
		}
	}
	if n.apiProxy != nil {
		n.apiProxy.Close()
		n.apiProxy = nil
	}
	if n.Cluster != nil {
		n.Cluster.Stop()
		n.Cluster = nil
	}
	n.proxyWG.Wait()
	if n.Emulator != nil {
		// SIGTERM: the emulator deletes the vpc namespace, and with it
		// every ENI's veth.
		add("stopping the cloud emulator", n.Emulator.Stop(grace))
	}
	add("removing the host's leftovers", cleanHost(n.hadPaths, n.savedSysct))
	if n.Dir != "" {
		add("removing "+n.Dir, os.RemoveAll(n.Dir))
	}
	_ = os.Remove(stateFile)
	if left := Leftovers(); len(left) > 0 {
		add("left behind", errors.New(strings.Join(left, "; ")))
	}
	n.releaseLock()
	n.logf("  down: in %s", time.Since(t0).Round(time.Millisecond))
	return errors.Join(errs...)
}

// cleanRuntime removes what containerd's and runc's children leave when
// they are not stopped through the CRI: every process in the kubepods
// cgroups, shims of this containerd, the mounts under dir and HostDir, the
// kubepods cgroups.
func cleanRuntime(dir, binDir string) error {
	var errs []error
	// Processes of containers (also of hostNetwork pods) and shims.
	for _, pid := range kubepodsPids() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range shimPids(dir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	waitGone(append(kubepodsPids(), shimPids(dir)...), 10*time.Second)
	// node-cache's steering: links pinned on BPFFS (unmounting frees them),
	// its address and its nftables table.
	if bin := filepath.Join(binDir, "node-cache"); isExecutable(bin) && isMountPoint(BPFFS) {
		if out, err := exec.Command(bin, "--cleanup", "--bpffs", BPFFS, "--local-ip", LocalDNS, "--interface", "lo", "--notrack-table", NotrackTable).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("node-cache --cleanup: %v: %s", err, strings.TrimSpace(string(out))))
		}
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.AddrDel(lo, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(LocalDNS), Mask: net.CIDRMask(32, 32)}})
	}
	for _, m := range mountsUnder(dir, HostDir) {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	for _, c := range kubepodsCgroups() {
		if err := rmdirTree(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cleanHost removes the node's host-global state: kube-proxy's tables,
// the VPC namespace and policy rules, the bridge and its route, HostDir,
// the host paths that did not exist before (had), and restores sysctls.
func cleanHost(had map[string]bool, sysctl map[string]string) error {
	var errs []error
	for _, t := range []string{"ip kube-proxy", "ip6 kube-proxy", "inet " + NotrackTable} {
		fam, name, _ := strings.Cut(t, " ")
		if exec.Command("nft", "list", "table", fam, name).Run() == nil {
			if out, err := exec.Command("nft", "delete", "table", fam, name).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("nft delete table %s: %v: %s", t, err, out))
			}
		}
	}
	if _, err := os.Stat(filepath.Join("/run/netns", VPCNetns)); err == nil {
		if out, err := exec.Command("ip", "netns", "delete", VPCNetns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns delete %s: %v: %s", VPCNetns, err, out))
		}
	}
	cnitest.RemoveRules(netip.MustParsePrefix(VPCCIDR))
	// ENIs the emulator made (host interfaces eni*, not a pod's enip*)
	// die with the vpc namespace; pods' veths with their namespaces.
	if l, err := netlink.LinkByName(Bridge); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("deleting %s: %w", Bridge, err))
		}
	}
	for _, m := range mountsUnder(HostDir) {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	if err := os.RemoveAll(HostDir); err != nil {
		errs = append(errs, err)
	}
	for p, existed := range had {
		if !existed {
			for _, m := range mountsUnder(p) {
				_ = unix.Unmount(m, unix.MNT_DETACH)
			}
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// eni-cni's results in libcni's default cache (containerd's).
	if had["/var/lib/cni"] {
		m, _ := filepath.Glob("/var/lib/cni/results/dnsaccel-*")
		for _, f := range m {
			_ = os.Remove(f)
		}
	}
	for k, v := range sysctl {
		cur, err := os.ReadFile("/proc/sys/" + k)
		if err == nil && strings.TrimSpace(string(cur)) != v {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("restoring %s=%s: %w", k, v, err))
			}
		}
	}
	return errors.Join(errs...)
}

// sweep removes what a node killed before its Down left (the caller holds
// the lock, so no node runs).
func sweep(logf func(string, ...any)) error {
	b, err := os.ReadFile(stateFile)
	if errors.Is(err, os.ErrNotExist) {
		if len(Leftovers()) == 0 {
			return nil
		}
		b = []byte("{}")
	} else if err != nil {
		return err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("%s: %w", stateFile, err)
	}
	if st.Pid != 0 && st.Pid != os.Getpid() {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", st.Pid)); err == nil {
			return fmt.Errorf("process %d (of %s) still runs its node", st.Pid, stateFile)
		}
	}
	if logf != nil {
		logf("  sweeping what an earlier node (pid %d, %s) left", st.Pid, st.Dir)
	}
	var errs []error
	if st.Dir != "" {
		errs = append(errs, cleanRuntime(st.Dir, ""))
		errs = append(errs, cleanHost(st.Had, st.Sysctl))
	} else {
		// No state file: leave the vpc namespace (test/node's sweep owns
		// its own) and host paths alone.
		errs = append(errs, cleanHostNoVPC())
	}
	if st.Dir != "" {
		_ = os.RemoveAll(st.Dir)
	}
	_ = os.Remove(stateFile)
	return errors.Join(errs...)
}

// cleanHostNoVPC is cleanHost without the VPC namespace, for leftovers
// without a state file.
func cleanHostNoVPC() error {
	if l, err := netlink.LinkByName(Bridge); err == nil {
		_ = netlink.LinkDel(l)
	}
	for _, m := range mountsUnder(HostDir) {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	for _, t := range []string{"ip kube-proxy", "ip6 kube-proxy", "inet " + NotrackTable} {
		_ = exec.Command("nft", append([]string{"delete", "table"}, strings.Fields(t)...)...).Run()
	}
	return os.RemoveAll(HostDir)
}

// Leftovers lists what of a node exists on this machine: HostDir and its
// mounts, the bridge, kube-proxy's tables, node-cache's address, the
// kubepods cgroups and their processes, this node's shims, the VPC
// namespace, policy rules of the VPC.
func Leftovers() []string {
	var left []string
	if _, err := os.Lstat(HostDir); err == nil {
		left = append(left, HostDir)
	}
	if m := mountsUnder(HostDir); len(m) > 0 {
		left = append(left, "mounts "+strings.Join(m, " "))
	}
	if _, err := netlink.LinkByName(Bridge); err == nil {
		left = append(left, "interface "+Bridge)
	}
	for _, t := range []string{"ip kube-proxy", "ip6 kube-proxy", "inet " + NotrackTable} {
		if exec.Command("nft", append([]string{"list", "table"}, strings.Fields(t)...)...).Run() == nil {
			left = append(left, "nftables table "+t)
		}
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		addrs, _ := netlink.AddrList(lo, netlink.FAMILY_V4)
		for _, a := range addrs {
			if a.IP.String() == LocalDNS {
				left = append(left, LocalDNS+" on lo")
			}
		}
	}
	if c := kubepodsCgroups(); len(c) > 0 {
		left = append(left, "cgroups "+strings.Join(c, " "))
	}
	if p := kubepodsPids(); len(p) > 0 {
		left = append(left, fmt.Sprintf("processes in kubepods %v", p))
	}
	if _, err := os.Stat(filepath.Join("/run/netns", VPCNetns)); err == nil {
		left = append(left, "network namespace "+VPCNetns)
	}
	if rules, err := netlink.RuleList(netlink.FAMILY_V4); err == nil {
		vpc := netip.MustParsePrefix(VPCCIDR)
		for _, r := range rules {
			for _, n := range []*net.IPNet{r.Src, r.Dst} {
				if n == nil {
					continue
				}
				if a, ok := netip.AddrFromSlice(n.IP.To4()); ok && vpc.Contains(a) {
					left = append(left, "rule "+r.String())
				}
			}
		}
	}
	if _, err := os.Stat(stateFile); err == nil {
		left = append(left, stateFile)
	}
	return left
}

// kubepodsCgroups are the kubelet's cgroups (cgroupfs driver) under every
// hierarchy: /sys/fs/cgroup/<controller>/kubepods and unified/kubepods.
func kubepodsCgroups() []string {
	m, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	if _, err := os.Stat("/sys/fs/cgroup/kubepods"); err == nil {
		m = append(m, "/sys/fs/cgroup/kubepods")
	}
	return m
}

// kubepodsPids are the processes in the kubepods cgroups.
func kubepodsPids() []int {
	seen := map[int]bool{}
	for _, c := range kubepodsCgroups() {
		_ = filepath.WalkDir(c, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
					seen[pid] = true
				}
			}
			return nil
		})
	}
	var pids []int
	for p := range seen {
		pids = append(pids, p)
	}
	sort.Ints(pids)
	return pids
}

// shimPids are containerd-shim-runc-v2 processes whose command line names
// a containerd socket under dir.
func shimPids(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.HasSuffix(args[0], "containerd-shim-runc-v2") {
			continue
		}
		if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, dir+"/") }) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func waitGone(pids []int, within time.Duration) {
	deadline := time.Now().Add(within)
	for _, p := range pids {
		for time.Now().Before(deadline) {
			if err := syscall.Kill(p, 0); errors.Is(err, syscall.ESRCH) {
				break
			}
			// A zombie of ours would stay; ours are reaped by Proc.
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p)); err == nil && strings.Contains(string(b), ") Z ") {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// mountsUnder lists mount points at or under the given directories,
// deepest first.
func mountsUnder(dirs ...string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 5 {
			continue
		}
		mp := unescapeMount(fl[4])
		for _, d := range dirs {
			if d != "" && (mp == d || strings.HasPrefix(mp, d+"/")) {
				out = append(out, mp)
				break
			}
		}
	}
	// Deepest (and latest) first.
	slices.Reverse(out)
	sort.SliceStable(out, func(i, j int) bool { return strings.Count(out[i], "/") > strings.Count(out[j], "/") })
	return out
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

func isMountPoint(p string) bool {
	return slices.Contains(mountsUnder(p), p)
}

// rmdirTree removes a cgroup directory tree bottom-up (cgroup directories
// are removed with rmdir, their files go with them).
func rmdirTree(root string) error {
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	var last error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			last = fmt.Errorf("rmdir %s: %w", dirs[i], err)
		}
	}
	return last
}
