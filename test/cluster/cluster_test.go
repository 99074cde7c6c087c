package cluster

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestMain(m *testing.M) { Main(m) }

func TestKubeVersionMatchesToolsModule(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	v, err := toolsKubeVersion(filepath.Join(root, "test", "tools", "kube", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if v != KubeVersion {
		t.Fatalf("test/tools/kube/go.mod requires k8s.io/kubernetes %s, KubeVersion is %s", v, KubeVersion)
	}
}

func TestCacheDir(t *testing.T) {
	t.Setenv(EnvCache, "/x/cache")
	t.Setenv("XDG_CACHE_HOME", "/x/xdg")
	t.Setenv("HOME", "/x/home")
	check := func(want string) {
		t.Helper()
		got, err := CacheDir()
		if err != nil || got != want {
			t.Fatalf("CacheDir() = %q, %v; want %q", got, err, want)
		}
	}
	check("/x/cache")
	t.Setenv(EnvCache, "")
	check("/x/xdg/dnsaccel")
	t.Setenv("XDG_CACHE_HOME", "")
	check("/x/home/.cache/dnsaccel")
	p, err := BinaryPath("kube-apiserver")
	if err != nil || p != "/x/home/.cache/dnsaccel/bin/kube-apiserver-"+KubeVersion {
		t.Fatalf("BinaryPath = %q, %v", p, err)
	}
}

func TestStartWithoutEtcd(t *testing.T) {
	t.Setenv(EnvEtcd, "/nonexistent/etcd")
	_, err := Start(context.Background())
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "apt-get install etcd-server") {
		t.Fatalf("Start without etcd: got %v", err)
	}
	t.Setenv(EnvEtcd, "")
	t.Setenv("PATH", "/nonexistent")
	if _, err := exec.LookPath("etcd"); err == nil || isExecutable("/usr/bin/etcd") {
		return // cannot hide /usr/bin/etcd
	}
	if _, err := EtcdPath(); !strings.Contains(err.Error(), "apt-get install etcd-server") {
		t.Fatalf("EtcdPath: %v", err)
	}
}

func needEtcd(t *testing.T) string {
	t.Helper()
	p, err := EtcdPath()
	if err != nil {
		SkipOrFail(t, "%v", err)
	}
	return p
}

// A port taken by someone else is reported as such, not as a timeout.
func TestEtcdPortTaken(t *testing.T) {
	etcd := needEtcd(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	peer, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &Cluster{EtcdURL: "http://127.0.0.1:" + strconv.Itoa(port)}
	c.etcd, err = startProc("etcd", etcd, []string{
		"--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=" + c.EtcdURL, "--advertise-client-urls=" + c.EtcdURL,
		"--listen-peer-urls=http://127.0.0.1:" + strconv.Itoa(peer[0]),
		"--initial-advertise-peer-urls=http://127.0.0.1:" + strconv.Itoa(peer[0]),
		"--initial-cluster=default=http://127.0.0.1:" + strconv.Itoa(peer[0]),
	}, filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.etcd.kill()
	err = c.waitEtcd(context.Background())
	var pe *portInUseError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("want port-in-use error, got %v", err)
	}
	t.Logf("reported: %.200s", err)
}

// An API server that exits during start-up is reported with its log.
func TestAPIServerExitsEarly(t *testing.T) {
	needEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, WithAPIServerArgs("--no-such-flag=1"))
	if err == nil {
		c.Stop()
		t.Fatal("Start succeeded with an unknown flag")
	}
	if !strings.Contains(err.Error(), "kube-apiserver exited unexpectedly") || !strings.Contains(err.Error(), "no-such-flag") {
		t.Fatalf("unexpected error: %v", err)
	}
	t.Logf("reported: %v", err)
}

func TestSharedCluster(t *testing.T) {
	c := Shared(t)
	ctx := context.Background()
	for _, ns := range []string{"default", "kube-system"} {
		if _, err := c.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
			t.Errorf("namespace %s: %v", ns, err)
		}
	}

	// The kubeconfig file works on its own, with CA verification.
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if rc.Insecure || len(rc.CAData) == 0 {
		t.Errorf("kubeconfig does not verify the server: insecure=%v ca=%d bytes", rc.Insecure, len(rc.CAData))
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		t.Fatalf("listing namespaces with %s: %v", c.Kubeconfig, err)
	}
	if kubectl, err := BinaryPath("kubectl"); err == nil && isExecutable(kubectl) {
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", c.Kubeconfig, "get", "ns", "kube-system", "-o", "name").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "namespace/kube-system" {
			t.Errorf("kubectl get ns: %v: %s", err, out)
		}
	}
}

