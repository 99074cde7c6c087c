// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * dnsaccel in-kernel DNS cache: a tc program on a pod's interface that
 * answers a UDP query to the node cache's address from a map node-cache
 * fills with its hot answers, turning the query packet into the response in
 * place and sending it back to the pod. The pod never wakes user space for
 * those names.
 *
 *   kc_ingress   on the host end of a pod's veth (ingress): the answer leaves
 *                through the same device towards the pod
 *   kc_egress    on the pod's own interface (egress) where there is no host
 *                end (IPVLAN): the answer comes back in on that interface
 *
 * What it answers mirrors the user-space fast path exactly (see parseQuery in
 * plugin/nodecache/wire.go): QR=0, opcode QUERY, TC=0, one question with an
 * uncompressed name, class IN, no answer or authority records and at most a
 * plain EDNS0 OPT record (version 0, no options). The response is the bytes
 * node-cache would send: the query's ID, RD bit and letter case, the entry's
 * flags, counts and records, TTLs aged by the time since they were stored,
 * and an OPT record when the query had one. Anything else (a miss, an expired
 * entry, TCP, EDNS options such as cookies, a response larger than the
 * client takes or than the configured limit, a malformed packet) goes on
 * untouched: node-cache answers it (setting TC where the client's UDP size is
 * too small, so it retries over TCP).
 */
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "kcache.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* DNS payload sizes: the largest query answered here (header, the longest
 * name, type and class, a plain OPT) and the largest response built. */
#define Q_MAX (12 + DNSA_KC_NAME_MAX + 4 + 11)
#define Q_BUF 168
#define R_MAX (12 + DNSA_KC_NAME_MAX + 4 + DNSA_KC_DATA_MAX + 11)
#define R_BUF 680

#define QUERY_HAS_OPT 0x10000

#define DNS_QR 0x8000
#define DNS_TC 0x0200
#define DNS_RD 0x0100
#define DNS_CD 0x0010
#define DNS_OPT 41
#define EDNS_DO 0x8000

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096); /* set by user space at load */
	__type(key, struct dnsa_kc_key);
	__type(value, struct dnsa_kc_entry);
} dnsa_kc_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct dnsa_kc_addr);
	__type(value, __u8);
} dnsa_kc_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dnsa_kc_config);
} dnsa_kc_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DNSA_KC_STATS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} dnsa_kc_stats SEC(".maps");

/* Per-pod accounting (nodecache/dnsstats): answers per client address,
 * per CPU, read and summed by node-cache. LRU: a node's pods fit many times
 * over; a client evicted loses only the answers since node-cache last read. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dnsa_kc_addr);
	__type(value, struct dnsa_kc_client);
} dnsa_kc_clients SEC(".maps");

/* Clients whose queries the kernel leaves to node-cache while its query log
 * covers them (DNSA_KC_CFG_BYPASS). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct dnsa_kc_addr);
	__type(value, __u8);
} dnsa_kc_bypass SEC(".maps");

static __always_inline void count_client(const struct dnsa_kc_addr *src, __u16 rcode)
{
	struct dnsa_kc_client *c = bpf_map_lookup_elem(&dnsa_kc_clients, src);

	if (!c) {
		struct dnsa_kc_client zero = {};

		bpf_map_update_elem(&dnsa_kc_clients, src, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&dnsa_kc_clients, src);
		if (!c)
			return;
	}
	if (rcode == 0)
		c->noerror++;
	else if (rcode == 3)
		c->nxdomain++;
	else
		c->other++;
}

/* The largest UDP response a client without EDNS0 takes (RFC 1035). */
#define UDP_MIN_SIZE 512

/* Per-CPU room for the query, the response and the key: too big for the
 * 512-byte BPF stack. */
struct scratch {
	__u8 q[Q_BUF];
	__u8 r[R_BUF];
	struct dnsa_kc_key key;
	__u32 udp_size; /* the largest response the client takes */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} dnsa_kc_scratch SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&dnsa_kc_stats, &what);

	if (n)
		*n += 1;
}

static __always_inline __u16 get16(const __u8 *p)
{
	return ((__u16)p[0] << 8) | p[1];
}

