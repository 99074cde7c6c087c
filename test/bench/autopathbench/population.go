package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/dnsaccel/dnsaccel/test/cluster"
)

// Shape of the objects, for the docs.
const (
	nodeCount = 500 // pods are spread over this many spec.nodeName values (no Node objects)
	nsPrefix  = "apbench-"
)

// population creates the pods and Services the memory part measures
// against: pods spread over Namespaces namespaces, one Deployment-like
// group (common labels, one Service selecting them) per PodsPerService pods.
type population struct {
	cs             kubernetes.Interface
	namespaces     int
	podsPerService int
	workers        int

	pods, services int
	nsCreated      bool
}

func newPopulation(c *cluster.Cluster, cfg Config) (*population, error) {
	rc := rest.CopyConfig(c.RestConfig)
	rc.QPS = -1 // no client-side rate limit: the API server is the bottleneck
	rc.ContentType = runtime.ContentTypeProtobuf
	rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return &population{cs: cs, namespaces: cfg.Namespaces, podsPerService: cfg.PodsPerService, workers: cfg.Workers}, nil
}

func nsName(i int) string { return fmt.Sprintf("%s%02d", nsPrefix, i) }

// podIP of pod i: 10.128.0.1 upwards (outside the netns pods' 10.244/16).
func podIP(i int) string {
	n := i + 1
	return fmt.Sprintf("10.%d.%d.%d", 128+(n>>16), (n>>8)&255, n&255)
}

// group is the Deployment/Service pod i belongs to.
func (p *population) group(i int) (ns string, app string, hash string) {
	d := i / p.podsPerService
	return nsName(d % p.namespaces), fmt.Sprintf("app-%d", d), fmt.Sprintf("%010x", (uint64(d)*2654435761)&(1<<40-1))
}

func (p *population) podOptions(i int) cluster.PodOptions {
	ns, app, hash := p.group(i)
	d := i / p.podsPerService
	node := i % nodeCount
	return cluster.PodOptions{
		Namespace: ns,
		Name:      fmt.Sprintf("%s-%s-%05x", app, hash, i),
		Labels: map[string]string{
			"app.kubernetes.io/name":    app,
			"app.kubernetes.io/part-of": fmt.Sprintf("team-%d", d%20),
			"pod-template-hash":         hash,
		},
		NodeName: fmt.Sprintf("node-%03d", node),
		HostIP:   fmt.Sprintf("192.168.%d.%d", node>>8, node&255),
		PodIPs:   []string{podIP(i)},
		Containers: []corev1.Container{{
			Name:  "app",
			Image: fmt.Sprintf("registry.example.com/team-%d/%s:1.%d.0", d%20, app, d%7),
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			Env: []corev1.EnvVar{
				{Name: "LOG_LEVEL", Value: "info"},
				{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			},
			// No resources: CreatePod writes status.qosClass BestEffort,
			// which the API server checks against the spec.
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}},
		}},
	}
}

// lastPod is the A-record name of the newest pod in the pod zone.
func (p *population) lastPod() string {
	i := p.pods - 1
	ns, _, _ := p.group(i)
	ip := podIP(i)
	b := []byte(ip)
	for k := range b {
		if b[k] == '.' {
			b[k] = '-'
		}
	}
	return string(b) + "." + ns + ".pod.cluster.local."
}

// lastService is the name of the newest Service.
func (p *population) lastService() string {
	i := (p.services - 1) * p.podsPerService
	ns, app, _ := p.group(i)
	return app + "." + ns + ".svc.cluster.local."
}

// grow creates pods (and their Services) until there are n.
func (p *population) grow(ctx context.Context, n int) error {
	if !p.nsCreated {
		for i := range p.namespaces {
			_, err := p.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName(i)}}, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("creating namespace %s: %w", nsName(i), err)
			}
		}
		p.nsCreated = true
	}
	from := p.pods
	if n <= from {
		return nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan int)
	var done, svcs atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for range p.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if i%p.podsPerService == 0 {
					ns, app, _ := p.group(i)
					_, err := cluster.CreateService(ctx, p.cs, cluster.ServiceOptions{
						Namespace: ns, Name: app,
						Labels:   map[string]string{"app.kubernetes.io/name": app},
						Selector: map[string]string{"app.kubernetes.io/name": app},
						Ports:    []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")}},
					})
					if err != nil {
						cancel(err)
						return
					}
					svcs.Add(1)
				}
				if _, err := cluster.CreatePod(ctx, p.cs, p.podOptions(i)); err != nil {
					cancel(err)
					return
				}
				if d := done.Add(1); d%5000 == 0 {
					logf("memory: %d of %d pods created (%.0f pods/s)", from+int(d), n, float64(d)/time.Since(t0).Seconds())
				}
			}
		}()
	}
feed:
	for i := from; i < n; i++ {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	p.pods = from + int(done.Load())
	p.services += int(svcs.Load())
	if err := context.Cause(ctx); err != nil {
		return err
	}
	if p.pods != n {
		return fmt.Errorf("created %d pods, want %d", p.pods, n)
	}
	return nil
}
