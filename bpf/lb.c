// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * dnsaccel Service load balancing at the socket (kube-proxy replacement):
 * cgroup sock_addr programs that send a socket's connections and datagrams
 * for a Service frontend (ClusterIP, NodePort, externalIP or LoadBalancer
 * ingress address, port, protocol) straight to one of its backends, as
 * Cilium's socket-LB (bpf/bpf_sock.c) does. Attached by datapath/lb.
 *
 *   connect4/6   TCP and connected UDP: pick a backend, rewrite the destination;
 *                a Service without endpoints fails the connect with ECONNREFUSED
 *   sendmsg4/6   unconnected UDP: the same per datagram (the backend stays the
 *                same for one socket: picked by the socket's cookie)
 *   recvmsg4/6   UDP: replies from the backend are shown from the frontend
 *   getpeername4/6: the peer of a translated socket is the frontend
 *
 * The reverse translation lives in socket-local storage (dnsa_lb_sock),
 * freed with the socket.
 *
 * Cooperation with the node cache's DNS steering (steer.c): both sets of
 * programs may be attached to the same cgroup hooks, in any order. This
 * program shares steer.c's maps dnsa_steer, dnsa_hb and dnsa_cfg (same
 * definitions, pinned by name in the same directory) and leaves a
 * destination alone when steer.c would steer it: the frontend is in
 * dnsa_steer, the node cache's heartbeat is fresh, and the socket does not
 * carry the cache's upstream SO_MARK. So while node-cache lives it owns the
 * kube-dns VIP; when its heartbeat goes stale, this program balances the VIP
 * over the real CoreDNS endpoints; node-cache's own (marked) upstream
 * sockets are always balanced, never looped back to the cache. Whichever
 * program runs second sees either a node-cache address or a backend address,
 * neither of which is in its table.
 */
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lb.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define ECONNREFUSED 111
#define EHOSTUNREACH 113

/* Sizes are defaults: datapath/lb sets max_entries from its Options. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dnsa_lb_key);
	__type(value, struct dnsa_lb_svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_lb_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct dnsa_lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_lb_be SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, struct dnsa_lb_revnat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_lb_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dnsa_lb_aff_key);
	__type(value, struct dnsa_lb_aff_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_lb_aff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dnsa_lb_sock_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_lb_sock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DNSA_LB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_lb_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct dnsa_lb_ct_key);
	__type(value, struct dnsa_lb_ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_lb_ct SEC(".maps");

/* Backends that left, for the dnsa_lb_term iterator (not pinned). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct dnsa_lb_gone_key);
	__type(value, __u8);
} dnsa_lb_gone SEC(".maps");

/* steer.c's maps, shared (identical definitions, pinned by name). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct dnsa_steer_key);
	__type(value, struct dnsa_steer_target);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_steer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_hb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dnsa_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_cfg SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *v = bpf_map_lookup_elem(&dnsa_lb_stats, &what);

	if (v)
		*v += 1;
}

/*
 * steered says whether steer.c owns this destination for this socket now
 * (see the top of the file): then the load balancer leaves it alone.
 */
static __always_inline int steered(struct bpf_sock_addr *ctx, const struct dnsa_lb_key *k)
{
	struct dnsa_steer_key sk = {};
	struct dnsa_config *cfg;
	struct bpf_sock *s;
	__u32 zero = 0;
	__u64 *hb, now, beat;

	sk.addr[0] = k->addr[0];
	sk.addr[1] = k->addr[1];
	sk.addr[2] = k->addr[2];
	sk.addr[3] = k->addr[3];
	sk.port = k->port;
	sk.proto = k->proto;
	sk.family = k->family;
	if (!bpf_map_lookup_elem(&dnsa_steer, &sk))
		return 0;
	cfg = bpf_map_lookup_elem(&dnsa_cfg, &zero);
	hb = bpf_map_lookup_elem(&dnsa_hb, &zero);
	if (!cfg || !hb)
		return 0;
	s = ctx->sk;
	if (cfg->skip_mark && s && s->mark == cfg->skip_mark)
		return 0;
	beat = *hb;
	now = bpf_ktime_get_ns();
	if (beat == 0 || (now > beat && now - beat >= cfg->timeout_ns))
		return 0;
	return 1;
}

