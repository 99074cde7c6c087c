// Command pause is the pod sandbox's process, as registry.k8s.io/pause is:
// it holds the pod's namespaces and does nothing until it is told to stop.
// As PID 1 of its namespace it also reaps the orphans it inherits. `make
// images` builds it statically into the image registry.k8s.io/pause that
// the test node's containerd pins as its sandbox image.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println("pause (dnsaccel build/pause)")
		return
	}
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
