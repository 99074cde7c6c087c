// Package source turns Kubernetes objects into desired records: Services
// (ClusterIP, headless through their EndpointSlices, LoadBalancer) and Pods
// that opt in, watched with informers whose objects are stripped to the few
// fields used. It keeps, per resource, the endpoints it produced, so a
// change to one object names exactly the records it touches (OnChange).
package source

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
)

// Annotations.
const (
	HostnameAlpha = "external-dns.alpha.kubernetes.io/hostname"
	Hostname      = "external-dns.kubernetes.io/hostname"
	TTLAlpha      = "external-dns.alpha.kubernetes.io/ttl"
	TTL           = "external-dns.kubernetes.io/ttl"
	// Publish opts a Pod in ("true").
	Publish = "dnsaccel.io/pvtz-publish"
	// Ignore opts a Service or Pod out ("true").
	Ignore = "dnsaccel.io/pvtz-ignore"
	// Adopt lets the sync take over identical records without an owner.
	Adopt = "dnsaccel.io/pvtz-adopt"
)

// DefaultFQDNTemplate names a record after its object, relative to the zone.
const DefaultFQDNTemplate = "{{.Name}}.{{.Namespace}}"

// TTL bounds of PrivateZone.
const (
	MinTTL = 5
	MaxTTL = 86400
)

// Config of a Source.
type Config struct {
	Client       kubernetes.Interface
	Services     bool
	Pods         bool
	Namespace    string // "" = all
	Zone         string // records outside it are dropped
	FQDNTemplate string // default DefaultFQDNTemplate
	TTL          int    // default 60
	Logger       *slog.Logger
	// OnChange is called with the record names an object change may have
	// touched, synchronously from the informer's event handler (a slow
	// OnChange slows the handler; Start waits for the handlers).
	OnChange func(names []string)
	// OnInvalid reports a resource whose annotations could not be used.
	OnInvalid func(ref *corev1.ObjectReference, reason string)
}

// Source is the desired state of the cluster.
type Source struct {
	cfg     Config
	tmpl    *template.Template
	zone    string
	factory informers.SharedInformerFactory
	svcInf  cache.SharedIndexInformer
	epsInf  cache.SharedIndexInformer
	podInf  cache.SharedIndexInformer
	regs    []cache.ResourceEventHandlerRegistration // one per event handler

	calc       sync.Mutex // serialises computing and storing a resource's endpoints
	mu         sync.Mutex
	byResource map[string][]endpoint.Endpoint
	refs       map[string]*corev1.ObjectReference
	byName     map[string]map[string]bool // name → resources
}

const svcIndex = "service"

// New builds the informers (not started).
func New(cfg Config) (*Source, error) {
	if cfg.FQDNTemplate == "" {
		cfg.FQDNTemplate = DefaultFQDNTemplate
	}
	if cfg.TTL == 0 {
		cfg.TTL = 60
	}
	if cfg.TTL < MinTTL || cfg.TTL > MaxTTL {
		return nil, fmt.Errorf("ttl %d: want %d to %d", cfg.TTL, MinTTL, MaxTTL)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	tmpl, err := template.New("fqdn").Option("missingkey=error").Parse(cfg.FQDNTemplate)
	if err != nil {
		return nil, fmt.Errorf("fqdn template %q: %w", cfg.FQDNTemplate, err)
	}
	if err := tmpl.Execute(&bytes.Buffer{}, tmplData{Name: "n", Namespace: "ns", Kind: "service"}); err != nil {
		return nil, fmt.Errorf("fqdn template %q: %w", cfg.FQDNTemplate, err)
	}
	s := &Source{cfg: cfg, tmpl: tmpl, zone: endpoint.NormalizeName(cfg.Zone),
		byResource: map[string][]endpoint.Endpoint{}, refs: map[string]*corev1.ObjectReference{}, byName: map[string]map[string]bool{}}
	s.factory = informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0, informers.WithNamespace(cfg.Namespace))
	if cfg.Services {
		s.svcInf = s.factory.Core().V1().Services().Informer()
		_ = s.svcInf.SetTransform(stripService)
		s.epsInf = s.factory.InformerFor(&discoveryv1.EndpointSlice{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
			return discoveryinformers.NewFilteredEndpointSliceInformer(c, cfg.Namespace, resync, cache.Indexers{svcIndex: func(obj any) ([]string, error) {
				es, ok := obj.(*discoveryv1.EndpointSlice)
				if !ok {
					return nil, nil
				}
				return []string{es.Namespace + "/" + es.Labels[discoveryv1.LabelServiceName]}, nil
			}}, func(o *metav1.ListOptions) {
				o.LabelSelector = discoveryv1.LabelServiceName // only slices of a Service
			})
		})
		_ = s.epsInf.SetTransform(stripSlice)
		if err := s.addHandler(s.svcInf, func(obj any) string {
			if m, ok := obj.(metav1.Object); ok {
				return m.GetNamespace() + "/" + m.GetName()
			}
			return ""
		}, s.serviceChanged); err != nil {
			return nil, err
		}
		if err := s.addHandler(s.epsInf, func(obj any) string {
			if es, ok := obj.(*discoveryv1.EndpointSlice); ok {
				return es.Namespace + "/" + es.Labels[discoveryv1.LabelServiceName]
			}
			return ""
		}, s.serviceChanged); err != nil {
			return nil, err
		}
	}
	if cfg.Pods {
		s.podInf = s.factory.InformerFor(&corev1.Pod{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
			return coreinformers.NewFilteredPodInformer(c, cfg.Namespace, resync, cache.Indexers{}, func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("status.phase", string(corev1.PodRunning)).String()
			})
		})
		_ = s.podInf.SetTransform(stripPod)
		if err := s.addHandler(s.podInf, func(obj any) string {
			if m, ok := obj.(metav1.Object); ok {
				return m.GetNamespace() + "/" + m.GetName()
			}
			return ""
		}, s.podChanged); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// addHandler registers the event handler of one informer and keeps its
// registration: the desired state is complete only once every handler has
// processed its informer's initial list, not when the informer's store has
// it (the handlers run behind the store, on their own goroutines).
func (s *Source) addHandler(inf cache.SharedIndexInformer, key func(any) string, changed func(string)) error {
	get := func(obj any) string {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		return key(obj)
	}
	reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { changed(get(obj)) },
		UpdateFunc: func(_, obj any) { changed(get(obj)) },
		DeleteFunc: func(obj any) { changed(get(obj)) },
	})
	if err != nil {
		return fmt.Errorf("add event handler: %w", err)
	}
	s.regs = append(s.regs, reg)
	return nil
}