static __always_inline int same_backend(const struct dnsa_lb_sock_rev *e, const __u32 *addr, __u16 port,
					__u8 family)
{
	return e->family == family && e->backend_port == port && e->backend[0] == addr[0] &&
	       e->backend[1] == addr[1] && e->backend[2] == addr[2] && e->backend[3] == addr[3];
}

/* remember stores backend -> frontend in the socket's storage. */
static __always_inline int remember(struct bpf_sock_addr *ctx, const struct dnsa_lb_key *fe, __u16 rev_nat_id,
				    const struct dnsa_lb_backend *be, __u8 connected)
{
	struct dnsa_lb_sock_val *st;
	struct dnsa_lb_sock_rev *e = 0;
	int i;

	st = bpf_sk_storage_get(&dnsa_lb_sock, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		count(DNSA_LB_STAT_NO_STORAGE);
		return 0;
	}
	for (i = 0; i < DNSA_LB_REV_SLOTS; i++) {
		e = &st->slot[i];
		if (e->family == 0 || same_backend(e, be->addr, be->port, be->family))
			break;
	}
	e->backend[0] = be->addr[0];
	e->backend[1] = be->addr[1];
	e->backend[2] = be->addr[2];
	e->backend[3] = be->addr[3];
	e->backend_port = be->port;
	e->vip[0] = fe->addr[0];
	e->vip[1] = fe->addr[1];
	e->vip[2] = fe->addr[2];
	e->vip[3] = fe->addr[3];
	e->vip_port = fe->port;
	e->rev_nat_id = rev_nat_id;
	e->family = be->family;
	e->connected = connected;
	return 1;
}

/*
 * pick chooses the backend for a socket's destination key (slot 0 filled
 * in by the caller). It returns the backend, NULL to leave the destination
 * alone, or sets *verdict to 0 (reject the operation, errno set).
 */
static __always_inline struct dnsa_lb_backend *pick(struct bpf_sock_addr *ctx, struct dnsa_lb_key *key,
						    __u16 *rev_nat_id, int *verdict)
{
	struct dnsa_lb_aff_key ak = {};
	struct dnsa_lb_aff_val *av, nav = {};
	struct dnsa_lb_svc_val *svc, *slot;
	struct dnsa_lb_backend *be;
	__u32 backend_id = 0;
	__u64 now;
	__u16 n;

	key->slot = 0;
	key->scope = DNSA_LB_SCOPE_ALL;
	svc = bpf_map_lookup_elem(&dnsa_lb_svc, key);
	if (!svc)
		return 0;
	if (steered(ctx, key)) {
		count(DNSA_LB_STAT_STEERED);
		return 0;
	}
	if (svc->count == 0) {
		if (svc->flags & DNSA_LB_F_NO_LOCAL) {
			count(DNSA_LB_STAT_NO_LOCAL);
			bpf_set_retval(-EHOSTUNREACH);
		} else {
			count(DNSA_LB_STAT_REJECTED);
			bpf_set_retval(-ECONNREFUSED);
		}
		*verdict = 0;
		return 0;
	}
	*rev_nat_id = svc->rev_nat_id;
	now = bpf_ktime_get_ns();
	if (svc->flags & DNSA_LB_F_AFFINITY) {
		ak.client = bpf_get_netns_cookie(ctx);
		ak.rev_nat_id = svc->rev_nat_id;
		ak.family = key->family;
		av = bpf_map_lookup_elem(&dnsa_lb_aff, &ak);
		if (av && now - av->last_ns < (__u64)svc->affinity_timeout * 1000000000ULL) {
			/* Backend ids belong to one frontend, and only the
			 * backends in its slots have an entry: one that left
			 * the Service (or went terminating while others are
			 * ready) is gone from dnsa_lb_be, so pick again. */
			be = bpf_map_lookup_elem(&dnsa_lb_be, &av->backend_id);
			if (be) {
				av->last_ns = now;
				count(DNSA_LB_STAT_AFFINITY);
				return be;
			}
		}
	}
	n = svc->count;
	if (ctx->protocol == IPPROTO_TCP)
		key->slot = (bpf_get_prandom_u32() % n) + 1;
	else
		/* One UDP socket keeps one backend (Cilium: sock_select_slot). */
		key->slot = (bpf_get_socket_cookie(ctx) % n) + 1;
	slot = bpf_map_lookup_elem(&dnsa_lb_svc, key);
	key->slot = 0;
	if (!slot) {
		count(DNSA_LB_STAT_NO_BACKEND);
		return 0;
	}
	backend_id = slot->backend_id;
	be = bpf_map_lookup_elem(&dnsa_lb_be, &backend_id);
	if (!be) {
		count(DNSA_LB_STAT_NO_BACKEND);
		return 0;
	}
	if (svc->flags & DNSA_LB_F_AFFINITY) {
		nav.last_ns = now;
		nav.backend_id = backend_id;
		bpf_map_update_elem(&dnsa_lb_aff, &ak, &nav, BPF_ANY);
	}
	return be;
}

