/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* select.h: service lookup and backend choice.
 *
 * Order: flow table (an established flow keeps its backend while that
 * backend is up or draining and its ID was not reused), else the service's
 * live Maglev buffer; a slot whose backend is not up falls back to a scan of
 * the members, most preferred priority group first. That fallback is what
 * lets "backend down" be a single 8-byte write that holds at once, before
 * the control plane has rebuilt the table. */
#pragma once

#include "maps.h"
#include "hash.h"

struct choice {
	__u32 backend;
	__u32 pad;
	__u64 state; /* backend_state word */
};

#include "share.h" /* uses struct choice */

/* vip_listed is the prefilter: 0 proves dst is no VIP's address; 1 may be
 * a collision, which the vips lookup settles. */
static __always_inline int vip_listed(const __u8 *dst)
{
	__u32 bit = vip_filter_bit(dst), word = bit / 64;
	__u64 *filter = bpf_map_lookup_elem(&vip_filter, &word);

	return filter && (*filter & (1ULL << (bit % 64)));
}

/* lookup_service finds the service of a packet: the prefilter, then the
 * VIP's entry, then (only when the VIP has port services) the exact port. */
static __always_inline int lookup_service(struct flow_key *key, struct service_value *out)
{
	struct service_value *sv;
	struct vip_value *vv;
	struct vip_key vk = {};

	if (!vip_listed(key->dst))
		return -1;
	__builtin_memcpy(vk.addr, key->dst, 16);
	vk.proto = key->proto;
	vv = bpf_map_lookup_elem(&vips, &vk);
	if (!vv)
		return -1;
	if ((vv->flags & VIP_F_PORTS) && key->dport) {
		struct service_key sk = {};

		__builtin_memcpy(sk.addr, key->dst, 16);
		sk.port = key->dport;
		sk.proto = key->proto;
		sv = bpf_map_lookup_elem(&services, &sk);
		if (sv) {
			*out = *sv;
			return 0;
		}
	}
	if (!(vv->flags & VIP_F_CATCHALL))
		return -1;
	*out = vv->catchall;
	return 0;
}

static __always_inline __u32 state_of(__u64 word)
{
	return (__u32)word & STATE_MASK;
}

static __always_inline __u32 incarnation_of(__u64 word)
{
	return (__u32)word >> STATE_INC_SHIFT;
}

/* usable_for_new reports whether backend id may take a new flow. */
static __always_inline int usable_for_new(__u32 id, __u64 *word)
{
	__u64 *st;

	if (id == 0)
		return 0;
	st = bpf_map_lookup_elem(&backend_state, &id);
	if (!st || state_of(*st) != BACKEND_UP)
		return 0;
	*word = *st;
	return 1;
}

struct scan_ctx {
	__u32 table_idx;
	__u32 base;  /* member index where the group starts */
	__u32 len;   /* group length */
	__u32 start; /* first position tried, within the group */
	struct choice found;
};

#ifdef KEEPBIT_COMPAT
/* scan_chunk returns the first member usable for a new flow among the
 * group's positions from..from+SCAN_CHUNK-1 (counted from start, wrapping
 * at len) of the group of len members at base (0: none). A global function
 * of scalars, so the verifier walks its loop once, not once per call site
 * and path; and a chunk, not the whole group, because a verifier before
 * 5.17 pays several hundred instructions per iteration: a 1,024-member
 * loop took 5.10 to 656k of its 1M. */
__noinline int scan_chunk(__u32 table_idx, __u32 base, __u32 len, __u32 start, __u32 from)
{
	__u64 word = 0;
	__u32 m, pos, id;
	void *tbl;

	tbl = bpf_map_lookup_elem(&tables, &table_idx);
	if (!tbl || len > MAX_MEMBERS || start >= len || from >= len)
		return 0;
	m = table_get(tbl, TBL_SIZE);
	for (__u32 i = 0; i < SCAN_CHUNK; i++) {
		if (from + i >= len)
			break;
		pos = start + from + i;
		if (pos >= len)
			pos -= len;
		id = table_get(tbl, TBL_HDR + m + base + pos);
		if (usable_for_new(id, &word))
			return (int)id;
	}
	return 0;
}
#else
static long scan_member(__u64 i, void *arg)
{
	struct scan_ctx *s = arg;
	__u32 pos, idx, id;
	__u64 word = 0;
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
#endif

/* choose_new picks a backend for a flow with no usable flow entry.
 * Returns 0 with *out set, or -1 when the service has no usable backend. */
static __always_inline int choose_new(__u32 svc_id, __u32 hash, struct choice *out)
{
	struct scan_ctx s = {};
	__u32 *active, m, groups, prev = 0, id;
	__u64 word = 0;
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
#ifdef KEEPBIT_COMPAT
		/* The state word is read again here: the scan returns the ID
		 * only, and a state changed in between is taken as it is now. */
		id = 0;
		for (__u32 c = 0; c < MAX_MEMBERS / SCAN_CHUNK; c++) {
			if (c * SCAN_CHUNK >= s.len)
				break;
			id = (__u32)scan_chunk(s.table_idx, s.base, s.len, s.start, c * SCAN_CHUNK);
			if (id)
				break;
		}
		if (usable_for_new(id, &word)) {
			out->backend = id;
			out->state = word;
			return 0;
		}
#else
		bpf_loop(s.len, scan_member, &s, 0);
		if (s.found.backend) {
			*out = s.found;
			return 0;
		}
#endif
		prev = end;
	}
	return -1;
}

