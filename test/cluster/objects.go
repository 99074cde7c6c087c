package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
)

// DefaultNodeName is spec.nodeName of pods created by CreatePod unless set.
const DefaultNodeName = "dnsaccel-test-node"

// DefaultPodImage is the (never pulled) image of pods created by CreatePod.
const DefaultPodImage = "registry.k8s.io/pause:3.10"

// cleanupTimeout bounds API calls made from t.Cleanup.
const cleanupTimeout = 30 * time.Second

// ServiceOptions describes a Service for CreateService.
type ServiceOptions struct {
	Namespace string // default "default"
	Name      string // required
	// ClusterIP is "" to let the API server allocate one from the service
	// CIDR, a fixed address from it, or "None" for a headless service.
	ClusterIP string
	// Ports defaults to DNS: "dns" 53/UDP and "dns-tcp" 53/TCP.
	Ports    []corev1.ServicePort
	Selector map[string]string
	Labels   map[string]string
}

// CreateService creates a ClusterIP Service and returns it as stored (with
// the allocated spec.clusterIP).
func CreateService(ctx context.Context, cs kubernetes.Interface, o ServiceOptions) (*corev1.Service, error) {
	if o.Name == "" {
		return nil, fmt.Errorf("CreateService: Name is required")
	}
	if o.Namespace == "" {
		o.Namespace = metav1.NamespaceDefault
	}
	if len(o.Ports) == 0 {
		o.Ports = []corev1.ServicePort{
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
			{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53},
		}
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: o.Namespace, Name: o.Name, Labels: o.Labels},
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: o.ClusterIP,
			Ports:     o.Ports,
			Selector:  o.Selector,
		},
	}
	out, err := cs.CoreV1().Services(o.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating service %s/%s: %w", o.Namespace, o.Name, err)
	}
	return out, nil
}

// DeleteService deletes a Service; a missing one is not an error.
func DeleteService(ctx context.Context, cs kubernetes.Interface, namespace, name string) error {
	err := cs.CoreV1().Services(namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// PodOptions describes a Pod for CreatePod. There is no scheduler or kubelet:
// spec.nodeName is set directly and the status is written through the status
// subresource.
type PodOptions struct {
	Namespace string // default "default"
	Name      string // required
	Labels    map[string]string
	NodeName  string // default DefaultNodeName
	// PodIPs become status.podIPs; the first is also status.podIP. Empty for
	// a pod that has no IP yet.
	PodIPs []string
	// HostIP becomes status.hostIP(s); default "127.0.0.1" (this machine).
	HostIP string
	// Phase defaults to Running.
	Phase corev1.PodPhase
	// NotReady leaves the Ready and ContainersReady conditions false.
	NotReady    bool
	HostNetwork bool
	DNSPolicy   corev1.DNSPolicy // default ClusterFirst
	DNSConfig   *corev1.PodDNSConfig
	// Containers defaults to one "app" container running DefaultPodImage.
	Containers []corev1.Container
}

// CreatePod creates a Pod bound to a node and sets its status (phase,
// podIP(s), hostIP, conditions) with UpdateStatus, as a kubelet would.
func CreatePod(ctx context.Context, cs kubernetes.Interface, o PodOptions) (*corev1.Pod, error) {
	if o.Name == "" {
		return nil, fmt.Errorf("CreatePod: Name is required")
	}
	if o.Namespace == "" {
		o.Namespace = metav1.NamespaceDefault
	}
	if o.NodeName == "" {
		o.NodeName = DefaultNodeName
	}
	if o.HostIP == "" {
		o.HostIP = "127.0.0.1"
	}
	if o.Phase == "" {
		o.Phase = corev1.PodRunning
	}
	if o.DNSPolicy == "" {
		o.DNSPolicy = corev1.DNSClusterFirst
	}
	if len(o.Containers) == 0 {
		o.Containers = []corev1.Container{{Name: "app", Image: DefaultPodImage}}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: o.Namespace, Name: o.Name, Labels: o.Labels},
		Spec: corev1.PodSpec{
			NodeName:    o.NodeName,
			HostNetwork: o.HostNetwork,
			DNSPolicy:   o.DNSPolicy,
			DNSConfig:   o.DNSConfig,
			Containers:  o.Containers,
		},
	}
	created, err := cs.CoreV1().Pods(o.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating pod %s/%s: %w", o.Namespace, o.Name, err)
	}
	created.Status = podStatus(o, created.Spec.Containers)
	out, err := cs.CoreV1().Pods(o.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		_ = DeletePod(ctx, cs, o.Namespace, o.Name)
		return nil, fmt.Errorf("setting status of pod %s/%s: %w", o.Namespace, o.Name, err)
	}
	return out, nil
}

func podStatus(o PodOptions, containers []corev1.Container) corev1.PodStatus {
	now := metav1.Now()
	ready := corev1.ConditionTrue
	if o.NotReady || o.Phase != corev1.PodRunning {
		ready = corev1.ConditionFalse
	}
	st := corev1.PodStatus{
		Phase:     o.Phase,
		HostIP:    o.HostIP,
		HostIPs:   []corev1.HostIP{{IP: o.HostIP}},
		StartTime: &now,
		QOSClass:  corev1.PodQOSBestEffort,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: ready, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: ready, LastTransitionTime: now},
		},
	}
	if len(o.PodIPs) > 0 {
		st.PodIP = o.PodIPs[0]
		for _, ip := range o.PodIPs {
			st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip})
		}
	}
	for _, c := range containers {
		cst := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: ready == corev1.ConditionTrue}
		if o.Phase == corev1.PodRunning {
			started := true
			cst.Started = &started
			cst.State.Running = &corev1.ContainerStateRunning{StartedAt: now}
		} else {
			cst.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cst)
	}
	return st
}

