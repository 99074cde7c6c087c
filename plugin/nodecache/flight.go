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
	// then receive res when the flight lands: waiters with no goroutine
	// (the fast path's misses). Guarded by the group's mu until landing.
	then []func(result)
}

// do runs fn for k unless a call for k is already in flight, in which case
// it waits for that call's result. shared reports whether the result came
// from another caller's call. A closed cancel channel ends the wait with
// the call still running.
func (g *flightGroup) do(k key, fn func() result, cancel <-chan struct{}) (res result, shared bool) {
	f, started := g.join(k, nil)
	if !started {
		select {
		case <-f.done:
			return f.res, true
		case <-cancel:
			return result{err: errGaveUp}, true
		}
	}
	g.land(f, fn())
	return f.res, false
}

// join finds k's flight in the air, adding then (if not nil) to those it
// will call, or starts one: started reports that the caller owns the new
// flight and must land it.
func (g *flightGroup) join(k key, then func(result)) (f *flight, started bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m == nil {
		g.m = make(map[uint64][]*flight)
	}
	for _, f := range g.m[k.hash] {
		if f.k.qtype == k.qtype && f.k.qclass == k.qclass && f.k.bits == k.bits && string(f.k.name) == string(k.name) {
			if then != nil {
				f.then = append(f.then, then)
			}
			return f, false
		}
	}
	k.name = append([]byte(nil), k.name...)
	f = &flight{k: k, done: make(chan struct{})}
	if then != nil {
		f.then = append(f.then, then)
	}
	g.m[k.hash] = append(g.m[k.hash], f)
	return f, true
}

// land ends flight f with res: later misses start a flight of their own,
// and everyone waiting gets res.
func (g *flightGroup) land(f *flight, res result) {
	g.mu.Lock()
	list := g.m[f.k.hash]
	for i, x := range list {
		if x == f {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(g.m, f.k.hash)
	} else {
		g.m[f.k.hash] = list
	}
	then := f.then
	f.then = nil
	f.res = res
	g.mu.Unlock()
	close(f.done)
	for _, fn := range then {
		fn(res)
	}
}
