package nodecache_test

import (
	"encoding/binary"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dnsaccel/dnsaccel/plugin/nodecache"
)

// recordingOffload is an Offload that keeps what it is given, as the
// in-kernel cache's map would.
type recordingOffload struct {
	mu        sync.Mutex
	held      map[string]*nodecache.OffloadEntry
	offers    map[string]int
	withdraws map[string]int
}

func newRecordingOffload(t *testing.T, minHits uint32) *recordingOffload {
	o := &recordingOffload{held: map[string]*nodecache.OffloadEntry{}, offers: map[string]int{}, withdraws: map[string]int{}}
	nodecache.SetOffload(o, minHits)
	t.Cleanup(func() { nodecache.SetOffload(nil, 0) })
	return o
}

func offloadName(k nodecache.OffloadKey) string {
	name, _, err := dns.UnpackDomainName(k.Name, 0)
	if err != nil {
		return "?"
	}
	return name + "/" + dns.TypeToString[k.Qtype]
}

func (o *recordingOffload) Offer(e *nodecache.OffloadEntry) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := offloadName(e.Key)
	o.held[n] = e
	o.offers[n]++
	return true
}

func (o *recordingOffload) Withdraw(k nodecache.OffloadKey) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := offloadName(k)
	delete(o.held, n)
	o.withdraws[n]++
}

func (o *recordingOffload) Hits() uint64 { return 0 }

func (o *recordingOffload) state(name string) (held *nodecache.OffloadEntry, offers, withdraws int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.held[name], o.offers[name], o.withdraws[name]
}

// TestOffloadOffersHotEntries: an entry is offered once it has been served
// from the cache minHits times, in the form the user-space path renders it;
// it is withdrawn when evicted and offered again when refreshed.
func TestOffloadOffersHotEntries(t *testing.T) {
	up := startUpstream(t)
	o := newRecordingOffload(t, 2)
	addr := startCache(t, "nodecache "+up.addr+" {\n success 1\n}")

	const name = "host1.test."
	for i := 1; i <= 3; i++ {
		ask(t, addr, strings.ToUpper(name), dns.TypeA)
		held, offers, _ := o.state(name + "/A")
		switch {
		case i < 3 && offers != 0:
			t.Fatalf("offered after %d queries (%d hits); minHits is 2", i, i-1)
		case i == 3 && offers != 1:
			t.Fatalf("offers after 3 queries: %d, want 1", offers)
		case i == 3:
			var m dns.Msg
			if err := m.Unpack(held.Msg); err != nil {
				t.Fatalf("offered message does not unpack: %v", err)
			}
			if m.Id != 0 || m.Question[0].Name != name || len(m.Answer) != 1 || m.IsEdns0() != nil {
				t.Fatalf("offered message is not the cache's rendering base: %v", &m)
			}
			if held.QuestionEnd != 12+len(name)+1+4 {
				t.Fatalf("question ends at %d", held.QuestionEnd)
			}
			if len(held.TTLOffsets) != 1 || binary.BigEndian.Uint32(held.Msg[held.TTLOffsets[0]:]) != held.TTLs[0] || held.TTLs[0] != 60 {
				t.Fatalf("TTL offsets %v values %v", held.TTLOffsets, held.TTLs)
			}
			if held.Remaining <= 0 || held.Remaining > 60*time.Second {
				t.Fatalf("remaining %v", held.Remaining)
			}
		}
	}
	for i := 0; i < 5; i++ {
		ask(t, addr, name, dns.TypeA)
	}
	if _, offers, _ := o.state(name + "/A"); offers != 1 {
		t.Fatalf("offered %d times; an offloaded entry is offered once", offers)
	}

	// Capacity 1: another name evicts it.
	ask(t, addr, "host2.test.", dns.TypeA)
	if held, _, withdraws := o.state(name + "/A"); held != nil || withdraws != 1 {
		t.Fatalf("evicted entry: held %v, %d withdraws", held != nil, withdraws)
	}

	// A refreshed entry replaces the offloaded one at once.
	for i := 0; i < 3; i++ {
		ask(t, addr, "short.test.", dns.TypeA)
	}
	held, offers, _ := o.state("short.test./A")
	if offers != 1 {
		t.Fatalf("short.test offers %d", offers)
	}
	first := held
	deadline := time.Now().Add(5 * time.Second)
	for {
		ask(t, addr, "short.test.", dns.TypeA) // expires after 1 s, then refetched
		held, offers, _ = o.state("short.test./A")
		if offers >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the refreshed entry was not offered in place of the expired one")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if held == first || held == nil {
		t.Fatal("the offload still holds the old entry")
	}
}

// TestOffloadNeedsFastPathPermission: entries the fast path may not serve
// (a plugin before nodecache that changes answers) are never offloaded.
func TestOffloadNeedsFastPathPermission(t *testing.T) {
	up := startUpstream(t)
	o := newRecordingOffload(t, 1)
	addr := startCache(t, "rewrite name exact alias.test. host9.test.\n  nodecache "+up.addr)
	for i := 0; i < 5; i++ {
		ask(t, addr, "host9.test.", dns.TypeA)
	}
	if _, offers, _ := o.state("host9.test./A"); offers != 0 {
		t.Fatalf("offered %d times behind a rewrite", offers)
	}
}