static __always_inline void put16(__u8 *p, __u16 v)
{
	p[0] = v >> 8;
	p[1] = v;
}

/* Where the packet's pieces are, once parsed. */
struct layout {
	__u32 l3;        /* network header */
	__u32 l4;        /* UDP header */
	__u32 dns;       /* DNS payload */
	__u32 dns_len;
	__u32 csum;      /* offset of the UDP checksum */
	__u8 v6;
	__u8 csum_zero;  /* IPv4 sent without a UDP checksum */
	struct dnsa_kc_addr src; /* the client (IPv4 as ::ffff:a.b.c.d) */
};

/*
 * parse_l3l4 accepts an unfragmented IPv4 (no options) or IPv6 (no extension
 * headers) UDP datagram to one of the cache's addresses and port. It returns
 * 1 for such a packet, 0 for anything else (which is none of our business),
 * and -1 for one to the cache's address and port that we will not answer.
 */
static __always_inline int parse_l3l4(struct __sk_buff *skb, struct layout *lo,
				      const struct dnsa_kc_config *cfg)
{
	struct dnsa_kc_addr dst = {};
	struct udphdr udp;
	__u32 ip_len;

	lo->l3 = ETH_HLEN;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, lo->l3, &ip, sizeof(ip)) < 0)
			return 0;
		if (ip.version != 4)
			return 0;
		dst.addr[10] = 0xff;
		dst.addr[11] = 0xff;
		__builtin_memcpy(&dst.addr[12], &ip.daddr, 4);
		if (!bpf_map_lookup_elem(&dnsa_kc_addrs, &dst))
			return 0;
		if (ip.protocol != IPPROTO_UDP)
			return ip.protocol == IPPROTO_TCP ? -1 : 0;
		if (ip.ihl != 5 || (ip.frag_off & bpf_htons(0x3fff)))
			return -1;
		ip_len = bpf_ntohs(ip.tot_len);
		if (ip_len < sizeof(ip) + sizeof(udp))
			return -1;
		lo->src.addr[10] = 0xff;
		lo->src.addr[11] = 0xff;
		__builtin_memcpy(&lo->src.addr[12], &ip.saddr, 4);
		lo->l4 = lo->l3 + sizeof(ip);
		ip_len -= sizeof(ip);
		lo->v6 = 0;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, lo->l3, &ip6, sizeof(ip6)) < 0)
			return 0;
		if (ip6.version != 6)
			return 0;
		__builtin_memcpy(dst.addr, &ip6.daddr, 16);
		if (!bpf_map_lookup_elem(&dnsa_kc_addrs, &dst))
			return 0;
		if (ip6.nexthdr != IPPROTO_UDP)
			return ip6.nexthdr == IPPROTO_TCP ? -1 : 0;
		ip_len = bpf_ntohs(ip6.payload_len);
		if (ip_len < sizeof(udp))
			return -1;
		__builtin_memcpy(lo->src.addr, &ip6.saddr, 16);
		lo->l4 = lo->l3 + sizeof(ip6);
		lo->v6 = 1;
	} else {
		return 0;
	}
	if (bpf_skb_load_bytes(skb, lo->l4, &udp, sizeof(udp)) < 0)
		return -1;
	if (bpf_ntohs(udp.dest) != cfg->port)
		return 0;
	if (bpf_ntohs(udp.len) != ip_len || lo->l4 + ip_len > skb->len)
		return -1;
	lo->dns = lo->l4 + sizeof(udp);
	lo->dns_len = ip_len - sizeof(udp);
	lo->csum = lo->l4 + offsetof(struct udphdr, check);
	lo->csum_zero = !lo->v6 && udp.check == 0;
	return 1;
}

/*
 * parse_query checks the DNS query in s->q (dns_len bytes, zero padded) and
 * fills s->key and s->udp_size: 512 without EDNS0, else the OPT record's
 * size, never below 512 (as node-cache reads it: RFC 6891 says to treat
 * smaller values as 512). It returns the offset just past the question (before any
 * OPT record), with QUERY_HAS_OPT set when a plain OPT record follows, or 0
 * when the query is not one the kernel answers. A global function: the
 * verifier checks it once, not once per path that reaches it.
 */
