package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dnsaccel/dnsaccel/cni/api"
)

// fakeCloud is an in-memory ECS with scripted errors.
type fakeCloud struct {
	mu      sync.Mutex
	next    int
	enis    map[string]*ENI
	calls   map[string]int
	tokens  map[string][]string // action -> tokens seen
	fail    map[string][]error  // action -> errors to return first
	byToken map[string]any
	// lose: answers to lose per action: the call takes effect, the caller
	// gets a connection error (an answer lost on the way back).
	lose   map[string]int
	ipsPer int
	// gate, if set, holds every create and assign until it can receive.
	gate chan struct{}
}

func (f *fakeCloud) wait() {
	if f.gate != nil {
		<-f.gate
	}
}

var errLostAnswer = &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}

// lost reports (and counts) an answer to lose. f.mu held.
func (f *fakeCloud) lost(action string) bool {
	if f.lose[action] > 0 {
		f.lose[action]--
		return true
	}
	return false
}

func newFake(ipsPer int) *fakeCloud {
	return &fakeCloud{enis: map[string]*ENI{}, calls: map[string]int{}, tokens: map[string][]string{}, fail: map[string][]error{}, byToken: map[string]any{}, lose: map[string]int{}, ipsPer: ipsPer}
}

func (f *fakeCloud) hit(action, token string) error {
	f.calls[action]++
	if token != "" {
		f.tokens[action] = append(f.tokens[action], token)
	}
	if errs := f.fail[action]; len(errs) > 0 {
		f.fail[action] = errs[1:]
		return errs[0]
	}
	return nil
}

func (f *fakeCloud) addr() netip.Addr {
	f.next++
	return netip.AddrFrom4([4]byte{10, 0, byte(f.next >> 8), byte(f.next)})
}

func (f *fakeCloud) CreateENI(_ context.Context, r CreateENIRequest) (*ENI, error) {
	f.wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.hit("Create", r.Token); err != nil {
		return nil, err
	}
	if e, ok := f.byToken[r.Token].(*ENI); ok {
		c := *e
		return &c, nil
	}
	f.next++
	e := &ENI{ID: fmt.Sprintf("eni-%d", f.next), MAC: fmt.Sprintf("00:16:3e:00:00:%02x", f.next), VSwitchID: r.VSwitchID, Status: "Available", Name: r.Name, Type: "Secondary"}
	for i := 0; i < r.Count; i++ {
		e.IPs = append(e.IPs, f.addr())
	}
	e.Primary = e.IPs[0]
	f.enis[e.ID] = e
	f.byToken[r.Token] = e
	if f.lost("Create") {
		return nil, errLostAnswer
	}
	c := *e
	return &c, nil
}

func (f *fakeCloud) AttachENI(_ context.Context, id, inst string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.hit("Attach", ""); err != nil {
		return err
	}
	f.enis[id].Status, f.enis[id].InstanceID = "InUse", inst
	return nil
}

func (f *fakeCloud) DetachENI(_ context.Context, id, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.hit("Detach", "")
	if e := f.enis[id]; e != nil {
		e.Status, e.InstanceID = "Available", ""
	}
	return nil
}

func (f *fakeCloud) DeleteENI(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.hit("Delete", "")
	delete(f.enis, id)
	return nil
}

func (f *fakeCloud) AssignIPs(_ context.Context, id string, n int, token string) ([]netip.Addr, error) {
	f.wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.hit("Assign", token); err != nil {
		return nil, err
	}
	if ips, ok := f.byToken[token].([]netip.Addr); ok {
		return ips, nil
	}
	e := f.enis[id]
	if len(e.IPs)+n > f.ipsPer {
		return nil, &CloudError{Code: CodeIPQuota}
	}
	var got []netip.Addr
	for i := 0; i < n; i++ {
		got = append(got, f.addr())
	}
	e.IPs = append(e.IPs, got...)
	f.byToken[token] = got
	if f.lost("Assign") {
		return nil, errLostAnswer
	}
	return got, nil
}