/* flow_key_same compares two flow keys as five words, without branches. */
static __always_inline int flow_key_same(const struct flow_key *x, const struct flow_key *y)
{
	const __u64 *a = (const __u64 *)x, *b = (const __u64 *)y;

	return !((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]));
}

/* flow_cache_current says whether the entry's backend is exactly as it was
 * when the entry was filled (its whole state word). */
static __always_inline int flow_cache_current(const struct flow_cache_entry *e)
{
	__u32 id = e->backend;
	__u64 *st = bpf_map_lookup_elem(&backend_state, &id);

	return st && *st == e->state_word;
}

/* flow_cache_hit returns this CPU's cache entry for the flow when the
 * flow's backend is exactly as it was when the entry was filled. */
static __always_inline struct flow_cache_entry *flow_cache_hit(struct flow_key *key)
{
	__u32 idx = flow_cache_index(key);
	struct flow_cache_entry *e;

	e = bpf_map_lookup_elem(&flow_cache, &idx);
	if (!e || !flow_key_same(key, &e->key) || !flow_cache_current(e))
		return NULL;
	if (e->strike)
		e->strike = 0;
	return e;
}

/* flow_cache_account counts the packet in the cache entry and, every
 * FLOW_CACHE_FLUSH packets or FLOW_CACHE_FLUSH_NS, moves the counts to the
 * flow table entry, which also refreshes its LRU position and last-seen
 * time; an entry the LRU evicted is put back with this entry's backend.
 * Returns -1 when the flow table has the flow on another backend
 * (re-selected on another CPU): the entry is invalidated and the packet
 * takes the slow path. */
static __always_inline int flow_cache_account(struct flow_cache_entry *e, __u64 len)
{
	__u64 now = now_ns();
	struct flow_value *fv;

	e->pending_packets++;
	e->pending_bytes += len;
	if (e->pending_packets < FLOW_CACHE_FLUSH && now - e->last_flush_ns < FLOW_CACHE_FLUSH_NS)
		return 0;
	fv = bpf_map_lookup_elem(&flows, &e->key);
	if (!fv) {
		/* Evicted by the LRU while this CPU kept the flow: put it back
		 * on the backend it is on. Re-picking from the table, which may
		 * have changed since the flow was learned, would move an
		 * established connection. If another CPU re-created the entry
		 * meanwhile, that one stands and is compared below. */
		struct flow_value nv = {
			.backend = e->backend,
			.incarnation = incarnation_of(e->state_word),
			.last_seen_ns = now,
			.packets = e->pending_packets,
			.bytes = e->pending_bytes,
			.first_seen_ns = now, /* the flow's age is lost with the entry */
		};

		if (bpf_map_update_elem(&flows, &e->key, &nv, BPF_NOEXIST) == 0) {
			e->pending_packets = 0;
			e->pending_bytes = 0;
			e->last_flush_ns = now;
			return 0;
		}
		fv = bpf_map_lookup_elem(&flows, &e->key);
	}
	if (!fv || fv->backend != e->backend || fv->incarnation != incarnation_of(e->state_word)) {
		e->state_word = STATE_INVALID;
		return -1;
	}
	fv->packets += e->pending_packets;
	fv->bytes += e->pending_bytes;
	fv->last_seen_ns = now;
	e->pending_packets = 0;
	e->pending_bytes = 0;
	e->last_flush_ns = now;
	share_report(&e->key, e->service, fv, now);
	return 0;
}

/* flow_cache_admit says whether key may take entry e, its slot. The slot
 * is taken at once when it holds key itself (refilled after a state
 * change), nothing (never filled, or cleared by the loader), or an entry
 * whose backend changed since (its flow misses anyway). A live entry of
 * another flow gets a strike and stays; the next flow that wants the slot
 * before the entry's own flow hits it again takes it. Evicting at every
 * collision, two flows sharing a slot evicted each other on every packet
 * and both took the slow path, and more flows than slots cycling through
 * the cache (10,000 in 8,192 slots) hit it for only the ~30% that were
 * alone in their slot; with the strike a busy entry keeps its slot, so
 * every slot that some flow uses serves one of them. */