__noinline int parse_query(struct scratch *s, __u32 dns_len)
{
	__u8 *q;
	__u16 flags;
	__u8 has_opt = 0;
	__u64 pos = 0;
	__u32 end = 0, off;
	__u16 qclass;

	if (!s || dns_len < 12 + 1 + 4 || dns_len > Q_MAX)
		return 0;
	s->udp_size = UDP_MIN_SIZE;
	q = s->q;
	flags = get16(&q[2]);
	if ((flags & (DNS_QR | DNS_TC)) || ((flags >> 11) & 0xf) != 0)
		return 0;
	if (get16(&q[4]) != 1 || get16(&q[6]) != 0 || get16(&q[8]) != 0 || get16(&q[10]) > 1)
		return 0;

	/* The name's labels: each takes at least two bytes, so at most half
	 * the key's length of them. */
	for (__u32 n = 0; n < DNSA_KC_NAME_MAX / 2; n++) {
		__u8 c;

		if (pos >= DNSA_KC_NAME_MAX)
			return 0;
		c = q[12 + pos];
		if (c == 0) {
			end = pos + 1;
			break;
		}
		if (c > 63) /* compression pointer or reserved label type */
			return 0;
		pos += c + 1;
	}
	if (end == 0 || end > DNSA_KC_NAME_MAX || 12 + end > dns_len)
		return 0; /* longer than the key holds, or past the packet */
	/* Into the (zeroed) key, lower-cased. A length byte is never in
	 * 'A'..'Z' (labels are at most 63 bytes), so lower-casing every byte
	 * leaves the lengths alone. */
	if (bpf_probe_read_kernel(s->key.name, end, &q[12]) < 0)
		return 0;
	for (__u32 i = 0; i < DNSA_KC_NAME_MAX; i++) {
		__u8 c = s->key.name[i];

		if (c >= 'A' && c <= 'Z')
			s->key.name[i] = c + ('a' - 'A');
	}
	s->key.name_len = end;

	off = 12 + end;
	if (off + 4 > dns_len || off + 4 > Q_MAX)
		return 0;
	s->key.qtype = get16(&q[off]);
	qclass = get16(&q[off + 2]);
	if (qclass != 1)
		return 0;
	off += 4;
	if (flags & DNS_CD)
		s->key.flags |= DNSA_KC_F_CD;

	if (get16(&q[10]) == 1) {
		if (off + 11 != dns_len || off + 11 > Q_MAX)
			return 0;
		/* root owner, type OPT, class = UDP size, TTL = ext-rcode,
		 * version, flags; RDLENGTH 0: no options. */
		if (q[off] != 0 || get16(&q[off + 1]) != DNS_OPT || q[off + 5] != 0 ||
		    q[off + 6] != 0 || get16(&q[off + 9]) != 0)
			return 0;
		if (get16(&q[off + 7]) & EDNS_DO)
			s->key.flags |= DNSA_KC_F_DO;
		if (get16(&q[off + 3]) > UDP_MIN_SIZE)
			s->udp_size = get16(&q[off + 3]);
		has_opt = 1;
	} else if (off != dns_len) {
		return 0;
	}
	return off | (has_opt ? QUERY_HAS_OPT : 0);
}

/*
 * build_response writes the response to s->r and returns its length, or 0
 * when the entry cannot answer this query (as parse_query described it):
 * among others when the response is larger than the client takes, which
 * node-cache answers with TC set. Global, as parse_query.
 */
