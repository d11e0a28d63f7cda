/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* forward.h: L2 direct server return. The IP packet is untouched; the
 * Ethernet header is rebuilt for the backend: its MAC as destination, the
 * egress port's MAC as source, and exactly the backend's VLAN tag (none for
 * VLAN 0), whatever tags the frame arrived with. PCP of the first ingress tag
 * is kept. */
#pragma once

#include "maps.h"
#include "parse.h"

/* forward rewrites the frame for a backend at (macs: destination then
 * source) on vlan behind ifindex, and returns the XDP action; *reason says
 * which counter the packet belongs to. */
static __always_inline int forward(struct xdp_md *ctx, struct packet *p, const __u8 *macs,
				   __u16 vlan, __u32 ifindex, __u32 *reason)
{
	__u32 out_len = sizeof(struct ethhdr) + (vlan ? sizeof(struct vlan_hdr_) : 0);
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
	/* Both MACs in three stores; XDP packet data may be unaligned, which
	 * the x86 and arm64 JITs handle. */
	*(__u32 *)data = *(const __u32 *)macs;
	*(__u32 *)(data + 4) = *(const __u32 *)(macs + 4);
	*(__u32 *)(data + 8) = *(const __u32 *)(macs + 8);
	if (vlan) {
		struct vlan_hdr_ *vh = (void *)(eth + 1);

		if ((void *)(vh + 1) > data_end) {
			*reason = REASON_DROP_ADJUST_HEAD;
			return XDP_DROP;
		}
		eth->h_proto = bpf_htons(ETH_P_8021Q_);
		vh->tci = bpf_htons((p->tci & 0xE000) | (vlan & 0x0FFF));
		vh->encap_proto = p->l3_proto;
	} else {
		eth->h_proto = p->l3_proto;
	}

	if (ifindex == 0 || ifindex == ctx->ingress_ifindex) {
		if (*reason != REASON_ICMP_TO_BACKEND)
			*reason = REASON_TX;
		return XDP_TX;
	}
	if (!bpf_map_lookup_elem(&tx_ports, &ifindex)) {
		*reason = REASON_DROP_NO_TX_PORT;
		return XDP_DROP;
	}
	if (*reason != REASON_ICMP_TO_BACKEND)
		*reason = REASON_REDIRECT;
	/* The low bits of flags are the action if the redirect cannot be set up. */
	return bpf_redirect_map(&tx_ports, ifindex, XDP_DROP);
}
