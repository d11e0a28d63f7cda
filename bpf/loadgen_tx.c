// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* loadgen_tx: the load generator's sender. It is never attached: Go runs it
 * with BPF_PROG_RUN in live-frame mode, where every XDP_TX it returns puts the
 * frame on the wire of the device the run names. One template frame becomes a
 * stream that cycles through `flows` distinct flows spread over `vips`
 * destinations.
 *
 * The kernel recycles a run's pages without copying the template in again, so
 * a frame comes back as the forwarder under test left it (MACs swapped, a VLAN
 * tag rewritten). The first 16 bytes (both MACs, the type or TPID and the
 * first tag) are therefore written from the template every time. Checksums are
 * not fixed up: neither the forwarder nor the sink reads them. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Rotated fields are 16 bits wide and must lie inside the first 128 bytes. */
#define FIELD_MAX 128
#define FLOW_PORTS 64512 /* source ports 1024..65535 */

struct gen_config {
	__u64 head[2];  /* the template's first 16 bytes */
	__u32 flows;    /* distinct flows the stream cycles through; 0 counts as 1 */
	__u32 vips;     /* distinct destinations; 0 counts as 1 */
	__u16 src_off;  /* low 16 bits of the source address */
	__u16 sport_off;
	__u16 dst_off;  /* low 16 bits of the destination address */
	__u16 src_base; /* host order values the rotation adds to */
	__u16 dst_base;
	__u16 pad[3];
};

struct gen_state {
	__u64 seq;     /* frames sent since the stream was configured */
	__u64 aborted; /* frames not sent: the template is shorter than a field */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_config);
} config SEC(".maps");

/* One sender at a time: a plain array, so Go reads one exact count. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_state);
} state SEC(".maps");

static __always_inline int put16(void *data, void *data_end, __u32 off, __u16 v)
{
	__u8 *p;

	if (off > FIELD_MAX - 2)
		return -1;
	p = (__u8 *)data + off;
	if ((void *)(p + 2) > data_end)
		return -1;
	p[0] = v >> 8;
	p[1] = v & 0xff;
	return 0;
}

SEC("xdp")
int loadgen_tx(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct gen_config *c;
	struct gen_state *s;
	__u32 zero = 0, flows, vips, idx, rest;
	__u64 *head = data;

	c = bpf_map_lookup_elem(&config, &zero);
	s = bpf_map_lookup_elem(&state, &zero);
	if (!c || !s)
		return XDP_ABORTED;
	if ((void *)(head + 2) > data_end) {
		s->aborted++;
		return XDP_DROP;
	}
	head[0] = c->head[0];
	head[1] = c->head[1];

	flows = c->flows ? c->flows : 1;
	vips = c->vips ? c->vips : 1;
	idx = s->seq % flows;
	s->seq++;
	rest = idx / vips;
	if (put16(data, data_end, c->dst_off, c->dst_base + idx % vips) ||
	    put16(data, data_end, c->sport_off, 1024 + rest % FLOW_PORTS) ||
	    put16(data, data_end, c->src_off, c->src_base + rest / FLOW_PORTS)) {
		s->aborted++;
		return XDP_DROP;
	}
	return XDP_TX;
}
