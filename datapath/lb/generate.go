package lb

// The Service load-balancing programs of bpf/lb.c, compiled by bpf2go
// (pinned in go.mod as a tool) with Debian's clang into lb_bpfel.{go,o} and
// lb_bpfeb.{go,o}, which are committed. `make generate` reruns this;
// datapath/stale_test.go fails `make test` when the committed files differ
// from a fresh build.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -nostdlibinc -I../../bpf/include" -type dnsa_lb_key -type dnsa_lb_svc_val -type dnsa_lb_backend -type dnsa_lb_revnat_val -type dnsa_lb_aff_key -type dnsa_lb_aff_val -type dnsa_lb_sock_val -type dnsa_lb_sock_rev -type dnsa_lb_gone_key -type dnsa_lb_ct_key -type dnsa_lb_ct_val -type dnsa_steer_key -type dnsa_steer_target -type dnsa_config -target bpfel,bpfeb lb ../../bpf/lb.c -- -I../../bpf
