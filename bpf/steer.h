/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps and structs shared by bpf/steer.c and datapath/ (through the Go types
 * bpf2go generates from the BTF of these structs).
 *
 * Addresses are in network byte order as the socket hooks see them; an IPv4
 * address sits in addr[0] with addr[1..3] zero, and family says which.
 */
#ifndef DNSACCEL_STEER_H
#define DNSACCEL_STEER_H

#include <linux/types.h>

#define DNSA_FAMILY_V4 4
#define DNSA_FAMILY_V6 6

/* A steered Service address: VIP, port and protocol (IPPROTO_UDP/TCP). */
struct dnsa_steer_key {
	__u32 addr[4];
	__u16 port; /* network byte order */
	__u8 proto;
	__u8 family;
};

/* Where the steered address goes: the node cache's address and port. */
struct dnsa_steer_target {
	__u32 addr[4];
	__u16 port; /* network byte order */
	__u8 family;
	__u8 pad;
};

/* Reverse translations kept per socket (a socket steered to more targets
 * than this overwrites the last slot). */
#define DNSA_REV_SLOTS 4

/*
 * Reverse translation of one steered destination of a socket: replies from
 * target (the cache's address) are shown as coming from vip.
 */
struct dnsa_rev_entry {
	__u32 target[4];
	__u32 vip[4];
	__u16 target_port; /* network byte order */
	__u16 vip_port;    /* network byte order */
	__u8 family;       /* of both; 0: unused slot */
	__u8 pad[3];
};

/*
 * The value of dnsa_rev: socket-local storage (BPF_MAP_TYPE_SK_STORAGE), so
 * it lives exactly as long as the socket: the kernel frees it with the
 * socket, and no number of other sockets can evict it.
 */
struct dnsa_rev_value {
	struct dnsa_rev_entry slot[DNSA_REV_SLOTS];
};

/* Settings user space writes once per attach. */
struct dnsa_config {
	/* Steer only while bpf_ktime_get_ns() - heartbeat < timeout_ns. */
	__u64 timeout_ns;
	/* Sockets with this SO_MARK (the cache's own upstream sockets) are
	 * never steered; 0 disables the check. */
	__u32 skip_mark;
	__u32 pad;
};

/* Per-CPU counters (index into dnsa_stats). */
enum dnsa_stat {
	DNSA_STAT_STEERED = 0,    /* connect/sendmsg rewritten to the cache */
	DNSA_STAT_STALE = 1,      /* matched, not steered: heartbeat too old */
	DNSA_STAT_SKIP_MARK = 2,  /* matched, not steered: the cache's own socket */
	DNSA_STAT_REVERSED = 3,   /* recvmsg/getpeername shown the VIP again */
	DNSA_STAT_REV_FAIL = 4,   /* matched, not steered: socket storage not allocated */
	DNSA_STAT_MAX = 8,
};

#endif