__noinline int build_response(struct scratch *s, const struct dnsa_kc_entry *e, __u32 query,
			      __u64 now, const struct dnsa_kc_config *cfg)
{
	__u32 qend = query & 0xffff, has_opt = query & QUERY_HAS_OPT;
	__u32 data_len, len, age;
	__u16 flags;
	__u8 *r;

	if (!s || !e || !cfg)
		return 0;
	r = s->r;
	data_len = e->data_len;
	if (data_len == 0 || data_len > DNSA_KC_DATA_MAX || qend > 12 + DNSA_KC_NAME_MAX + 4)
		return 0;
	len = qend + data_len + (has_opt ? 11 : 0);
	if (len > cfg->max_resp || len > s->udp_size || len > R_MAX)
		return 0;

	/* Header and question as the client sent them (ID, letter case). */
	__builtin_memcpy(r, s->q, Q_BUF);
	flags = e->flags | (get16(&s->q[2]) & DNS_RD);
	put16(&r[2], flags);
	put16(&r[6], e->ancount);
	put16(&r[8], e->nscount);
	put16(&r[10], e->arcount + (has_opt ? 1 : 0));

	/* The records. */
	if (bpf_probe_read_kernel(&r[qend], data_len, e->data) < 0)
		return 0;

	/* TTLs aged as the user-space cache ages them: whole seconds. */
	age = now > e->stored_ns ? (now - e->stored_ns) / 1000000000ULL : 0;
	for (__u32 i = 0; i < DNSA_KC_TTL_MAX; i++) {
		__u32 o, ttl;

		if (i >= e->ttl_count)
			break;
		o = e->ttl_off[i];
		if (o + 4 > data_len)
			return 0;
		o += qend;
		if (o > R_BUF - 4)
			return 0;
		ttl = e->ttl[i];
		ttl -= age < ttl ? age : ttl;
		r[o] = ttl >> 24;
		r[o + 1] = ttl >> 16;
		r[o + 2] = ttl >> 8;
		r[o + 3] = ttl;
	}

	if (has_opt) {
		__u32 o = qend + data_len;

		if (o > R_BUF - 11)
			return 0;
		__u8 *p = &r[o];
		p[0] = 0;
		put16(&p[1], DNS_OPT);
		put16(&p[3], cfg->edns_size);
		p[5] = 0;
		p[6] = 0;
		put16(&p[7], (s->key.flags & DNSA_KC_F_DO) ? EDNS_DO : 0);
		put16(&p[9], 0);
	}
	/* Zero padding for the 4-byte checksum arithmetic. */
	if (len > R_BUF - 4)
		return 0;
	r[len] = 0;
	r[len + 1] = 0;
	r[len + 2] = 0;
	return len;
}

/* payload_csum_diff is the ones'-complement difference between the old DNS
 * payload (s->q) and the new one (s->r), both zero padded to 4 bytes. */
static __always_inline __s64 payload_csum_diff(struct scratch *s, __u64 old_len, __u64 new_len)
{
	__u64 oldp = (old_len + 3) & ~3ULL, newp = (new_len + 3) & ~3ULL, first, rest;
	__s64 sum;

	if (oldp > Q_BUF || newp > R_BUF - 4)
		return -1;
	barrier_var(oldp);
	sum = bpf_csum_diff((__be32 *)s->q, oldp, NULL, 0, 0);
	if (sum < 0)
		return sum;
	first = newp > 512 ? 512 : newp;
	barrier_var(first);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)s->r, first, sum);
	if (sum < 0 || newp == first)
		return sum;
	rest = newp - first;
	if (rest > R_BUF - 4 - 512)
		return -1;
	barrier_var(rest);
	return bpf_csum_diff(NULL, 0, (__be32 *)&s->r[512], rest, sum);
}

/* rewrite turns the query packet into the response. It returns 0 on
 * success, 1 when nothing was changed (pass the query on), -1 when the
 * packet was half rewritten (drop it: the client retries). Global, as
 * parse_query. */