// Start runs the informers until ctx ends and waits until every event
// handler has processed its informer's initial list (so the desired state
// is complete); it returns false if that did not happen (then nothing may
// be deleted).
func (s *Source) Start(ctx context.Context) bool {
	s.factory.Start(ctx.Done())
	synced := make([]cache.InformerSynced, 0, len(s.regs))
	for _, reg := range s.regs {
		synced = append(synced, reg.HasSynced)
	}
	return cache.WaitForCacheSync(ctx.Done(), synced...)
}

// Shutdown waits for the informer goroutines to end (after ctx's end).
func (s *Source) Shutdown() { s.factory.Shutdown() }

// Synced reports whether every event handler has processed its informer's
// initial list: a registration's HasSynced implies its informer's.
func (s *Source) Synced() bool {
	for _, reg := range s.regs {
		if !reg.HasSynced() {
			return false
		}
	}
	return true
}

// set records a resource's endpoints and returns the names touched (the
// ones it had and has), for notify.
func (s *Source) set(resource string, ref *corev1.ObjectReference, eps []endpoint.Endpoint) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	touched := map[string]bool{}
	for _, ep := range s.byResource[resource] {
		touched[ep.Name] = true
		if rs := s.byName[ep.Name]; rs != nil {
			delete(rs, resource)
			if len(rs) == 0 {
				delete(s.byName, ep.Name)
			}
		}
	}
	if len(eps) == 0 {
		delete(s.byResource, resource)
		delete(s.refs, resource)
	} else {
		s.byResource[resource] = eps
		s.refs[resource] = ref
		for _, ep := range eps {
			touched[ep.Name] = true
			if s.byName[ep.Name] == nil {
				s.byName[ep.Name] = map[string]bool{}
			}
			s.byName[ep.Name][resource] = true
		}
	}
	names := make([]string, 0, len(touched))
	for n := range touched {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// notify reports touched names to OnChange.
func (s *Source) notify(names []string) {
	if len(names) > 0 && s.cfg.OnChange != nil {
		s.cfg.OnChange(names)
	}
}

// Endpoints returns every desired endpoint.
func (s *Source) Endpoints() []endpoint.Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []endpoint.Endpoint
	for _, eps := range s.byResource {
		out = append(out, eps...)
	}
	return out
}

// EndpointsFor returns the desired endpoints of one record name.
func (s *Source) EndpointsFor(name string) []endpoint.Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []endpoint.Endpoint
	for res := range s.byName[name] {
		for _, ep := range s.byResource[res] {
			if ep.Name == name {
				out = append(out, ep)
			}
		}
	}
	return out
}

// Resources returns how many resources currently produce endpoints.
func (s *Source) Resources() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byResource)
}

// Ref returns the object reference of a resource ("svc/ns/name"), for Events.
func (s *Source) Ref(resource string) *corev1.ObjectReference {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refs[resource]
}

