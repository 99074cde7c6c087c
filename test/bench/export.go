package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Exported helpers for the other whole-system benchmarks under test/bench
// (autopathbench, ...), so that every benchmark starts, pins and stops its
// processes and writes docs/benchmarks.md the same way. They wrap the
// helpers the cache benchmark uses, without changing them.

// Procs tracks long-running child processes so that every one of them can be
// stopped on any exit path. The zero value is ready to use.
type Procs struct{ set procSet }

// Proc is a long-running child process started by Procs.Start.
type Proc struct{ p *proc }

// Start launches argv (pinned with taskset to cpu when cpu >= 0) in its own
// process group (killed with the harness: Pdeathsig), with env appended to
// the harness's environment and stdout and stderr going to logPath.
func (ps *Procs) Start(name string, cpu int, env []string, logPath string, argv ...string) (*Proc, error) {
	p, err := ps.set.start(name, cpu, env, logPath, argv...)
	if err != nil {
		return nil, err
	}
	return &Proc{p: p}, nil
}

// StopAll stops every process started, most recent first.
func (ps *Procs) StopAll() { ps.set.stopAll() }

// Pid is the process id (of taskset's exec'd program when pinned).
func (p *Proc) Pid() int { return p.p.pid() }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool { return p.p.exited() }

// Stop terminates the process group (SIGTERM, SIGKILL after 3 s) and waits
// for the process to exit. Safe to call more than once.
func (p *Proc) Stop() { p.p.stop() }

// ExitError describes how an exited process ended, with the tail of its log.
func (p *Proc) ExitError() error {
	return fmt.Errorf("%s exited: %v\n%s", p.p.name, p.p.waitErr, p.p.logTail())
}

// LogTail returns the last lines of the process's log.
func (p *Proc) LogTail() string { return p.p.logTail() }

// RSS is the process's resident set size (VmRSS) in bytes, 0 if unknown.
func (p *Proc) RSS() int64 { return procStatusBytes(p.p.pid(), "VmRSS:") }

// RSSPeak is the process's peak resident set size (VmHWM) in bytes.
func (p *Proc) RSSPeak() int64 { return rssPeak(p.p.pid()) }

// Ports hands out loopback ports free for both UDP and TCP, never the same
// one twice. The zero value is ready to use.
type Ports struct{ a portAlloc }

// Get returns a free port.
func (pa *Ports) Get() (int, error) { return pa.a.get() }

// OnlineCPUs returns the CPUs this process may run on.
func OnlineCPUs() []int { return onlineCPUs() }

// PinSelf pins every thread of this process (and the children it starts
// later) to cpu, and returns a function that restores the previous affinity.
func PinSelf(cpu int) (restore func(), err error) {
	var m cpuMask
	m.set(cpu)
	old, err := pinSelf(m)
	if err != nil {
		return func() {}, err
	}
	return func() { _, _ = pinSelf(old) }, nil
}

// FindRepoRoot walks up from the working directory to the module root.
func FindRepoRoot() (string, error) { return findRepoRoot() }

// MachineInfo describes the host, for the Machine table of a section.
func MachineInfo(ctx context.Context) Machine { return machineInfo(ctx) }

// LookPath finds an executable in $PATH or the sbin directories.
func LookPath(name string) (string, error) { return lookPath(name) }

// WriteJSON writes v as indented JSON to path, creating its directory: the
// machine-readable copy of a benchmark's results.
func WriteJSON(path string, v any) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
