package steertest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/dnsaccel/dnsaccel/datapath/steer"
)

// ReadPins loads every pin under bpffs/dnsaccel (link_*, prog_*, the rest
// maps) for its kernel ID; names are the pin files.
func ReadPins(bpffs string) (ids steer.IDs, names []string, err error) {
	dir := filepath.Join(bpffs, steer.PinDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return ids, nil, err
	}
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), "link_"):
			l, err := link.LoadPinnedLink(path, nil)
			if err != nil {
				return ids, names, err
			}
			info, err := l.Info()
			l.Close()
			if err != nil {
				return ids, names, err
			}
			ids.Links = append(ids.Links, info.ID)
		case strings.HasPrefix(e.Name(), "prog_"):
			p, err := ebpf.LoadPinnedProgram(path, nil)
			if err != nil {
				return ids, names, err
			}
			info, err := p.Info()
			p.Close()
			if err != nil {
				return ids, names, err
			}
			if id, ok := info.ID(); ok {
				ids.Programs = append(ids.Programs, id)
			}
		default:
			m, err := ebpf.LoadPinnedMap(path, nil)
			if err != nil {
				return ids, names, err
			}
			info, err := m.Info()
			m.Close()
			if err != nil {
				return ids, names, err
			}
			if id, ok := info.ID(); ok {
				ids.Maps = append(ids.Maps, id)
			}
		}
		names = append(names, e.Name())
	}
	return ids, names, nil
}

// AddIDs is a with the IDs of b it does not hold yet (a restarted
// node-cache keeps the maps and links and replaces the programs).
func AddIDs(a, b steer.IDs) steer.IDs {
	for _, id := range b.Programs {
		if !slices.Contains(a.Programs, id) {
			a.Programs = append(a.Programs, id)
		}
	}
	for _, id := range b.Maps {
		if !slices.Contains(a.Maps, id) {
			a.Maps = append(a.Maps, id)
		}
	}
	for _, id := range b.Links {
		if !slices.Contains(a.Links, id) {
			a.Links = append(a.Links, id)
		}
	}
	return a
}

// Alive lists the objects of ids the kernel still has: "eBPF program 12".
func Alive(ids steer.IDs) []string {
	var out []string
	for _, id := range ids.Programs {
		if o, err := ebpf.NewProgramFromID(id); err == nil {
			o.Close()
			out = append(out, fmt.Sprintf("eBPF program %d", id))
		}
	}
	for _, id := range ids.Maps {
		if o, err := ebpf.NewMapFromID(id); err == nil {
			o.Close()
			out = append(out, fmt.Sprintf("eBPF map %d", id))
		}
	}
	for _, id := range ids.Links {
		if o, err := link.NewFromID(id); err == nil {
			o.Close()
			out = append(out, fmt.Sprintf("eBPF link %d", id))
		}
	}
	return out
}
