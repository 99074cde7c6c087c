package realnode

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/cnitest"
)

// TestRealNode brings up the real node, deploys dnsaccel as a user does
// (kubectl apply -k manifests/overlays/realnode), and checks from inside
// pods of a Deployment that names resolve through node-cache, survive its
// death and a rolling update, and that pvtz-sync published the Services;
// then tears the node down and checks nothing is left.
//
// It runs with DNSACCEL_REALNODE=1 (or `make realnode-test`): green here
// once (106 s, 2026-12-08), it joins `make test` after it has proven
// steady beside the other packages' tests.
func TestRealNode(t *testing.T) {
	if os.Getenv("DNSACCEL_REALNODE") != "1" {
		t.Skip("set DNSACCEL_REALNODE=1 (or run make realnode-test) to run the real node: about 2 minutes, see docs/realnode.md")
	}
	binDir, err := DefaultBinDir()
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(binDir); err != nil {
		if errors.Is(err, cluster.ErrUnavailable) {
			cluster.SkipOrFail(t, "real node: %v", err)
		}
		t.Fatal(err)
	}
	if err := checkNoOtherKubeProxy(); err != nil {
		cluster.SkipOrFail(t, "real node: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	images := t.TempDir()
	t0 := time.Now()
	if err := buildImages(ctx, binDir, images); err != nil {
		t.Fatal(err)
	}
	t.Logf("make images: %s", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	n, err := Up(ctx, Options{BinDir: binDir, ImagesDir: images, Logf: t.Logf})
	if err != nil {
		t.Fatalf("node up: %v", err)
	}
	t.Logf("node up in %s; %d images", time.Since(t0).Round(time.Millisecond), len(n.Images))
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []*Proc{n.Kubelet, n.Containerd, n.KubeProxy} {
				if p != nil {
					t.Logf("--- %s:\n%s", p.Log, p.Tail(20))
				}
			}
		}
		t0 := time.Now()
		if err := n.Down(); err != nil {
			t.Errorf("node down: %v", err)
		}
		t.Logf("node down in %s", time.Since(t0).Round(time.Millisecond))
		if left := Leftovers(); len(left) > 0 {
			t.Errorf("left behind: %s", strings.Join(left, "; "))
		}
	})

	if !t.Run("Apply", func(t *testing.T) {
		t0 := time.Now()
		if err := n.Apply(ctx, 4*time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Logf("kubectl apply -k %s: everything rolled out, Node Ready, in %s", Overlay, time.Since(t0).Round(time.Millisecond))
	}) {
		return
	}
	var cl *Clients
	if !t.Run("Clients", func(t *testing.T) {
		t0 := time.Now()
		cl, err = n.DeployClients(ctx, "dnsclients", 2, 3*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		vpc := netip.MustParsePrefix(VPCCIDR)
		for _, p := range cl.Pods {
			a, err := netip.ParseAddr(p.Status.PodIP)
			if err != nil || !vpc.Contains(a) {
				t.Errorf("pod %s: address %q is not from the VPC %s (eni-cni)", p.Name, p.Status.PodIP, VPCCIDR)
			}
		}
		if len(cl.Pods) != 2 {
			t.Fatalf("%d client pods running, want 2", len(cl.Pods))
		}
		t.Logf("2 pods of Deployment dnsclient running with VPC addresses %s, %s in %s", cl.Pods[0].Status.PodIP, cl.Pods[1].Status.PodIP, time.Since(t0).Round(time.Millisecond))
	}) {
		return
	}
	pod := cl.Pods[0].Name
	svcName := "web." + cl.Namespace + ".svc.cluster.local"
	pzName := "web." + cl.Namespace + ".realnode.internal"

	if !t.Run("Resolve", func(t *testing.T) {
		resolv, err := n.Exec(ctx, cl.Namespace, pod, "/bin/cat", "/etc/resolv.conf")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(resolv, "nameserver "+ClusterDNS) {
			t.Fatalf("pod's resolv.conf does not name the cluster DNS %s:\n%s", ClusterDNS, resolv)
		}
		m0, err := NodeCacheMetrics()
		if err != nil {
			t.Fatal(err)
		}
		out, err := n.Exec(ctx, cl.Namespace, pod, "/usr/bin/dig", "+time=2", "+tries=2", svcName)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, cl.ServiceIP) || !strings.Contains(out, "SERVER: "+ClusterDNS+"#53") {
			t.Fatalf("dig %s: want %s from %s:\n%s", svcName, cl.ServiceIP, ClusterDNS, out)
		}
		// getent: glibc's resolver, the search list (k8s_autopath).
		out, err = n.Exec(ctx, cl.Namespace, pod, "/usr/bin/getent", "ahostsv4", "web")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, cl.ServiceIP) {
			t.Fatalf("getent ahostsv4 web: want %s:\n%s", cl.ServiceIP, out)
		}
		// An external name: pvtz-sync published the Service to
		// PrivateZone, whose resolver is the node's upstream.
		var pz string
		if err := n.poll(ctx, "getent hosts "+pzName, 90*time.Second, nil, func() bool {
			pz, _ = n.Exec(ctx, cl.Namespace, pod, "/usr/bin/getent", "hosts", pzName)
			return strings.Contains(pz, cl.ServiceIP)
		}); err != nil {
			t.Fatalf("%v (last: %q)", err, pz)
		}
		m1, err := NodeCacheMetrics()
		if err != nil {
			t.Fatal(err)
		}
		steered := m1.Sum("dnsaccel_nodecache_steering_operations_total", `result="steered"`) - m0.Sum("dnsaccel_nodecache_steering_operations_total", `result="steered"`)
		reqs := m1.Sum("coredns_dns_requests_total", "") - m0.Sum("coredns_dns_requests_total", "")
		if steered < 3 || reqs < 3 {
			t.Fatalf("node-cache saw %v steered socket operations and %v requests over dig + 2 getent; want the pod's queries steered to it", steered, reqs)
		}
		t.Logf("dig %s -> %s (SERVER %s), getent ahostsv4 web, getent hosts %s: through node-cache (%v steered operations, %v requests)", svcName, cl.ServiceIP, ClusterDNS, pzName, steered, reqs)
	}) {
		return
	}

	t.Run("KillNodeCache", func(t *testing.T) {
		old := nodeCachePod(ctx, t, n, "")
		// A loop of queries in the pod over the whole episode.
		loop := queryLoop(ctx, n, cl.Namespace, cl.Pods[1].Name, svcName, 150, 2)
		t0 := time.Now()
		zero := int64(0)
		if err := n.Cluster.Client.CoreV1().Pods("kube-system").Delete(ctx, old, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
		newPod := nodeCachePod(ctx, t, n, old)
		if _, err := n.Kubectl(ctx, "-n", "kube-system", "rollout", "status", "daemonset/node-cache", "--timeout=120s"); err != nil {
			t.Fatal(err)
		}
		ready := time.Since(t0)
		m0, err := NodeCacheMetrics()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := n.Exec(ctx, cl.Namespace, pod, "/usr/bin/dig", "+time=2", "+tries=2", "+short", svcName); err != nil {
			t.Fatal(err)
		}
		m1, _ := NodeCacheMetrics()
		steered := m1.Sum("dnsaccel_nodecache_steering_operations_total", `result="steered"`) - m0.Sum("dnsaccel_nodecache_steering_operations_total", `result="steered"`)
		res := <-loop
		if res.err != nil {
			t.Fatal(res.err)
		}
		if res.failed > 0 {
			t.Errorf("%d of %d queries (dig +time=2 +tries=2) failed while node-cache was killed and restarted", res.failed, res.total)
		}
		if steered < 1 {
			t.Errorf("the restarted node-cache (%s) got no steered query", newPod)
		}
		t.Logf("deleted %s (grace 0): %d/%d queries answered meanwhile; DaemonSet's %s ready after %s, steering again (%v operations)", old, res.total-res.failed, res.total, newPod, ready.Round(time.Millisecond), steered)
	})

	t.Run("RollingUpdate", func(t *testing.T) {
		old := nodeCachePod(ctx, t, n, "")
		loop := queryLoop(ctx, n, cl.Namespace, cl.Pods[1].Name, svcName, 300, 1)
		time.Sleep(time.Second) // the loop is running
		t0 := time.Now()
		if _, err := n.Kubectl(ctx, "-n", "kube-system", "rollout", "restart", "daemonset/node-cache"); err != nil {
			t.Fatal(err)
		}
		if _, err := n.Kubectl(ctx, "-n", "kube-system", "rollout", "status", "daemonset/node-cache", "--timeout=180s"); err != nil {
			t.Fatal(err)
		}
		took := time.Since(t0)
		res := <-loop
		if res.err != nil {
			t.Fatal(res.err)
		}
		newPod := nodeCachePod(ctx, t, n, old)
		if res.failed > 0 {
			t.Errorf("%d of %d queries (dig +time=1 +tries=1, one after the other) lost during the rolling update (maxSurge 1) %s -> %s", res.failed, res.total, old, newPod)
		}
		t.Logf("rolling update %s -> %s in %s: %d/%d queries answered", old, newPod, took.Round(time.Millisecond), res.total-res.failed, res.total)
	})

	t.Run("Pvtzctl", func(t *testing.T) {
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pvtzctl"), "records", "realnode.internal", "--endpoint", "http://"+EmulatorAddr, "--owner", "realnode")
		// The emulator's keys, as the overlay gives pvtz-sync (an admin's
		// own come from the same credential chain).
		cmd.Env = append(os.Environ(), "ALIBABA_CLOUD_ACCESS_KEY_ID=emulator-access-key-id", "ALIBABA_CLOUD_ACCESS_KEY_SECRET=emulator-access-key-secret")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("pvtzctl records: %v\n%s", err, out)
		}
		for _, want := range []string{"web." + cl.Namespace, "kube-dns.kube-system", "kubernetes.default"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("pvtzctl records: no %s:\n%s", want, out)
			}
		}
		t.Logf("pvtzctl records realnode.internal:\n%s", out)
	})
}

