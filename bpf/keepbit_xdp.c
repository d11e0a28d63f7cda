// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* keepbit_xdp: the VIP forwarder. Every packet for a configured service
 * (VIP, port, protocol) goes to a healthy backend by L2 direct server return;
 * everything else leaves with XDP_PASS, byte-identical. Never XDP_ABORTED.
 *
 * Rule for what cannot be parsed: a packet is passed to the kernel, which
 * applies its own checks, unless it was proven to be for a service; the only
 * drops are "service has no usable backend" under the drop policy and
 * failures to emit a frame. Every outcome is counted under one reason. */
#include "maps.h"
#include "parse.h"
#include "select.h"
#include "icmp.h"
#include "forward.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#ifdef KEEPBIT_COMPAT
/* The compatible build's hand-over of the parsed packet to slow_path (see
 * maps.h): one slot per CPU, which a program run keeps to itself. Scratch
 * space, not state: the loader does not pin it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct packet);
} packet_scratch SEC(".maps");
#endif

/* track_fragment remembers the ports of a first fragment so the later
 * fragments of the same datagram, which carry none, take the same flow. */
static __always_inline void track_fragment(struct packet *p)
{
	struct frag_key fk = {};
	struct frag_value fv = {
		.sport = p->key.sport,
		.dport = p->key.dport,
	};

	__builtin_memcpy(fk.src, p->key.src, 16);
	__builtin_memcpy(fk.dst, p->key.dst, 16);
	fk.id = p->frag_id;
	fk.proto = p->key.proto;
	bpf_map_update_elem(&frags, &fk, &fv, BPF_ANY);
}

static __always_inline int recall_fragment(struct packet *p)
{
	struct frag_key fk = {};
	struct frag_value *fv;

	__builtin_memcpy(fk.src, p->key.src, 16);
	__builtin_memcpy(fk.dst, p->key.dst, 16);
	fk.id = p->frag_id;
	fk.proto = p->key.proto;
	fv = bpf_map_lookup_elem(&frags, &fk);
	if (!fv)
		return -1;
	p->key.sport = fv->sport;
	p->key.dport = fv->dport;
	return 0;
}

/* slow_path (slow_path_of is its body) forwards a packet the flow cache did
 * not answer: ICMP errors
 * steered to the flow they quote, the service lookup, the flow table or
 * shared flows or Maglev, the cache fill. Returns the XDP action, counted.
 *
 * A global function, so the verifier checks it once with p unknown, apart
 * from the parsing before it: inlined, every parse outcome (VLAN tags, IPv4
 * or IPv6, extension headers, fragments) multiplied its paths, and the
 * program needed 724,588 processed instructions on Linux 6.18 and more
 * than the 1M limit on 6.1; now ~59k on 6.18. The fast path stays inline
 * (a call there cost another ~5 ns per packet), but p now lives on the
 * stack, ~4 ns per established packet (~24 -> ~28 ns under prog.Run): a
 * copy made only for the call kept it in registers but did not fit the
 * 512 bytes of stack that the program and its calls share. */
static __always_inline int slow_path_of(struct xdp_md *ctx, struct packet *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	__u32 reason = REASON_PASS_NO_SERVICE, info_idx;
	struct service_value sv = {};
	struct backend_info *bi;
	struct choice ch = {};
	struct flow_key fkey = {};
	int icmp_error = 0, may_share, action;

	if (!p)
		return XDP_PASS;
	if (p->frag == FRAG_NONE && quoted_flow(data, data_end, p, &fkey) == 0)
		icmp_error = lookup_service(&fkey, &sv) == 0;
	if (!icmp_error) {
		if (lookup_service(&p->key, &sv) < 0) {
			reason = REASON_PASS_NO_SERVICE;
			goto pass;
		}
		__builtin_memcpy(&fkey, &p->key, sizeof(fkey));
	}
	if (p->frag == FRAG_FIRST)
		track_fragment(p);

	/* A TCP SYN opens a new connection: Maglev decides, whatever another
	 * node may have shared about the same 5-tuple. */
	may_share = icmp_error || fkey.proto == IPPROTO_UDP ||
		    (fkey.proto == IPPROTO_TCP && !(p->tcp_flags & TCP_FLAG_SYN));
	count(&service_stats, sv.id, len);
	if (choose_backend(&fkey, sv.id, len, !icmp_error, may_share, p->tcp_flags, &ch) < 0)
		goto no_backend;
	info_idx = ch.backend * 2 + ((ch.state & STATE_INFO_SLOT) ? 1 : 0);
	bi = bpf_map_lookup_elem(&backends, &info_idx);
	if (!bi)
		goto no_backend;
	if (icmp_error)
		reason = REASON_ICMP_TO_BACKEND;
	else if (fkey.proto != IPPROTO_ICMP && fkey.proto != IPPROTO_ICMPV6)
		/* Only what the fast path looks up is cached: an ICMP entry
		 * would never hit, yet refilling it would keep its slot from a
		 * flow that can (flow_cache_admit). */
		flow_cache_fill(&fkey, sv.id, &ch, bi);
	count(&backend_stats, ch.backend, len);
	/* dst_mac and src_mac are adjacent in the record, as forward wants
	 * them (the record slot read is not the one being written). */
	action = forward(ctx, p, bi->dst_mac, bi->vlan, bi->ifindex, &reason);
	count(&reason_stats, reason, len);
	return action;

no_backend:
	if (sv.flags & SERVICE_F_PASS_NO_BACKEND) {
		reason = REASON_PASS_NO_BACKEND;
		goto pass;
	}
	count(&reason_stats, REASON_DROP_NO_BACKEND, len);
	return XDP_DROP;
pass:
	count(&reason_stats, reason, len);
	return XDP_PASS;
}

