package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dnsaccel/dnsaccel/test/internal/owner"
	"github.com/dnsaccel/dnsaccel/test/internal/spawn"
)

// proc is a child process in its own process group with its output in a log file.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error
}

func startProc(name, bin string, args []string, logPath string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "# %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := spawn.Start(cmd); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s (%s): %w", name, bin, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes an exited process with the tail of its log.
func (p *proc) exitError() error {
	<-p.done
	logTail := fileTail(p.logPath, 40)
	err := fmt.Errorf("%s exited unexpectedly (%v); last lines of %s:\n%s", p.name, p.waitErr, filepath.Base(p.logPath), logTail)
	if strings.Contains(logTail, "address already in use") {
		return &portInUseError{err: err}
	}
	return err
}

// kill SIGKILLs the whole process group and waits for the process.
func (p *proc) kill() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	if !p.exited() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		_ = p.cmd.Process.Kill()
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		fmt.Fprintf(os.Stderr, "dnsaccel/test/cluster: %s (pid %d) did not exit after SIGKILL\n", p.name, p.cmd.Process.Pid)
	}
}

type portInUseError struct{ err error }

func (e *portInUseError) Error() string { return "port already in use: " + e.err.Error() }
func (e *portInUseError) Unwrap() error { return e.err }

// Ownership of data directories, so that directories left behind by a
// crashed test binary can be removed by later runs without touching the
// directories of test binaries that are still running.

const ownerFile = "owner"

func writeOwner(dir string) error {
	return owner.Write(filepath.Join(dir, ownerFile))
}

// ownerAlive reports whether the process recorded in dir/owner still runs.
func ownerAlive(dir string) bool { return owner.Alive(filepath.Join(dir, ownerFile)) }

const dataDirPattern = "dnsaccel-cluster-"

// sweepStaleDirs removes data directories of clusters whose test binary is
// gone (their processes died with it through Pdeathsig).
func sweepStaleDirs() {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), dataDirPattern+"*"))
	for _, d := range matches {
		st, err := os.Stat(d)
		if err != nil || !st.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(d, "kept")); err == nil {
			continue // kept on purpose (DNSACCEL_CLUSTER_KEEP)
		}
		// A directory without owner file may be one being created right now.
		if _, err := os.Stat(filepath.Join(d, ownerFile)); errors.Is(err, os.ErrNotExist) && time.Since(st.ModTime()) < time.Hour {
			continue
		}
		if !ownerAlive(d) {
			os.RemoveAll(d)
		}
	}
}
