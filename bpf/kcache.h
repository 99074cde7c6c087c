/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structs shared by bpf/kcache.c and datapath/kcache (through the Go types
 * bpf2go generates from their BTF).
 */
#ifndef DNSACCEL_KCACHE_H
#define DNSACCEL_KCACHE_H

#include <linux/types.h>

/* Longest question name (wire form, root label included) kept in the key;
 * queries for longer names go to user space. */
#define DNSA_KC_NAME_MAX 128
/* Most bytes of records (after the question) an entry holds. */
#define DNSA_KC_DATA_MAX 512
/* Most TTL fields an entry rewrites. */
#define DNSA_KC_TTL_MAX 32

#define DNSA_KC_F_DO 1 /* the query's EDNS0 DO bit */
#define DNSA_KC_F_CD 2 /* the query's CD header bit */

/* The question, as the user-space cache keys it: lower-cased wire name,
 * type, DO and CD (class IN only). Zero padded. */
struct dnsa_kc_key {
	__u16 qtype;
	__u8 flags;
	__u8 name_len;
	__u8 name[DNSA_KC_NAME_MAX];
};

/* One answer, as the user-space cache would render it: the header flags and
 * counts and the records after the question, with the TTL fields to age. */
struct dnsa_kc_entry {
	__u64 stored_ns;  /* bpf_ktime_get_ns() at which the TTLs below were current */
	__u64 expires_ns; /* never answered from the kernel at or after this */
	__u16 flags;      /* header flags word, RD clear (the query's RD is copied) */
	__u16 ancount;
	__u16 nscount;
	__u16 arcount;    /* without the OPT record added for EDNS0 queries */
	__u16 data_len;
	__u16 ttl_count;
	__u16 ttl_off[DNSA_KC_TTL_MAX]; /* offsets of TTL fields in data */
	__u32 ttl[DNSA_KC_TTL_MAX];     /* their values at stored_ns */
	__u8 data[DNSA_KC_DATA_MAX];
};

/* An address the node cache answers on (IPv4 as ::ffff:a.b.c.d). */
struct dnsa_kc_addr {
	__u8 addr[16];
};

struct dnsa_kc_config {
	__u16 port;          /* the cache's DNS port, host byte order */
	__u16 edns_size;     /* UDP size the cache advertises in its OPT record */
	__u16 max_resp;      /* largest response answered from the kernel (never over the client's UDP size either) */
	__u16 flags;         /* DNSA_KC_CFG_* */
};

/* dnsa_kc_bypass holds clients whose queries go on to node-cache (its query
 * log); looked up only while this flag is set. */
#define DNSA_KC_CFG_BYPASS 1

/* Answers given to one client (per CPU), for node-cache's per-pod
 * accounting: by the entry's rcode. */
struct dnsa_kc_client {
	__u64 noerror;
	__u64 nxdomain;
	__u64 other;
};

/* Per-CPU counters, indexed by these. */
enum {
	DNSA_KC_HIT = 0,      /* answered in the kernel */
	DNSA_KC_MISS,         /* a query the kernel could answer, not in the map */
	DNSA_KC_EXPIRED,      /* in the map but expired */
	DNSA_KC_PASS,         /* to the cache's address and port but not answerable here (TCP, EDNS options, malformed, larger than max_resp or than the client's UDP size) */
	DNSA_KC_ERROR,        /* a helper failed while answering; the query went on */
	DNSA_KC_STATS_MAX,
};

#endif
