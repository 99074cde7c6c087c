// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * dnsaccel DNS steering: cgroup sock_addr programs that send a socket's
 * queries for the cluster DNS Service VIP to the node cache instead, while
 * the cache's heartbeat is fresh, and make the replies look as if they came
 * from the VIP. Attached to the root cgroup v2 by datapath/.
 *
 *   connect4/6   TCP and connected UDP: rewrite the destination
 *   sendmsg4/6   unconnected UDP: rewrite the destination of one datagram
 *   recvmsg4/6   UDP: rewrite the source the application sees back to the VIP
 *   getpeername4/6: the peer of a steered socket is the VIP
 *
 * The decision is made per connect/sendmsg, in the kernel: when user space
 * stops refreshing the heartbeat (node-cache SIGKILLed, hung, gone), queries
 * go to the VIP untouched within the configured timeout. Sockets carrying
 * the configured SO_MARK (the cache's own upstream connections) are never
 * steered, so the cache can use the VIP as its upstream.
 *
 * The reverse translation lives in socket-local storage (dnsa_rev), which
 * the kernel frees with the socket: a long-lived socket keeps it however
 * many other sockets come and go, and closed sockets leave nothing behind.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "steer.h"

char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct dnsa_steer_key);
	__type(value, struct dnsa_steer_target);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_steer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dnsa_rev_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_rev SEC(".maps");

/* CLOCK_MONOTONIC nanoseconds of the cache's last heartbeat; 0: none. */
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DNSA_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_stats SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *v = bpf_map_lookup_elem(&dnsa_stats, &what);

	if (v)
		*v += 1;
}

/*
 * steer_ok says whether a socket that matched the table may be steered: the
 * heartbeat is fresh and the socket is not one of the cache's own.
 */
static __always_inline int steer_ok(struct bpf_sock_addr *ctx)
{
	__u32 zero = 0;
	struct dnsa_config *cfg = bpf_map_lookup_elem(&dnsa_cfg, &zero);
	__u64 *hb = bpf_map_lookup_elem(&dnsa_hb, &zero);
	struct bpf_sock *sk;
	__u64 now, beat;

	if (!cfg || !hb)
		return 0;
	sk = ctx->sk;
	if (cfg->skip_mark && sk && sk->mark == cfg->skip_mark) {
		count(DNSA_STAT_SKIP_MARK);
		return 0;
	}
	beat = *hb;
	now = bpf_ktime_get_ns();
	/* A beat newer than now was written after we read the clock: fresh. */
	if (beat == 0 || (now > beat && now - beat >= cfg->timeout_ns)) {
		count(DNSA_STAT_STALE);
		return 0;
	}
	return 1;
}

static __always_inline int same_target(const struct dnsa_rev_entry *e, const __u32 *addr, __u16 port,
				       __u8 family)
{
	return e->family == family && e->target_port == port && e->target[0] == addr[0] &&
	       e->target[1] == addr[1] && e->target[2] == addr[2] && e->target[3] == addr[3];
}

/*
 * remember stores the reverse translation in the socket's storage (created
 * on its first steering); only then may the caller rewrite the destination.
 */
static __always_inline int remember(struct bpf_sock_addr *ctx, const struct dnsa_steer_key *vip,
				    const struct dnsa_steer_target *target)
{
	struct dnsa_rev_value *rev;
	struct dnsa_rev_entry *e = 0;
	int i;

	rev = bpf_sk_storage_get(&dnsa_rev, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!rev) {
		count(DNSA_STAT_REV_FAIL);
		return 0;
	}
	/* The slot of this target, else the first free one (slots fill in
	 * order and are never cleared), else the last. */
	for (i = 0; i < DNSA_REV_SLOTS; i++) {
		e = &rev->slot[i];
		if (e->family == 0 || same_target(e, target->addr, target->port, target->family))
			break;
	}
	e->target[0] = target->addr[0];
	e->target[1] = target->addr[1];
	e->target[2] = target->addr[2];
	e->target[3] = target->addr[3];
	e->target_port = target->port;
	e->vip[0] = vip->addr[0];
	e->vip[1] = vip->addr[1];
	e->vip[2] = vip->addr[2];
	e->vip[3] = vip->addr[3];
	e->vip_port = vip->port;
	e->family = target->family;
	return 1;
}

/* reverse finds the translation of a steered socket's peer addr:port. */
static __always_inline struct dnsa_rev_entry *reverse(struct bpf_sock_addr *ctx, const __u32 *addr, __u16 port,
						      __u8 family)
{
	struct dnsa_rev_value *rev = bpf_sk_storage_get(&dnsa_rev, ctx->sk, 0, 0);
	int i;

	if (!rev)
		return 0;
	for (i = 0; i < DNSA_REV_SLOTS; i++) {
		if (same_target(&rev->slot[i], addr, port, family))
			return &rev->slot[i];
	}
	return 0;
}