type tmplData struct{ Name, Namespace, Kind string }

// names returns the record names (relative to the zone) of an object: its
// hostname annotations when set, else the FQDN template.
func (s *Source) names(meta metav1.ObjectMeta, kind string, ref *corev1.ObjectReference) []string {
	var raw []string
	for _, k := range []string{Hostname, HostnameAlpha} {
		if v, ok := meta.Annotations[k]; ok {
			for _, h := range strings.Split(v, ",") {
				if h = strings.TrimSpace(h); h != "" {
					raw = append(raw, h)
				}
			}
		}
	}
	fromAnnotation := len(raw) > 0
	if !fromAnnotation {
		var b bytes.Buffer
		if err := s.tmpl.Execute(&b, tmplData{Name: meta.Name, Namespace: meta.Namespace, Kind: kind}); err != nil {
			s.invalid(ref, fmt.Sprintf("fqdn template: %v", err))
			return nil
		}
		raw = strings.Split(b.String(), ",")
	}
	var out []string
	for _, h := range raw {
		n, ok := s.relative(h, fromAnnotation)
		if !ok {
			s.invalid(ref, fmt.Sprintf("hostname %q is not in zone %s", h, s.zone))
			continue
		}
		out = append(out, n)
	}
	return endpoint.SortTargets(out)
}

// relative maps a name to its Rr: annotation values are FQDNs that must be
// in the zone; template results are relative unless they end with the zone.
func (s *Source) relative(h string, fqdn bool) (string, bool) {
	h = endpoint.NormalizeName(h)
	if h == "" {
		return "", false
	}
	if h == s.zone {
		return "@", true
	}
	if rr, ok := strings.CutSuffix(h, "."+s.zone); ok {
		return rr, true
	}
	if fqdn {
		return "", false
	}
	return h, true
}

func (s *Source) invalid(ref *corev1.ObjectReference, reason string) {
	s.cfg.Logger.Warn("resource skipped", "resource", ref.Kind+"/"+ref.Namespace+"/"+ref.Name, "reason", reason)
	if s.cfg.OnInvalid != nil {
		s.cfg.OnInvalid(ref, reason)
	}
}

func (s *Source) ttl(meta metav1.ObjectMeta, ref *corev1.ObjectReference) int {
	for _, k := range []string{TTL, TTLAlpha} {
		v, ok := meta.Annotations[k]
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			d, derr := time.ParseDuration(strings.TrimSpace(v))
			if derr != nil {
				s.invalid(ref, fmt.Sprintf("%s %q: not seconds or a duration", k, v))
				return s.cfg.TTL
			}
			n = int64(d / time.Second)
		}
		return int(min(max(n, MinTTL), MaxTTL))
	}
	return s.cfg.TTL
}

func isTrue(v string) bool { b, _ := strconv.ParseBool(v); return b }

// serviceChanged recomputes a Service's endpoints. The Service's and its
// EndpointSlices' handlers run on separate goroutines: without calc, one
// could read the stores, the other read newer ones and store its result,
// and the first then overwrite it with the older view.
func (s *Source) serviceChanged(key string) {
	s.calc.Lock()
	names := s.updateService(key)
	s.calc.Unlock()
	s.notify(names)
}

func (s *Source) updateService(key string) []string {
	ns, name, ok := strings.Cut(key, "/")
	if !ok || s.svcInf == nil {
		return nil
	}
	resource := "svc/" + key
	obj, exists, err := s.svcInf.GetIndexer().GetByKey(key)
	if err != nil || !exists {
		return s.set(resource, nil, nil)
	}
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return nil
	}
	ref := &corev1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: ns, Name: name, UID: svc.UID}
	return s.set(resource, ref, s.serviceEndpoints(svc, ref, resource))
}

