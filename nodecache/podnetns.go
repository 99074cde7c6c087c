package nodecache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath/kcache"
)

// DefaultNetnsDir is where containerd and CRI-O bind-mount pods' network
// namespaces.
const DefaultNetnsDir = "/var/run/netns"

// podNetnsWatch puts the kernel cache's egress program on pod interfaces
// that have no host end: IPVLAN (and MACVLAN) children moved into a pod's
// network namespace, whose traffic leaves through the parent without
// passing any host interface the ingress program could sit on. It finds the
// pods' namespaces where the container runtime bind-mounts them (dir), and
// in each one watches the interfaces over a netlink socket of that
// namespace.
//
// The directory is reconciled on every change to it (inotify) and to the
// mount table (/proc/self/mountinfo polls POLLPRI): a runtime creates the
// file first and bind-mounts the namespace on it afterwards, and unmounts it
// before removing the file. A namespace's resources (its handle and netlink
// socket, which keep it alive) are released as soon as its bind mount goes,
// so node-cache never holds a pod's namespace past the runtime.
type podNetnsWatch struct {
	kc  *kcache.Cache
	log *slog.Logger
	dir string

	inotify, mountinfo, wake, epoll int

	pods map[uint64]*podNetns // by namespace inode; only the run loop touches it
}

// podNetns is one pod namespace being watched.
type podNetns struct {
	ino  uint64
	path string
	ns   ns.NetNS
	stop chan struct{} // closed to release the namespace
	done chan struct{} // closed once everything in it is detached and the handle closed
}

// podInterface reports whether l (inside a pod's namespace) gets the egress
// program: the program does not care which of the two it is.
func podNetnsInterface(l netlink.Link) bool {
	switch l.Type() {
	case "ipvlan", "macvlan":
		return true
	}
	return false
}

// newPodNetnsWatch sets up the watches on dir (created if missing, as the
// runtimes do) and attaches in the namespaces already there.
func newPodNetnsWatch(kc *kcache.Cache, dir string, log *slog.Logger) (_ *podNetnsWatch, err error) {
	w := &podNetnsWatch{kc: kc, log: log, dir: dir, inotify: -1, mountinfo: -1, wake: -1, epoll: -1, pods: map[uint64]*podNetns{}}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("pod network namespaces: %w", err)
	}
	if w.inotify, err = unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pod network namespaces: inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(w.inotify, dir, unix.IN_CREATE|unix.IN_DELETE|unix.IN_MOVED_FROM|unix.IN_MOVED_TO|unix.IN_ATTRIB); err != nil {
		return nil, fmt.Errorf("pod network namespaces: watch %s: %w", dir, err)
	}
	if w.mountinfo, err = unix.Open("/proc/self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("pod network namespaces: watch mounts: %w", err)
	}
	if w.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("pod network namespaces: eventfd: %w", err)
	}
	if w.epoll, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("pod network namespaces: epoll: %w", err)
	}
	// mountinfo signals a change with POLLPRI (and always reports POLLIN:
	// not asked for).
	for fd, events := range map[int]uint32{w.inotify: unix.EPOLLIN, w.mountinfo: unix.EPOLLPRI, w.wake: unix.EPOLLIN} {
		if err := unix.EpollCtl(w.epoll, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: events, Fd: int32(fd)}); err != nil {
			return nil, fmt.Errorf("pod network namespaces: epoll: %w", err)
		}
	}
	w.reconcile()
	return w, nil
}

// run reconciles on every change until ctx ends, then releases every
// namespace.
func (w *podNetnsWatch) run(ctx context.Context) {
	defer w.close()
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			unix.Write(w.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		case <-stopped:
		}
	}()
	events := make([]unix.EpollEvent, 4)
	buf := make([]byte, 4096)
	for {
		n, err := unix.EpollWait(w.epoll, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			w.log.Warn("kernel cache: pod network namespaces: watch ended", "dir", w.dir, "err", err)
			return
		}
		for _, ev := range events[:n] {
			switch int(ev.Fd) {
			case w.wake:
				return
			case w.inotify:
				// Only "something changed" matters: drain.
				for {
					if _, err := unix.Read(w.inotify, buf); err != nil {
						break
					}
				}
			}
		}
		w.reconcile()
	}
}

// reconcile makes the watched namespaces those bind-mounted in dir now.
func (w *podNetnsWatch) reconcile() {
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		w.log.Warn("kernel cache: pod network namespaces", "dir", w.dir, "err", err)
		return
	}
	now := map[uint64]string{}
	for _, e := range entries {
		p := filepath.Join(w.dir, e.Name())
		if ino, ok := netnsInode(p); ok {
			now[ino] = p
		}
	}
	for ino, pn := range w.pods {
		if _, ok := now[ino]; !ok {
			w.release(pn)
			delete(w.pods, ino)
		}
	}
	for ino, p := range now {
		if _, ok := w.pods[ino]; ok {
			continue
		}
		if pn := w.add(ino, p); pn != nil {
			w.pods[ino] = pn
		}
	}
}

