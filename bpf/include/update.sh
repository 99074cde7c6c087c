#!/usr/bin/env bash
# Refreshes the vendored headers from Debian's libbpf-dev (bpf/) and
# linux-libc-dev (linux/, asm-generic/): exactly the files bpf/*.c include,
# directly or through each other. asm/ holds our own arch-neutral stand-ins
# (the BPF target has no asm/ directory; the host's, e.g.
# /usr/include/x86_64-linux-gnu/asm, would tie the build to one machine).
# Run from anywhere; then `make generate` and commit.
set -euo pipefail
cd "$(dirname "$0")"

libbpf=(bpf_helpers.h bpf_helper_defs.h bpf_endian.h)
uapi=(
	linux/bpf.h linux/bpf_common.h linux/types.h linux/posix_types.h linux/stddef.h
	linux/in.h linux/in6.h linux/libc-compat.h linux/socket.h linux/const.h
	linux/if_ether.h linux/ip.h linux/ipv6.h linux/udp.h linux/pkt_cls.h linux/pkt_sched.h
	linux/swab.h linux/byteorder/little_endian.h linux/byteorder/big_endian.h
	asm-generic/types.h asm-generic/int-ll64.h asm-generic/bitsperlong.h
	asm-generic/posix_types.h asm-generic/swab.h
)
for f in "${libbpf[@]}"; do
	install -D -m 0644 "/usr/include/bpf/$f" "bpf/$f"
done
for f in "${uapi[@]}"; do
	install -D -m 0644 "/usr/include/$f" "$f"
done
# bpf_helper_defs.h is generated and carries no SPDX line: keep libbpf's
# copyright file (LGPL-2.1 OR BSD-2-Clause, full texts) beside it.
install -m 0644 /usr/share/doc/libbpf-dev/copyright bpf/COPYING
{
	echo "libbpf-dev $(dpkg-query -W -f='${Version}' libbpf-dev)"
	echo "linux-libc-dev $(dpkg-query -W -f='${Version}' linux-libc-dev)"
} >VERSIONS
