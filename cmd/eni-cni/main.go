// Command eni-cni is the dnsaccel ENI CNI plugin (CNI spec 1.1: ADD, DEL,
// CHECK, STATUS, GC, VERSION). The container runtime runs it; it asks
// eni-agent for an address and sets up the pod's interface. See cni/README.md.
package main

import (
	"runtime"

	"github.com/dnsaccel/dnsaccel/cni/plugin"
)

func init() {
	// Namespace switches must stay on one OS thread.
	runtime.LockOSThread()
}

func main() { plugin.Main() }
