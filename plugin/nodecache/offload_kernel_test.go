package nodecache

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/dnsaccel/dnsaccel/datapath/kcache"
	"github.com/dnsaccel/dnsaccel/test/cluster"
)

// kernelOffload writes offers and withdrawals to the in-kernel cache's
// map, as node-cache's Offload (nodecache/kernelcache.go) does.
type kernelOffload struct{ kc *kcache.Cache }

func toKernelKey(k OffloadKey) kcache.Key {
	return kcache.Key{Name: k.Name, Qtype: k.Qtype, DO: k.DO, CD: k.CD}
}

func toKernelEntry(e *OffloadEntry) (*kcache.Entry, error) {
	return kcache.NewEntry(kcache.Rendered{Msg: e.Msg, QuestionEnd: e.QuestionEnd,
		TTLOffsets: e.TTLOffsets, TTLs: e.TTLs, Age: e.Age, Remaining: e.Remaining})
}

func (o kernelOffload) Offer(e *OffloadEntry) bool {
	ent, err := toKernelEntry(e)
	if err != nil {
		return false
	}
	return o.kc.Put(toKernelKey(e.Key), ent) == nil
}

func (o kernelOffload) Withdraw(k OffloadKey) { o.kc.Delete(toKernelKey(k)) }
func (o kernelOffload) Hits() uint64          { return 0 }

// TestKernelNeverHoldsWhatTheCacheDropped is the churn of
// TestOffloadNeverHoldsWhatTheCacheDropped against the real kernel map: at
// every checkpoint, each key the kernel holds is in the cache with the
// answer the kernel would give.
func TestKernelNeverHoldsWhatTheCacheDropped(t *testing.T) {
	if os.Geteuid() != 0 {
		cluster.SkipOrFail(t, "the in-kernel cache needs root (CAP_BPF, CAP_NET_ADMIN)")
	}
	kc, err := kcache.Open(kcache.Options{Addrs: []netip.Addr{netip.MustParseAddr("169.254.20.10")}})
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, os.ErrPermission) {
			cluster.SkipOrFail(t, "kernel without what the in-kernel cache needs: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { kc.Close() })
	SetOffload(kernelOffload{kc}, 2)
	t.Cleanup(func() { SetOffload(nil, 0) })

	c := newChurnCache(t)
	keys := churnKeys(40)
	known := map[string]bool{}
	for _, k := range keys {
		known[offloadID(offloadKey(k.name, k.qtype, k.bits))] = true
	}
	held := 0
	churn(t, c, keys, 20, 300, func(round int) {
		inKernel, err := kc.Keys()
		if err != nil {
			t.Fatal(err)
		}
		held = max(held, len(inKernel))
		for _, kk := range inKernel {
			if !known[offloadID(OffloadKey{Name: kk.Name, Qtype: kk.Qtype, DO: kk.DO, CD: kk.CD})] {
				t.Fatalf("round %d: the kernel holds %x, never a key", round, kk.Name)
			}
		}
		for _, k := range keys {
			got, err := kc.Lookup(toKernelKey(offloadKey(k.name, k.qtype, k.bits)))
			if err != nil {
				t.Fatal(err)
			}
			if got == nil {
				continue
			}
			e := c.current(k)
			if e == nil {
				t.Fatalf("round %d: the kernel holds %s, which the cache dropped", round, wireName(k.name))
			}
			want, err := toKernelEntry(offloadEntry(k.name, k.qtype, k.bits, e, c.clock()))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Data, want.Data) || got.Flags != want.Flags || got.Ancount != want.Ancount || got.Nscount != want.Nscount {
				t.Fatalf("round %d: the kernel holds an old answer for %s", round, wireName(k.name))
			}
		}
	})
	if held == 0 {
		t.Fatal("the kernel never held anything: the test proves nothing")
	}
}