static __always_inline void fwd4(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct dnsa_steer_key key = {};
	struct dnsa_steer_target *t;

	key.addr[0] = ctx->user_ip4;
	key.port = (__u16)ctx->user_port;
	key.proto = proto;
	key.family = DNSA_FAMILY_V4;
	t = bpf_map_lookup_elem(&dnsa_steer, &key);
	if (!t || t->family != DNSA_FAMILY_V4)
		return;
	if (!steer_ok(ctx) || !remember(ctx, &key, t))
		return;
	ctx->user_ip4 = t->addr[0];
	ctx->user_port = t->port;
	count(DNSA_STAT_STEERED);
}

static __always_inline int is_v4mapped(const struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == bpf_htonl(0xffff);
}

static __always_inline void fwd6(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct dnsa_steer_key key = {};
	struct dnsa_steer_target *t;

	key.port = (__u16)ctx->user_port;
	key.proto = proto;
	if (is_v4mapped(ctx)) {
		/* An AF_INET6 socket talking to an IPv4 VIP. */
		key.addr[0] = ctx->user_ip6[3];
		key.family = DNSA_FAMILY_V4;
	} else {
		key.addr[0] = ctx->user_ip6[0];
		key.addr[1] = ctx->user_ip6[1];
		key.addr[2] = ctx->user_ip6[2];
		key.addr[3] = ctx->user_ip6[3];
		key.family = DNSA_FAMILY_V6;
	}
	t = bpf_map_lookup_elem(&dnsa_steer, &key);
	if (!t || t->family != key.family)
		return;
	if (!steer_ok(ctx) || !remember(ctx, &key, t))
		return;
	if (key.family == DNSA_FAMILY_V4) {
		ctx->user_ip6[3] = t->addr[0];
	} else {
		ctx->user_ip6[0] = t->addr[0];
		ctx->user_ip6[1] = t->addr[1];
		ctx->user_ip6[2] = t->addr[2];
		ctx->user_ip6[3] = t->addr[3];
	}
	ctx->user_port = t->port;
	count(DNSA_STAT_STEERED);
}

/* rev4/rev6: show a steered socket's peer (the cache) as the VIP. */
static __always_inline void rev4(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = {ctx->user_ip4, 0, 0, 0};
	struct dnsa_rev_entry *e = reverse(ctx, addr, (__u16)ctx->user_port, DNSA_FAMILY_V4);

	if (!e)
		return;
	ctx->user_ip4 = e->vip[0];
	ctx->user_port = e->vip_port;
	count(DNSA_STAT_REVERSED);
}

static __always_inline void rev6(struct bpf_sock_addr *ctx)
{
	__u32 addr[4] = {};
	struct dnsa_rev_entry *e;
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
	count(DNSA_STAT_REVERSED);
}

/* Every program returns 1: the operation proceeds, rewritten or not. */

SEC("cgroup/connect4")
int dnsa_connect4(struct bpf_sock_addr *ctx)
{
	fwd4(ctx, (__u8)ctx->protocol);
	return 1;
}

SEC("cgroup/connect6")
int dnsa_connect6(struct bpf_sock_addr *ctx)
{
	fwd6(ctx, (__u8)ctx->protocol);
	return 1;
}

SEC("cgroup/sendmsg4")
int dnsa_sendmsg4(struct bpf_sock_addr *ctx)
{
	fwd4(ctx, IPPROTO_UDP);
	return 1;
}

SEC("cgroup/sendmsg6")
int dnsa_sendmsg6(struct bpf_sock_addr *ctx)
{
	fwd6(ctx, IPPROTO_UDP);
	return 1;
}

SEC("cgroup/recvmsg4")
int dnsa_recvmsg4(struct bpf_sock_addr *ctx)
{
	rev4(ctx);
	return 1;
}

SEC("cgroup/recvmsg6")
int dnsa_recvmsg6(struct bpf_sock_addr *ctx)
{
	rev6(ctx);
	return 1;
}

SEC("cgroup/getpeername4")
int dnsa_getpeer4(struct bpf_sock_addr *ctx)
{
	rev4(ctx);
	return 1;
}

SEC("cgroup/getpeername6")
int dnsa_getpeer6(struct bpf_sock_addr *ctx)
{
	rev6(ctx);
	return 1;
}

/*
 * dnsa_rev_udp writes one byte per UDP socket (of the network namespace
 * that reads it) holding a reverse translation: user space (datapath:
 * ReverseUDPSockets) reads the iterator and counts. Not attached to
 * anything and loaded only when asked for, as iterators need the kernel's
 * BTF. The context is the kernel's struct bpf_iter__udp; only the leading
 * pointer fields read here are declared, at the kernel's offsets.
 */
struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
};

struct udp_sock;

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
};

SEC("iter/udp")
int dnsa_rev_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *sk = ctx->udp_sk;
	char one = 1;

	if (sk && bpf_sk_storage_get(&dnsa_rev, sk, 0, 0))
		bpf_seq_write(ctx->meta->seq, &one, 1);
	return 0;
}