static __always_inline int is_v4mapped(const struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == bpf_htonl(0xffff);
}

static __always_inline int fwd4(struct bpf_sock_addr *ctx, __u8 proto, __u8 connected)
{
	struct dnsa_lb_key key = {};
	struct dnsa_lb_backend *be;
	__u16 rev_nat_id = 0;
	int verdict = 1;

	key.addr[0] = ctx->user_ip4;
	key.port = (__u16)ctx->user_port;
	key.proto = proto;
	key.family = DNSA_FAMILY_V4;
	be = pick(ctx, &key, &rev_nat_id, &verdict);
	if (!be || be->family != DNSA_FAMILY_V4)
		return verdict;
	if (!remember(ctx, &key, rev_nat_id, be, connected))
		return 1;
	ctx->user_ip4 = be->addr[0];
	ctx->user_port = be->port;
	count(DNSA_LB_STAT_XLATED);
	return 1;
}

static __always_inline int fwd6(struct bpf_sock_addr *ctx, __u8 proto, __u8 connected)
{
	struct dnsa_lb_key key = {};
	struct dnsa_lb_backend *be;
	__u16 rev_nat_id = 0;
	int verdict = 1;

	key.port = (__u16)ctx->user_port;
	key.proto = proto;
	if (is_v4mapped(ctx)) {
		/* An AF_INET6 socket talking to an IPv4 frontend. */
		key.addr[0] = ctx->user_ip6[3];
		key.family = DNSA_FAMILY_V4;
	} else {
		key.addr[0] = ctx->user_ip6[0];
		key.addr[1] = ctx->user_ip6[1];
		key.addr[2] = ctx->user_ip6[2];
		key.addr[3] = ctx->user_ip6[3];
		key.family = DNSA_FAMILY_V6;
	}
	be = pick(ctx, &key, &rev_nat_id, &verdict);
	if (!be || be->family != key.family)
		return verdict;
	if (!remember(ctx, &key, rev_nat_id, be, connected))
		return 1;
	if (key.family == DNSA_FAMILY_V4) {
		ctx->user_ip6[3] = be->addr[0];
	} else {
		ctx->user_ip6[0] = be->addr[0];
		ctx->user_ip6[1] = be->addr[1];
		ctx->user_ip6[2] = be->addr[2];
		ctx->user_ip6[3] = be->addr[3];
	}
	ctx->user_port = be->port;
	count(DNSA_LB_STAT_XLATED);
	return 1;
}

/*
 * reverse finds the translation of a socket's peer addr:port, if the
 * Service frontend it was made for still exists unchanged (else the entry is
 * stale: the Service was deleted or its id reused).
 */
static __always_inline struct dnsa_lb_sock_rev *reverse(struct bpf_sock_addr *ctx, const __u32 *addr, __u16 port,
							__u8 family)
{
	struct dnsa_lb_sock_val *st = bpf_sk_storage_get(&dnsa_lb_sock, ctx->sk, 0, 0);
	struct dnsa_lb_sock_rev *e = 0;
	struct dnsa_lb_revnat_val *rn;
	__u16 id;
	int i;

	if (!st)
		return 0;
	for (i = 0; i < DNSA_LB_REV_SLOTS; i++) {
		if (same_backend(&st->slot[i], addr, port, family)) {
			e = &st->slot[i];
			break;
		}
	}
	if (!e)
		return 0;
	id = e->rev_nat_id;
	rn = bpf_map_lookup_elem(&dnsa_lb_revnat, &id);
	if (!rn || rn->family != e->family || rn->port != e->vip_port || rn->addr[0] != e->vip[0] ||
	    rn->addr[1] != e->vip[1] || rn->addr[2] != e->vip[2] || rn->addr[3] != e->vip[3]) {
		count(DNSA_LB_STAT_REV_STALE);
		return 0;
	}
	return e;
}