// netnsInode returns the inode of the network namespace bind-mounted at p;
// false for anything else (such as the empty file a runtime creates before
// mounting on it).
func netnsInode(p string) (uint64, bool) {
	var fs unix.Statfs_t
	if err := unix.Statfs(p, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return 0, false
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return 0, false
	}
	return st.Ino, true
}

// add opens the namespace at p and starts watching its interfaces.
func (w *podNetnsWatch) add(ino uint64, p string) *podNetns {
	n, err := ns.GetNS(p)
	if err != nil {
		w.log.Debug("kernel cache: pod network namespace", "path", p, "err", err)
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(n.Fd()), &st); err != nil || st.Ino != ino {
		n.Close() // replaced meanwhile: the next reconcile sees the new one
		return nil
	}
	pn := &podNetns{ino: ino, path: p, ns: n, stop: make(chan struct{}), done: make(chan struct{})}
	go w.watchLinks(pn)
	return pn
}

// release stops watching a namespace, detaches the program from its
// interfaces and closes its handle.
func (w *podNetnsWatch) release(pn *podNetns) {
	close(pn.stop)
	<-pn.done
}

// watchLinks attaches to the namespace's IPVLAN/MACVLAN interfaces as they
// are listed and appear, detaches as they go, and detaches from all of them
// when the namespace is released. A failed subscription is retried: the
// namespace is still there until release.
func (w *podNetnsWatch) watchLinks(pn *podNetns) {
	attached := map[int]bool{}
	defer func() {
		for idx := range attached {
			if err := w.kc.DetachIn(pn.ns, idx, true); err != nil {
				w.log.Debug("kernel cache: detach in pod network namespace", "path", pn.path, "ifindex", idx, "err", err)
			}
		}
		pn.ns.Close()
		close(pn.done)
	}()
	handle := netns.NsHandle(pn.ns.Fd())
	for {
		updates := make(chan netlink.LinkUpdate, 64)
		done := make(chan struct{})
		err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
			Namespace:    &handle,
			ListExisting: true,
			ErrorCallback: func(err error) {
				select {
				case <-done: // closed by us
				default:
					w.log.Warn("kernel cache: interface watch in pod network namespace", "path", pn.path, "err", err)
				}
			},
		})
		if err != nil {
			close(done)
			w.log.Warn("kernel cache: watch interfaces in pod network namespace", "path", pn.path, "err", err)
		} else {
			w.consume(pn, updates, attached)
			close(done)
			for range updates { // until the subscription's goroutine ends
			}
		}
		select {
		case <-pn.stop:
			return
		case <-time.After(time.Second): // the socket failed (overrun): list again
		}
	}
}

// consume handles one subscription's updates until it ends or the
// namespace is released.
func (w *podNetnsWatch) consume(pn *podNetns, updates <-chan netlink.LinkUpdate, attached map[int]bool) {
	for {
		select {
		case <-pn.stop:
			return
		case u, ok := <-updates:
			if !ok {
				return
			}
			if !podNetnsInterface(u.Link) {
				continue
			}
			idx := u.Link.Attrs().Index
			if u.Header.Type == unix.RTM_DELLINK {
				if attached[idx] {
					delete(attached, idx)
					if err := w.kc.DetachIn(pn.ns, idx, true); err != nil {
						w.log.Debug("kernel cache: detach in pod network namespace", "path", pn.path, "interface", u.Link.Attrs().Name, "err", err)
					}
				}
				continue
			}
			if attached[idx] {
				continue
			}
			if err := w.kc.AttachIn(pn.ns, idx, true); err != nil {
				// The interface may be going away as we look at it.
				w.log.Debug("kernel cache: attach in pod network namespace", "path", pn.path, "interface", u.Link.Attrs().Name, "err", err)
				continue
			}
			attached[idx] = true
			w.log.Debug("kernel cache: attached to a pod interface", "path", pn.path, "interface", u.Link.Attrs().Name, "type", u.Link.Type())
		}
	}
}

// close releases every namespace and the watch's descriptors.
func (w *podNetnsWatch) close() {
	for ino, pn := range w.pods {
		w.release(pn)
		delete(w.pods, ino)
	}
	for _, fd := range []*int{&w.epoll, &w.wake, &w.mountinfo, &w.inotify} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}
