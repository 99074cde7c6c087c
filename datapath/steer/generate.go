package steer

// The steering programs of bpf/steer.c, compiled by bpf2go (pinned in go.mod
// as a tool) with Debian's clang into steer_bpfel.{go,o} and
// steer_bpfeb.{go,o}, which are committed. `make generate` reruns this;
// datapath/stale_test.go fails `make test` when the committed files differ from a
// fresh build.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -nostdlibinc -I../../bpf/include" -type dnsa_steer_key -type dnsa_steer_target -type dnsa_rev_value -type dnsa_rev_entry -type dnsa_config -target bpfel,bpfeb steer ../../bpf/steer.c -- -I../../bpf