static __always_inline void rev4(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = {ctx->user_ip4, 0, 0, 0};
	struct dnsa_lb_sock_rev *e = reverse(ctx, addr, (__u16)ctx->user_port, DNSA_FAMILY_V4);

	if (!e)
		return;
	ctx->user_ip4 = e->vip[0];
	ctx->user_port = e->vip_port;
	count(DNSA_LB_STAT_REVERSED);
}

static __always_inline void rev6(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = {};
	struct dnsa_lb_sock_rev *e;
	int mapped = is_v4mapped(ctx);
	__u8 family = DNSA_FAMILY_V4;

	if (mapped) {
		addr[0] = ctx->user_ip6[3];
	} else {
		addr[0] = ctx->user_ip6[0];
		addr[1] = ctx->user_ip6[1];
		addr[2] = ctx->user_ip6[2];
		addr[3] = ctx->user_ip6[3];
		family = DNSA_FAMILY_V6;
	}
	e = reverse(ctx, addr, (__u16)ctx->user_port, family);
	if (!e)
		return;
	if (mapped) {
		ctx->user_ip6[3] = e->vip[0];
	} else {
		ctx->user_ip6[0] = e->vip[0];
		ctx->user_ip6[1] = e->vip[1];
		ctx->user_ip6[2] = e->vip[2];
		ctx->user_ip6[3] = e->vip[3];
	}
	ctx->user_port = e->vip_port;
	count(DNSA_LB_STAT_REVERSED);
}

SEC("cgroup/connect4")
int dnsa_lb_conn4(struct bpf_sock_addr *ctx)
{
	return fwd4(ctx, (__u8)ctx->protocol, 1);
}

SEC("cgroup/connect6")
int dnsa_lb_conn6(struct bpf_sock_addr *ctx)
{
	return fwd6(ctx, (__u8)ctx->protocol, 1);
}

SEC("cgroup/sendmsg4")
int dnsa_lb_send4(struct bpf_sock_addr *ctx)
{
	return fwd4(ctx, IPPROTO_UDP, 0);
}

SEC("cgroup/sendmsg6")
int dnsa_lb_send6(struct bpf_sock_addr *ctx)
{
	return fwd6(ctx, IPPROTO_UDP, 0);
}

SEC("cgroup/recvmsg4")
int dnsa_lb_recv4(struct bpf_sock_addr *ctx)
{
	rev4(ctx);
	return 1;
}

SEC("cgroup/recvmsg6")
int dnsa_lb_recv6(struct bpf_sock_addr *ctx)
{
	rev6(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int dnsa_lb_peer4(struct bpf_sock_addr *ctx)
{
	rev4(ctx);
	return 1;
}

SEC("cgroup/getpeername6")
int dnsa_lb_peer6(struct bpf_sock_addr *ctx)
{
	rev6(ctx);
	return 1;
}

/*
 * dnsa_lb_term destroys the connected UDP sockets (of the network namespace
 * that reads the iterator) whose peer is a backend listed in dnsa_lb_gone
 * for the frontend they were translated for: Cilium's answer to long-lived
 * connected UDP sockets pinned to a backend that went away (the
 * application sees ECONNABORTED and connects again, to a live backend).
 * Loaded only when user space terminates (it needs kernel BTF and the
 * bpf_sock_destroy kfunc, Linux 6.5+). Only the leading fields of the
 * kernel's context are declared.
 */
struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
};

/* A struct (not a forward declaration) of the kernel's name, so that the
 * kfunc's prototype matches the kernel's; no field is read. */
struct sock_common {
	int unused;
};
struct udp_sock;

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
};

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

SEC("iter/udp")
int dnsa_lb_term(struct bpf_iter__udp *ctx)
{
	struct udp_sock *sk = ctx->udp_sk;
	struct dnsa_lb_gone_key k = {};
	struct dnsa_lb_sock_val *st;
	struct dnsa_lb_sock_rev *e;
	int i;

	if (!sk)
		return 0;
	st = bpf_sk_storage_get(&dnsa_lb_sock, sk, 0, 0);
	if (!st)
		return 0;
	for (i = 0; i < DNSA_LB_REV_SLOTS; i++) {
		e = &st->slot[i];
		if (!e->connected || !e->family)
			continue;
		k.backend[0] = e->backend[0];
		k.backend[1] = e->backend[1];
		k.backend[2] = e->backend[2];
		k.backend[3] = e->backend[3];
		k.backend_port = e->backend_port;
		k.rev_nat_id = e->rev_nat_id;
		k.family = e->family;
		if (bpf_map_lookup_elem(&dnsa_lb_gone, &k)) {
			bpf_sock_destroy((struct sock_common *)sk);
			count(DNSA_LB_STAT_TERMINATED);
			return 0;
		}
	}
	return 0;
}

