package lb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/dnsaccel/dnsaccel/datapath"
)

// PinDir is the directory under the bpffs mount that holds every pin; the
// node cache's steering (datapath/steer) pins into the same one.
const PinDir = "dnsaccel"

// pinPrefix starts the name of every pin this package owns (maps
// dnsa_lb_*, programs prog_dnsa_lb_*, links link_dnsa_lb_*).
const pinPrefix = "dnsa_lb_"

// sharedMaps are the steering's maps the socket programs read (see the top
// of bpf/lb.c): owned by datapath/steer when the node cache runs.
var sharedMaps = []string{"dnsa_steer", "dnsa_hb", "dnsa_cfg"}

// hookObjects is what Open loads.
type hookObjects struct {
	lbMaps
	Conn4 *ebpf.Program `ebpf:"dnsa_lb_conn4"`
	Conn6 *ebpf.Program `ebpf:"dnsa_lb_conn6"`
	Send4 *ebpf.Program `ebpf:"dnsa_lb_send4"`
	Send6 *ebpf.Program `ebpf:"dnsa_lb_send6"`
	Recv4 *ebpf.Program `ebpf:"dnsa_lb_recv4"`
	Recv6 *ebpf.Program `ebpf:"dnsa_lb_recv6"`
	Peer4 *ebpf.Program `ebpf:"dnsa_lb_peer4"`
	Peer6 *ebpf.Program `ebpf:"dnsa_lb_peer6"`
}

func (o *hookObjects) Close() error {
	errs := []error{o.lbMaps.Close()}
	for _, h := range hooks {
		if p := h.prog(o); p != nil {
			errs = append(errs, p.Close())
		}
	}
	return errors.Join(errs...)
}

type hook struct {
	name   string
	attach ebpf.AttachType
	prog   func(*hookObjects) *ebpf.Program
}

var hooks = []hook{
	{"dnsa_lb_conn4", ebpf.AttachCGroupInet4Connect, func(o *hookObjects) *ebpf.Program { return o.Conn4 }},
	{"dnsa_lb_conn6", ebpf.AttachCGroupInet6Connect, func(o *hookObjects) *ebpf.Program { return o.Conn6 }},
	{"dnsa_lb_send4", ebpf.AttachCGroupUDP4Sendmsg, func(o *hookObjects) *ebpf.Program { return o.Send4 }},
	{"dnsa_lb_send6", ebpf.AttachCGroupUDP6Sendmsg, func(o *hookObjects) *ebpf.Program { return o.Send6 }},
	{"dnsa_lb_recv4", ebpf.AttachCGroupUDP4Recvmsg, func(o *hookObjects) *ebpf.Program { return o.Recv4 }},
	{"dnsa_lb_recv6", ebpf.AttachCGroupUDP6Recvmsg, func(o *hookObjects) *ebpf.Program { return o.Recv6 }},
	{"dnsa_lb_peer4", ebpf.AttachCgroupInet4GetPeername, func(o *hookObjects) *ebpf.Program { return o.Peer4 }},
	{"dnsa_lb_peer6", ebpf.AttachCgroupInet6GetPeername, func(o *hookObjects) *ebpf.Program { return o.Peer6 }},
}

// preflight fills in defaults, makes sure BPFFS is a bpf file system and
// checks the prerequisites.
func preflight(opts *Options) (mounted bool, err error) {
	if opts.BPFFS == "" {
		opts.BPFFS = "/sys/fs/bpf"
	}
	if opts.Cgroup == "" {
		cg, err := datapath.DetectCgroup2()
		if err != nil {
			return false, err
		}
		opts.Cgroup = cg
	} else {
		opts.Cgroup = datapath.Cgroup2Dir(opts.Cgroup)
	}
	if opts.MaxServiceEntries <= 0 {
		opts.MaxServiceEntries = DefaultMaxServiceEntries
	}
	if opts.MaxBackends <= 0 {
		opts.MaxBackends = DefaultMaxBackends
	}
	if opts.MaxAffinity <= 0 {
		opts.MaxAffinity = DefaultMaxAffinity
	}
	_ = rlimit.RemoveMemlock()
	if err := datapath.Check(opts.Cgroup); err != nil {
		return false, err
	}
	return datapath.EnsureBPFFS(opts.BPFFS)
}