// UpdatePodStatus re-reads a Pod, applies mutate to its status and writes it
// with UpdateStatus, retrying on conflicts.
func UpdatePodStatus(ctx context.Context, cs kubernetes.Interface, namespace, name string, mutate func(*corev1.PodStatus)) (*corev1.Pod, error) {
	var out *corev1.Pod
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p, err := cs.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		mutate(&p.Status)
		out, err = cs.CoreV1().Pods(namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	return out, err
}

// DeletePod deletes a Pod immediately (grace period 0: there is no kubelet
// to confirm a graceful deletion); a missing one is not an error.
func DeletePod(ctx context.Context, cs kubernetes.Interface, namespace, name string) error {
	err := cs.CoreV1().Pods(namespace).Delete(ctx, name, *metav1.NewDeleteOptions(0))
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// CreateNode creates a Ready Node with the given InternalIP (optional).
func CreateNode(ctx context.Context, cs kubernetes.Interface, name, internalIP string) (*corev1.Node, error) {
	n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating node %s: %w", name, err)
	}
	now := metav1.Now()
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}}
	if internalIP != "" {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: internalIP})
	}
	out, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("setting status of node %s: %w", name, err)
	}
	return out, nil
}

// DeleteNamespace deletes the Pods, Services, EndpointSlices and ConfigMaps
// in a namespace and then the namespace itself, finalizing it directly
// (there is no namespace controller to do so).
func DeleteNamespace(ctx context.Context, cs kubernetes.Interface, name string) error {
	grace := metav1.NewDeleteOptions(0)
	if err := cs.CoreV1().Pods(name).DeleteCollection(ctx, *grace, metav1.ListOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	svcs, err := cs.CoreV1().Services(name).List(ctx, metav1.ListOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if svcs != nil {
		for _, s := range svcs.Items {
			if err := DeleteService(ctx, cs, name, s.Name); err != nil {
				return err
			}
		}
	}
	if err := cs.DiscoveryV1().EndpointSlices(name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if err := cs.CoreV1().ConfigMaps(name).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	err = cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	ns, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	ns.Spec.Finalizers = nil
	_, err = cs.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// CreateNamespace creates a namespace with a generated name starting with
// prefix (default "test-") and deletes it, with its contents, when the test
// ends.
func (c *Cluster) CreateNamespace(t testing.TB, prefix string) string {
	t.Helper()
	if prefix == "" {
		prefix = "test-"
	}
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := DeleteNamespace(ctx, c.Client, ns.Name); err != nil {
			t.Errorf("deleting namespace %s: %v", ns.Name, err)
		}
	})
	return ns.Name
}

// MustCreateService is CreateService that fails the test on error and
// deletes the Service when the test ends.
func (c *Cluster) MustCreateService(t testing.TB, o ServiceOptions) *corev1.Service {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	svc, err := CreateService(ctx, c.Client, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := DeleteService(ctx, c.Client, svc.Namespace, svc.Name); err != nil {
			t.Errorf("deleting service %s/%s: %v", svc.Namespace, svc.Name, err)
		}
	})
	return svc
}

// MustCreatePod is CreatePod that fails the test on error and deletes the
// Pod when the test ends.
func (c *Cluster) MustCreatePod(t testing.TB, o PodOptions) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	pod, err := CreatePod(ctx, c.Client, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := DeletePod(ctx, c.Client, pod.Namespace, pod.Name); err != nil {
			t.Errorf("deleting pod %s/%s: %v", pod.Namespace, pod.Name, err)
		}
	})
	return pod
}
