/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps and structs shared by bpf/policy.c (NetworkPolicy at the pod's
 * interface) and datapath/policy (through the Go types bpf2go generates).
 *
 * Addresses are 16 bytes; IPv4 is v4-mapped (::ffff:a.b.c.d), so one map
 * and one LPM trie hold both families.
 *
 * Identities: a numeric id per (namespace, label set), chosen by the Go
 * side. A packet's peer has up to two: its pod identity (dnsa_pol_ipc,
 * exact address) and its CIDR identity (dnsa_pol_cidr, the longest prefix
 * any ipBlock named, including the except prefixes, so an excepted address
 * lands on the except's own identity, which the rule does not allow).
 * Identity 0 in a rule means "any peer".
 */
#ifndef DNSACCEL_POLICY_H
#define DNSACCEL_POLICY_H

#include <linux/types.h>

#define DNSA_POL_ID_ANY 0
/* The node's own addresses (dnsa_pol_ipc): traffic between a pod and its
 * node is always allowed, as Kubernetes defines. */
#define DNSA_POL_ID_HOST 2

/* Directions, as seen by the pod. */
#define DNSA_POL_INGRESS 0
#define DNSA_POL_EGRESS 1

/* Endpoint flags. */
#define DNSA_POL_F_ENFORCE_IN 0x01  /* a policy selects the pod for ingress: default deny */
#define DNSA_POL_F_ENFORCE_OUT 0x02 /* ... for egress */

/* Config flags (dnsa_pol_cfg[0]). */
#define DNSA_POL_CFG_AUDIT 0x01 /* count and log what would be dropped; drop nothing */

struct dnsa_pol_addr {
	__u8 addr[16];
};

/* dnsa_pol_ep (dnsa_pol_ep_val): a local endpoint's address -> what enforces it. */
struct dnsa_pol_ep_val {
	__u32 id;       /* endpoint id: the rules' key */
	__u32 identity; /* its own identity */
	__u32 revision; /* bumped with every policy change of the endpoint */
	__u32 deny_policy[2]; /* per direction: the policy id a drop is counted on */
	__u8 flags;
	__u8 pad[3];
};

/* dnsa_pol_ipc: a pod address (any node) -> its identity. */
struct dnsa_pol_ipc_val {
	__u32 identity;
};

/* dnsa_pol_cidr: LPM trie, prefixlen counts bits of addr. */
struct dnsa_pol_cidr_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/*
 * dnsa_pol_rules: LPM trie. The fields are matched in order; every rule
 * matches ep, dir, peer and proto exactly (proto 0: any protocol and any
 * port) and the port by prefix, so a port range is a few prefixes
 * (prefixlen = 80 + port prefix bits).
 */
struct dnsa_pol_rule_key {
	__u32 prefixlen;
	__u32 ep;
	__u32 peer;
	__u8 dir;
	__u8 proto;
	__u8 dport[2]; /* big endian */
};

struct dnsa_pol_rule_val {
	__u32 policy; /* the policy id that allows it */
};

/* dnsa_pol_ct: a flow an endpoint allowed, as first seen in dir. */
struct dnsa_pol_ct_key {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport; /* network byte order */
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
	__u32 ep;
};

struct dnsa_pol_ct_val {
	__u64 seen_ns;
	__u32 revision; /* the endpoint's revision it was last decided at */
	__u32 policy;
};

/* dnsa_pol_events: a drop (rate-limited per CPU). */
struct dnsa_pol_event {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u8 audit;
	__u8 pad;
	__u32 ep;
	__u32 policy;
	__u32 peer_identity;
};

struct dnsa_pol_config {
	__u32 flags;
	__u32 pad;
};

/* dnsa_pol_stats indexes. */
#define DNSA_POL_STAT_NEW 0
#define DNSA_POL_STAT_ESTABLISHED 1
#define DNSA_POL_STAT_REPLY 2
#define DNSA_POL_STAT_DROPPED 3
#define DNSA_POL_STAT_AUDITED 4
#define DNSA_POL_STAT_MALFORMED 5
#define DNSA_POL_STAT_UNMANAGED 6
#define DNSA_POL_STAT_MAX 7

#endif
