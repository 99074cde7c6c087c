// Command dnsaccelctl shows node-cache's per-pod DNS accounting, its cache
// and its steering, and turns its query log on and off. See
// nodecache/README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/dnsaccel/dnsaccel/nodecache/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := ctl.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