// load loads the maps and programs, reusing the maps pinned by an earlier
// process. One of this package's pinned maps that no longer matches (its
// layout or size changed) is replaced alone; a shared steering map that
// does not match is an error (it belongs to the node cache).
func (t *Table) load() error {
	spec, err := loadLb()
	if err != nil {
		return fmt.Errorf("load-balancing programs: %w", err)
	}
	spec.Maps["dnsa_lb_svc"].MaxEntries = uint32(t.opts.MaxServiceEntries)
	spec.Maps["dnsa_lb_be"].MaxEntries = uint32(t.opts.MaxBackends)
	spec.Maps["dnsa_lb_aff"].MaxEntries = uint32(t.opts.MaxAffinity)
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		p := filepath.Join(t.dir, name)
		m, err := ebpf.LoadPinnedMap(p, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("pinned map %s: %w", p, err)
		}
		err = ms.Compatible(m)
		m.Close()
		if err == nil {
			continue
		}
		if !strings.HasPrefix(name, pinPrefix) {
			return fmt.Errorf("pinned map %s (the node cache's steering) does not match this version's: %w", p, err)
		}
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("replacing pinned map %s: %w", p, err)
		}
		t.replaced = append(t.replaced, name)
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: t.dir}}
	if err := spec.LoadAndAssign(&t.objs, opts); err != nil {
		switch {
		case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
			return fmt.Errorf("BPF permission: loading the load-balancing programs needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN (root): %w", err)
		case errors.Is(err, ebpf.ErrNotSupported):
			return fmt.Errorf("kernel feature missing (socket load balancing needs Linux 5.18+: cgroup sock_addr programs with bpf_set_retval): %w", err)
		}
		return fmt.Errorf("loading the load-balancing programs: %w", err)
	}
	return nil
}

func (t *Table) attach() error {
	cg, err := os.Open(t.opts.Cgroup)
	if err != nil {
		return fmt.Errorf("cgroup v2 %s: %w", t.opts.Cgroup, err)
	}
	defer cg.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(cg.Fd()), &st); err != nil {
		return fmt.Errorf("cgroup %s: %w", t.opts.Cgroup, err)
	}
	for _, h := range hooks {
		l, adopted, err := datapath.AttachCgroupPinned(cg, t.opts.Cgroup, st.Ino, t.dir, h.name, h.prog(&t.objs), h.attach)
		if l != nil {
			t.links = append(t.links, l)
		}
		if err != nil {
			return err
		}
		if adopted {
			t.adopted++
		}
	}
	return nil
}

// Cleanup detaches and removes everything this package pinned under
// <bpffs>/dnsaccel: its links (detached when the pin goes and no process
// holds them), programs and maps; the steering maps it shares only when no
// steering link is pinned there (the node cache is not installed); the
// directory when it is then empty. Nothing there is fine.
func Cleanup(bpffs string) error {
	dir := filepath.Join(bpffs, PinDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cleanup %s: %w", dir, err)
	}
	if unlock, err := lockDir(dir); err == nil {
		defer unlock()
	}
	var errs []error
	steering := false
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, "link_") && !strings.HasPrefix(n, "link_"+pinPrefix) {
			steering = true
		}
		if !strings.HasPrefix(n, "link_"+pinPrefix) {
			continue
		}
		p := filepath.Join(dir, n)
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", p, err))
			os.Remove(p)
			continue
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", p, err))
		}
		l.Close()
	}
	for _, e := range ents {
		n := e.Name()
		ours := strings.HasPrefix(n, pinPrefix) || strings.HasPrefix(n, "prog_"+pinPrefix)
		for _, s := range sharedMaps {
			ours = ours || (n == s && !steering)
		}
		if !ours {
			continue
		}
		p := filepath.Join(dir, n)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", p, err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) {
		errs = append(errs, fmt.Errorf("cleanup %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// lockDir takes an exclusive flock on dir (the steering takes the same).
func lockDir(dir string) (func(), error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}
