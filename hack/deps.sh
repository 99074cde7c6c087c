#!/usr/bin/env bash
# Installs what `make test`, `make demo` and `make bench` need on Debian 12,
# idempotently: quiet when everything is present. Run as root.
set -euo pipefail

if [ "$(uname -s)" != Linux ]; then
	echo "dnsaccel needs Linux (network namespaces, eBPF): this is $(uname -s)" >&2
	exit 1
fi
if [ "$(id -u)" != 0 ]; then
	echo "dnsaccel's tests need root (network namespaces, eBPF, apt-get): run as root, e.g. sudo make test" >&2
	exit 1
fi

# etcd-server: the test API server's store. clang/llvm: make generate (the
# kernel and libbpf headers are vendored in bpf/include).
# dnsperf/unbound/dnsmasq-base: benchmark peers. dnsutils: dig. iproute2: ip netns.
# runc: the real test node's OCI runtime (test/realnode); nftables: nft, which
# its kube-proxy (nftables mode) runs.
packages=(etcd-server clang llvm dnsperf unbound dnsmasq-base dnsutils iproute2 iptables tcpdump gnuplot-nox runc nftables)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# policy-rc.d keeps the unbound package from starting a system resolver.
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d.dnsaccel
	chmod +x /usr/sbin/policy-rc.d.dnsaccel
	had_policy=0
	[ -e /usr/sbin/policy-rc.d ] && had_policy=1
	[ $had_policy = 1 ] || cp /usr/sbin/policy-rc.d.dnsaccel /usr/sbin/policy-rc.d
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	[ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
	rm -f /usr/sbin/policy-rc.d.dnsaccel
fi