func (f *fakeCloud) UnassignIPs(_ context.Context, id string, ips []netip.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.hit("Unassign", ""); err != nil {
		return err
	}
	e := f.enis[id]
	drop := map[netip.Addr]bool{}
	for _, a := range ips {
		if !slices.Contains(e.IPs, a) {
			return &CloudError{Action: "UnassignPrivateIpAddresses", Code: codeIPUnassigned}
		}
		drop[a] = true
	}
	var keep []netip.Addr
	for _, a := range e.IPs {
		if !drop[a] {
			keep = append(keep, a)
		}
	}
	e.IPs = keep
	if f.lost("Unassign") {
		return errLostAnswer
	}
	return nil
}

func (f *fakeCloud) DescribeENIs(_ context.Context, inst, name string) ([]ENI, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.hit("Describe", "")
	var out []ENI
	for _, e := range f.enis {
		if (inst == "" || e.InstanceID == inst) && (name == "" || e.Name == name) {
			c := *e
			c.IPs = append([]netip.Addr(nil), e.IPs...)
			out = append(out, c)
		}
	}
	return out, nil
}

func (f *fakeCloud) InstanceLimits(context.Context, string) (Limits, error) {
	return Limits{ENIs: 4, IPsPerENI: f.ipsPer}, nil
}

func (f *fakeCloud) DescribeVSwitches(_ context.Context, ids []string) ([]VSwitch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.hit("DescribeVSwitches", "")
	var out []VSwitch
	for _, id := range ids {
		out = append(out, VSwitch{ID: id, Free: map[string]int{"vsw-1": 50, "vsw-2": 80}[id]})
	}
	return out, nil
}

func (f *fakeCloud) count(action string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[action]
}

// fakeMeta lists the MACs of attached ENIs.
type fakeMeta struct{ c *fakeCloud }

func (m fakeMeta) MACs(context.Context) ([]string, error) {
	m.c.mu.Lock()
	defer m.c.mu.Unlock()
	var out []string
	for _, e := range m.c.enis {
		if e.Status == "InUse" {
			out = append(out, e.MAC)
		}
	}
	return out, nil
}

func (m fakeMeta) ENIInfo(context.Context, string) (ENIInfo, error) {
	return ENIInfo{Gateway: netip.MustParseAddr("10.0.0.253"), CIDR: netip.MustParsePrefix("10.0.0.0/16")}, nil
}

func newTestPool(t *testing.T, c Cloud, f *fakeCloud, min, max int, limits Limits) (*Pool, *Store) {
	t.Helper()
	st, err := OpenStore(filepath.Join(t.TempDir(), "eni.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	p := NewPool(PoolConfig{InstanceID: "i-1", NodeIP: "10.0.0.1", VSwitches: []string{"vsw-1", "vsw-2"}, SecurityGroups: []string{"sg-1"},
		MinIdle: min, MaxIdle: max, Limits: limits, QuotaBackoff: 200 * time.Millisecond, ErrorBackoff: 50 * time.Millisecond}, c, fakeMeta{f}, st, nil, nil, nil)
	return p, st
}