#ifdef KEEPBIT_COMPAT
__noinline int slow_path(struct xdp_md *ctx)
{
	__u32 zero = 0;

	return slow_path_of(ctx, bpf_map_lookup_elem(&packet_scratch, &zero));
}
#else
__noinline int slow_path(struct xdp_md *ctx, struct packet *p)
{
	return slow_path_of(ctx, p);
}
#endif

SEC("xdp")
int keepbit_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	__u32 reason = REASON_PASS_NO_SERVICE;
	struct flow_cache_entry *ce;
	struct packet p = {};
	int action;

	if (parse_l2(data, data_end, &p, &reason) < 0)
		goto pass;
	if (p.l3_proto == bpf_htons(ETH_P_IP)) {
		if (parse_ipv4(data, data_end, p.l3_off, &p, &reason, 0) < 0)
			goto pass;
	} else if (parse_ipv6(data, data_end, p.l3_off, &p, &reason, 0) < 0) {
		goto pass;
	}

	if (p.frag == FRAG_LATER) {
		if (recall_fragment(&p) < 0) {
			reason = REASON_PASS_FRAG_UNTRACKED;
			goto pass;
		}
	} else if (parse_ports(data, data_end, &p, &reason) < 0) {
		goto pass;
	} else if (p.key.proto == IPPROTO_ICMPV6 && icmp6_link_control(p.icmp_type)) {
		/* Neighbour discovery for a VIP must reach this host's stack,
		 * not a backend, even with an icmpv6 service on the VIP. */
		reason = REASON_PASS_ICMP_CONTROL;
		goto pass;
	}

	/* Not for a VIP: passed before any flow lookup. lookup_service would
	 * reach the same verdict (the prefilter is its first test, and the
	 * loader sets a VIP's bit before publishing it and clears it after
	 * unpublishing), but only after a flow cache miss and a call: a
	 * packet of the host's own traffic cost 24.5 ns under prog.Run, now
	 * 11 ns (baseline 6.5), and an established packet pays no measurable
	 * extra. ICMP keeps the slow path, where an error is matched by the
	 * flow it quotes. */
	if (p.key.proto != IPPROTO_ICMP && p.key.proto != IPPROTO_ICMPV6 && !vip_listed(p.key.dst)) {
		reason = REASON_PASS_NO_SERVICE;
		goto pass;
	}

	/* Fast path: an established flow in this CPU's cache, forwarded with
	 * array lookups only. ICMP takes the slow path, where errors are
	 * matched to the flow they quote; so does a TCP SYN, which opens a
	 * connection or, on a known flow, retransmits an unanswered one. */
	if (p.key.proto != IPPROTO_ICMP && p.key.proto != IPPROTO_ICMPV6 && !tcp_syn(p.key.proto, p.tcp_flags)) {
		ce = flow_cache_hit(&p.key);
		if (ce && flow_cache_account(ce, len) == 0) {
			if (p.frag == FRAG_FIRST)
				track_fragment(&p);
			count(&service_stats, ce->service, len);
			count(&backend_stats, ce->backend, len);
			action = forward(ctx, &p, ce->macs, ce->vlan, ce->ifindex, &reason);
			count(&reason_stats, reason, len);
			return action;
		}
	}
#ifdef KEEPBIT_COMPAT
	{
		__u32 zero = 0;

		if (bpf_map_update_elem(&packet_scratch, &zero, &p, BPF_ANY))
			goto pass;
	}
	return slow_path(ctx);
#else
	return slow_path(ctx, &p);
#endif

pass:
	count(&reason_stats, reason, len);
	return XDP_PASS;
}
