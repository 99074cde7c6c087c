// Package proc runs the daemons of the test nodes (test/node, test/realnode):
// each in its own process group, its output in a log file.
package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/dnsaccel/dnsaccel/test/internal/spawn"
)

// Proc is a process of a test node, in its own process group, its output in
// a log file under the node's directory.
type Proc struct {
	Name string
	Log  string // path of its log
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	// stopped: Stop ran; a second Stop must not signal the process
	// group, whose id the kernel may have given to someone else since.
	stopped bool
}

func Start(name, logPath string, env []string, argv ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "# %s\n", strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := spawn.Start(cmd); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitError describes an exited process with the tail of its log.
func (p *Proc) ExitError() error {
	return fmt.Errorf("%s exited (%v); last lines of %s:\n%s", p.Name, p.err, p.Log, p.Tail(15))
}

// Tail is the last n lines of the log.
func (p *Proc) Tail(n int) string {
	b, _ := os.ReadFile(p.Log)
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// Kill sends SIGKILL to the process (only: kill -9, as an OOM kill or a
// crash would) and waits until it is gone.
func (p *Proc) Kill() {
	if p == nil || p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM, waits up to grace, then kills the whole process
// group. It returns the exit error of a process that did not stop cleanly.
func (p *Proc) Stop(grace time.Duration) error {
	if p == nil || p.stopped {
		return nil
	}
	p.stopped = true
	if !p.Exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
			return fmt.Errorf("%s did not stop within %s of SIGTERM; killed", p.Name, grace)
		}
	}
	// The rest of its process group too (right after the leader's exit,
	// the group id is still ours): nothing of it may outlive the node.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	return nil
}

// Stopped reports whether Stop ran (an exit after it is expected).
func (p *Proc) Stopped() bool { return p.stopped }

// Poll waits until ok, checking every interval, and fails early, with the
// tail of its log, if p (when set) exits.
func Poll(ctx context.Context, what string, within, every time.Duration, p *Proc, ok func() bool) error {
	deadline := time.Now().Add(within)
	for {
		if ok() {
			return nil
		}
		if p != nil && p.Exited() {
			return p.ExitError()
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("timed out after %s waiting for %s", within, what)
			if p != nil {
				msg += "; last lines of " + p.Log + ":\n" + p.Tail(15)
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(every):
		}
	}
}
