package agent

import (
	"context"
	"net/netip"
	"time"

	"github.com/dnsaccel/dnsaccel/alicloud"
)

// ENI is a network interface as the cloud describes it.
type ENI struct {
	ID         string
	MAC        string
	VSwitchID  string
	Status     string // Available, Attaching, InUse, Detaching, Deleting
	InstanceID string
	Name       string
	Type       string // Primary or Secondary
	Primary    netip.Addr
	IPs        []netip.Addr // every private address, the primary first
}

// VSwitch is a vSwitch with its free address count.
type VSwitch struct {
	ID   string
	Zone string
	CIDR netip.Prefix
	Free int
}

// Limits are an instance type's ENI limits.
type Limits struct {
	ENIs      int // EniQuantity, the primary ENI included
	IPsPerENI int // EniPrivateIpAddressQuantity, the primary address included
}

// Cloud is the ECS API the pool needs. Implementations return *CloudError
// for API errors.
type Cloud interface {
	CreateENI(ctx context.Context, r CreateENIRequest) (*ENI, error)
	AttachENI(ctx context.Context, eniID, instanceID string) error
	DetachENI(ctx context.Context, eniID, instanceID string) error
	DeleteENI(ctx context.Context, eniID string) error
	AssignIPs(ctx context.Context, eniID string, count int, token string) ([]netip.Addr, error)
	UnassignIPs(ctx context.Context, eniID string, ips []netip.Addr) error
	// DescribeENIs lists ENIs attached to instanceID (if set) or named name
	// (if set), any status.
	DescribeENIs(ctx context.Context, instanceID, name string) ([]ENI, error)
	InstanceLimits(ctx context.Context, instanceType string) (Limits, error)
	DescribeVSwitches(ctx context.Context, ids []string) ([]VSwitch, error)
}

// CreateENIRequest creates an ENI with Count addresses (primary included).
type CreateENIRequest struct {
	VSwitchID      string
	SecurityGroups []string
	Count          int
	Name           string
	Token          string
}

// CloudError is an error of the client core (alicloud): an API answer
// (Code set) or a request that got no answer (Kind alicloud.KindTransport);
// its text never holds the signed URL or a credential.
type CloudError = alicloud.Error

// Error codes the pool acts on.
const (
	CodeThrottling   = "Throttling.User"
	CodeIPNotEnough  = "InvalidVSwitchId.IpNotEnough"
	CodeIPQuota      = "QuotaExceeded.PrivateIpAddress"
	CodeENILimit     = "EniPerInstanceLimitExceeded"
	codeENINotFound  = "InvalidEniId.NotFound"
	codeIPUnassigned = "InvalidIp.NotFound"
)

func cloudCode(err error) string { return alicloud.Code(err) }

// IsThrottled reports a Throttling* answer.
func IsThrottled(err error) bool { return alicloud.IsThrottled(err) }

// IsAddressShortage reports that the vSwitch or the account is out of
// addresses.
func IsAddressShortage(err error) bool {
	c := cloudCode(err)
	return c == CodeIPNotEnough || c == CodeIPQuota
}

// IsENILimit reports that the instance has its maximum of ENIs.
func IsENILimit(err error) bool { return cloudCode(err) == CodeENILimit }

// IsNotFound reports an answer saying the ENI (or address) does not exist.
func IsNotFound(err error) bool {
	c := cloudCode(err)
	return c == codeENINotFound || c == codeIPUnassigned
}

// retryable: throttling, transient server faults and busy resources,
// connection errors (alicloud's classification).
func retryable(err error) bool { return alicloud.IsRetryable(err) }

// NewToken returns a fresh ClientToken.
func NewToken() string { return alicloud.NewClientToken() }

// Observer hears about every API call (metrics, events).
type Observer interface {
	APICall(action, code string, d time.Duration)
	Throttled(action string, err error)
}