func (s *Source) serviceEndpoints(svc *corev1.Service, ref *corev1.ObjectReference, resource string) []endpoint.Endpoint {
	if isTrue(svc.Annotations[Ignore]) || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	names := s.names(svc.ObjectMeta, "service", ref)
	if len(names) == 0 {
		return nil
	}
	ttl, adopt := s.ttl(svc.ObjectMeta, ref), isTrue(svc.Annotations[Adopt])
	var targets []string
	perHost := map[string][]string{} // hostname → addresses (headless)
	switch {
	case svc.Spec.Type == corev1.ServiceTypeLoadBalancer:
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IP != "" {
				targets = append(targets, in.IP)
			} else if in.Hostname != "" {
				targets = append(targets, in.Hostname)
			}
		}
	case svc.Spec.ClusterIP == corev1.ClusterIPNone:
		objs, _ := s.epsInf.GetIndexer().ByIndex(svcIndex, svc.Namespace+"/"+svc.Name)
		for _, o := range objs {
			es, ok := o.(*discoveryv1.EndpointSlice)
			if !ok || es.AddressType == discoveryv1.AddressTypeFQDN {
				continue
			}
			for _, e := range es.Endpoints {
				if !(e.Conditions.Ready == nil || *e.Conditions.Ready || svc.Spec.PublishNotReadyAddresses) {
					continue
				}
				targets = append(targets, e.Addresses...)
				if e.Hostname != nil && *e.Hostname != "" {
					perHost[*e.Hostname] = append(perHost[*e.Hostname], e.Addresses...)
				}
			}
		}
	default:
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			ips = []string{svc.Spec.ClusterIP}
		}
		targets = ips
	}
	var out []endpoint.Endpoint
	for _, n := range names {
		out = append(out, group(n, targets, ttl, resource, adopt)...)
		hosts := make([]string, 0, len(perHost))
		for h := range perHost {
			hosts = append(hosts, h)
		}
		sort.Strings(hosts)
		for _, h := range hosts {
			hn := h + "." + n
			if n == "@" {
				hn = h
			}
			out = append(out, group(hn, perHost[h], ttl, resource, adopt)...)
		}
	}
	return out
}

// group splits targets into A, AAAA and CNAME endpoints of one name.
func group(name string, targets []string, ttl int, resource string, adopt bool) []endpoint.Endpoint {
	by := map[string][]string{}
	for _, t := range targets {
		typ := endpoint.TypeOf(t)
		if typ == "" {
			typ = "CNAME"
			t = endpoint.NormalizeName(t)
		}
		by[typ] = append(by[typ], t)
	}
	var out []endpoint.Endpoint
	for _, typ := range []string{"A", "AAAA", "CNAME"} {
		if len(by[typ]) == 0 {
			continue
		}
		ts := endpoint.SortTargets(by[typ])
		if typ == "CNAME" {
			ts = ts[:1] // one CNAME per name
		}
		out = append(out, endpoint.Endpoint{Name: name, Type: typ, Targets: ts, TTL: ttl, Resource: resource, Adopt: adopt})
	}
	return out
}

func (s *Source) podChanged(key string) {
	s.calc.Lock()
	names := s.updatePod(key)
	s.calc.Unlock()
	s.notify(names)
}

func (s *Source) updatePod(key string) []string {
	ns, name, ok := strings.Cut(key, "/")
	if !ok || s.podInf == nil {
		return nil
	}
	resource := "pod/" + key
	obj, exists, err := s.podInf.GetIndexer().GetByKey(key)
	if err != nil || !exists {
		return s.set(resource, nil, nil)
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil
	}
	ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: ns, Name: name, UID: pod.UID}
	if !isTrue(pod.Annotations[Publish]) || isTrue(pod.Annotations[Ignore]) || pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning {
		return s.set(resource, ref, nil)
	}
	var ips []string
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = []string{pod.Status.PodIP}
	}
	var out []endpoint.Endpoint
	ttl, adopt := s.ttl(pod.ObjectMeta, ref), isTrue(pod.Annotations[Adopt])
	for _, n := range s.names(pod.ObjectMeta, "pod", ref) {
		out = append(out, group(n, ips, ttl, resource, adopt)...)
	}
	return s.set(resource, ref, out)
}

// ---- transforms: keep only what is used ----

func stripMeta(m *metav1.ObjectMeta) {
	m.ManagedFields = nil
	delete(m.Annotations, "kubectl.kubernetes.io/last-applied-configuration")
	m.OwnerReferences = nil
	m.Finalizers = nil
}

func stripService(obj any) (any, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	stripMeta(&svc.ObjectMeta)
	svc.Labels = nil
	svc.Spec = corev1.ServiceSpec{Type: svc.Spec.Type, ClusterIP: svc.Spec.ClusterIP, ClusterIPs: svc.Spec.ClusterIPs,
		PublishNotReadyAddresses: svc.Spec.PublishNotReadyAddresses}
	return svc, nil
}

func stripSlice(obj any) (any, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	stripMeta(&es.ObjectMeta)
	es.Annotations = nil
	es.Labels = map[string]string{discoveryv1.LabelServiceName: es.Labels[discoveryv1.LabelServiceName]}
	es.Ports = nil
	for i := range es.Endpoints {
		e := &es.Endpoints[i]
		e.TargetRef, e.DeprecatedTopology, e.Zone, e.NodeName, e.Hints = nil, nil, nil, nil, nil
	}
	return es, nil
}

func stripPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	stripMeta(&pod.ObjectMeta)
	pod.Labels = nil
	pod.Spec = corev1.PodSpec{}
	pod.Status = corev1.PodStatus{Phase: pod.Status.Phase, PodIP: pod.Status.PodIP, PodIPs: pod.Status.PodIPs}
	return pod, nil
}
