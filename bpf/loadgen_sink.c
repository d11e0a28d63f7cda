// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* loadgen_sink: the far end of a load test. Attached to the port the
 * forwarder sends back to, it counts every frame by the last byte of its
 * destination MAC (the lab gives each backend a distinct one) and drops it:
 * counting costs one per-CPU array increment, so the sink is never what
 * limits a measurement. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define SINK_RUNT 256 /* the slot for frames too short to hold a MAC */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SINK_RUNT + 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_counts SEC(".maps");

SEC("xdp")
int loadgen_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 slot = SINK_RUNT;
	__u64 *n;

	if ((void *)(eth + 1) <= data_end)
		slot = eth->h_dest[ETH_ALEN - 1];
	n = bpf_map_lookup_elem(&sink_counts, &slot);
	if (n)
		*n += 1;
	return XDP_DROP;
}
