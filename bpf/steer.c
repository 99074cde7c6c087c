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
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dnsa_rev_key);
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

/*
 * remember stores the reverse translation for a socket steered to target;
 * only then may the caller rewrite the destination.
 */
static __always_inline int remember(struct bpf_sock_addr *ctx, const struct dnsa_steer_key *vip,
				    const struct dnsa_steer_target *target)
{
	struct dnsa_rev_key rk = {};
	struct dnsa_rev_value rv = {};

	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr[0] = target->addr[0];
	rk.addr[1] = target->addr[1];
	rk.addr[2] = target->addr[2];
	rk.addr[3] = target->addr[3];
	rk.port = target->port;
	rk.family = target->family;
	rv.addr[0] = vip->addr[0];
	rv.addr[1] = vip->addr[1];
	rv.addr[2] = vip->addr[2];
	rv.addr[3] = vip->addr[3];
	rv.port = vip->port;
	rv.family = vip->family;
	if (bpf_map_update_elem(&dnsa_rev, &rk, &rv, BPF_ANY) != 0) {
		count(DNSA_STAT_REV_FAIL);
		return 0;
	}
	return 1;
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
	struct dnsa_rev_key rk = {};
	struct dnsa_rev_value *rv;

	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr[0] = ctx->user_ip4;
	rk.port = (__u16)ctx->user_port;
	rk.family = DNSA_FAMILY_V4;
	rv = bpf_map_lookup_elem(&dnsa_rev, &rk);
	if (!rv || rv->family != DNSA_FAMILY_V4)
		return;
	ctx->user_ip4 = rv->addr[0];
	ctx->user_port = rv->port;
	count(DNSA_STAT_REVERSED);
}

static __always_inline void rev6(struct bpf_sock_addr *ctx)
{
	struct dnsa_rev_key rk = {};
	struct dnsa_rev_value *rv;
	int mapped = is_v4mapped(ctx);

	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.port = (__u16)ctx->user_port;
	if (mapped) {
		rk.addr[0] = ctx->user_ip6[3];
		rk.family = DNSA_FAMILY_V4;
	} else {
		rk.addr[0] = ctx->user_ip6[0];
		rk.addr[1] = ctx->user_ip6[1];
		rk.addr[2] = ctx->user_ip6[2];
		rk.addr[3] = ctx->user_ip6[3];
		rk.family = DNSA_FAMILY_V6;
	}
	rv = bpf_map_lookup_elem(&dnsa_rev, &rk);
	if (!rv || rv->family != rk.family)
		return;
	if (mapped) {
		ctx->user_ip6[3] = rv->addr[0];
	} else {
		ctx->user_ip6[0] = rv->addr[0];
		ctx->user_ip6[1] = rv->addr[1];
		ctx->user_ip6[2] = rv->addr[2];
		ctx->user_ip6[3] = rv->addr[3];
	}
	ctx->user_port = rv->port;
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
