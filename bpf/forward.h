/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* forward.h: L2 direct server return. The IP packet is untouched; the
 * Ethernet header is rebuilt for the backend: its MAC as destination, the
 * egress port's MAC as source, and exactly the backend's VLAN tag (none for
 * VLAN 0), whatever tags the frame arrived with. PCP of the first ingress tag
 * is kept. */
#pragma once

#include "maps.h"
#include "parse.h"

/* forward rewrites the frame for the backend and returns the XDP action;
 * *reason says which counter the packet belongs to. */
static __always_inline int forward(struct xdp_md *ctx, struct packet *p,
				   const struct backend_info *bi, __u32 *reason)
{
	__u32 out_len = sizeof(struct ethhdr) + (bi->vlan ? sizeof(struct vlan_hdr_) : 0);
	int delta = (int)p->l3_off - (int)out_len;
	void *data, *data_end;
	struct ethhdr *eth;

	if (delta != 0 && bpf_xdp_adjust_head(ctx, delta)) {
		*reason = REASON_DROP_ADJUST_HEAD;
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end) {
		*reason = REASON_DROP_ADJUST_HEAD;
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_dest, bi->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, bi->src_mac, ETH_ALEN);
	if (bi->vlan) {
		struct vlan_hdr_ *vh = (void *)(eth + 1);

		if ((void *)(vh + 1) > data_end) {
			*reason = REASON_DROP_ADJUST_HEAD;
			return XDP_DROP;
		}
		eth->h_proto = bpf_htons(ETH_P_8021Q_);
		vh->tci = bpf_htons((p->tci & 0xE000) | (bi->vlan & 0x0FFF));
		vh->encap_proto = p->l3_proto;
	} else {
		eth->h_proto = p->l3_proto;
	}

	if (bi->ifindex == 0 || bi->ifindex == ctx->ingress_ifindex) {
		if (*reason != REASON_ICMP_TO_BACKEND)
			*reason = REASON_TX;
		return XDP_TX;
	}
	if (!bpf_map_lookup_elem(&tx_ports, &bi->ifindex)) {
		*reason = REASON_DROP_NO_TX_PORT;
		return XDP_DROP;
	}
	if (*reason != REASON_ICMP_TO_BACKEND)
		*reason = REASON_REDIRECT;
	/* The low bits of flags are the action if the redirect cannot be set up. */
	return bpf_redirect_map(&tx_ports, bi->ifindex, XDP_DROP);
}