func run(t *testing.T, p *Pool) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func key(i int) api.Key { return api.Key{ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"} }

func TestWatermarksAndBatching(t *testing.T) {
	f := newFake(10)
	p, _ := newTestPool(t, f, f, 2, 8, Limits{ENIs: 4, IPsPerENI: 10})
	run(t, p)
	waitFor(t, "the pool to warm up", func() bool { return p.Status(api.ModeVeth).Idle >= 2 })
	ctx := context.Background()
	seen := map[string]bool{}
	for i := 0; i < 25; i++ {
		a, err := p.Alloc(ctx, api.AllocRequest{Key: key(i), Mode: api.ModeVeth})
		if err != nil {
			t.Fatalf("alloc %d: %v; status %+v; calls %v", i, err, p.Status(api.ModeVeth), f.calls)
		}
		if seen[a.IP] {
			t.Fatalf("%s handed out twice", a.IP)
		}
		seen[a.IP] = true
		// Again for the same key: the same address.
		b, err := p.Alloc(ctx, api.AllocRequest{Key: key(i), Mode: api.ModeVeth})
		if err != nil || b.IP != a.IP {
			t.Fatalf("repeated alloc: %v %v", b, err)
		}
	}
	waitFor(t, "the refill to settle", func() bool { s := p.Status(api.ModeVeth); return s.Idle >= 2 && s.Idle <= 8 })
	calls := f.count("Create") + f.count("Attach") + f.count("Assign")
	// 25 pods + up to 8 idle = 33 addresses in batches: 4 ENIs of 10 at most.
	if calls > 12 {
		t.Fatalf("%d create/attach/assign calls for 25 pods (create %d, assign %d): not batched", calls, f.count("Create"), f.count("Assign"))
	}
	if err := p.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 25; i++ {
		if _, err := p.Release(key(i), "del"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "idle addresses to go back down to max-idle", func() bool { return p.Status(api.ModeVeth).Idle <= 8 })
	if f.count("Unassign")+f.count("Delete") == 0 {
		t.Fatal("nothing given back")
	}
}

func TestClientTokenReusedOnThrottling(t *testing.T) {
	f := newFake(10)
	throttled := &CloudError{Action: "AssignPrivateIpAddresses", Code: CodeThrottling}
	f.fail["Assign"] = []error{throttled, throttled}
	l := NewLimited(f, 0, nil)
	l.Base = time.Millisecond
	e, err := l.CreateENI(context.Background(), CreateENIRequest{VSwitchID: "v", Count: 1, Token: "t-create"})
	if err != nil {
		t.Fatal(err)
	}
	ips, err := l.AssignIPs(context.Background(), e.ID, 3, "t-assign")
	if err != nil || len(ips) != 3 {
		t.Fatalf("assign: %v %v", ips, err)
	}
	if got := f.tokens["Assign"]; len(got) != 3 || got[0] != "t-assign" || got[1] != "t-assign" || got[2] != "t-assign" {
		t.Fatalf("tokens on retries: %v", got)
	}
	// A lost answer: the same token again returns the same addresses.
	again, err := l.AssignIPs(context.Background(), e.ID, 3, "t-assign")
	if err != nil || fmt.Sprint(again) != fmt.Sprint(ips) {
		t.Fatalf("repeat with the token: %v %v", again, err)
	}
	if n := len(f.enis[e.ID].IPs); n != 4 {
		t.Fatalf("ENI has %d addresses, want 4", n)
	}
	// Non-retryable errors are not retried.
	f.fail["Assign"] = []error{&CloudError{Code: CodeIPNotEnough}}
	before := f.count("Assign")
	if _, err := l.AssignIPs(context.Background(), e.ID, 1, "t-3"); !IsAddressShortage(err) || f.count("Assign") != before+1 {
		t.Fatalf("IpNotEnough: %v after %d calls", err, f.count("Assign")-before)
	}
}

func TestExhaustedAndRecovered(t *testing.T) {
	f := newFake(10)
	short := &CloudError{Action: "CreateNetworkInterface", Code: CodeIPNotEnough, Message: "not enough"}
	f.fail["Create"] = []error{short, short}
	p, _ := newTestPool(t, f, f, 0, 4, Limits{ENIs: 4, IPsPerENI: 10})
	p.cfg.QuotaBackoff = 2 * time.Second // outlasts both failures, even on a loaded machine
	run(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := p.Alloc(ctx, api.AllocRequest{Key: key(1), Mode: api.ModeVeth})
	var ae *api.Error
	// CNI errors: a short msg, the long story in details.
	if !errors.As(err, &ae) || ae.Code != api.CodeTryAgainLater || ae.Msg != "no address available for veth mode" || !strings.Contains(ae.Details, CodeIPNotEnough) {
		t.Fatalf("alloc with both vSwitches short: %#v", err)
	}
	if st := p.Status(api.ModeVeth); st.Ready || !strings.Contains(st.Reason, "vsw-1") || !strings.Contains(st.Reason, "vsw-2") {
		t.Fatalf("status: %+v", st)
	}
	waitFor(t, "the backoff to expire", func() bool { return p.Status(api.ModeVeth).Ready })
	if _, err := p.Alloc(ctx, api.AllocRequest{Key: key(1), Mode: api.ModeVeth}); err != nil {
		t.Fatal(err)
	}
}

func TestENILimit(t *testing.T) {
	f := newFake(3)
	p, _ := newTestPool(t, f, f, 0, 0, Limits{ENIs: 2, IPsPerENI: 3}) // one secondary ENI of 3
	run(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		if _, err := p.Alloc(ctx, api.AllocRequest{Key: key(i), Mode: api.ModeVeth}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := p.Alloc(ctx, api.AllocRequest{Key: key(9), Mode: api.ModeVeth})
	if err == nil || !strings.Contains(err.Error(), "ENI limit") {
		t.Fatalf("4th address on a full node: %v", err)
	}
	if _, err := p.Alloc(ctx, api.AllocRequest{Key: key(10), Mode: api.ModeExclusive}); err == nil {
		t.Fatal("exclusive ENI beyond the limit")
	}
}

type podSet map[string]bool

func (s podSet) OnNode(context.Context) (map[string]bool, error) { return s, nil }

func TestReconcile(t *testing.T) {
	f := newFake(10)
	p, st := newTestPool(t, f, f, 0, 10, Limits{ENIs: 4, IPsPerENI: 10})
	ctx := context.Background()
	e, _ := f.CreateENI(ctx, CreateENIRequest{VSwitchID: "vsw-1", Count: 4, Name: p.cfg.ENIName, Token: "x"})
	_ = f.AttachENI(ctx, e.ID, "i-1")
	leak, _ := f.CreateENI(ctx, CreateENIRequest{VSwitchID: "vsw-1", Count: 1, Name: p.cfg.ENIName, Token: "y"}) // never attached
	_ = st.PutENI(eniRecord{ID: e.ID})
	now := time.Now().UTC()
	mk := func(k api.Key, ip netip.Addr, pod string, age time.Duration) {
		_ = st.PutAlloc(&api.Allocation{Key: k, Mode: api.ModeVeth, IP: ip.String(), ENIID: e.ID, PodNamespace: "ns", PodName: pod, Created: now.Add(-age)})
	}
	mk(key(1), e.IPs[1], "live", time.Minute)
	mk(key(2), e.IPs[2], "gone", time.Minute)                          // pod deleted while the agent was down
	mk(key(3), e.IPs[3], "dup-old", 2*time.Minute)                     // older claim of the same address
	mk(key(4), e.IPs[3], "dup-new", time.Second)                       // newer claim wins
	mk(key(5), netip.MustParseAddr("10.9.9.9"), "noaddr", time.Minute) // the cloud does not have it
	// A create interrupted by a crash: repeated with its token.
	_ = st.PutOp(pendingOp{ID: "op1", Kind: "create", VSwitchID: "vsw-1", Count: 2, Token: "z"})
	// The dropped duplicate's host cleanup must leave the address's objects
	// to the kept pod; the others' addresses are nobody's.
	cleaned := map[string]bool{}
	p.HostCleanup = func(a api.Allocation, taken bool) { cleaned[a.PodName] = taken }
	if err := p.Reconcile(ctx, podSet{"ns/live": true, "ns/dup-old": true, "ns/dup-new": true, "ns/noaddr": true}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range p.Allocations() {
		got = append(got, a.PodName)
	}
	if strings.Join(got, ",") != "live,dup-new" {
		t.Fatalf("kept %v, want live,dup-new", got)
	}
	if want := map[string]bool{"dup-old": true, "noaddr": false, "gone": false}; !maps.Equal(cleaned, want) {
		t.Fatalf("host cleanups (pod: address taken) %v, want %v", cleaned, want)
	}
	if err := p.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	if f.count("Create") != 3 || len(f.tokens["Create"]) != 3 || f.tokens["Create"][2] != "z" {
		t.Fatalf("interrupted create not repeated with its token: %v", f.tokens["Create"])
	}
	if ops, _ := st.Ops(); len(ops) != 0 {
		t.Fatalf("ops left: %v", ops)
	}
	run(t, p)
	waitFor(t, "the never-attached ENI to be deleted", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		_, ok := f.enis[leak.ID]
		return !ok
	})
	// 4 + 2 addresses, 2 in use.
	if s := p.Status(api.ModeVeth); s.InUse != 2 || s.Idle != 4 {
		t.Fatalf("status %+v", s)
	}
}

func TestGC(t *testing.T) {
	f := newFake(10)
	p, _ := newTestPool(t, f, f, 0, 10, Limits{ENIs: 4, IPsPerENI: 10})
	run(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := 0; i < 4; i++ {
		if _, err := p.Alloc(ctx, api.AllocRequest{Key: key(i), Mode: api.ModeVeth}); err != nil {
			t.Fatal(err)
		}
	}
	var cleaned []string
	p.HostCleanup = func(a api.Allocation, _ bool) { cleaned = append(cleaned, a.ContainerID) }
	rel, err := p.GC([]api.Key{key(1), key(3)})
	if err != nil || len(rel) != 2 || len(p.Allocations()) != 2 || strings.Join(cleaned, ",") != "c0,c2" {
		t.Fatalf("GC released %v (%v), cleaned %v, left %d", rel, err, cleaned, len(p.Allocations()))
	}
	// A release that fails (the state file is gone): GC goes on, and says
	// what it could not free.
	p.store.Close()
	rel, err = p.GC(nil)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeInternal || !strings.Contains(ae.Details, "c1/eth0") || !strings.Contains(ae.Details, "c3/eth0") || len(rel) != 0 {
		t.Fatalf("GC with a closed state file: released %v, error %#v", rel, err)
	}
	if len(p.Allocations()) != 2 {
		t.Fatalf("GC freed addresses it could not forget: %d left", len(p.Allocations()))
	}
}

// New ENIs go to the configured vSwitch with the most free addresses,
// skipping one that is blocked after an address shortage.
func TestVSwitchByFreeAddresses(t *testing.T) {
	f := newFake(10)                                                   // DescribeVSwitches: vsw-1 50 free, vsw-2 80
	p, _ := newTestPool(t, f, f, 0, 0, Limits{ENIs: 4, IPsPerENI: 10}) // vsw-1 listed first
	ctx := context.Background()
	if v, err := p.pickVSwitch(ctx); err != nil || v != "vsw-2" {
		t.Fatalf("picked %q (%v), want vsw-2 (most free)", v, err)
	}
	p.noteFailure("vsw-2", &CloudError{Code: CodeIPNotEnough})
	if v, err := p.pickVSwitch(ctx); err != nil || v != "vsw-1" {
		t.Fatalf("picked %q (%v) with vsw-2 blocked, want vsw-1", v, err)
	}
	p.noteFailure("vsw-1", &CloudError{Code: CodeIPQuota})
	if v, err := p.pickVSwitch(ctx); err == nil {
		t.Fatalf("picked %q with both blocked", v)
	}
}

// Client-side limits are per action: a burst of one action waits for its
// bucket, another action is not held up by it.
func TestRateLimitPerAction(t *testing.T) {
	f := newFake(10)
	l := NewLimited(f, 2, nil) // 2 per second, burst 2
	ctx := context.Background()
	t0 := time.Now()
	for range 4 {
		if _, err := l.DescribeVSwitches(ctx, []string{"v"}); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(t0); d < 900*time.Millisecond {
		t.Fatalf("4 calls at 2/s (burst 2) took %s, want about 1 s", d)
	}
	t1 := time.Now()
	if _, err := l.DescribeENIs(ctx, "i-1", ""); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(t1); d > 200*time.Millisecond {
		t.Fatalf("another action waited %s behind DescribeVSwitches' bucket", d)
	}
}

// A create or assign whose answer is lost took effect in the cloud: the
// pool repeats it with the same ClientToken (ECS answers with what the
// first call made) instead of issuing a new request, so nothing leaks.
func TestLostAnswerRepeatedWithItsToken(t *testing.T) {
	f := newFake(10)
	f.lose["Create"], f.lose["Assign"] = 1, 1
	p, st := newTestPool(t, f, f, 0, 0, Limits{ENIs: 4, IPsPerENI: 10})
	run(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ { // the first needs an ENI, the second an assign
		if _, err := p.Alloc(ctx, api.AllocRequest{Key: key(i), Mode: api.ModeVeth}); err != nil {
			t.Fatalf("alloc %d: %v", i, err)
		}
	}
	// The pool clears an op from its journal right after the call it
	// guards returns, not before Alloc does: poll, with a deadline.
	ops, _ := st.Ops()
	for deadline := time.Now().Add(5 * time.Second); len(ops) != 0 && time.Now().Before(deadline); ops, _ = st.Ops() {
		time.Sleep(10 * time.Millisecond)
	}
	if len(ops) != 0 {
		t.Errorf("pending ops left: %v", ops)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.enis) != 1 {
		t.Errorf("%d ENIs in the cloud, want 1 (a lost create answer repeated with a new token leaks an ENI)", len(f.enis))
	}
	for _, action := range []string{"Create", "Assign"} {
		toks := f.tokens[action]
		if len(toks) != 2 || toks[0] != toks[1] {
			t.Errorf("%s tokens %v: want the lost call repeated once with its token", action, toks)
		}
	}
	for _, e := range f.enis {
		if len(e.IPs) != 2 {
			t.Errorf("ENI %s has %d addresses in the cloud, the pool knows 2", e.ID, len(e.IPs))
		}
	}
}

// addENI puts an attached ENI with n addresses into the cloud and the pool.
func addENI(t *testing.T, f *fakeCloud, p *Pool, n int) *poolENI {
	t.Helper()
	e, err := f.CreateENI(context.Background(), CreateENIRequest{VSwitchID: "vsw-1", Count: n, Name: p.cfg.ENIName, Token: NewToken()})
	if err != nil {
		t.Fatal(err)
	}
	_ = f.AttachENI(context.Background(), e.ID, "i-1")
	pe := &poolENI{ID: e.ID, MAC: e.MAC, VSwitchID: e.VSwitchID, Primary: e.Primary, ips: map[netip.Addr]api.Key{}}
	for _, a := range e.IPs {
		pe.ips[a] = api.Key{}
	}
	p.mu.Lock()
	p.enis[pe.ID] = pe
	p.mu.Unlock()
	return pe
}

func (p *Pool) inFlight() (refills, addrs int, enis []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range p.assigning {
		enis = append(enis, id)
	}
	slices.Sort(enis)
	return p.refillsLocked(), p.inflight, enis
}

// Refills overlap: a deficit larger than one assign's batch starts
// assigns on several ENIs at once (never two on one ENI), sized to the
// deficit, and counts what is in flight so it does not ask twice.
func TestRefillsOverlap(t *testing.T) {
	f := newFake(20)
	p, _ := newTestPool(t, f, f, 20, 40, Limits{ENIs: 4, IPsPerENI: 20})
	a, b := addENI(t, f, p, 5), addENI(t, f, p, 4)
	f.gate = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { close(f.gate); cancel(); p.work.Wait() }()
	for p.step(ctx) {
	}
	// idle 9, want 40: assign 10 on the fuller ENI, 10 on the other; then
	// 9 + 20 in flight >= min-idle 20: nothing more.
	refills, addrs, enis := p.inFlight()
	if want := []string{a.ID, b.ID}; refills != 2 || addrs != 20 || !slices.Equal(enis, sortedIDs(want)) {
		t.Fatalf("in flight: %d calls, %d addresses, assigning on %v; want 2 calls of 10 on %v", refills, addrs, enis, sortedIDs(want))
	}
	for range 2 {
		f.gate <- struct{}{}
	}
	waitFor(t, "both assigns to land", func() bool { r, _, _ := p.inFlight(); return r == 0 })
	if s := p.Status(api.ModeVeth); s.Idle != 29 {
		t.Fatalf("idle %d after two assigns of 10 onto 9, want 29", s.Idle)
	}
	if n := f.count("Assign"); n != 2 {
		t.Fatalf("%d assigns, want 2", n)
	}
}

func sortedIDs(ids []string) []string { s := slices.Clone(ids); slices.Sort(s); return s }

// Under demand the refill starts before idle falls below min-idle: with
// pods taking 20 addresses a second and an assign lasting a second, the
// pool asks for more at 25 idle (min-idle 20), and sizes the batch to be
// back near max-idle when it lands.
func TestRefillStartsEarlyUnderDemand(t *testing.T) {
	f := newFake(30)
	p, _ := newTestPool(t, f, f, 20, 50, Limits{ENIs: 4, IPsPerENI: 30})
	addENI(t, f, p, 25)
	f.gate = make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { close(f.gate); cancel(); p.work.Wait() }()
	if p.step(ctx) {
		t.Fatal("refill started at 25 idle without demand (min-idle 20)")
	}
	now := time.Now()
	p.mu.Lock()
	p.assignDur = time.Second
	for i := range 20 { // 20 allocations over the last second
		p.allocTimes = append(p.allocTimes, now.Add(-time.Second+time.Duration(i)*50*time.Millisecond))
	}
	p.mu.Unlock()
	if !p.step(ctx) {
		t.Fatal("no refill at 25 idle with pods taking 20 a second and assigns lasting 1 s")
	}
	if _, addrs, _ := p.inFlight(); addrs != 5 {
		// want = max 50 + demand 20 - 25 idle = 45, capped by the ENI's
		// room (30 - 25 = 5).
		t.Fatalf("%d addresses asked for, want the ENI's remaining 5", addrs)
	}
	if !p.step(ctx) {
		t.Fatal("no second refill: 25 + 5 in flight is still short of min-idle + demand")
	}
	if r, addrs, _ := p.inFlight(); r != 2 || addrs != 35 {
		t.Fatalf("in flight %d calls, %d addresses; want an assign of 5 and a create of 30", r, addrs)
	}
	f.gate <- struct{}{}
	f.gate <- struct{}{}
	waitFor(t, "both refills to land", func() bool { r, _, _ := p.inFlight(); return r == 0 })
}

// An unassign whose answer is lost took effect: the addresses must not go
// back into the pool (they would be handed to pods the VPC no longer
// routes to this node).
func TestLostUnassignAnswer(t *testing.T) {
	f := newFake(10)
	p, _ := newTestPool(t, f, f, 0, 6, Limits{ENIs: 4, IPsPerENI: 10})
	e := addENI(t, f, p, 8)
	f.lose["Unassign"] = 1
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if !p.step(ctx) {
		t.Fatal("no shrink with 8 idle, max-idle 6")
	}
	p.work.Wait()
	f.mu.Lock()
	cloud := len(f.enis[e.ID].IPs)
	f.mu.Unlock()
	if idle := p.Status(api.ModeVeth).Idle; idle != cloud || cloud != 6 {
		t.Fatalf("pool has %d idle addresses, the cloud %d on the ENI; want 6 and 6", idle, cloud)
	}
}

// An exclusive ENI made for an ADD that gave up waiting is kept for the
// runtime's retry, then deleted rather than held until the next restart.
func TestUnclaimedExclusiveENIDeleted(t *testing.T) {
	f := newFake(10)
	p, _ := newTestPool(t, f, f, 0, 0, Limits{ENIs: 4, IPsPerENI: 10})
	p.cfg.UnclaimedENITTL = 300 * time.Millisecond
	f.gate = make(chan struct{})
	run(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := p.Alloc(ctx, api.AllocRequest{Key: key(1), Mode: api.ModeExclusive}); err == nil {
		t.Fatal("exclusive alloc served while the create is held")
	}
	close(f.gate) // the create goes through after the ADD gave up
	waitFor(t, "the ENI to be made", func() bool { return f.count("Attach") == 1 })
	waitFor(t, "the unclaimed ENI to be deleted", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.enis) == 0
	})
	if s := p.Status(api.ModeExclusive); s.ENIs != 0 {
		t.Fatalf("pool still holds %d ENIs", s.ENIs)
	}
}

// TestLeakLoop: every interval, the addresses of pods gone from the node
// (and older than the interval) are released and cleaned up on the host;
// the live pods' addresses stay; the loop ends with its context.
func TestLeakLoop(t *testing.T) {
	f := newFake(10)
	p, _ := newTestPool(t, f, f, 0, 10, Limits{ENIs: 4, IPsPerENI: 10})
	run(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i, pod := range []string{"live", "gone", "also-gone"} {
		if _, err := p.Alloc(ctx, api.AllocRequest{Key: key(i), Mode: api.ModeVeth, PodNamespace: "ns", PodName: pod}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var cleaned []string
	p.HostCleanup = func(a api.Allocation, _ bool) { mu.Lock(); cleaned = append(cleaned, a.PodName); mu.Unlock() }
	loopCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.LeakLoop(loopCtx, podSet{"ns/live": true}, 50*time.Millisecond); close(done) }()
	waitFor(t, "the gone pods' addresses to be released", func() bool { return len(p.Allocations()) == 1 })
	if a := p.Allocations(); a[0].PodName != "live" {
		t.Fatalf("kept %+v, want the live pod's", a)
	}
	mu.Lock()
	sort.Strings(cleaned)
	got := strings.Join(cleaned, ",")
	mu.Unlock()
	if got != "also-gone,gone" {
		t.Errorf("host cleanup for %q, want also-gone,gone", got)
	}
	if err := p.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	stop()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("LeakLoop did not end with its context")
	}
}
