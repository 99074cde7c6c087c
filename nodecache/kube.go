package nodecache

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Kube is how the agent reaches the API server, if it does.
type Kube struct {
	Kubeconfig string // a kubeconfig file; "" = in-cluster if available
	InCluster  bool   // running in a pod with a service account
}

// DetectKube returns the API access for a --kubeconfig value: the file if
// given, else the in-cluster service account if this runs in a pod
// (KUBERNETES_SERVICE_HOST/PORT set, token readable: what
// rest.InClusterConfig needs). Enabled reports whether either exists.
func DetectKube(kubeconfig string) Kube {
	if kubeconfig != "" {
		return Kube{Kubeconfig: kubeconfig}
	}
	if _, err := rest.InClusterConfig(); err == nil {
		return Kube{InCluster: true}
	}
	return Kube{}
}

// Enabled reports whether the agent runs in Kubernetes mode.
func (k Kube) Enabled() bool { return k.Kubeconfig != "" || k.InCluster }

// String names the API access for logs.
func (k Kube) String() string {
	switch {
	case k.Kubeconfig != "":
		return "kubeconfig " + k.Kubeconfig
	case k.InCluster:
		return "in-cluster"
	}
	return "none"
}

// Client returns a clientset for the API server.
func (k Kube) Client() (kubernetes.Interface, error) {
	var (
		rc  *rest.Config
		err error
	)
	if k.Kubeconfig != "" {
		if rc, err = clientcmd.BuildConfigFromFlags("", k.Kubeconfig); err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", k.Kubeconfig, err)
		}
	} else if rc, err = rest.InClusterConfig(); err != nil {
		return nil, fmt.Errorf("in-cluster config: %w", err)
	}
	rc.UserAgent = "dnsaccel-node-cache"
	return kubernetes.NewForConfig(rc)
}

// clusterDNSServices are looked up in kube-system, in order, when no
// --cluster-upstream is given: node-local-dns's kube-dns-upstream (same
// endpoints as kube-dns, but a VIP that steering never redirects) first.
var clusterDNSServices = []string{"kube-dns-upstream", "kube-dns"}

// lookupTimeout bounds the start-up Service lookup: a DaemonSet pod that
// cannot reach the API should fail and be restarted, not hang.
const lookupTimeout = 15 * time.Second

// ResolveClusterUpstreams fills ClusterUpstreams from the API in Kubernetes
// mode when --cluster-upstream gave none, and records where they came from.
func (c *Config) ResolveClusterUpstreams(ctx context.Context) error {
	// A --conf Corefile names its upstreams itself, unless it is
	// node-local-dns's shape, whose __PILLAR__CLUSTER__DNS__ is filled from
	// the same Services.
	if !c.Kube.Enabled() || (c.Conf != "" && !c.ConfUses("__PILLAR__CLUSTER__DNS__")) {
		return nil
	}
	if len(c.ClusterUpstreams) > 0 {
		c.ClusterUpstreamsFrom = "--cluster-upstream"
		return nil
	}
	cs, err := c.Kube.Client()
	if err != nil {
		return fmt.Errorf("--cluster-upstream not given, and no API client to look it up: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	ups, from, err := ClusterDNSUpstreams(ctx, cs)
	if err != nil {
		return fmt.Errorf("--cluster-upstream not given, and %w", err)
	}
	c.ClusterUpstreams, c.ClusterUpstreamsFrom = ups, "Service "+from
	return nil
}

// errNoClusterDNS is returned when neither Service exists.
var errNoClusterDNS = errors.New("neither Service kube-system/kube-dns-upstream nor kube-system/kube-dns exists")

// ClusterDNSUpstreams returns IP:PORT of the cluster DNS Service (every
// ClusterIP, for dual-stack) and the Service it came from. A Service that
// exists without a ClusterIP is an error, not a reason to try the next:
// kube-dns's VIP may be steered to this very cache.
func ClusterDNSUpstreams(ctx context.Context, cs kubernetes.Interface) ([]string, string, error) {
	for _, name := range clusterDNSServices {
		svc, err := cs.CoreV1().Services(metav1.NamespaceSystem).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, "", fmt.Errorf("reading Service kube-system/%s: %w", name, err)
		}
		ups := serviceUpstreams(svc)
		if len(ups) == 0 {
			return nil, "", fmt.Errorf("Service kube-system/%s has no ClusterIP (headless?)", name)
		}
		return ups, "kube-system/" + name, nil
	}
	return nil, "", errNoClusterDNS
}

// serviceUpstreams is IP:PORT for each ClusterIP, with the Service's first
// TCP port (the cache's upstream transport), else 53.
func serviceUpstreams(svc *corev1.Service) []string {
	port := 53
	for _, p := range svc.Spec.Ports {
		if p.Protocol == corev1.ProtocolTCP {
			port = int(p.Port)
			break
		}
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []string
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.AddrPortFrom(ip, uint16(port)).String())
		}
	}
	return out
}
