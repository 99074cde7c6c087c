// Package datapath holds what dnsaccel's eBPF packages share: finding the
// cgroup v2 mount, making sure of a bpf file system, and checking the
// kernel and permissions for them (features.go). Each program has its own
// package: steer (DNS steering, bpf/steer.c), kcache (the in-kernel cache,
// bpf/kcache.c), reuseport (the node cache's SO_REUSEPORT selection), and
// notrack (nftables, not eBPF). See README.md for adding one.
package datapath
