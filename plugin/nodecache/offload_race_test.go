package nodecache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// heldOffload is an Offload that keeps what it is given, as the kernel map
// does, and takes a moment (a syscall's worth of scheduling) between being
// called and holding the entry.
type heldOffload struct {
	mu   sync.Mutex
	held map[string]*OffloadEntry
}

func wireName(b []byte) string {
	name, _, err := dns.UnpackDomainName(b, 0)
	if err != nil {
		return fmt.Sprintf("%x", b)
	}
	return name
}

func offloadID(k OffloadKey) string { return fmt.Sprintf("%x/%d/%v/%v", k.Name, k.Qtype, k.DO, k.CD) }

func (o *heldOffload) Offer(e *OffloadEntry) bool {
	runtime.Gosched()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.held[offloadID(e.Key)] = e
	return true
}

func (o *heldOffload) Withdraw(k OffloadKey) {
	runtime.Gosched()
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.held, offloadID(k))
}

func (o *heldOffload) Hits() uint64 { return 0 }

// churnKeys are the keys the stress test works on: more than the cache
// holds, so that stores evict.
func churnKeys(n int) []key {
	keys := make([]key, n)
	for i := range keys {
		var buf [maxName + 1]byte
		l, _ := dns.PackDomainName(fmt.Sprintf("n%d.churn.test.", i), buf[:], 0, nil, false)
		keys[i] = makeKey(append([]byte(nil), buf[:l]...), dns.TypeA, dns.ClassINET, i%3 == 0, false)
	}
	return keys
}

var churnSerial atomic.Uint32

// churnAnswer is an upstream answer for k that no other call returns:
// a positive one with a fresh address, or (nx) an NXDOMAIN with a fresh
// SOA serial, which moves the key to the denial cache.
func churnAnswer(k key, nx bool) *dns.Msg {
	name, _, _ := dns.UnpackDomainName(k.name, 0)
	m := new(dns.Msg)
	m.SetQuestion(name, k.qtype)
	m.Response, m.RecursionAvailable = true, true
	n := churnSerial.Add(1)
	if nx {
		m.Rcode = dns.RcodeNameError
		soa, _ := dns.NewRR(fmt.Sprintf("churn.test. 300 IN SOA ns.churn.test. admin.churn.test. %d 3600 600 86400 300", n))
		m.Ns = []dns.RR{soa}
		return m
	}
	rr, _ := dns.NewRR(fmt.Sprintf("%s 300 IN A 10.%d.%d.%d", name, byte(n>>16), byte(n>>8), byte(n)))
	m.Answer = []dns.RR{rr}
	return m
}

// churn runs workers that hit (as the fast path does: the listener may
// serve the entry, and noteHot counts the hit), replace (an upstream answer
// stored as a refresh stores it: inside the key's flight) and remove keys,
// evicting others for room, all at once; between rounds, with everything
// quiet, check compares the offload with the cache.
func churn(t *testing.T, c *NodeCache, keys []key, rounds, ops int, check func(round int)) {
	t.Helper()
	workers := 4 * runtime.GOMAXPROCS(0)
	for round := range rounds {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(round), uint64(w)))
				for range ops {
					k := keys[r.IntN(len(keys))]
					switch p := r.IntN(100); {
					case p < 70:
						now := c.clock()
						if e := c.lookup(k); e != nil && e.fresh(now) {
							e.fastOn.Or(1)
							c.noteHot(k, e, now)
						}
					case p < 95:
						nx := p >= 90
						c.flights.do(k, func() result { return c.store(k, churnAnswer(k, nx), "churn") }, nil)
					default:
						if e := c.success.peek(k); e != nil {
							c.success.remove(k, e)
						}
					}
				}
			}()
		}
		wg.Wait()
		check(round)
	}
}

// current is the cache's entry for k, without marking it used.
func (c *NodeCache) current(k key) *entry {
	if e := c.success.peek(k); e != nil {
		return e
	}
	return c.denial.peek(k)
}

func newChurnCache(t *testing.T) *NodeCache {
	opts := DefaultOptions()
	opts.SuccessCap, opts.DenialCap = 12, 6
	c := New(opts)
	t.Cleanup(func() { c.Stop() })
	return c
}

// TestOffloadNeverHoldsWhatTheCacheDropped: under hits, refreshes,
// removals and evictions from many goroutines at once, whatever the
// offload holds is what the cache holds for that key, byte for byte: the
// offload never answers what user space would not.
func TestOffloadNeverHoldsWhatTheCacheDropped(t *testing.T) {
	o := &heldOffload{held: map[string]*OffloadEntry{}}
	SetOffload(o, 2)
	t.Cleanup(func() { SetOffload(nil, 0) })
	c := newChurnCache(t)
	keys := churnKeys(40)
	byID := map[string]key{}
	for _, k := range keys {
		byID[offloadID(offloadKey(k.name, k.qtype, k.bits))] = k
	}
	offered := 0
	churn(t, c, keys, 40, 2000, func(round int) {
		o.mu.Lock()
		defer o.mu.Unlock()
		offered = max(offered, len(o.held))
		for id, h := range o.held {
			k, ok := byID[id]
			if !ok {
				t.Fatalf("round %d: the offload holds %s, never a key", round, id)
			}
			e := c.current(k)
			switch {
			case e == nil:
				t.Fatalf("round %d: the offload holds %s, which the cache dropped", round, wireName(k.name))
			case !bytes.Equal(e.msg, h.Msg):
				t.Fatalf("round %d: the offload holds an old answer for %s", round, wireName(k.name))
			case !e.offloaded.Load():
				t.Fatalf("round %d: the entry for %s is held but not marked offloaded", round, wireName(k.name))
			}
		}
	})
	if offered == 0 {
		t.Fatal("nothing was ever offloaded: the test proves nothing")
	}
}
