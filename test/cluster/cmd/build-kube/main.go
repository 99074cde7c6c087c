// Command build-kube builds the Kubernetes binaries the test harness runs
// into the cache directory, so that tests start with a warm cache:
//
//	go run ./test/cluster/cmd/build-kube                  # kube-apiserver and kubectl
//	go run ./test/cluster/cmd/build-kube kubelet kube-proxy
//	go run ./test/cluster/cmd/build-kube -all             # every binary in cluster.KubeBinaries
//
// It prints the paths of the binaries. Already cached binaries are not rebuilt.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/dnsaccel/dnsaccel/test/cluster"
)

func main() {
	all := flag.Bool("all", false, "build every binary the harness knows: "+strings.Join(cluster.KubeBinaries, ", "))
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: build-kube [-all] [name...]\n\nBuilds Kubernetes %s binaries from test/tools/kube into the cache (default: kube-apiserver kubectl).\n\n", cluster.KubeVersion)
		flag.PrintDefaults()
	}
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	names := flag.Args()
	switch {
	case *all:
		names = cluster.KubeBinaries
	case len(names) == 0:
		names = []string{"kube-apiserver", "kubectl"}
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
