package nodecache

import "sync"

// flightGroup makes concurrent misses for one key share one upstream query
// (request coalescing). Unlike x/sync/singleflight, a waiter whose client
// gave up stops waiting without cancelling the query others still wait for.
type flightGroup struct {
	mu sync.Mutex
	m  map[uint64][]*flight
}

type flight struct {
	k    key
	done chan struct{}
	res  result
}

// do runs fn for k unless a call for k is already in flight, in which case
// it waits for that call's result. shared reports whether the result came
// from another caller's call. A closed cancel channel ends the wait with
// the call still running.
func (g *flightGroup) do(k key, fn func() result, cancel <-chan struct{}) (res result, shared bool) {
	g.mu.Lock()
	if g.m == nil {
		g.m = make(map[uint64][]*flight)
	}
	for _, f := range g.m[k.hash] {
		if f.k.qtype == k.qtype && f.k.qclass == k.qclass && f.k.bits == k.bits && string(f.k.name) == string(k.name) {
			g.mu.Unlock()
			select {
			case <-f.done:
				return f.res, true
			case <-cancel:
				return result{err: errGaveUp}, true
			}
		}
	}
	k.name = append([]byte(nil), k.name...)
	f := &flight{k: k, done: make(chan struct{})}
	g.m[k.hash] = append(g.m[k.hash], f)
	g.mu.Unlock()

	f.res = fn()

	g.mu.Lock()
	list := g.m[k.hash]
	for i, x := range list {
		if x == f {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(g.m, k.hash)
	} else {
		g.m[k.hash] = list
	}
	g.mu.Unlock()
	close(f.done)
	return f.res, false
}
