/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp.h: path MTU discovery for VIP flows. A router that cannot forward a
 * backend's reply (source VIP) sends "fragmentation needed" (ICMP 3/4) or
 * "packet too big" (ICMPv6 2) to the VIP. Only the backend that owns the
 * quoted flow can act on it, so the error follows that flow. */
#pragma once

#include "parse.h"

static __always_inline int addr_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

/* icmp6_link_control reports whether an ICMPv6 message of this type
 * belongs to the host's stack whatever it is addressed to: neighbour and
 * router discovery (133-137), MLD (130-132, 143) and every other
 * informational or unknown type. Only echo request/reply and the errors
 * 1-4 may be steered to a backend. */
static __always_inline int icmp6_link_control(__u8 type)
{
	if (type >= 1 && type <= ICMPV6_ERROR_MAX_)
		return 0;
	return type != ICMPV6_ECHO_REQUEST_ && type != ICMPV6_ECHO_REPLY_;
}

/* quoted_flow fills *key with the client->VIP flow quoted by the ICMP error
 * in p. Returns -1 when p is no such error (ICMP inside IPv4 quoting IPv4,
 * ICMPv6 inside IPv6 quoting IPv6, nothing else), the quote is a later
 * fragment (its "ports" would be payload) or too short to hold the ports,
 * or the error is not addressed to the quoted packet's source. */
static __always_inline int quoted_flow(void *data, void *data_end, struct packet *p,
				       struct flow_key *key)
{
	struct packet in = {};
	__u32 reason = 0, off = p->l4_off;
	struct udphdr *uh;

	if (off > MAX_L3_OFFSET - 8)
		return -1;
	if (p->key.proto == IPPROTO_ICMP && p->l3_proto == bpf_htons(ETH_P_IP)) {
		struct icmp_hdr_ *ih = data + off;

		if ((void *)(ih + 1) > data_end)
			return -1;
		if (ih->type != ICMP_DEST_UNREACH_ || ih->code != ICMP_FRAG_NEEDED_)
			return -1;
		if (parse_ipv4(data, data_end, off + sizeof(*ih), &in, &reason, 1) < 0)
			return -1;
	} else if (p->key.proto == IPPROTO_ICMPV6 && p->l3_proto == bpf_htons(ETH_P_IPV6)) {
		struct icmp_hdr_ *ih = data + off;

		if ((void *)(ih + 1) > data_end)
			return -1;
		if (ih->type != ICMPV6_PKT_TOOBIG_)
			return -1;
		if (parse_ipv6(data, data_end, off + sizeof(*ih), &in, &reason, 1) < 0)
			return -1;
	} else {
		return -1;
	}
	if (in.key.proto != IPPROTO_TCP && in.key.proto != IPPROTO_UDP)
		return -1;
	if (in.l4_off > MAX_L4_OFFSET)
		return -1;
	/* RFC 792 and 4443 quote at least 8 bytes of L4: the ports are there. */
	uh = data + in.l4_off;
	if ((void *)(uh + 1) > data_end)
		return -1;
	if (!addr_eq(p->key.dst, in.key.src))
		return -1;
	/* The quoted packet went VIP -> client; the flow we keep is client -> VIP. */
	__builtin_memcpy(key->src, in.key.dst, 16);
	__builtin_memcpy(key->dst, in.key.src, 16);
	key->sport = uh->dest;
	key->dport = uh->source;
	key->proto = in.key.proto;
	return 0;
}