// Limited wraps a Cloud with per-action client-side rate limits and retries
// with jittered exponential backoff on throttling and transient faults
// (the alicloud core's Invoker). A retried Create or Assign carries the
// same ClientToken, so a call that succeeded server-side while its answer
// was lost is not repeated.
type Limited struct {
	c        Cloud
	inv      *alicloud.Invoker
	Attempts int           // per call; default 8
	Base     time.Duration // first backoff; default 200 ms
	Max      time.Duration // backoff cap; default 5 s
}

// NewLimited wraps c; qps <= 0 means no client-side limit.
func NewLimited(c Cloud, qps float64, obs Observer) *Limited {
	l := &Limited{c: c, Attempts: 8, Base: 200 * time.Millisecond, Max: 5 * time.Second}
	l.inv = alicloud.NewInvoker(alicloud.Config{Product: "ecs", PerAction: alicloud.Limit{QPS: qps}, Observe: func(a alicloud.Attempt) {
		if obs == nil {
			return
		}
		code := "OK"
		if a.Err != nil {
			if code = a.Code; code == "" {
				code = "error"
			}
		}
		obs.APICall(a.Action, code, a.Duration)
		if a.Retry && a.Kind == alicloud.KindThrottled {
			obs.Throttled(a.Action, a.Err)
		}
	}})
	return l
}

func (l *Limited) call(ctx context.Context, action string, f func() error) error {
	return l.inv.DoRetry(ctx, action, false, alicloud.Retry{Attempts: l.Attempts, Base: l.Base, Max: l.Max}, func(context.Context) error { return f() })
}

// CreateENI implements Cloud.
func (l *Limited) CreateENI(ctx context.Context, r CreateENIRequest) (e *ENI, err error) {
	err = l.call(ctx, "CreateNetworkInterface", func() error { e, err = l.c.CreateENI(ctx, r); return err })
	return e, err
}

// AttachENI implements Cloud.
func (l *Limited) AttachENI(ctx context.Context, eni, inst string) error {
	return l.call(ctx, "AttachNetworkInterface", func() error { return l.c.AttachENI(ctx, eni, inst) })
}

// DetachENI implements Cloud.
func (l *Limited) DetachENI(ctx context.Context, eni, inst string) error {
	return l.call(ctx, "DetachNetworkInterface", func() error { return l.c.DetachENI(ctx, eni, inst) })
}

// DeleteENI implements Cloud.
func (l *Limited) DeleteENI(ctx context.Context, eni string) error {
	return l.call(ctx, "DeleteNetworkInterface", func() error { return l.c.DeleteENI(ctx, eni) })
}

// AssignIPs implements Cloud.
func (l *Limited) AssignIPs(ctx context.Context, eni string, n int, token string) (ips []netip.Addr, err error) {
	err = l.call(ctx, "AssignPrivateIpAddresses", func() error { ips, err = l.c.AssignIPs(ctx, eni, n, token); return err })
	return ips, err
}

// UnassignIPs implements Cloud.
func (l *Limited) UnassignIPs(ctx context.Context, eni string, ips []netip.Addr) error {
	return l.call(ctx, "UnassignPrivateIpAddresses", func() error { return l.c.UnassignIPs(ctx, eni, ips) })
}

// DescribeENIs implements Cloud.
func (l *Limited) DescribeENIs(ctx context.Context, inst, name string) (out []ENI, err error) {
	err = l.call(ctx, "DescribeNetworkInterfaces", func() error { out, err = l.c.DescribeENIs(ctx, inst, name); return err })
	return out, err
}

// InstanceLimits implements Cloud.
func (l *Limited) InstanceLimits(ctx context.Context, t string) (lim Limits, err error) {
	err = l.call(ctx, "DescribeInstanceTypes", func() error { lim, err = l.c.InstanceLimits(ctx, t); return err })
	return lim, err
}

// DescribeVSwitches implements Cloud.
func (l *Limited) DescribeVSwitches(ctx context.Context, ids []string) (out []VSwitch, err error) {
	err = l.call(ctx, "DescribeVSwitches", func() error { out, err = l.c.DescribeVSwitches(ctx, ids); return err })
	return out, err
}
