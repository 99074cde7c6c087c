package bench

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// udpResponder answers every query on 127.0.0.1 with one A record after
// delay(i) (i counts queries from 0); drop(i) queries get no answer.
func udpResponder(t *testing.T, delay func(int) time.Duration, drop func(int) bool) string {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var n atomic.Int64
	go func() {
		buf := make([]byte, 512)
		for {
			l, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			i := int(n.Add(1) - 1)
			m := new(dns.Msg)
			if m.Unpack(buf[:l]) != nil {
				continue
			}
			if drop(i) {
				continue
			}
			time.Sleep(delay(i))
			r := new(dns.Msg)
			r.SetReply(m)
			rr, _ := dns.NewRR(m.Question[0].Name + " 60 IN A 192.0.2.1")
			r.Answer = append(r.Answer, rr)
			b, _ := r.Pack()
			pc.WriteTo(b, from)
		}
	}()
	return pc.LocalAddr().String()
}

func TestRunLatSerial(t *testing.T) {
	q, err := packQueries([]string{"a.test.", "b.test."})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("answers and losses", func(t *testing.T) {
		addr := udpResponder(t, func(int) time.Duration { return 0 }, func(i int) bool { return i == 5 })
		r, err := runLatSerial(context.Background(), addr, q, 50, 2000, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if r.Sent != 50 || r.Answers != 49 || r.Lost != 1 || r.Bad != 0 {
			t.Fatalf("sent %d answers %d lost %d bad %d, want 50 49 1 0", r.Sent, r.Answers, r.Lost, r.Bad)
		}
		if r.P50 <= 0 || r.P50 > 5*time.Millisecond {
			t.Errorf("p50 %v on loopback", r.P50)
		}
	})
	t.Run("a slow reply delays the next query, and that wait counts", func(t *testing.T) {
		// 1 ms slots; query 10 takes 20 ms, so queries 11.. are sent late
		// and timed from their slots.
		addr := udpResponder(t, func(i int) time.Duration {
			if i == 10 {
				return 20 * time.Millisecond
			}
			return 0
		}, func(int) bool { return false })
		r, err := runLatSerial(context.Background(), addr, q, 40, 1000, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		// Query 10 (20 ms) and the ~19 queries whose slots passed meanwhile,
		// each waiting ~1 ms less than the one before: many samples ≥ 5 ms.
		slow := 0
		for _, l := range r.lats {
			if l >= 5*time.Millisecond {
				slow++
			}
		}
		if slow < 10 {
			t.Errorf("%d samples ≥ 5 ms, want ≥ 10 (the closed loop hid the wait)", slow)
		}
	})
}

func TestRunClosedLoop(t *testing.T) {
	q, err := packQueries([]string{"a.test.", "b.test."})
	if err != nil {
		t.Fatal(err)
	}
	addr := udpResponder(t, func(i int) time.Duration {
		if i == 3 {
			return 5 * time.Millisecond
		}
		return 0
	}, func(i int) bool { return i == 7 })
	start := time.Now()
	r, err := runClosedLoop(context.Background(), addr, q, 30, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Sent != 30 || r.Answers != 29 || r.Lost != 1 || r.Bad != 0 {
		t.Fatalf("sent %d answers %d lost %d bad %d, want 30 29 1 0", r.Sent, r.Answers, r.Lost, r.Bad)
	}
	// The slow answer and the lost one's timeout are waited for, one query
	// at a time: at least 105 ms.
	if r.Wall < 105*time.Millisecond || r.Wall > time.Since(start) {
		t.Errorf("wall %v, want ≥ 105ms and ≤ %v", r.Wall, time.Since(start))
	}
	// A blocking wait costs the thread no CPU time.
	if cpu := r.User + r.Sys; cpu <= 0 || cpu > r.Wall/2 {
		t.Errorf("thread CPU %v over %v of waiting", cpu, r.Wall)
	}
	if _, err := runClosedLoop(context.Background(), "[::1]:53", q, 1, time.Millisecond); err == nil {
		t.Error("IPv6 address accepted")
	}
}
