// Command build-kube builds the kube-apiserver (and kubectl) binaries the
// test harness runs into the cache directory, so that tests start with a
// warm cache:
//
//	go run ./test/cluster/cmd/build-kube            # kube-apiserver and kubectl
//	go run ./test/cluster/cmd/build-kube -kubectl=false
//
// It prints the paths of the binaries. Already cached binaries are not rebuilt.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/dnsaccel/dnsaccel/test/cluster"
)

func main() {
	kubectl := flag.Bool("kubectl", true, "also build kubectl")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	names := []string{"kube-apiserver"}
	if *kubectl {
		names = append(names, "kubectl")
	}
	for _, n := range names {
		p, err := cluster.EnsureBinary(ctx, n)
		if err != nil {
			fmt.Fprintln(os.Stderr, "build-kube:", err)
			os.Exit(1)
		}
		fmt.Println(p)
	}
}
