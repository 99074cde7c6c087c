package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// AttachCgroupPinned puts prog on the cgroup open as cg (inode cgID; cgPath
// for messages) at attach, as a link pinned at dir/link_<name>, and pins the
// program at dir/prog_<name>. A link already pinned there for this cgroup is
// switched to prog (BPF_LINK_UPDATE: no gap) and reported as adopted; one
// left on another cgroup (the cgroup flag changed) is detached first. The
// steering and the Service datapath share it, so a restarted daemon of
// either adopts its programs the same way.
func AttachCgroupPinned(cg *os.File, cgPath string, cgID uint64, dir, name string, prog *ebpf.Program, attach ebpf.AttachType) (l link.Link, adopted bool, err error) {
	lpath := filepath.Join(dir, "link_"+name)
	l, err = adoptCgroupLink(lpath, prog, cgID)
	if err != nil {
		return nil, false, fmt.Errorf("adopting %s: %w", lpath, err)
	}
	if l != nil {
		adopted = true
	} else {
		rl, err := link.AttachRawLink(link.RawLinkOptions{Target: int(cg.Fd()), Program: prog, Attach: attach})
		if err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) {
				return nil, false, fmt.Errorf("kernel feature missing: cgroup BPF links for %s (Linux 5.8+): %w", name, err)
			}
			return nil, false, fmt.Errorf("attach %s to cgroup %s: %w", name, cgPath, err)
		}
		if err := rl.Pin(lpath); err != nil {
			rl.Close()
			return nil, false, fmt.Errorf("pin %s: %w", lpath, err)
		}
		l = rl
	}
	ppath := filepath.Join(dir, "prog_"+name)
	os.Remove(ppath)
	if err := prog.Pin(ppath); err != nil {
		// The link is attached and pinned: the caller owns it and closes it.
		return l, adopted, fmt.Errorf("pin %s: %w", ppath, err)
	}
	return l, adopted, nil
}

// adoptCgroupLink switches a pinned link to prog. It returns nil (and
// removes the pin) when there is none or it is attached to another cgroup.
func adoptCgroupLink(path string, prog *ebpf.Program, cgID uint64) (link.Link, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if info, err := l.Info(); err == nil {
		if cgi := info.Cgroup(); cgi != nil && cgi.CgroupId != cgID {
			l.Unpin()
			l.Close()
			return nil, nil
		}
	}
	if err := l.Update(prog); err != nil {
		l.Close()
		return nil, fmt.Errorf("switching to the new program: %w", err)
	}
	return l, nil
}