static __always_inline int flow_cache_admit(struct flow_cache_entry *e, const struct flow_key *key)
{
	if (e->strike || e->key.proto == 0 || flow_key_same(key, &e->key) || !flow_cache_current(e))
		return 1;
	e->strike = 1;
	return 0;
}

static __always_inline void flow_cache_fill(struct flow_key *key, __u32 svc_id, struct choice *c,
					    const struct backend_info *bi)
{
	__u32 idx = flow_cache_index(key);
	struct flow_cache_entry *e = bpf_map_lookup_elem(&flow_cache, &idx);

	if (!e || !flow_cache_admit(e, key))
		return;
	__builtin_memcpy(&e->key, key, sizeof(*key));
	e->backend = c->backend;
	e->state_word = c->state;
	e->service = svc_id;
	e->ifindex = bi->ifindex;
	__builtin_memcpy(e->macs, bi->dst_mac, 6);
	__builtin_memcpy(e->macs + 6, bi->src_mac, 6);
	e->vlan = bi->vlan;
	e->strike = 0;
	e->pending_packets = 0;
	e->pending_bytes = 0;
	e->last_flush_ns = now_ns();
}

/* choose_backend consults the flow table, then (may_share: not a TCP SYN,
 * which starts a new connection) the flows other nodes shared, then the
 * Maglev buffer, and records the choice in the flow table when learn is
 * set. A TCP SYN (tcp_flags) that finds a young, SYN-only flow entry is
 * counted as a retransmission against the backend the flow is on. */
static __always_inline int choose_backend(struct flow_key *key, __u32 svc_id, __u64 len, int learn,
					  int may_share, __u8 tcp_flags, struct choice *out)
{
	struct flow_value *fv = bpf_map_lookup_elem(&flows, key);
	struct settings_value *cfg;
	__u32 zero = 0, seed = 0;
	__u64 now;

	if (fv) {
		__u32 id = fv->backend;
		__u64 *st = bpf_map_lookup_elem(&backend_state, &id);

		if (st && incarnation_of(*st) == fv->incarnation &&
		    (state_of(*st) == BACKEND_UP || state_of(*st) == BACKEND_DRAINING)) {
			out->backend = id;
			out->state = *st;
			if (learn) {
				now = now_ns();
				/* The cache flush reports flows; a flow that keeps
				 * missing the cache is reported from here, when its
				 * packets cross into a new SHARE_SLOW_PERIOD. */
				if ((now >> SHARE_SLOW_PERIOD_SHIFT) != (fv->last_seen_ns >> SHARE_SLOW_PERIOD_SHIFT))
					share_report(key, svc_id, fv, now);
				if (tcp_syn(key->proto, tcp_flags)) {
					__u64 *n;

					/* Not a retry of the flow's own young SYN: a
					 * new connection on a reused 5-tuple, placed
					 * by the table like any new connection, not
					 * by the entry an earlier connection left
					 * (which the other node does not have: a
					 * failover would move the connection). */
					if (fv->packets >= SYN_RETRANS_MAX_PACKETS ||
					    now - fv->first_seen_ns >= SYN_RETRANS_WINDOW_NS) {
						fv->first_seen_ns = now;
						fv->packets = 0;
						fv->bytes = 0;
						goto pick;
					}
					n = bpf_map_lookup_elem(&backend_syn_retrans, &id);
					if (n)
						__sync_fetch_and_add(n, 1);
				}
				fv->last_seen_ns = now;
				fv->packets++;
				fv->bytes += len;
			}
			return 0;
		}
	}

pick:
	/* Shared flows only on a miss: an entry this node learned, even a
	 * stale one, means the flow was here and is re-picked here. */
	if (fv || !may_share || share_lookup(key, out) < 0) {
		cfg = bpf_map_lookup_elem(&settings, &zero);
		if (cfg)
			seed = cfg->hash_seed;
		if (choose_new(svc_id, flow_hash(key, seed), out) < 0)
			return -1;
	}
	if (!learn)
		return 0;

	now = now_ns();
	if (fv) {
		/* Re-selection: the old backend went down or its ID was reused. */
		fv->backend = out->backend;
		fv->incarnation = incarnation_of(out->state);
		fv->last_seen_ns = now;
		fv->packets++;
		fv->bytes += len;
		fv->reported_ns = 0; /* a new backend is news for the other nodes */
	} else {
		struct flow_value nv = {
			.backend = out->backend,
			.incarnation = incarnation_of(out->state),
			.last_seen_ns = now,
			.packets = 1,
			.bytes = len,
			.first_seen_ns = now,
		};
		bpf_map_update_elem(&flows, key, &nv, BPF_ANY);
	}
	return 0;
}
