// Command pvtzctl shows admins what pvtz-sync manages in a PrivateZone
// zone: zones, records with owners, the diff against the cluster, owners
// and the change log. See externaldns/README.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/dnsaccel/dnsaccel/externaldns/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := ctl.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
