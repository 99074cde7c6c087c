// Command eni-cni is the dnsaccel ENI CNI plugin (CNI spec 1.1: ADD, DEL,
// CHECK, STATUS, GC, VERSION). The container runtime runs it; it asks
// eni-agent for an address and sets up the pod's interface. See cni/README.md.
//
// `eni-cni install [--bin-dir DIR] [--conf-dir DIR] [--conflist FILE]`
// installs the binary and the network configuration on the host (the
// eni-agent DaemonSet's init container).
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/dnsaccel/dnsaccel/cni/plugin"
)

func init() {
	// Namespace switches must stay on one OS thread.
	runtime.LockOSThread()
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "install" && os.Getenv("CNI_COMMAND") == "" {
		if err := plugin.Install(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "eni-cni install: %v\n", err)
			os.Exit(1)
		}
		return
	}
	plugin.Main()
}
