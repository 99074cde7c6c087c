package lb

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// gone records that backend a left the frontend with reverse NAT id rn
// (for TerminateUDP).
func (t *Table) gone(a netip.AddrPort, rn uint16) {
	k := lbDnsaLbGoneKey{BackendPort: htons(a.Port()), RevNatId: rn}
	k.Backend, k.Family = toWords(a.Addr())
	t.pendingGone = append(t.pendingGone, k)
}

// PendingTermination is how many backend removals TerminateUDP has still to
// act on.
func (t *Table) PendingTermination() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pendingGone)
}

// TerminateUDP destroys the connected UDP sockets still pinned to backends
// that left their frontend since the last call (a connected UDP socket is
// translated once, at connect, and would otherwise keep sending to a
// backend that is gone: Cilium's long-standing DNS sore). It walks every
// network namespace of the node (those of /proc/*/ns/net and /run/netns)
// with a BPF socket iterator calling bpf_sock_destroy (Linux 6.5+, kernel
// BTF); the applications see ECONNABORTED and connect again. Only sockets
// translated by this load balancer are touched. It returns how many it
// destroyed.
func (t *Table) TerminateUDP() (int, error) {
	t.mu.Lock()
	pending := t.pendingGone
	t.pendingGone = nil
	t.mu.Unlock()
	if len(pending) == 0 {
		return 0, nil
	}
	prog, err := t.termProgram()
	if err != nil {
		return 0, err
	}
	before := t.stat(StatTerminated)
	for len(pending) > 0 {
		n := min(len(pending), termBatch)
		batch := pending[:n]
		pending = pending[n:]
		for _, k := range batch {
			if err := t.objs.DnsaLbGone.Put(k, uint8(1)); err != nil {
				return 0, fmt.Errorf("terminating connected UDP sockets: %w", err)
			}
		}
		err := runInEveryNetns(prog)
		for _, k := range batch {
			t.objs.DnsaLbGone.Delete(k)
		}
		if err != nil {
			return int(t.stat(StatTerminated) - before), err
		}
	}
	return int(t.stat(StatTerminated) - before), nil
}

const termBatch = 4096 // max_entries of dnsa_lb_gone

func (t *Table) stat(s Stat) uint64 {
	var per []uint64
	if err := t.objs.DnsaLbStats.Lookup(uint32(s), &per); err != nil {
		return 0
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n
}

// termProgram loads the iterator once.
func (t *Table) termProgram() (*ebpf.Program, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.term != nil {
		return t.term, nil
	}
	spec, err := loadLb()
	if err != nil {
		return nil, err
	}
	var it struct {
		Prog *ebpf.Program `ebpf:"dnsa_lb_term"`
	}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"dnsa_lb_sock": t.objs.DnsaLbSock, "dnsa_lb_gone": t.objs.DnsaLbGone, "dnsa_lb_stats": t.objs.DnsaLbStats,
	}}
	if err := spec.LoadAndAssign(&it, opts); err != nil {
		return nil, fmt.Errorf("kernel feature missing: the socket-terminating iterator (bpf_sock_destroy, Linux 6.5+ with BTF): %w", err)
	}
	t.term = it.Prog
	return t.term, nil
}

// runInEveryNetns reads the iterator once in each network namespace.
func runInEveryNetns(prog *ebpf.Program) error {
	l, err := link.AttachIter(link.IterOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("socket-terminating iterator: %w", err)
	}
	defer l.Close()
	var errs []error
	for _, p := range netnsPaths() {
		if err := inNetns(p, func() error {
			r, err := l.Open()
			if err != nil {
				return err
			}
			defer r.Close()
			_, err = io.Copy(io.Discard, r)
			return err
		}); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("netns %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// netnsPaths lists one path per network namespace: /run/netns entries and
// those of running processes, deduplicated by inode.
func netnsPaths() []string {
	seen := map[uint64]bool{}
	var out []string
	add := func(p string) {
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil || seen[st.Ino] {
			return
		}
		seen[st.Ino] = true
		out = append(out, p)
	}
	add("/proc/self/ns/net")
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			add(filepath.Join("/run/netns", e.Name()))
		}
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if n := e.Name(); n != "" && n[0] >= '0' && n[0] <= '9' && !strings.ContainsFunc(n, func(r rune) bool { return r < '0' || r > '9' }) {
				add(filepath.Join("/proc", n, "ns/net"))
			}
		}
	}
	return out
}

// inNetns runs fn on an OS thread switched into the network namespace at
// path; the thread is discarded if it cannot switch back.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		err = fn()
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else: the goroutine ends locked, and the thread with it
		errc <- err
	}()
	return <-errc
}
