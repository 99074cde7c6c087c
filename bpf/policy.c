// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * NetworkPolicy at the pod's interface (tcx).
 *
 * dnsa_pol_from_pod runs where the pod's packets enter the host (the host
 * end of its veth, tcx ingress) and decides the pod's egress;
 * dnsa_pol_to_pod runs where packets leave towards the pod (host end, tcx
 * egress) and decides its ingress. Where there is no host end (IPVLAN), the
 * same two programs go on the pod-side interface the other way round.
 *
 * A packet passes (TC_ACT_UNSPEC, i.e. TCX_NEXT: the next program of the
 * interface, such as the Service load balancer, still runs) when its
 * endpoint is not enforced in that direction, when it belongs to a flow the
 * endpoint allowed (dnsa_pol_ct, both directions, revalidated when the
 * endpoint's policy revision changed), or when a rule of dnsa_pol_rules
 * allows (endpoint, direction, peer identity, protocol, port). Otherwise it
 * is dropped (counted per policy in dnsa_pol_drops, reported rate-limited
 * through dnsa_pol_events), or only counted in audit mode.
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

#include "policy.h"

char __license[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct dnsa_pol_addr);
	__type(value, struct dnsa_pol_ep_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_pol_ep SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct dnsa_pol_addr);
	__type(value, struct dnsa_pol_ipc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_pol_ipc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct dnsa_pol_cidr_key);
	__type(value, struct dnsa_pol_ipc_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_pol_cidr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1048576);
	__type(key, struct dnsa_pol_rule_key);
	__type(value, struct dnsa_pol_rule_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_pol_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct dnsa_pol_ct_key);
	__type(value, struct dnsa_pol_ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_pol_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_pol_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_pol_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dnsa_pol_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_pol_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DNSA_POL_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dnsa_pol_stats SEC(".maps");

/* Per CPU: when the last drop event was sent (rate limit). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dnsa_pol_evlim SEC(".maps");

/* Keeps struct dnsa_pol_event in the BTF for bpf2go. */
const struct dnsa_pol_event *unused_dnsa_pol_event __attribute__((unused));

#define EVENT_GAP_NS 1000000ULL /* at most 1000 events/s per CPU */
#define CT_TCP_NS (6ULL * 3600 * 1000000000ULL)
#define CT_OTHER_NS (120ULL * 1000000000ULL)
#define CT_REFRESH_NS 1000000000ULL

#define IPPROTO_ICMPV6_ 58

struct pkt {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport, dport; /* network byte order */
	__u8 proto;
	__u8 l4ok; /* the ports (or ICMP header) were there */
	__u8 nd;   /* IPv6 neighbour discovery: never filtered */
	__u8 syn;  /* TCP SYN without ACK: a connection's first packet */
};

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&dnsa_pol_stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline void v4mapped(__u8 *a, __u32 v4)
{
	__builtin_memset(a, 0, 10);
	a[10] = 0xff;
	a[11] = 0xff;
	__builtin_memcpy(a + 12, &v4, 4);
}

/* parse returns 0 for a packet that is not IP (it passes untouched), 1 for
 * IP (p->l4ok says whether the transport header was complete), -1 for an
 * IP packet too short for its own header. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u32 off = ETH_HLEN;
	__u8 ports[4];

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.version != 4 || ip.ihl < 5)
			return -1;
		v4mapped(p->src, ip.saddr);
		v4mapped(p->dst, ip.daddr);
		p->proto = ip.protocol;
		if (ip.frag_off & bpf_htons(0x1fff))
			return 1; /* a later fragment: no transport header */
		off += ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		if (ip6.version != 6)
			return -1;
		__builtin_memcpy(p->src, &ip6.saddr, 16);
		__builtin_memcpy(p->dst, &ip6.daddr, 16);
		p->proto = ip6.nexthdr; /* extension headers: not walked */
		off += sizeof(ip6);
	} else {
		return 0;
	}
	switch (p->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, off, ports, 4) < 0)
			return 1;
		__builtin_memcpy(&p->sport, ports, 2);
		__builtin_memcpy(&p->dport, ports + 2, 2);
		p->l4ok = 1;
		if (p->proto == IPPROTO_TCP) {
			__u8 fl = 0;

			if (bpf_skb_load_bytes(skb, off + 13, &fl, 1) == 0)
				p->syn = (fl & 0x12) == 0x02;
		}
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_: {
		__u8 h[8];

		if (bpf_skb_load_bytes(skb, off, h, 8) < 0)
			return 1;
		p->l4ok = 1;
		if (p->proto == IPPROTO_ICMPV6_ && h[0] >= 133 && h[0] <= 137)
			p->nd = 1;
		/* echo request/reply: the identifier both ways */
		if (h[0] == 8 || h[0] == 0 || h[0] == 128 || h[0] == 129) {
			__builtin_memcpy(&p->sport, h + 4, 2);
			p->dport = p->sport;
		}
		break;
	}
	default:
		p->l4ok = 1;
	}
	return 1;
}

