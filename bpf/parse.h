/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* parse.h: bounds-checked parsing of Ethernet, 802.1Q/QinQ, IPv4, IPv6
 * (extension headers), TCP, UDP, ICMP and ICMPv6 into a flow key. Nothing
 * here writes to the packet. */
#pragma once

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

#include "maps.h"

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define MAX_VLAN_TAGS 2
#define MAX_EXT_HEADERS 6
/* Offsets are clamped below these so the verifier can bound every pointer.
 * L3 may start deep inside a packet: the quoted header of an ICMP error. */
#define MAX_L3_OFFSET 600
#define MAX_L4_OFFSET 1100

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* tcp_syn: a connection request (SYN without ACK). Tested where needed
 * rather than kept in a variable: a 0/1 flag would split the verifier's
 * states on every path after it. */
static __always_inline int tcp_syn(__u8 proto, __u8 flags)
{
	return proto == IPPROTO_TCP && (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

enum frag_kind {
	FRAG_NONE = 0,
	FRAG_FIRST,
	FRAG_LATER,
};

/* linux/icmp.h pulls in libc socket headers that do not build for BPF. */
#define ICMP_DEST_UNREACH_ 3
#define ICMP_FRAG_NEEDED_ 4
#define ICMPV6_PKT_TOOBIG_ 2
#define ICMPV6_ERROR_MAX_ 4 /* destination unreachable .. parameter problem */
#define ICMPV6_ECHO_REQUEST_ 128
#define ICMPV6_ECHO_REPLY_ 129

struct icmp_hdr_ {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be32 rest; /* echo id+seq, or next-hop MTU */
};

struct vlan_hdr_ {
	__be16 tci;
	__be16 encap_proto;
};

struct ipv6_opt_hdr_ {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct ipv6_frag_hdr_ {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units << 3 | M flag */
	__be32 id;
};

/* The key comes first and the struct is 8-byte aligned: the flow cache
 * compares keys as five u64 words, and the verifier refuses a misaligned
 * stack read (parse_packet's caller keeps the whole struct on its stack). */
struct packet {
	struct flow_key key;
	__u32 len;
	__u32 l3_off;
	__u32 l4_off;
	__be16 l3_proto; /* ETH_P_IP or ETH_P_IPV6 */
	__u16 tags;      /* VLAN tags on ingress */
	__u16 tci;       /* first tag's TCI (PCP kept on retag) */
	__u8 frag;       /* enum frag_kind */
	__u8 icmp_type;  /* ICMP and ICMPv6: the message type */
	__u8 tcp_flags;  /* TCP: flags byte (FIN 0x01, SYN 0x02, ...); 0 for a later fragment */
	__u8 pad[3];
	__u32 frag_id;
} __attribute__((aligned(8)));

/* parse_l2 fills tags, tci, l3_proto, l3_off. Returns -1 with *reason set
 * when the frame is not IP or is truncated. */
static __always_inline int parse_l2(void *data, void *data_end, struct packet *p, __u32 *reason)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__be16 proto;

	if ((void *)(eth + 1) > data_end) {
		*reason = REASON_PASS_MALFORMED_L2;
		return -1;
	}
	proto = eth->h_proto;

#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		struct vlan_hdr_ *vh;

		if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
			break;
		vh = data + off;
		if ((void *)(vh + 1) > data_end) {
			*reason = REASON_PASS_MALFORMED_L2;
			return -1;
		}
		if (i == 0)
			p->tci = bpf_ntohs(vh->tci);
		proto = vh->encap_proto;
		off += sizeof(*vh);
		p->tags++;
	}
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6)) {
		*reason = REASON_PASS_NOT_IP;
		return -1;
	}
	p->l3_proto = proto;
	p->l3_off = off;
	return 0;
}

/* v4_mapped writes ::ffff:addr as four words (the key is 4-byte aligned). */
static __always_inline void v4_mapped(__u8 *dst, __be32 addr)
{
	__u32 *w = (__u32 *)dst;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0x0000ffff);
	w[3] = addr;
}

/* is_v4_mapped reports whether a (4-byte aligned) key address is ::ffff:a.b.c.d. */
static __always_inline int is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return (w[0] | w[1]) == 0 && w[2] == bpf_htonl(0x0000ffff);
}

/* parse_ipv4 at off: fills key addresses and proto, frag info, l4_off.
 * quote (a constant) parses the packet an ICMP error quotes, and refuses a
 * later fragment there: what follows its header is payload, not ports.
 * Refusing here, not by a frag check in the caller, keeps the frag field
 * dead for the verifier, which would otherwise explore every value. */
static __always_inline int parse_ipv4(void *data, void *data_end, __u32 off, struct packet *p,
				      __u32 *reason, const int quote)
{
	struct iphdr *ip;
	__u32 ihl;
	__u16 frag_off;

	if (off > MAX_L3_OFFSET) {
		*reason = REASON_PASS_MALFORMED_L3;
		return -1;
	}
	ip = data + off;
	if ((void *)(ip + 1) > data_end) {
		*reason = REASON_PASS_MALFORMED_L3;
		return -1;
	}
	ihl = ip->ihl;
	if (ip->version != 4 || ihl < 5) {
		*reason = REASON_PASS_MALFORMED_L3;
		return -1;
	}
	if (data + off + ihl * 4 > data_end) {
		*reason = REASON_PASS_MALFORMED_L3;
		return -1;
	}
	v4_mapped(p->key.src, ip->saddr);
	v4_mapped(p->key.dst, ip->daddr);
	p->key.proto = ip->protocol;
	frag_off = bpf_ntohs(ip->frag_off);
	if (quote && (frag_off & IP_OFFSET))
		return -1;
	if (frag_off & IP_OFFSET)
		p->frag = FRAG_LATER;
	else if (frag_off & IP_MF)
		p->frag = FRAG_FIRST;
	p->frag_id = bpf_ntohs(ip->id);
	p->l4_off = off + ihl * 4;
	return 0;
}