/*
 * The per-packet load balancer (tc), for traffic no socket of this node
 * translated: pods whose traffic bypasses the node's sockets (IPVLAN,
 * host-bypass), NodePorts reached from another node. Attached in pairs to
 * an interface: dnsa_lb_pkt_in (or _ext_in) where requests enter (the host
 * end of a pod's veth: ingress; a node interface: ingress) rewrites the
 * destination from a frontend to a backend and records the flow in
 * dnsa_lb_ct; dnsa_lb_pkt_out on the same interface's egress (where the
 * replies leave towards the client) rewrites their source back to the
 * frontend. Only well-formed, unfragmented IPv4/IPv6 TCP and UDP packets
 * with a frontend as destination are changed; everything else passes
 * untouched. Packets a socket program already translated carry a backend
 * address and pass too.
 */
#define TCP_CSUM_OFF 16
#define UDP_CSUM_OFF 6

struct pkt {
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 l3, l4;
	__u16 sport, dport;
	__u8 proto, family;
	__u8 syn;
};

/* parse fills p for a well-formed unfragmented TCP/UDP packet; 0 else. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u32 len = skb->len;
	__u16 ports[2];
	__u8 l4h[14];

	p->l3 = ETH_HLEN;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		__u32 tot, ihl;

		if (bpf_skb_load_bytes(skb, p->l3, &ip, sizeof(ip)) < 0)
			return 0;
		ihl = ip.ihl * 4;
		tot = bpf_ntohs(ip.tot_len);
		if (ip.version != 4 || ihl < sizeof(ip) || tot < ihl || p->l3 + tot > len)
			return 0;
		if (ip.frag_off & bpf_htons(0x3fff)) /* MF or an offset: a fragment */
			return 0;
		p->family = DNSA_FAMILY_V4;
		p->proto = ip.protocol;
		p->saddr[0] = ip.saddr;
		p->daddr[0] = ip.daddr;
		p->l4 = p->l3 + ihl;
		len = p->l3 + tot;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u32 plen;

		if (bpf_skb_load_bytes(skb, p->l3, &ip6, sizeof(ip6)) < 0)
			return 0;
		plen = bpf_ntohs(ip6.payload_len);
		if (ip6.version != 6 || p->l3 + sizeof(ip6) + plen > len)
			return 0;
		p->family = DNSA_FAMILY_V6;
		p->proto = ip6.nexthdr; /* extension headers: not handled, passed */
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		p->l4 = p->l3 + sizeof(ip6);
		len = p->l4 + plen;
	} else {
		return 0;
	}
	if (p->proto == IPPROTO_TCP) {
		__u32 doff;

		if (bpf_skb_load_bytes(skb, p->l4, l4h, 14) < 0)
			return 0;
		doff = (l4h[12] >> 4) * 4;
		if (doff < 20 || p->l4 + doff > len)
			return 0;
		p->syn = (l4h[13] & 0x12) == 0x02; /* SYN without ACK */
	} else if (p->proto == IPPROTO_UDP) {
		__u32 ulen;

		if (bpf_skb_load_bytes(skb, p->l4, l4h, 8) < 0)
			return 0;
		ulen = ((__u32)l4h[4] << 8) | l4h[5];
		if (ulen < 8 || p->l4 + ulen > len)
			return 0;
	} else {
		return 0;
	}
	__builtin_memcpy(ports, l4h, 4);
	p->sport = ports[0];
	p->dport = ports[1];
	return 1;
}

