// Package spawn starts the test harnesses' child processes from one OS
// thread.
//
// Child processes are started with Pdeathsig=SIGKILL so they die with the
// test binary, even if it panics or is killed. The kernel sends that signal
// when the *thread* that forked the child exits, and the Go runtime ends
// threads whose goroutine exits while locked (network-namespace code locks
// threads, and a failed setns leaves them so). So every fork happens on one
// dedicated thread that stays locked for the lifetime of the process.
package spawn

import (
	"os/exec"
	"runtime"
	"sync"
)

type request struct {
	cmd  *exec.Cmd
	done chan error
}

var (
	once     sync.Once
	requests chan request
)

// Start starts cmd (cmd.Start) on the spawner thread.
func Start(cmd *exec.Cmd) error {
	once.Do(func() {
		requests = make(chan request)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread must not exit
			for r := range requests {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	requests <- request{cmd: cmd, done: done}
	return <-done
}