/* parse_ipv6 at off: walks up to MAX_EXT_HEADERS extension headers. quote
 * as for parse_ipv4. */
static __always_inline int parse_ipv6(void *data, void *data_end, __u32 off, struct packet *p,
				      __u32 *reason, const int quote)
{
	struct ipv6hdr *ip6;
	__u8 next;

	if (off > MAX_L3_OFFSET) {
		*reason = REASON_PASS_MALFORMED_L3;
		return -1;
	}
	ip6 = data + off;
	if ((void *)(ip6 + 1) > data_end || ip6->version != 6) {
		*reason = REASON_PASS_MALFORMED_L3;
		return -1;
	}
	__builtin_memcpy(p->key.src, &ip6->saddr, 16);
	__builtin_memcpy(p->key.dst, &ip6->daddr, 16);
	/* Keys hold IPv4 addresses as ::ffff:a.b.c.d, so an IPv6 header naming
	 * such an address would match an IPv4 service or flow and be forwarded
	 * to an IPv4 backend. IPv4-mapped addresses never appear on the wire
	 * (RFC 4291 2.5.5.2; the stack drops them too): the header is invalid. */
	if (is_v4_mapped(p->key.src) || is_v4_mapped(p->key.dst)) {
		*reason = REASON_PASS_MALFORMED_L3;
		return -1;
	}
	next = ip6->nexthdr;
	off += sizeof(*ip6);

#pragma unroll
	for (int i = 0; i < MAX_EXT_HEADERS; i++) {
		if (next == IPPROTO_FRAGMENT) {
			struct ipv6_frag_hdr_ *fh;
			__u16 fo;

			if (off > MAX_L4_OFFSET) {
				*reason = REASON_PASS_EXT_HEADERS;
				return -1;
			}
			fh = data + off;
			if ((void *)(fh + 1) > data_end) {
				*reason = REASON_PASS_MALFORMED_L3;
				return -1;
			}
			fo = bpf_ntohs(fh->frag_off);
			if (quote && (fo & 0xFFF8))
				return -1;
			if (fo & 0xFFF8)
				p->frag = FRAG_LATER;
			else if (fo & 1)
				p->frag = FRAG_FIRST;
			p->frag_id = bpf_ntohl(fh->id);
			next = fh->nexthdr;
			off += sizeof(*fh);
			continue;
		}
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
		    next == IPPROTO_AH) {
			struct ipv6_opt_hdr_ *oh;
			__u32 len;

			if (off > MAX_L4_OFFSET) {
				*reason = REASON_PASS_EXT_HEADERS;
				return -1;
			}
			oh = data + off;
			if ((void *)(oh + 1) > data_end) {
				*reason = REASON_PASS_MALFORMED_L3;
				return -1;
			}
			/* AH counts its length in 4-byte units minus 2. */
			if (next == IPPROTO_AH)
				len = ((__u32)oh->hdrlen + 2) * 4;
			else
				len = ((__u32)oh->hdrlen + 1) * 8;
			next = oh->nexthdr;
			off += len;
			continue;
		}
		break;
	}
	if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
	    next == IPPROTO_AH || next == IPPROTO_FRAGMENT || next == IPPROTO_ESP) {
		*reason = REASON_PASS_EXT_HEADERS;
		return -1;
	}
	if (off > MAX_L4_OFFSET) {
		*reason = REASON_PASS_EXT_HEADERS;
		return -1;
	}
	p->key.proto = next;
	p->l4_off = off;
	return 0;
}

/* parse_ports reads the ports (or ICMP echo identifier) at l4_off. Other
 * protocols leave both ports 0, which matches only a port-0 service. */
static __always_inline int parse_ports(void *data, void *data_end, struct packet *p, __u32 *reason)
{
	__u32 off = p->l4_off;

	if (off > MAX_L4_OFFSET) {
		*reason = REASON_PASS_MALFORMED_L4;
		return -1;
	}
	switch (p->key.proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP: {
		/* sport and dport sit at the same place in TCP and UDP. */
		struct udphdr *uh = data + off;

		if ((void *)(uh + 1) > data_end) {
			*reason = REASON_PASS_MALFORMED_L4;
			return -1;
		}
		if (p->key.proto == IPPROTO_TCP) {
			struct tcphdr *th = data + off;

			if ((void *)(th + 1) > data_end) {
				*reason = REASON_PASS_MALFORMED_L4;
				return -1;
			}
			p->tcp_flags = ((__u8 *)th)[13];
		}
		p->key.sport = uh->source;
		p->key.dport = uh->dest;
		return 0;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		struct icmp_hdr_ *ih = data + off;

		if ((void *)(ih + 1) > data_end) {
			*reason = REASON_PASS_MALFORMED_L4;
			return -1;
		}
		p->icmp_type = ih->type;
		return 0;
	}
	}
	return 0;
}
