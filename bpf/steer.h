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

/*
 * Reverse translation, per socket: the cache's address a steered socket was
 * sent to, keyed with the socket cookie, gives back the VIP it asked for.
 */
struct dnsa_rev_key {
	__u64 cookie;
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 pad[5];
};

struct dnsa_rev_value {
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 pad;
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
	DNSA_STAT_REV_FAIL = 4,   /* matched, not steered: reverse entry not stored */
	DNSA_STAT_MAX = 8,
};

#endif
