/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Maps and structs shared by bpf/lb.c (the Service load balancer) and
 * datapath/lb (through the Go types bpf2go generates from their BTF).
 *
 * Addresses are in network byte order as the socket hooks see them; an IPv4
 * address sits in addr[0] with addr[1..3] zero, and family says which
 * (DNSA_FAMILY_V4/V6 of steer.h).
 *
 * The Service table follows Cilium's lb4_key/lb4_service: one hash map,
 * keyed by (frontend address, port, protocol, scope, slot). Slot 0 is the
 * Service itself (how many backends, flags, affinity timeout, its reverse
 * NAT id); slots 1..count each name one backend id, so picking a backend is
 * two lookups whatever the number of Services and backends.
 */
#ifndef DNSACCEL_LB_H
#define DNSACCEL_LB_H

#include <linux/types.h>

#include "steer.h"

/* Scopes of a frontend's backend list. */
#define DNSA_LB_SCOPE_ALL 0 /* traffic from this node (sockets): every usable backend */
#define DNSA_LB_SCOPE_EXT 1 /* traffic from outside the node to an external frontend
			     * with externalTrafficPolicy Local: node-local backends only;
			     * absent: use DNSA_LB_SCOPE_ALL */

struct dnsa_lb_key {
	__u32 addr[4];
	__u16 port; /* network byte order */
	__u8 proto; /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family;
	__u16 slot; /* 0: the Service; 1..count: its backends */
	__u8 scope;
	__u8 pad;
};

/* Service flags (slot 0). */
#define DNSA_LB_F_CLUSTERIP 0x01
#define DNSA_LB_F_NODEPORT 0x02
#define DNSA_LB_F_EXTERNALIP 0x04
#define DNSA_LB_F_LOADBALANCER 0x08
/* count == 0 because a traffic policy Local left no node-local backend
 * (kube-proxy drops) rather than because there are no endpoints at all
 * (kube-proxy rejects). */
#define DNSA_LB_F_NO_LOCAL 0x10
#define DNSA_LB_F_AFFINITY 0x20

struct dnsa_lb_svc_val {
	__u32 backend_id;       /* slot > 0: the backend */
	__u32 affinity_timeout; /* slot 0: sessionAffinity ClientIP, seconds */
	__u16 count;            /* slot 0: backends in slots 1..count */
	__u16 rev_nat_id;       /* the Service frontend's id (dnsa_lb_revnat) */
	__u8 flags;             /* slot 0: DNSA_LB_F_* */
	__u8 pad[3];
};

struct dnsa_lb_backend {
	__u32 addr[4];
	__u16 port; /* network byte order */
	__u8 family;
	__u8 flags; /* DNSA_LB_BE_* */
};

#define DNSA_LB_BE_TERMINATING 0x01 /* picked only because no ready one is left */

/* The frontend of a reverse NAT id: what replies are shown as. */
struct dnsa_lb_revnat_val {
	__u32 addr[4];
	__u16 port; /* network byte order */
	__u8 family;
	__u8 proto;
};

/*
 * Affinity (sessionAffinity: ClientIP): which backend a client got last,
 * per Service frontend. The client is the socket's network namespace cookie
 * at the socket hooks (a pod: Cilium does the same) and its address in the
 * per-packet program.
 */
struct dnsa_lb_aff_key {
	__u64 client; /* netns cookie, or 0 with addr set */
	__u32 addr[4];
	__u16 rev_nat_id;
	__u8 family;
	__u8 pad[5];
};

struct dnsa_lb_aff_val {
	__u64 last_ns; /* bpf_ktime_get_ns() of the last use */
	__u32 backend_id;
	__u32 pad;
};

/* Reverse translations kept per socket. */
#define DNSA_LB_REV_SLOTS 4

struct dnsa_lb_sock_rev {
	__u32 backend[4];
	__u32 vip[4];
	__u16 backend_port; /* network byte order */
	__u16 vip_port;     /* network byte order */
	__u16 rev_nat_id;
	__u8 family;    /* 0: unused slot */
	__u8 connected; /* translated at connect(): the socket's peer */
};

/*
 * A backend that left a frontend (dnsa_lb_gone, written by user space just
 * before it runs the dnsa_lb_term iterator): connected UDP sockets still
 * pinned to it are destroyed (the application gets ECONNABORTED and
 * reconnects, to a live backend).
 */
struct dnsa_lb_gone_key {
	__u32 backend[4];
	__u16 backend_port; /* network byte order */
	__u16 rev_nat_id;
	__u8 family;
	__u8 pad[3];
};

/* The value of dnsa_lb_sock: socket-local storage, freed with the socket. */
struct dnsa_lb_sock_val {
	struct dnsa_lb_sock_rev slot[DNSA_LB_REV_SLOTS];
};

/*
 * Connection tracking of the per-packet load balancer (tc): the forward
 * entry (client -> frontend) keeps a flow on its backend, the reverse entry
 * (backend -> client) rewrites the replies' source back to the frontend.
 * LRU: entries of finished flows age out.
 */
struct dnsa_lb_ct_key {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport; /* network byte order */
	__u16 dport; /* network byte order */
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

struct dnsa_lb_ct_val {
	__u32 addr[4];    /* forward: the backend; reverse: the frontend */
	__u32 backend_id; /* forward: still in dnsa_lb_be with this address, or the flow re-picks */
	__u16 port;       /* network byte order */
	__u16 rev_nat_id;
	__u8 family;
	__u8 pad[3];
};

/* Per-CPU counters (index into dnsa_lb_stats). */
enum dnsa_lb_stat {
	DNSA_LB_STAT_XLATED = 0,     /* connect/sendmsg sent to a backend */
	DNSA_LB_STAT_REJECTED = 1,   /* no endpoints: ECONNREFUSED */
	DNSA_LB_STAT_NO_LOCAL = 2,   /* traffic policy Local, no local endpoint */
	DNSA_LB_STAT_STEERED = 3,    /* left to the node cache's steering */
	DNSA_LB_STAT_REVERSED = 4,   /* recvmsg/getpeername shown the frontend */
	DNSA_LB_STAT_REV_STALE = 5,  /* reverse entry of a deleted/changed Service */
	DNSA_LB_STAT_AFFINITY = 6,   /* backend taken from the affinity map */
	DNSA_LB_STAT_NO_STORAGE = 7, /* socket storage not allocated: untranslated */
	DNSA_LB_STAT_NO_BACKEND = 8, /* a slot or backend entry missing (update in flight) */
	DNSA_LB_STAT_TERMINATED = 9, /* connected UDP socket to a gone backend destroyed */
	DNSA_LB_STAT_PKT_XLATED = 10,  /* tc: packet to a frontend sent to a backend */
	DNSA_LB_STAT_PKT_REVERSED = 11, /* tc: reply shown from the frontend */
	DNSA_LB_STAT_PKT_DROPPED = 12, /* tc: no (local) endpoint: dropped */
	DNSA_LB_STAT_MAX = 16,
};

#endif
