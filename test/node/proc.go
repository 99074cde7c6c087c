package node

import "github.com/dnsaccel/dnsaccel/test/internal/proc"

// Proc is a process of the node (test/internal/proc).
type Proc = proc.Proc

func startProc(name, logPath string, env []string, argv ...string) (*Proc, error) {
	return proc.Start(name, logPath, env, argv...)
}