/* rewrite replaces the destination (dst) or source address and port. */
static __always_inline int rewrite(struct __sk_buff *skb, struct pkt *p, int dst, const __u32 *addr, __u16 port)
{
	__u32 csum_off = p->l4 + (p->proto == IPPROTO_TCP ? TCP_CSUM_OFF : UDP_CSUM_OFF);
	__u32 port_off = p->l4 + (dst ? 2 : 0);
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u16 old_port = dst ? p->dport : p->sport;
	const __u32 *old = dst ? p->daddr : p->saddr;

	if (p->family == DNSA_FAMILY_V4) {
		__u32 off = p->l3 + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));

		if (bpf_l4_csum_replace(skb, csum_off, old[0], addr[0], BPF_F_PSEUDO_HDR | 4 | mangled) < 0 ||
		    bpf_l3_csum_replace(skb, p->l3 + offsetof(struct iphdr, check), old[0], addr[0], 4) < 0 ||
		    bpf_skb_store_bytes(skb, off, addr, 4, 0) < 0)
			return 0;
	} else {
		__u32 off = p->l3 + (dst ? offsetof(struct ipv6hdr, daddr) : offsetof(struct ipv6hdr, saddr));
		__u32 o[4] = {old[0], old[1], old[2], old[3]};
		__u32 n[4] = {addr[0], addr[1], addr[2], addr[3]};
		__s64 diff = bpf_csum_diff(o, 16, n, 16, 0);

		if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, (__u32)diff, BPF_F_PSEUDO_HDR | mangled) < 0 ||
		    bpf_skb_store_bytes(skb, off, n, 16, 0) < 0)
			return 0;
	}
	if (bpf_l4_csum_replace(skb, csum_off, old_port, port, 2 | mangled) < 0 ||
	    bpf_skb_store_bytes(skb, port_off, &port, 2, 0) < 0)
		return 0;
	return 1;
}

static __always_inline int revnat_valid(__u16 id, const struct dnsa_lb_key *fe)
{
	struct dnsa_lb_revnat_val *rn = bpf_map_lookup_elem(&dnsa_lb_revnat, &id);

	return rn && rn->family == fe->family && rn->port == fe->port && rn->proto == fe->proto &&
	       rn->addr[0] == fe->addr[0] && rn->addr[1] == fe->addr[1] && rn->addr[2] == fe->addr[2] &&
	       rn->addr[3] == fe->addr[3];
}