__noinline int rewrite(struct __sk_buff *skb, struct scratch *s, const struct layout *lo,
		       __u64 resp_len)
{
	__u32 udp_old, udp_new;
	__be16 udp_old_be, udp_new_be;
	__u8 eth[12], tmp[6], addrs[32], ports[4];
	/* A UDP checksum that computes to 0 goes out as 0xffff: 0 means "no
	 * checksum" over IPv4 (RFC 768) and is invalid over IPv6 (RFC 8200).
	 * ENFORCE: update the field even if a step left it 0. */
	const __u64 csum_flags = BPF_F_MARK_MANGLED_0 | BPF_F_MARK_ENFORCE;
	__s64 diff;

	if (!skb || !s || !lo)
		return 1;
	udp_old = lo->dns_len + sizeof(struct udphdr);
	udp_new = resp_len + sizeof(struct udphdr);
	udp_old_be = bpf_htons(udp_old);
	udp_new_be = bpf_htons(udp_new);
	diff = payload_csum_diff(s, lo->dns_len, resp_len);
	if (diff < 0)
		return 1;
	if (bpf_skb_load_bytes(skb, 0, eth, sizeof(eth)) < 0 ||
	    bpf_skb_load_bytes(skb, lo->l4, ports, sizeof(ports)) < 0)
		return 1;
	if (lo->v6) {
		if (bpf_skb_load_bytes(skb, lo->l3 + offsetof(struct ipv6hdr, saddr), addrs, 32) < 0)
			return 1;
	} else {
		if (bpf_skb_load_bytes(skb, lo->l3 + offsetof(struct iphdr, saddr), addrs, 8) < 0)
			return 1;
	}
	if (bpf_skb_change_tail(skb, lo->dns + resp_len, 0) < 0)
		return 1;

	/* From here on the packet is ours: any failure drops it. */
	__builtin_memcpy(tmp, eth, 6);
	__builtin_memcpy(eth, eth + 6, 6);
	__builtin_memcpy(eth + 6, tmp, 6);
	if (bpf_skb_store_bytes(skb, 0, eth, sizeof(eth), 0) < 0)
		return -1;

	if (lo->v6) {
		__u8 a[32];
		__be16 plen = udp_new_be;

		__builtin_memcpy(a, addrs + 16, 16);
		__builtin_memcpy(a + 16, addrs, 16);
		if (bpf_skb_store_bytes(skb, lo->l3 + offsetof(struct ipv6hdr, saddr), a, 32, 0) < 0 ||
		    bpf_skb_store_bytes(skb, lo->l3 + offsetof(struct ipv6hdr, payload_len), &plen, 2, 0) < 0)
			return -1;
	} else {
		__u8 a[8];
		__be16 old_tot = bpf_htons(udp_old + sizeof(struct iphdr));
		__be16 new_tot = bpf_htons(udp_new + sizeof(struct iphdr));

		__builtin_memcpy(a, addrs + 4, 4);
		__builtin_memcpy(a + 4, addrs, 4);
		/* Swapping the addresses leaves the header checksum as it is;
		 * the new total length does not. */
		if (bpf_skb_store_bytes(skb, lo->l3 + offsetof(struct iphdr, saddr), a, 8, 0) < 0 ||
		    bpf_l3_csum_replace(skb, lo->l3 + offsetof(struct iphdr, check), old_tot, new_tot, 2) < 0 ||
		    bpf_skb_store_bytes(skb, lo->l3 + offsetof(struct iphdr, tot_len), &new_tot, 2, 0) < 0)
			return -1;
	}

	/* UDP: ports swapped (checksum neutral), the new length (in the
	 * header and in the pseudo-header), the new payload. */
	__builtin_memcpy(tmp, ports, 2);
	ports[0] = ports[2];
	ports[1] = ports[3];
	ports[2] = tmp[0];
	ports[3] = tmp[1];
	if (bpf_skb_store_bytes(skb, lo->l4, ports, sizeof(ports), 0) < 0 ||
	    bpf_skb_store_bytes(skb, lo->l4 + offsetof(struct udphdr, len), &udp_new_be, 2, 0) < 0)
		return -1;
	if (resp_len == 0 || resp_len > R_MAX)
		return -1;
	barrier_var(resp_len); /* pass the value just checked, not a spilled copy */
	if (bpf_skb_store_bytes(skb, lo->dns, s->r, resp_len, 0) < 0)
		return -1;
	if (lo->csum_zero)
		return 0; /* IPv4 without a UDP checksum stays without one */
	if (bpf_l4_csum_replace(skb, lo->csum, udp_old_be, udp_new_be, BPF_F_PSEUDO_HDR | 2 | csum_flags) < 0 ||
	    bpf_l4_csum_replace(skb, lo->csum, udp_old_be, udp_new_be, 2 | csum_flags) < 0 ||
	    bpf_l4_csum_replace(skb, lo->csum, 0, (__u32)diff, csum_flags) < 0)
		return -1;
	return 0;
}

