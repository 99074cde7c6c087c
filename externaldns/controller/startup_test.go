package controller_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dnsaccel/dnsaccel/externaldns/controller"
	"github.com/dnsaccel/dnsaccel/externaldns/endpoint"
	"github.com/dnsaccel/dnsaccel/externaldns/plan"
	"github.com/dnsaccel/dnsaccel/externaldns/provider/inmemory"
	"github.com/dnsaccel/dnsaccel/externaldns/registry"
	"github.com/dnsaccel/dnsaccel/externaldns/source"
	"github.com/dnsaccel/dnsaccel/test/cluster"
)

func TestMain(m *testing.M) { cluster.Main(m) }

// Issue #21 (4): the delete guard must wait until the source's event
// handlers have processed the informers' initial lists, not only until the
// informers' stores have them. N Services whose records exist in the zone,
// owned by this controller; the handler is slowed (OnChange runs inside it),
// so right after the informers sync the desired set holds only a few of
// them. Start-up must delete nothing.
func TestNoDeletesBeforeHandlersProcessedInitialList(t *testing.T) {
	c := cluster.Shared(t)
	ns := c.CreateNamespace(t, "pvtz-start-")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const n = 15
	const zoneName = "start.internal"
	p := inmemory.New()
	zid, err := p.CreateZone(ctx, zoneName, "vpc-test", "cn-hangzhou")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		svc, err := cluster.CreateService(ctx, c.Client, cluster.ServiceOptions{Namespace: ns, Name: fmt.Sprintf("s%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Seed(zid, endpoint.Record{Name: svc.Name + "." + ns, Type: "A", Value: svc.Spec.ClusterIP, TTL: 60,
			Remark: registry.Remark("start", "svc/"+ns+"/"+svc.Name)}); err != nil {
			t.Fatal(err)
		}
	}
	before := p.Snapshot(zid)
	p.ResetCalls()

	var ctl atomic.Pointer[controller.Controller]
	var handled atomic.Int64
	src, err := source.New(source.Config{Client: c.Client, Services: true, Namespace: ns, Zone: zoneName, Logger: quietLog(),
		OnChange: func(names []string) {
			// A slow handler: each object takes a while to process.
			time.Sleep(40 * time.Millisecond)
			handled.Add(1)
			if cc := ctl.Load(); cc != nil {
				cc.Enqueue(names)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := controller.New(controller.Config{Provider: p, Source: src, Zone: zoneName, VPCID: "vpc-test", OwnerID: "start",
		Policy: plan.Sync, Workers: 4, Logger: quietLog(), RetryBase: time.Millisecond, RetryMax: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctl.Store(cc)
	runCtx, stop := context.WithCancel(ctx)
	defer func() { stop(); src.Shutdown() }()
	if err := cc.Run(runCtx, true); err != nil {
		t.Fatalf("run: %v", err)
	}
	if d := p.Count(inmemory.DeleteZoneRecord); d != 0 {
		t.Fatalf("start-up deleted %d owned records of Services that exist (the slowed handlers had processed %d of %d when Run returned)",
			d, handled.Load(), n)
	}
	if w := p.Writes(); len(w) != 0 {
		t.Fatalf("start-up made %d writes, want none: %+v", len(w), w)
	}
	if after := p.Snapshot(zid); len(after) != len(before) {
		t.Fatalf("zone has %d records after start-up, want %d", len(after), len(before))
	}
	if got := src.Resources(); got != n {
		t.Fatalf("source has %d resources after start-up, want %d", got, n)
	}
}