static __always_inline int pkt_fwd(struct __sk_buff *skb, int external)
{
	struct dnsa_lb_key key = {};
	struct dnsa_lb_svc_val *svc, *slot;
	struct dnsa_lb_ct_key ck = {}, rk = {};
	struct dnsa_lb_ct_val *cv, nv = {}, rv = {};
	struct dnsa_lb_backend *be = 0;
	struct dnsa_lb_aff_key ak = {};
	struct dnsa_lb_aff_val *av, nav = {};
	struct pkt p = {};
	__u32 backend_id = 0;
	__u64 now;

	if (!parse(skb, &p))
		return TC_ACT_OK;
	__builtin_memcpy(key.addr, p.daddr, 16);
	key.port = p.dport;
	key.proto = p.proto;
	key.family = p.family;
	svc = 0;
	if (external) {
		key.scope = DNSA_LB_SCOPE_EXT;
		svc = bpf_map_lookup_elem(&dnsa_lb_svc, &key);
	}
	if (!svc) {
		key.scope = DNSA_LB_SCOPE_ALL;
		svc = bpf_map_lookup_elem(&dnsa_lb_svc, &key);
	}
	if (!svc)
		return TC_ACT_OK;
	__builtin_memcpy(ck.src, p.saddr, 16);
	__builtin_memcpy(ck.dst, p.daddr, 16);
	ck.sport = p.sport;
	ck.dport = p.dport;
	ck.proto = p.proto;
	ck.family = p.family;
	cv = bpf_map_lookup_elem(&dnsa_lb_ct, &ck);
	if (cv && !p.syn && revnat_valid(cv->rev_nat_id, &key)) {
		/* The flow's backend, unless it left the Service: then the
		 * flow (UDP, or TCP that will be reset) is balanced again. */
		backend_id = cv->backend_id;
		be = bpf_map_lookup_elem(&dnsa_lb_be, &backend_id);
		if (be && be->port == cv->port && be->addr[0] == cv->addr[0] && be->addr[1] == cv->addr[1] &&
		    be->addr[2] == cv->addr[2] && be->addr[3] == cv->addr[3]) {
			nv = *cv;
			goto xlate;
		}
		be = 0;
	}
	if (svc->count == 0) {
		count(DNSA_LB_STAT_PKT_DROPPED);
		return TC_ACT_SHOT;
	}
	now = bpf_ktime_get_ns();
	if (svc->flags & DNSA_LB_F_AFFINITY) {
		__builtin_memcpy(ak.addr, p.saddr, 16);
		ak.rev_nat_id = svc->rev_nat_id;
		ak.family = p.family;
		av = bpf_map_lookup_elem(&dnsa_lb_aff, &ak);
		if (av && now - av->last_ns < (__u64)svc->affinity_timeout * 1000000000ULL) {
			backend_id = av->backend_id;
			be = bpf_map_lookup_elem(&dnsa_lb_be, &backend_id);
			if (be)
				av->last_ns = now;
		}
	}
	if (!be) {
		key.slot = (bpf_get_prandom_u32() % svc->count) + 1;
		slot = bpf_map_lookup_elem(&dnsa_lb_svc, &key);
		key.slot = 0;
		if (!slot)
			return TC_ACT_OK;
		backend_id = slot->backend_id;
		be = bpf_map_lookup_elem(&dnsa_lb_be, &backend_id);
		if (!be)
			return TC_ACT_OK;
		if (svc->flags & DNSA_LB_F_AFFINITY) {
			nav.last_ns = now;
			nav.backend_id = backend_id;
			bpf_map_update_elem(&dnsa_lb_aff, &ak, &nav, BPF_ANY);
		}
	}
	if (be->family != p.family)
		return TC_ACT_OK;
	__builtin_memcpy(nv.addr, be->addr, 16);
	nv.port = be->port;
	nv.family = be->family;
	nv.rev_nat_id = svc->rev_nat_id;
	nv.backend_id = backend_id;
	bpf_map_update_elem(&dnsa_lb_ct, &ck, &nv, BPF_ANY);
	/* The reverse entry: replies from the backend to the client. */
	__builtin_memcpy(rk.src, be->addr, 16);
	__builtin_memcpy(rk.dst, p.saddr, 16);
	rk.sport = be->port;
	rk.dport = p.sport;
	rk.proto = p.proto;
	rk.family = p.family;
	__builtin_memcpy(rv.addr, p.daddr, 16);
	rv.port = p.dport;
	rv.family = p.family;
	rv.rev_nat_id = svc->rev_nat_id;
	bpf_map_update_elem(&dnsa_lb_ct, &rk, &rv, BPF_ANY);
xlate:
	if (!rewrite(skb, &p, 1, nv.addr, nv.port))
		return TC_ACT_SHOT; /* half-rewritten: never let it go */
	count(DNSA_LB_STAT_PKT_XLATED);
	return TC_ACT_OK;
}

static __always_inline int pkt_rev(struct __sk_buff *skb)
{
	struct dnsa_lb_ct_key rk = {};
	struct dnsa_lb_ct_val *rv;
	struct dnsa_lb_key fe = {};
	struct pkt p = {};
	__u32 addr[4];
	__u16 port;

	if (!parse(skb, &p))
		return TC_ACT_OK;
	__builtin_memcpy(rk.src, p.saddr, 16);
	__builtin_memcpy(rk.dst, p.daddr, 16);
	rk.sport = p.sport;
	rk.dport = p.dport;
	rk.proto = p.proto;
	rk.family = p.family;
	rv = bpf_map_lookup_elem(&dnsa_lb_ct, &rk);
	if (!rv)
		return TC_ACT_OK;
	__builtin_memcpy(fe.addr, rv->addr, 16);
	fe.port = rv->port;
	fe.proto = p.proto;
	fe.family = rv->family;
	if (rv->family != p.family || !revnat_valid(rv->rev_nat_id, &fe))
		return TC_ACT_OK;
	__builtin_memcpy(addr, rv->addr, 16);
	port = rv->port;
	if (!rewrite(skb, &p, 0, addr, port))
		return TC_ACT_SHOT;
	count(DNSA_LB_STAT_PKT_REVERSED);
	return TC_ACT_OK;
}

SEC("tc")
int dnsa_lb_pkt_in(struct __sk_buff *skb)
{
	return pkt_fwd(skb, 0);
}

SEC("tc")
int dnsa_lb_ext_in(struct __sk_buff *skb)
{
	return pkt_fwd(skb, 1);
}

SEC("tc")
int dnsa_lb_pkt_out(struct __sk_buff *skb)
{
	return pkt_rev(skb);
}