static __always_inline int answer(struct __sk_buff *skb, __u64 redirect_flags)
{
	const __u32 zero = 0;
	struct dnsa_kc_config *cfg;
	struct dnsa_kc_entry *e;
	struct scratch *s;
	struct layout lo = {};
	__u64 resp_len;
	__u64 dns_len;
	__u64 now;
	__u16 rcode;
	int ret;

	cfg = bpf_map_lookup_elem(&dnsa_kc_cfg, &zero);
	if (!cfg || cfg->port == 0)
		return TC_ACT_UNSPEC;
	ret = parse_l3l4(skb, &lo, cfg);
	if (ret == 0)
		return TC_ACT_UNSPEC;
	if (ret < 0) {
		count(DNSA_KC_PASS);
		return TC_ACT_UNSPEC;
	}
	if ((cfg->flags & DNSA_KC_CFG_BYPASS) && bpf_map_lookup_elem(&dnsa_kc_bypass, &lo.src)) {
		count(DNSA_KC_PASS);
		return TC_ACT_UNSPEC;
	}
	s = bpf_map_lookup_elem(&dnsa_kc_scratch, &zero);
	if (!s)
		return TC_ACT_UNSPEC;
	__builtin_memset(s->q, 0, sizeof(s->q));
	__builtin_memset(&s->key, 0, sizeof(s->key));
	/* Bounds checked right before the load, in the register it uses. */
	dns_len = lo.dns_len;
	barrier_var(dns_len);
	if (dns_len > Q_MAX || dns_len < 12) {
		count(DNSA_KC_PASS);
		return TC_ACT_UNSPEC;
	}
	if (bpf_skb_load_bytes(skb, lo.dns, s->q, dns_len) < 0) {
		count(DNSA_KC_PASS);
		return TC_ACT_UNSPEC;
	}
	ret = parse_query(s, dns_len);
	if (ret <= 0) {
		count(DNSA_KC_PASS);
		return TC_ACT_UNSPEC;
	}

	e = bpf_map_lookup_elem(&dnsa_kc_cache, &s->key);
	if (!e) {
		count(DNSA_KC_MISS);
		return TC_ACT_UNSPEC;
	}
	now = bpf_ktime_get_ns();
	if (now >= e->expires_ns) {
		count(DNSA_KC_EXPIRED);
		return TC_ACT_UNSPEC;
	}
	rcode = e->flags & 0xf;
	ret = build_response(s, e, ret, now, cfg);
	if (ret <= 0) {
		count(DNSA_KC_PASS);
		return TC_ACT_UNSPEC;
	}
	resp_len = ret;
	ret = rewrite(skb, s, &lo, resp_len);
	if (ret > 0) {
		count(DNSA_KC_ERROR);
		return TC_ACT_UNSPEC;
	}
	if (ret < 0) {
		count(DNSA_KC_ERROR);
		return TC_ACT_SHOT;
	}
	count(DNSA_KC_HIT);
	count_client(&lo.src, rcode);
	return bpf_redirect(skb->ifindex, redirect_flags);
}

SEC("tc")
int kc_ingress(struct __sk_buff *skb)
{
	return answer(skb, 0);
}

/* The host end of a veth whose pod end is in another network namespace: the
 * answer goes straight into the pod end's ingress (bpf_redirect_peer), not
 * out through the host end and the CPU's backlog queue, which saves the pod
 * a second pass through the receive path. The loader attaches this one only
 * there: the kernel drops a peer redirect that stays in one namespace. */
SEC("tc")
int kc_ingress_peer(struct __sk_buff *skb)
{
	int ret = answer(skb, 0);

	if (ret == TC_ACT_REDIRECT)
		return bpf_redirect_peer(skb->ifindex, 0);
	return ret;
}

SEC("tc")
int kc_egress(struct __sk_buff *skb)
{
	return answer(skb, BPF_F_INGRESS);
}
