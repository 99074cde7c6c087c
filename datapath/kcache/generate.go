package kcache

// The in-kernel cache program of bpf/kcache.c, compiled by bpf2go (pinned in
// go.mod as a tool) with Debian's clang into kcache_bpfel.{go,o} and
// kcache_bpfeb.{go,o}, which are committed. `make generate` reruns this.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -nostdlibinc -I../../bpf/include" -type dnsa_kc_key -type dnsa_kc_entry -type dnsa_kc_addr -type dnsa_kc_config -type dnsa_kc_client -target bpfel,bpfeb kcache ../../bpf/kcache.c -- -I../../bpf