static __always_inline __u32 pod_identity(const __u8 *a)
{
	struct dnsa_pol_ipc_val *v = bpf_map_lookup_elem(&dnsa_pol_ipc, a);

	return v ? v->identity : 0;
}

static __always_inline __u32 cidr_identity(const __u8 *a)
{
	struct dnsa_pol_cidr_key k = {.prefixlen = 128};
	struct dnsa_pol_ipc_val *v;

	__builtin_memcpy(k.addr, a, 16);
	v = bpf_map_lookup_elem(&dnsa_pol_cidr, &k);
	return v ? v->identity : 0;
}

static __always_inline struct dnsa_pol_rule_val *rule(__u32 ep, __u8 dir, __u32 peer, __u8 proto, __u16 dport)
{
	struct dnsa_pol_rule_key k = {.prefixlen = 96, .ep = ep, .peer = peer, .dir = dir, .proto = proto};

	__builtin_memcpy(k.dport, &dport, 2);
	return bpf_map_lookup_elem(&dnsa_pol_rules, &k);
}

/* allowed looks the rules up for every identity of the peer (its pod
 * identity, its CIDR identity, any) and for the protocol and any protocol;
 * it returns the allowing policy's id + 1, or 0. */
static __always_inline __u32 allowed(__u32 ep, __u8 dir, const __u8 *peer, __u8 proto, __u16 dport, __u32 *peer_id)
{
	__u32 ids[3];
	struct dnsa_pol_rule_val *v;
	int i;

	ids[0] = pod_identity(peer);
	ids[1] = cidr_identity(peer);
	ids[2] = DNSA_POL_ID_ANY;
	*peer_id = ids[0] ? ids[0] : ids[1];
	if (ids[0] == DNSA_POL_ID_HOST)
		return 1;
#pragma unroll
	for (i = 0; i < 3; i++) {
		if (i < 2 && ids[i] == DNSA_POL_ID_ANY)
			continue;
		v = rule(ep, dir, ids[i], proto, dport);
		if (!v)
			v = rule(ep, dir, ids[i], 0, 0);
		if (v)
			return v->policy + 1;
	}
	return 0;
}

static __always_inline int enforced(const struct dnsa_pol_ep_val *ep, __u8 dir)
{
	return ep->flags & (dir == DNSA_POL_INGRESS ? DNSA_POL_F_ENFORCE_IN : DNSA_POL_F_ENFORCE_OUT);
}

static __always_inline int audit(void)
{
	__u32 zero = 0;
	struct dnsa_pol_config *c = bpf_map_lookup_elem(&dnsa_pol_cfg, &zero);

	return c && (c->flags & DNSA_POL_CFG_AUDIT);
}

