/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* select.h: service lookup and backend choice.
 *
 * Order: flow table (an established flow keeps its backend while that
 * backend is up or draining and its ID was not reused), else the service's
 * live Maglev buffer; a slot whose backend is not up falls back to a scan of
 * the members, most preferred priority group first. That fallback is what
 * lets "backend down" be a single 4-byte write that holds at once, before
 * the control plane has rebuilt the table. */
#pragma once

#include "maps.h"
#include "hash.h"

struct choice {
	__u32 backend;
	__u32 state; /* backend_state word */
};

static __always_inline struct service_value *lookup_service(struct flow_key *key)
{
	struct service_key sk = {};
	struct service_value *sv;

	__builtin_memcpy(sk.addr, key->dst, 16);
	sk.port = key->dport;
	sk.proto = key->proto;
	sv = bpf_map_lookup_elem(&services, &sk);
	if (sv || sk.port == 0)
		return sv;
	sk.port = 0;
	return bpf_map_lookup_elem(&services, &sk);
}

static __always_inline __u32 state_of(__u32 word)
{
	return word & STATE_MASK;
}

static __always_inline __u32 incarnation_of(__u32 word)
{
	return word >> STATE_INC_SHIFT;
}

/* usable_for_new reports whether backend id may take a new flow. */
static __always_inline int usable_for_new(__u32 id, __u32 *word)
{
	__u32 *st;

	if (id == 0)
		return 0;
	st = bpf_map_lookup_elem(&backend_state, &id);
	if (!st || state_of(*st) != BACKEND_UP)
		return 0;
	*word = *st;
	return 1;
}

static __always_inline __u32 table_get(void *tbl, __u32 idx)
{
	__u32 *v = bpf_map_lookup_elem(tbl, &idx);

	return v ? *v : 0;
}

struct scan_ctx {
	__u32 table_idx;
	__u32 base;  /* member index where the group starts */
	__u32 len;   /* group length */
	__u32 start; /* first position tried, within the group */
	struct choice found;
};

static long scan_member(__u64 i, void *arg)
{
	struct scan_ctx *s = arg;
	__u32 pos, idx, id, word = 0;
	void *tbl;

	tbl = bpf_map_lookup_elem(&tables, &s->table_idx);
	if (!tbl)
		return 1;
	pos = s->start + (__u32)i;
	if (pos >= s->len)
		pos -= s->len;
	idx = TBL_HDR + table_get(tbl, TBL_SIZE) + s->base + pos;
	id = table_get(tbl, idx);
	if (usable_for_new(id, &word)) {
		s->found.backend = id;
		s->found.state = word;
		return 1;
	}
	return 0;
}

/* choose_new picks a backend for a flow with no usable flow entry.
 * Returns 0 with *out set, or -1 when the service has no usable backend. */
static __always_inline int choose_new(__u32 svc_id, __u32 hash, struct choice *out)
{
	struct scan_ctx s = {};
	__u32 *active, m, groups, prev = 0, id, word = 0;
	void *tbl;

	active = bpf_map_lookup_elem(&service_active, &svc_id);
	if (!active)
		return -1;
	s.table_idx = svc_id * 2 + (*active & 1);
	tbl = bpf_map_lookup_elem(&tables, &s.table_idx);
	if (!tbl)
		return -1;
	m = table_get(tbl, TBL_SIZE);
	if (m == 0)
		return -1;
	id = table_get(tbl, TBL_HDR + hash % m);
	if (usable_for_new(id, &word)) {
		out->backend = id;
		out->state = word;
		return 0;
	}

	groups = table_get(tbl, TBL_GROUPS);
	for (int g = 0; g < MAX_GROUPS; g++) {
		__u32 end;

		if ((__u32)g >= groups)
			break;
		end = table_get(tbl, TBL_GROUP_END + g);
		if (end <= prev || end > MAX_MEMBERS)
			break;
		s.base = prev;
		s.len = end - prev;
		s.start = hash % s.len;
		bpf_loop(s.len, scan_member, &s, 0);
		if (s.found.backend) {
			*out = s.found;
			return 0;
		}
		prev = end;
	}
	return -1;
}

/* choose_backend consults the flow table, then the Maglev buffer, and
 * records the choice in the flow table when learn is set. */
static __always_inline int choose_backend(struct flow_key *key, __u32 svc_id, __u64 len, int learn,
					  struct choice *out)
{
	struct flow_value *fv = bpf_map_lookup_elem(&flows, key);
	struct settings_value *cfg;
	__u32 zero = 0, seed = 0;
	__u64 now;

	if (fv) {
		__u32 id = fv->backend;
		__u32 *st = bpf_map_lookup_elem(&backend_state, &id);

		if (st && incarnation_of(*st) == fv->incarnation &&
		    (state_of(*st) == BACKEND_UP || state_of(*st) == BACKEND_DRAINING)) {
			out->backend = id;
			out->state = *st;
			if (learn) {
				fv->last_seen_ns = bpf_ktime_get_coarse_ns();
				fv->packets++;
				fv->bytes += len;
			}
			return 0;
		}
	}

	cfg = bpf_map_lookup_elem(&settings, &zero);
	if (cfg)
		seed = cfg->hash_seed;
	if (choose_new(svc_id, flow_hash(key, seed), out) < 0)
		return -1;
	if (!learn)
		return 0;

	now = bpf_ktime_get_coarse_ns();
	if (fv) {
		/* Re-selection: the old backend went down or its ID was reused. */
		fv->backend = out->backend;
		fv->incarnation = incarnation_of(out->state);
		fv->last_seen_ns = now;
		fv->packets++;
		fv->bytes += len;
	} else {
		struct flow_value nv = {
			.backend = out->backend,
			.incarnation = incarnation_of(out->state),
			.last_seen_ns = now,
			.packets = 1,
			.bytes = len,
		};
		bpf_map_update_elem(&flows, key, &nv, BPF_ANY);
	}
	return 0;
}