func TestObjectHelpers(t *testing.T) {
	c := Shared(t)
	ctx := context.Background()
	ns := c.CreateNamespace(t, "helpers-")

	svc := c.MustCreateService(t, ServiceOptions{Namespace: ns, Name: "kube-dns", Selector: map[string]string{"k8s-app": "kube-dns"}})
	if ip := net.ParseIP(svc.Spec.ClusterIP); ip == nil || !strings.HasPrefix(svc.Spec.ClusterIP, "10.96.") {
		t.Errorf("ClusterIP = %q, want one from %s", svc.Spec.ClusterIP, DefaultServiceCIDR)
	}
	fixed := c.MustCreateService(t, ServiceOptions{Namespace: ns, Name: "fixed", ClusterIP: "10.96.200.10"})
	if fixed.Spec.ClusterIP != "10.96.200.10" {
		t.Errorf("fixed ClusterIP = %q", fixed.Spec.ClusterIP)
	}
	headless := c.MustCreateService(t, ServiceOptions{Namespace: ns, Name: "headless", ClusterIP: "None"})
	if headless.Spec.ClusterIP != "None" {
		t.Errorf("headless ClusterIP = %q", headless.Spec.ClusterIP)
	}

	pod := c.MustCreatePod(t, PodOptions{Namespace: ns, Name: "p1", Labels: map[string]string{"app": "x"}, PodIPs: []string{"10.244.1.2", "fd00:10:244::1:2"}, HostIP: "10.0.0.1"})
	got, err := c.Client.CoreV1().Pods(ns).Get(ctx, "p1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.Phase != corev1.PodRunning || got.Status.PodIP != "10.244.1.2" || len(got.Status.PodIPs) != 2 ||
		got.Status.HostIP != "10.0.0.1" || got.Spec.NodeName != DefaultNodeName || pod.ResourceVersion != got.ResourceVersion {
		t.Errorf("pod as stored: phase=%s podIP=%s podIPs=%v hostIP=%s node=%s", got.Status.Phase, got.Status.PodIP, got.Status.PodIPs, got.Status.HostIP, got.Spec.NodeName)
	}
	ready := false
	for _, cond := range got.Status.Conditions {
		if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
			ready = true
		}
	}
	if !ready {
		t.Errorf("pod not Ready: %+v", got.Status.Conditions)
	}

	if _, err := UpdatePodStatus(ctx, c.Client, ns, "p1", func(s *corev1.PodStatus) { s.Phase = corev1.PodSucceeded }); err != nil {
		t.Fatal(err)
	}
	if err := DeletePod(ctx, c.Client, ns, "p1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Pods(ns).Get(ctx, "p1", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("pod still there after DeletePod: %v", err)
	}

	node, err := CreateNode(ctx, c.Client, "node-"+ns, "10.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Client.CoreV1().Nodes().Delete(context.Background(), node.Name, metav1.DeleteOptions{}) })
	if len(node.Status.Addresses) != 2 {
		t.Errorf("node addresses: %v", node.Status.Addresses)
	}
}

// Namespaces created by CreateNamespace really disappear (no namespace
// controller runs to finalize them).
func TestDeleteNamespace(t *testing.T) {
	c := Shared(t)
	ctx := context.Background()
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "del-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreatePod(ctx, c.Client, PodOptions{Namespace: ns.Name, Name: "p", PodIPs: []string{"10.244.9.9"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateService(ctx, c.Client, ServiceOptions{Namespace: ns.Name, Name: "s"}); err != nil {
		t.Fatal(err)
	}
	if err := DeleteNamespace(ctx, c.Client, ns.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("namespace still exists: %v", err)
	}
	pods, err := c.Client.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{})
	if err != nil || len(pods.Items) != 0 {
		t.Errorf("pods left: %v %v", pods, err)
	}
}

func TestSweepStaleDirs(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dead := filepath.Join(tmp, dataDirPattern+"dead")
	alive := filepath.Join(tmp, dataDirPattern+"alive")
	for _, d := range []string{dead, alive} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dead, ownerFile), []byte("999999999 1\n"), 0o644)
	if err := writeOwner(alive); err != nil {
		t.Fatal(err)
	}
	sweepStaleDirs()
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("stale dir not removed: %v", err)
	}
	if _, err := os.Stat(alive); err != nil {
		t.Errorf("live dir removed: %v", err)
	}
}

func TestFailedChecks(t *testing.T) {
	body := "[+]ping ok\n[-]etcd failed: reason withheld\n[+]log ok\nreadyz check failed\n"
	if got := failedChecks(body); got != "[-]etcd failed: reason withheld\nreadyz check failed" {
		t.Errorf("failedChecks = %q", got)
	}
}
