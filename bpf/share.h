/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* share.h: flow sharing between nodes. When ECMP moves a connection to
 * another node, that node must pick the backend the connection is on, not
 * the one its Maglev table picks now. This node reports flows whose
 * backend another node would not pick (the table changed under them) and
 * long-lived flows to the loader through flow_reports; the loader sends
 * them to the other nodes, and writes what they report into shared_flows,
 * which a local miss consults before Maglev.
 *
 * Both entry points are global functions: the verifier checks each once,
 * on its own, instead of once per path of the forwarder that reaches it
 * (the forwarder is already at 70% of the verifier's budget). */
#pragma once

#include "maps.h"
#include "hash.h"

static __always_inline void share_count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&share_stats, &idx);

	if (c)
		(*c)++;
}

static __always_inline struct share_settings_value *share_enabled(void)
{
	__u32 zero = 0;
	struct share_settings_value *cfg = bpf_map_lookup_elem(&share_settings, &zero);

	if (!cfg || !(cfg->flags & SHARE_F_ENABLED))
		return NULL;
	return cfg;
}

/* table_slot returns the backend ID in the flow's slot of the service's
 * live Maglev table: what a node without a flow entry would try first. */
static __always_inline __u32 table_slot(__u32 svc_id, const struct flow_key *key)
{
	__u32 zero = 0, idx, m, seed = 0, *active;
	struct settings_value *cfg;
	void *tbl;

	cfg = bpf_map_lookup_elem(&settings, &zero);
	if (cfg)
		seed = cfg->hash_seed;
	active = bpf_map_lookup_elem(&service_active, &svc_id);
	if (!active)
		return 0;
	idx = svc_id * 2 + (*active & 1);
	tbl = bpf_map_lookup_elem(&tables, &idx);
	if (!tbl)
		return 0;
	m = table_get(tbl, TBL_SIZE);
	if (m == 0)
		return 0;
	return table_get(tbl, TBL_HDR + flow_hash(key, seed) % m);
}

/* share_report runs at a flow cache flush (every FLOW_CACHE_FLUSH packets
 * or FLOW_CACHE_FLUSH_NS of a cached flow) and from the slow path at most
 * once per SHARE_SLOW_PERIOD of a flow (a flow that keeps missing the cache,
 * two long-lived flows on one slot evicting each other, never reaches a
 * flush), never for every packet. It reports the flow when its backend
 * differs from the table's slot (Moved) or it is older than long_lived_ns
 * (LongLived), at most once per refresh_ns. A full ring buffer costs the
 * report, never the packet: it is counted and retried later. Returns 1 when
 * a report was written. */
KEEPBIT_REPORT_FN int share_report(const struct flow_key *key, __u32 service, struct flow_value *fv, __u64 now)
{
	struct share_settings_value *cfg;
	struct flow_report *r;
	__u32 reason;

	if (!key || !fv)
		return 0;
	cfg = share_enabled();
	if (!cfg)
		return 0;
	if (fv->reported_ns && now - fv->reported_ns < cfg->refresh_ns)
		return 0;
	if (table_slot(service, key) != fv->backend)
		reason = FLOW_REPORT_MOVED;
	else if (now - fv->first_seen_ns >= cfg->long_lived_ns)
		reason = FLOW_REPORT_LONG_LIVED;
	else
		return 0;
	r = bpf_ringbuf_reserve(&flow_reports, sizeof(*r), 0);
	if (!r) {
		share_count(SHARE_REPORT_DROPPED);
		return 0;
	}
	__builtin_memcpy(&r->key, key, sizeof(r->key));
	r->backend = fv->backend;
	r->incarnation = fv->incarnation;
	r->service = service;
	r->reason = reason;
	bpf_ringbuf_submit(r, 0);
	fv->reported_ns = now;
	share_count(SHARE_REPORTED);
	return 1;
}

/* share_lookup answers a local flow miss from shared_flows: the backend
 * another node has the flow on, if that backend's ID still has the
 * incarnation the entry was written for and may keep established flows
 * (up or draining). Returns 0 with *out set, -1 to fall back to Maglev. */
KEEPBIT_SUBPROG int share_lookup(const struct flow_key *key, struct choice *out)
{
	struct shared_flow_value *sv;
	struct flow_key k;
	__u32 id, st;
	__u64 *word;

	if (!key || !out || !share_enabled())
		return -1;
	/* A global function's pointer argument is plain memory to the
	 * verifier, which before Linux 6.3 refuses it as a map key: look up
	 * a copy on the stack (6.1 would not load the program otherwise). */
#ifdef KEEPBIT_COMPAT
	/* Inlined there: key is the caller's own stack, and the copy would
	 * cost stack that the compatible build does not have to spare. */
	(void)k;
	sv = bpf_map_lookup_elem(&shared_flows, key);
#else
	__builtin_memcpy(&k, key, sizeof(k));
	sv = bpf_map_lookup_elem(&shared_flows, &k);
#endif
	if (!sv)
		return -1;
	id = sv->backend;
	word = bpf_map_lookup_elem(&backend_state, &id);
	if (!word) {
		share_count(SHARE_STALE);
		return -1;
	}
	st = (__u32)*word & STATE_MASK;
	if ((__u32)*word >> STATE_INC_SHIFT != sv->incarnation ||
	    (st != BACKEND_UP && st != BACKEND_DRAINING)) {
		share_count(SHARE_STALE);
		return -1;
	}
	out->backend = id;
	out->state = *word;
	share_count(SHARE_HIT);
	return 0;
}