static __always_inline void report(const struct pkt *p, __u8 dir, __u32 ep, __u32 policy, __u32 peer, __u8 aud)
{
	__u32 zero = 0;
	__u64 now = bpf_ktime_get_ns(), one = 1, *last, *n;
	struct dnsa_pol_event *e;

	n = bpf_map_lookup_elem(&dnsa_pol_drops, &policy);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&dnsa_pol_drops, &policy, &one, BPF_NOEXIST);
	last = bpf_map_lookup_elem(&dnsa_pol_evlim, &zero);
	if (!last || now - *last < EVENT_GAP_NS)
		return;
	*last = now;
	e = bpf_ringbuf_reserve(&dnsa_pol_events, sizeof(*e), 0);
	if (!e)
		return;
	__builtin_memcpy(e->src, p->src, 16);
	__builtin_memcpy(e->dst, p->dst, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->dir = dir;
	e->audit = aud;
	e->pad = 0;
	e->ep = ep;
	e->policy = policy;
	e->peer_identity = peer;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int ct_live(const struct dnsa_pol_ct_val *v, __u8 proto, __u64 now)
{
	return now - v->seen_ns < (proto == IPPROTO_TCP ? CT_TCP_NS : CT_OTHER_NS);
}

static __always_inline int decide(struct __sk_buff *skb, __u8 dir)
{
	struct dnsa_pol_ct_key k = {}, rk = {};
	struct dnsa_pol_ct_val *cv, nv = {};
	struct dnsa_pol_ep_val *ep;
	struct pkt p = {};
	const __u8 *local, *remote;
	__u32 pol, peer_id = 0, ep_id;
	__u64 now;
	int r;

	r = parse(skb, &p);
	if (r == 0)
		return TC_ACT_UNSPEC;
	if (r < 0) {
		/* Too short for its IP header: the stack would drop it too. */
		count(DNSA_POL_STAT_MALFORMED);
		return TC_ACT_SHOT;
	}
	local = dir == DNSA_POL_EGRESS ? p.src : p.dst;
	remote = dir == DNSA_POL_EGRESS ? p.dst : p.src;
	ep = bpf_map_lookup_elem(&dnsa_pol_ep, local);
	if (!ep) {
		count(DNSA_POL_STAT_UNMANAGED);
		return TC_ACT_UNSPEC;
	}
	if (p.nd)
		return TC_ACT_UNSPEC;
	ep_id = ep->id;
	now = bpf_ktime_get_ns();

	/* A flow this endpoint allowed in this direction. */
	__builtin_memcpy(k.src, p.src, 16);
	__builtin_memcpy(k.dst, p.dst, 16);
	k.sport = p.sport;
	k.dport = p.dport;
	k.proto = p.proto;
	k.dir = dir;
	k.ep = ep_id;
	cv = bpf_map_lookup_elem(&dnsa_pol_ct, &k);
	if (cv && ct_live(cv, p.proto, now)) {
		if (cv->revision == ep->revision) {
			if (now - cv->seen_ns > CT_REFRESH_NS)
				cv->seen_ns = now;
			count(DNSA_POL_STAT_ESTABLISHED);
			return TC_ACT_UNSPEC;
		}
		/* The policy changed since: decide again, as for a new flow. */
	}

	/* A reply of a flow it allowed the other way. */
	__builtin_memcpy(rk.src, p.dst, 16);
	__builtin_memcpy(rk.dst, p.src, 16);
	rk.sport = p.dport;
	rk.dport = p.sport;
	rk.proto = p.proto;
	rk.dir = !dir;
	rk.ep = ep_id;
	cv = bpf_map_lookup_elem(&dnsa_pol_ct, &rk);
	if (cv && ct_live(cv, p.proto, now)) {
		if (cv->revision == ep->revision) {
			count(DNSA_POL_STAT_REPLY);
			return TC_ACT_UNSPEC;
		}
		/* Revalidate the original direction under the new policy. */
		if (!enforced(ep, !dir) || allowed(ep_id, !dir, remote, p.proto, p.sport, &peer_id)) {
			cv->revision = ep->revision;
			cv->seen_ns = now;
			count(DNSA_POL_STAT_REPLY);
			return TC_ACT_UNSPEC;
		}
		/* The flow is no longer allowed: its replies stop too (not
		 * decided as a new flow the other way, which would track it
		 * again under the new revision). */
		bpf_map_delete_elem(&dnsa_pol_ct, &rk);
		report(&p, !dir, ep_id, ep->deny_policy[dir ? 0 : 1], peer_id, audit());
		if (!audit()) {
			count(DNSA_POL_STAT_DROPPED);
			return TC_ACT_SHOT;
		}
		count(DNSA_POL_STAT_AUDITED);
	}

	pol = 0;
	if (enforced(ep, dir)) {
		if (!p.l4ok) {
			count(DNSA_POL_STAT_MALFORMED);
			pol = 0;
		} else {
			pol = allowed(ep_id, dir, remote, p.proto, p.dport, &peer_id);
		}
		if (!pol) {
			__u32 deny = ep->deny_policy[dir & 1];
			__u8 aud = audit();

			report(&p, dir, ep_id, deny, peer_id, aud);
			if (!aud) {
				count(DNSA_POL_STAT_DROPPED);
				return TC_ACT_SHOT;
			}
			count(DNSA_POL_STAT_AUDITED);
		} else {
			pol--;
		}
	}
	/* A TCP packet in the middle of a connection, in a direction no policy
	 * restricts, passes but starts no tracked flow: it must not turn the
	 * other direction's packets into "replies". */
	if (p.proto == IPPROTO_TCP && !p.syn && !enforced(ep, dir)) {
		count(DNSA_POL_STAT_NEW);
		return TC_ACT_UNSPEC;
	}
	nv.seen_ns = now;
	nv.revision = ep->revision;
	nv.policy = pol;
	bpf_map_update_elem(&dnsa_pol_ct, &k, &nv, BPF_ANY);
	count(DNSA_POL_STAT_NEW);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int dnsa_pol_from_pod(struct __sk_buff *skb)
{
	return decide(skb, DNSA_POL_EGRESS);
}

SEC("tc")
int dnsa_pol_to_pod(struct __sk_buff *skb)
{
	return decide(skb, DNSA_POL_INGRESS);
}
