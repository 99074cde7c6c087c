// Command demo is `make demo`: the whole dnsaccel node on one machine (see
// test/node), shown step by step with what each step measured. It tears
// everything down and exits 0, or exits 1 naming the step that did not
// behave.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dnsaccel/dnsaccel/test/cluster"
	"github.com/dnsaccel/dnsaccel/test/node"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) (err error) {
	fmt.Println("== dnsaccel: the whole node on one machine ==")
	if p, _ := cluster.BinaryPath("kube-apiserver"); p != "" {
		if _, err := os.Stat(p); err != nil && os.Getenv(cluster.EnvKubeAPIServer) == "" {
			fmt.Printf("building kube-apiserver %s into %s (once; about 10 minutes on 2 cores)...\n", cluster.KubeVersion, p)
		}
	}
	if _, err := cluster.KubeAPIServerPath(ctx); err != nil {
		return err
	}
	t0 := time.Now()
	upCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	n, err := node.Up(upCtx, node.Options{Logf: func(f string, a ...any) { fmt.Printf(f+"\n", a...) }})
	if err != nil {
		return fmt.Errorf("bringing the node up: %w", err)
	}
	down := false
	defer func() {
		if !down {
			if derr := n.Down(); derr != nil && err == nil {
				err = fmt.Errorf("5. teardown: %w", derr)
			}
		}
	}()
	fmt.Printf("node up in %s:\n", time.Since(t0).Round(100*time.Millisecond))
	fmt.Printf("  API server  %s (etcd + kube-apiserver %s, test/cluster)\n", n.Cluster.URL, cluster.KubeVersion)
	fmt.Printf("  cloud       bin/cloud-emulator --local-enis on %s: PrivateZone, ECS, metadata; VPC %s in namespace %q;\n", strings.TrimPrefix(n.EmulatorURL, "http://"), node.VPCCIDR, node.VPCNetns)
	fmt.Printf("              PrivateZone DNS (the VPC resolver) on %s\n", n.PvtzDNS)
	fmt.Printf("  kube-dns    Service kube-system/kube-dns %s -> bin/coredns (kubernetes plugin) in namespace %s, VIP on its lo, routed there\n", n.VIP, n.Central.Name)
	fmt.Printf("  node-cache  bin/node-cache --kubeconfig ... --local-ip %s --heartbeat-timeout %s (VIP and cluster upstream from Service kube-dns;\n", n.LocalIP, n.Opt.HeartbeatTimeout)
	fmt.Printf("              kernel cache on the pods' veths only)\n")
	fmt.Printf("  pvtz-sync   bin/pvtz-sync --zone %s --policy sync --source service\n\n", node.Zone)

	// 1.
	if err := n.CheckPods(); err != nil {
		return fmt.Errorf("1. pods: %w", err)
	}
	fmt.Printf("1. pods got VPC addresses from the node's ENI pool (eni-agent + eni-cni, veth mode; node address %s):\n", n.NodeIP)
	for _, p := range n.Pods {
		fmt.Printf("   %-6s %-15s ENI %s (vSwitch %s)  netns %s, host veth %s\n", p.Name, p.IP, p.ENI, p.VSwitch, p.Netns, p.HostVeth)
	}

	// 2.
	stepCtx, cancel2 := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel2()
	r, err := n.ResolveFromPod(stepCtx)
	if err != nil {
		return fmt.Errorf("2. resolving from %s: %w", n.Pods[0].Name, err)
	}
	a := n.Pods[0].Name
	fmt.Printf("2. from %s (resolv.conf: nameserver %s, the cluster search list, ndots:5):\n", a, n.VIP)
	fmt.Printf("   dig %-34s miss %s, hit %s -> %s, SERVER %s\n", node.ServiceFQDN(), ms(r.Miss.Time), ms(r.Hit.Time), r.Miss.Answer, server(r.Hit.Server))
	fmt.Printf("   a plain UDP socket sees the reply from %s (steered to node-cache on %s in the kernel)\n", r.From, n.LocalIP)
	fmt.Printf("   getent ahosts %-26s -> %s, %d queries on the wire (%s)\n", node.ServiceName, strings.Join(r.Short.Addrs, " "), len(r.Short.Queries), queries(r.Short))
	fmt.Printf("   getent ahosts %-26s -> %s, %d queries on the wire: k8s_autopath expanded the search list in node-cache\n", node.PrivateZoneName(), strings.Join(r.External.Addrs, " "), len(r.External.Queries))
	fmt.Printf("     the same from %s (its Pod's dnsConfig sets ndots, so k8s_autopath leaves it alone): %d queries\n", n.Pods[1].Name, len(r.NoAutopath.Queries))
	if r.Kernel.On {
		fmt.Printf("   %d more queries for %s, a fresh socket each: %.0f answered in the kernel at %s's veth\n", r.Kernel.Queries, node.ServiceFQDN(), r.Kernel.Hits, a)
		fmt.Printf("     (node-cache's kernel cache, a tc program), %.0f reached node-cache; median round trip %s\n", r.Kernel.UserSpace, us(r.Kernel.Median))
	} else {
		fmt.Printf("   (this kernel cannot run node-cache's in-kernel cache: skipped)\n")
	}
	fmt.Printf("   the central CoreDNS's whoami saw %s: the node, i.e. node-cache forwarded the query\n", r.CentralSaw)
	fmt.Printf("   node-cache over this step: %.0f cache hits, %.0f misses, %.0f autopath expansions, %.0f steered socket operations\n",
		r.Counters.Hits, r.Counters.Misses, r.Counters.AutopathHits, r.Counters.Steered)
	top, err := n.TopPods(stepCtx)
	if err != nil {
		return fmt.Errorf("2. dnsaccelctl top pods: %w", err)
	}
	fmt.Printf("   %s (per pod, kernel answers included):\n", top.Command)
	for _, l := range strings.Split(strings.TrimRight(top.Output, "\n"), "\n") {
		fmt.Printf("   %s\n", l)
	}

	// 3.
	f, err := n.KillAndRestart(stepCtx)
	if err != nil {
		return fmt.Errorf("3. kill -9 node-cache: %w", err)
	}
	fmt.Printf("3. kill -9 node-cache: %s's queries answered by the central CoreDNS %s later (limit: heartbeat timeout %s + 1 s;\n", a, ms(f.Recovered), n.Opt.HeartbeatTimeout)
	fmt.Printf("   %d queries timed out meanwhile, 200 ms each; the kernel left %d operations alone for the stale heartbeat)\n", f.Failed, f.Stale)
	fmt.Printf("   dig %-34s -> %s, SERVER %s (the central CoreDNS)\n", node.ServiceFQDN(), f.Dig.Answer, server(f.Dig.Server))
	fmt.Printf("   node-cache restarted: ready in %s (it adopted the %d pinned links), steering again %s after its start\n", ms(f.Restart), f.Adopted, ms(f.SteerAgain))

	// 4.
	rec, err := n.PrivateZoneRecords(stepCtx)
	if err != nil {
		return fmt.Errorf("4. PrivateZone records: %w", err)
	}
	fmt.Printf("4. %s\n", rec.Command)
	for _, l := range strings.Split(strings.TrimRight(rec.Output, "\n"), "\n") {
		fmt.Printf("   %s\n", l)
	}
	fmt.Printf("   bin/pvtzctl diff %s --kubeconfig ...: exit 0, no change pending (the zone matches the cluster's Services)\n", node.Zone)

	// 5.
	t1 := time.Now()
	down = true
	if err := n.Down(); err != nil {
		return fmt.Errorf("5. teardown: %w", err)
	}
	if left := n.Leftovers(); len(left) > 0 {
		return fmt.Errorf("5. teardown: left behind:\n  %s", strings.Join(left, "\n  "))
	}
	fmt.Printf("5. teardown in %s: no namespace, interface, address, route, rule, eBPF program/map/link, bpffs mount,\n", ms(time.Since(t1)))
	fmt.Printf("   process, port or file of the node left\n\ndemo OK (%s)\n", time.Since(t0).Round(100*time.Millisecond))
	return nil
}

func ms(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func us(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }

func queries(g node.Getent) string {
	var s []string
	for _, q := range g.Queries {
		s = append(s, q.String())
	}
	return strings.Join(s, ", ")
}

// server is dig's SERVER without the repeated address: 10.96.0.10#53.
func server(s string) string {
	a, _, _ := strings.Cut(s, "(")
	return a
}
