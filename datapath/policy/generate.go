package policy

// The NetworkPolicy programs of bpf/policy.c, compiled by bpf2go (pinned in
// go.mod as a tool) with Debian's clang into policy_bpfel.{go,o} and
// policy_bpfeb.{go,o}, which are committed. `make generate` reruns this;
// datapath/stale_test.go fails `make test` when the committed files differ
// from a fresh build.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -nostdlibinc -I../../bpf/include" -type dnsa_pol_addr -type dnsa_pol_ep_val -type dnsa_pol_ipc_val -type dnsa_pol_cidr_key -type dnsa_pol_rule_key -type dnsa_pol_rule_val -type dnsa_pol_ct_key -type dnsa_pol_ct_val -type dnsa_pol_event -type dnsa_pol_config -target bpfel,bpfeb policy ../../bpf/policy.c -- -I../../bpf
