package realnode

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/dnsaccel/dnsaccel/test/cnitest"
	"github.com/dnsaccel/dnsaccel/test/dnstest"
)

// What a user does on the node, as steps returning what did not behave.

// Overlay is the kustomization the node is made for.
const Overlay = "manifests/overlays/realnode"

// DNSToolsImage holds glibc's getent, dig, sh and sleep (make images).
const DNSToolsImage = "dnsaccel/dnstools:dev"

// NodeCacheMetricsURL is node-cache's /metrics on the node (hostNetwork,
// --metrics=:9253).
const NodeCacheMetricsURL = "http://127.0.0.1:9253/metrics"

// Apply runs `kubectl apply -k manifests/overlays/realnode` and waits until
// eni-agent runs (its init container installed eni-cni), the Node is
// Ready, and node-cache, CoreDNS and pvtz-sync are rolled out.
func (n *Node) Apply(ctx context.Context, within time.Duration) error {
	root, err := cnitest.RepoRoot()
	if err != nil {
		return err
	}
	if _, err := n.Kubectl(ctx, "apply", "-k", filepath.Join(root, Overlay)); err != nil {
		return err
	}
	deadline := time.Now().Add(within)
	left := func() string { return fmt.Sprintf("%ds", int(time.Until(deadline).Seconds())) }
	if _, err := n.Kubectl(ctx, "-n", "kube-system", "rollout", "status", "daemonset/eni-agent", "--timeout="+left()); err != nil {
		return fmt.Errorf("%w\n%s", err, n.Describe(ctx, "kube-system", "k8s-app=eni-agent"))
	}
	if err := n.WaitNodeReady(ctx, time.Until(deadline)); err != nil {
		return err
	}
	for _, r := range []string{"daemonset/node-cache", "deployment/coredns", "deployment/pvtz-sync"} {
		if _, err := n.Kubectl(ctx, "-n", "kube-system", "rollout", "status", r, "--timeout="+left()); err != nil {
			return fmt.Errorf("%w\n%s", err, n.Describe(ctx, "kube-system", ""))
		}
	}
	return nil
}

// Describe returns `kubectl get pods -o wide` and the events of a
// namespace, and the logs of its failing pods, for error messages.
func (n *Node) Describe(ctx context.Context, ns, selector string) string {
	var b strings.Builder
	args := []string{"-n", ns, "get", "pods", "-o", "wide"}
	if selector != "" {
		args = append(args, "-l", selector)
	}
	out, _ := n.Kubectl(ctx, args...)
	b.WriteString(out)
	out, _ = n.Kubectl(ctx, "-n", ns, "get", "events", "--sort-by=.lastTimestamp")
	b.WriteString(tail(out, 25) + "\n")
	pods, err := n.Cluster.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err == nil {
		for _, p := range pods.Items {
			for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
				if !cs.Ready && (cs.RestartCount > 0 || cs.State.Terminated != nil) {
					out, _ := n.Kubectl(ctx, "-n", ns, "logs", p.Name, "-c", cs.Name, "--tail=15")
					fmt.Fprintf(&b, "--- logs %s/%s:\n%s\n", p.Name, cs.Name, out)
					out, _ = n.Kubectl(ctx, "-n", ns, "logs", p.Name, "-c", cs.Name, "--tail=15", "--previous")
					fmt.Fprintf(&b, "--- previous logs %s/%s:\n%s\n", p.Name, cs.Name, out)
				}
			}
		}
	}
	return b.String()
}

// Clients is a Deployment of DNSToolsImage pods (ClusterFirst DNS) and a
// Service in front of them.
type Clients struct {
	Namespace, Name string
	ServiceIP       string
	Pods            []corev1.Pod
}

// DeployClients creates namespace ns with a Deployment "dnsclient" of
// replicas DNSToolsImage pods (created by the scheduler and the kubelet,
// wired by eni-cni) and a ClusterIP Service "web" selecting them, and waits
// until they are available.
func (n *Node) DeployClients(ctx context.Context, ns string, replicas int32, within time.Duration) (*Clients, error) {
	cs := n.Cluster.Client
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	labels := map[string]string{"app": "dnsclient"}
	zero := int64(1)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "dnsclient", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &zero,
					Containers: []corev1.Container{{
						Name: "tools", Image: DNSToolsImage, ImagePullPolicy: corev1.PullIfNotPresent,
						Command: []string{"/bin/sleep", "infinity"},
					}},
				},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	svc, err := cs.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		svc, err = cs.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
	}
	if err != nil {
		return nil, err
	}
	if _, err := n.Kubectl(ctx, "-n", ns, "rollout", "status", "deployment/dnsclient", fmt.Sprintf("--timeout=%ds", int(within.Seconds()))); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, n.Describe(ctx, ns, ""))
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=dnsclient"})
	if err != nil {
		return nil, err
	}
	c := &Clients{Namespace: ns, Name: "dnsclient", ServiceIP: svc.Spec.ClusterIP}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			c.Pods = append(c.Pods, p)
		}
	}
	return c, nil
}

// Exec runs a command in a pod's first container (kubectl exec: API
// server, kubelet, containerd's streaming server) and returns its output.
func (n *Node) Exec(ctx context.Context, ns, pod string, argv ...string) (string, error) {
	bin, err := kubectlPath()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", n.Kubeconfig, "-n", ns, "exec", pod, "--"}, argv...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl exec %s -- %s: %w: %s", pod, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// NodeCacheMetrics scrapes node-cache on the node.
func NodeCacheMetrics() (dnstest.Metrics, error) {
	resp, err := httpClient.Get(NodeCacheMetricsURL)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET %s: HTTP %d: %s", NodeCacheMetricsURL, resp.StatusCode, b)
	}
	return dnstest.ParseMetrics(resp.Body)
}
