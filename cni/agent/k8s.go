package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// ConditionType is the node condition the agent maintains.
const ConditionType = "DNSAccelENIPool"

// KubePods lists the node's pods from the API server.
type KubePods struct {
	Client kubernetes.Interface
	Node   string
}

// OnNode implements Pods (one List with a spec.nodeName field selector,
// uncached: it runs on start and once per leak interval).
func (k KubePods) OnNode(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	opts := metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", k.Node).String(), Limit: 500}
	for {
		l, err := k.Client.CoreV1().Pods("").List(ctx, opts)
		if err != nil {
			return nil, err
		}
		for _, p := range l.Items {
			if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			out[p.Namespace+"/"+p.Name] = true
		}
		if l.Continue == "" {
			return out, nil
		}
		opts.Continue = l.Continue
	}
}

// KubeReporter writes Events on the Node and the DNSAccelENIPool node
// condition. Events with the same reason are sent at most once a minute.
type KubeReporter struct {
	Client kubernetes.Interface
	Node   string
	Log    *slog.Logger

	mu   sync.Mutex
	last map[string]time.Time
}

// Event implements Reporter.
func (r *KubeReporter) Event(warning bool, reason, msg string) {
	r.mu.Lock()
	if r.last == nil {
		r.last = map[string]time.Time{}
	}
	if t, ok := r.last[reason]; ok && time.Since(t) < time.Minute {
		r.mu.Unlock()
		return
	}
	r.last[reason] = time.Now()
	r.mu.Unlock()
	typ := corev1.EventTypeNormal
	if warning {
		typ = corev1.EventTypeWarning
	}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: r.Node + ".eni-", Namespace: metav1.NamespaceDefault},
		InvolvedObject: corev1.ObjectReference{Kind: "Node", Name: r.Node, UID: types.UID(r.Node), APIVersion: "v1"},
		Reason:         reason, Message: msg, Type: typ, FirstTimestamp: now, LastTimestamp: now, Count: 1,
		Source: corev1.EventSource{Component: "eni-agent", Host: r.Node},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.Client.CoreV1().Events(metav1.NamespaceDefault).Create(ctx, ev, metav1.CreateOptions{}); err != nil && r.Log != nil {
		r.Log.Warn("node event", "reason", reason, "err", err)
	}
}

// Condition implements Reporter.
func (r *KubeReporter) Condition(ok bool, reason, msg string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.setCondition(ctx, ok, reason, msg); err != nil && r.Log != nil {
		r.Log.Warn("node condition", "err", err)
	}
}

func (r *KubeReporter) setCondition(ctx context.Context, ok bool, reason, msg string) error {
	for attempt := 0; attempt < 5; attempt++ {
		n, err := r.Client.CoreV1().Nodes().Get(ctx, r.Node, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("node %s: %w", r.Node, err)
		}
		st := corev1.ConditionFalse
		if ok {
			st = corev1.ConditionTrue
		}
		now := metav1.Now()
		c := corev1.NodeCondition{Type: ConditionType, Status: st, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
		found := false
		for i := range n.Status.Conditions {
			if n.Status.Conditions[i].Type == ConditionType {
				if n.Status.Conditions[i].Status == st {
					c.LastTransitionTime = n.Status.Conditions[i].LastTransitionTime
				}
				n.Status.Conditions[i] = c
				found = true
			}
		}
		if !found {
			n.Status.Conditions = append(n.Status.Conditions, c)
		}
		_, err = r.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		if err == nil || !apierrors.IsConflict(err) {
			return err
		}
	}
	return fmt.Errorf("node %s: conflicts updating status", r.Node)
}