// nodeCachePod waits for the node-cache pod that is not notName and
// returns its name.
func nodeCachePod(ctx context.Context, t *testing.T, n *Node, notName string) string {
	t.Helper()
	var name string
	if err := n.poll(ctx, "a node-cache pod other than "+notName, 2*time.Minute, nil, func() bool {
		pods, err := n.Cluster.Client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=node-cache"})
		if err != nil {
			return false
		}
		for _, p := range pods.Items {
			if p.Name != notName && p.DeletionTimestamp == nil {
				name = p.Name
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	return name
}

type loopResult struct {
	total, failed int
	err           error
}

// queryLoop runs count dig queries one after the other in a pod (a fresh
// socket each), in the background, and reports how many failed.
func queryLoop(ctx context.Context, n *Node, ns, pod, name string, count, timeout int) <-chan loopResult {
	res := make(chan loopResult, 1)
	script := fmt.Sprintf(`i=0; f=0; while [ $i -lt %d ]; do /usr/bin/dig +short +time=%d +tries=1 %s >/dev/null 2>&1 || f=$((f+1)); i=$((i+1)); done; echo "done $i $f"`, count, timeout, name)
	go func() {
		out, err := n.Exec(ctx, ns, pod, "/bin/sh", "-c", script)
		if err != nil {
			res <- loopResult{err: err}
			return
		}
		f := strings.Fields(strings.TrimSpace(out))
		if len(f) != 3 || f[0] != "done" {
			res <- loopResult{err: fmt.Errorf("query loop: unexpected output %q", out)}
			return
		}
		total, _ := strconv.Atoi(f[1])
		failed, _ := strconv.Atoi(f[2])
		res <- loopResult{total: total, failed: failed}
	}()
	return res
}

// buildImages runs build/images (make images) into dir.
func buildImages(ctx context.Context, binDir, dir string) error {
	root, err := cnitest.RepoRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "run", "./build/images", "--bin", binDir, "--out", dir)
	cmd.Dir = root
	cmd.Env = os.Environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go run ./build/images: %v\n%s", err, out)
	}
	return nil
}

// TestContainerdImages runs containerd with the node's configuration
// alone, imports the images of build/images and runs two of them with ctr
// (runc, the overlayfs snapshotter, the images' entrypoints and glibc
// tools): the part of the node that needs no Kubernetes binary.
func TestContainerdImages(t *testing.T) {
	binDir, err := DefaultBinDir()
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(binDir); err != nil {
		if errors.Is(err, cluster.ErrUnavailable) {
			cluster.SkipOrFail(t, "containerd: %v", err)
		}
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	ctrDir, err := EnsureContainerd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	images := t.TempDir()
	if err := buildImages(ctx, binDir, images); err != nil {
		t.Fatal(err)
	}
	// cleanRuntime removes the kubepods cgroups (and kills their
	// processes): no node may run meanwhile.
	locker := &Node{}
	if err := locker.takeLock(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(locker.releaseLock)
	_, err = os.Stat("/run/containerd")
	hadRun := err == nil
	dir, err := os.MkdirTemp("", "dnsaccel-realnode-ctrtest-")
	if err != nil {
		t.Fatal(err)
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "containerd", "containerd.sock")
	if err := os.MkdirAll(filepath.Dir(sock), 0o711); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "containerd", "config.toml")
	if err := os.WriteFile(conf, []byte(containerdConfig(dir, sock, runc)), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := startProc("containerd", filepath.Join(dir, "containerd.log"), []string{"PATH=" + ctrDir + ":" + os.Getenv("PATH")}, filepath.Join(ctrDir, "containerd"), "--config", conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log:\n%s", p.Tail(30))
		}
		if err := p.Stop(15 * time.Second); err != nil {
			t.Error(err)
		}
		if err := cleanRuntime(dir, ""); err != nil {
			t.Error(err)
		}
		if m := mountsUnder(dir); len(m) > 0 {
			t.Errorf("mounts left: %v", m)
		}
		if s := shimPids(dir); len(s) > 0 {
			t.Errorf("shims left: %v", s)
		}
		if !hadRun { // the shims' sockets and runc's state
			os.RemoveAll("/run/containerd")
		}
		os.RemoveAll(dir)
	})
	ctr := filepath.Join(ctrDir, "ctr")
	n := &Node{}
	if err := n.poll(ctx, "containerd's socket", time.Minute, p, func() bool {
		return exec.Command(ctr, "--address", sock, "version").Run() == nil
	}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	refs, err := ImportImages(ctx, ctr, sock, images)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("imported %d references in %s", len(refs), time.Since(t0).Round(time.Millisecond))
	for _, want := range []string{PauseImage, "docker.io/dnsaccel/node-cache:dev", "localhost:5000/dnsaccel/coredns:dev", "docker.io/" + DNSToolsImage} {
		found := false
		for _, r := range refs {
			found = found || r == want
		}
		if !found {
			t.Errorf("%s not among the imported images %v", want, refs)
		}
	}
	run := func(id, image string, argv ...string) string {
		t.Helper()
		// In a kubepods cgroup, which the clean-up removes.
		args := append([]string{"--address", sock, "-n", "k8s.io", "run", "--rm", "--cgroup", "/kubepods/" + id, image, id}, argv...)
		out, err := exec.CommandContext(ctx, ctr, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ctr run %s %s: %v\n%s", image, strings.Join(argv, " "), err, out)
		}
		return string(out)
	}
	// glibc's NSS (files) in the image; the kubelet provides /etc/hosts
	// in a pod, ctr does not.
	if out := run("dnsaccel-ctrtest-getent", "docker.io/"+DNSToolsImage, "/bin/sh", "-c", "echo '127.0.0.9 ctrtest' >/etc/hosts && /usr/bin/getent hosts ctrtest"); !strings.Contains(out, "127.0.0.9") {
		t.Errorf("getent hosts in dnstools: %q", out)
	}
	if out := run("dnsaccel-ctrtest-dig", "docker.io/"+DNSToolsImage, "/usr/bin/dig", "-v"); !strings.Contains(out, "DiG 9") {
		t.Errorf("dig -v in dnstools: %q", out)
	}
	// The central CoreDNS as the Deployment runs it: user 65532 with
	// NET_BIND_SERVICE, binding port 53 (in a network namespace of its own).
	c := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, ctr, append([]string{"--address", sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
		return string(out), err
	}
	id := "dnsaccel-ctrtest-coredns"
	if out, err := c("run", "-d", "--cgroup", "/kubepods/"+id, "--user", "65532:65532", "--cap-add", "CAP_NET_BIND_SERVICE", "localhost:5000/dnsaccel/coredns:dev", id, "/coredns", "-dns.port", "53", "-conf", "/dev/null"); err != nil {
		t.Fatalf("ctr run -d coredns: %v\n%s", err, out)
	}
	time.Sleep(3 * time.Second) // it exits at once when it cannot bind
	out, _ := c("task", "ls")
	_, _ = c("task", "kill", "-s", "SIGKILL", id)
	_ = n.poll(ctx, "coredns task stopped", 20*time.Second, nil, func() bool {
		o, _ := c("task", "ls")
		return !strings.Contains(o, id) || strings.Contains(o, "STOPPED")
	})
	_, _ = c("task", "rm", "-f", id)
	if o, err := c("container", "rm", id); err != nil {
		t.Errorf("ctr container rm: %v\n%s", err, o)
	}
	if !strings.Contains(out, "RUNNING") {
		t.Errorf("coredns as 65532 with NET_BIND_SERVICE did not stay up on port 53 (file capability missing?):\n%s", out)
	}
	if out := run("dnsaccel-ctrtest-nodecache", "docker.io/dnsaccel/node-cache:dev", "/node-cache", "--version"); strings.TrimSpace(out) == "" {
		t.Errorf("node-cache --version: no output")
	}
}
