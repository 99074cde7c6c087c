//go:build linux

// Package reuseport chooses which sockets of a SO_REUSEPORT group receive
// its traffic: an SK_REUSEPORT program selects, by the flow hash, one socket
// of a REUSEPORT_SOCKARRAY holding the given sockets, so the group's other
// members (such as a server's own listener sharing the port) get nothing
// while the chosen ones are open. Each flow keeps landing on the same
// socket while the set does not change.
//
// The program is twelve instructions, assembled here with cilium/ebpf's asm
// package; there is no C source in bpf/ for it.
package reuseport

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// Group is the program and socket array attached to one reuseport group.
type Group struct {
	prog *ebpf.Program
	arr  *ebpf.Map
}

// Attach attaches to the reuseport group of fds (bound sockets with
// SO_REUSEPORT, all of one group) a program that delivers each datagram or
// connection to one of fds, picked by the flow hash.
//
// When sockets of fds close, the kernel drops them from the array; a
// datagram whose pick is gone falls back to the kernel's own hashing over
// the group's remaining members, so nothing is ever steered nowhere. The
// program stays attached to the group after Close (the group holds it).
func Attach(fds []int) (*Group, error) {
	if len(fds) == 0 {
		return nil, errors.New("reuseport: no sockets")
	}
	arr, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "dnsa_reuseport", Type: ebpf.ReusePortSockArray, KeySize: 4, ValueSize: 8, MaxEntries: uint32(len(fds)),
	})
	if err != nil {
		return nil, fmt.Errorf("reuseport socket array: %w", err)
	}
	for i, fd := range fds {
		if err := arr.Update(uint32(i), uint64(fd), ebpf.UpdateAny); err != nil {
			arr.Close()
			return nil, fmt.Errorf("reuseport socket array, socket %d (fd %d): %w", i, fd, err)
		}
	}
	const hashOff = 32 // offsetof(struct sk_reuseport_md, hash)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:       "dnsa_reuseport",
		Type:       ebpf.SkReuseport,
		AttachType: ebpf.AttachSkReuseportSelect,
		License:    "GPL",
		Instructions: asm.Instructions{
			// key = md->hash % len(fds); bpf_sk_select_reuseport(md, arr, &key, 0)
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.LoadMem(asm.R0, asm.R1, hashOff, asm.Word),
			asm.Mod.Imm32(asm.R0, int32(len(fds))),
			asm.StoreMem(asm.RFP, -4, asm.R0, asm.Word),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.LoadMapPtr(asm.R2, arr.FD()),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -4),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnSkSelectReuseport.Call(),
			asm.Mov.Imm(asm.R0, 1), // SK_PASS: on a failed select the kernel hashes
			asm.Return(),
		},
	})
	if err != nil {
		arr.Close()
		return nil, fmt.Errorf("reuseport program: %w", err)
	}
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, prog.FD()); err != nil {
		prog.Close()
		arr.Close()
		return nil, fmt.Errorf("SO_ATTACH_REUSEPORT_EBPF: %w", err)
	}
	return &Group{prog: prog, arr: arr}, nil
}

// Close releases this process's handles on the program and the array.
func (g *Group) Close() error {
	return errors.Join(g.prog.Close(), g.arr.Close())
}
