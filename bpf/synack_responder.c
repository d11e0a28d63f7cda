// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* synack_responder: stands in for remote TCP backends in the half-open
 * check benchmark. A tc program on the ingress of the far end of a veth,
 * it answers every IPv4 TCP SYN with a SYN-ACK from the address and port
 * the SYN was sent to, sent back out of the same port, and drops the RSTs
 * that follow, so the prober's host does what it would against real
 * backends (send the SYN, take the SYN-ACK, let its stack answer RST) and
 * none of the backends' work: a local listener's SYN handling ran in the
 * prober's own send call. Everything else passes. tc, not XDP: on veth an
 * XDP program gets a socket's frames only after a copy into an XDP
 * buffer, and sends them back as frames the other end must turn into
 * packets again, work a NIC's driver would not do. Bounds are checked;
 * options are left as they came (the SYN's MSS). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The ISN the responder answers with: any value does, the prober only
 * matches the acknowledgement of its own. */
#define RESPONDER_ISN 0x4b420001

/* csum_replace32 updates a ones' complement checksum for one 32-bit word
 * that changed from old to new (RFC 1624). */
static __always_inline __u16 csum_replace32(__u16 check, __be32 old, __be32 new)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~(old >> 16) + (__u16)~(old & 0xffff);
	sum += (new >> 16) + (new & 0xffff);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

SEC("tc")
int synack_responder(struct __sk_buff *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct tcphdr *tcp;
	__u8 mac[ETH_ALEN];
	__be32 addr, old, ack;
	__be16 port;
	__u32 *word;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP || ip->ihl != 5 ||
	    (ip->frag_off & bpf_htons(0x3fff)))
		return TC_ACT_OK;
	tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > data_end)
		return TC_ACT_OK;
	if (tcp->rst)
		return TC_ACT_SHOT;
	if (!tcp->syn || tcp->ack)
		return TC_ACT_OK;

	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	/* Swapped addresses and ports leave both checksums as they are. */
	addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	port = tcp->source;
	tcp->source = tcp->dest;
	tcp->dest = port;

	ack = bpf_htonl(bpf_ntohl(tcp->seq) + 1);
	tcp->check = csum_replace32(tcp->check, tcp->ack_seq, ack);
	tcp->ack_seq = ack;
	tcp->check = csum_replace32(tcp->check, tcp->seq, bpf_htonl(RESPONDER_ISN));
	tcp->seq = bpf_htonl(RESPONDER_ISN);
	/* The flags share a 32-bit word with the data offset and window. */
	word = (__u32 *)((__u8 *)tcp + 12);
	old = *word;
	tcp->ack = 1;
	tcp->check = csum_replace32(tcp->check, old, *word);
	return bpf_redirect(ctx->ifindex, 0);
}
