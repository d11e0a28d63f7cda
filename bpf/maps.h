/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* maps.h: every map of the forwarder and the records they hold.
 *
 * The Go loader mirrors these layouts through bpf2go (-type); change both
 * together. Records that the control plane rewrites while traffic flows are
 * either at most 8 bytes (one atomic store) or double-buffered behind such a
 * word, because a wider array element is not written atomically.
 */
#pragma once

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* Two builds of one source. The default needs Linux 5.17 (bpf_loop, the
 * coarse clock, pointer arguments of global functions). KEEPBIT_COMPAT
 * builds the variant the loader picks on an older kernel, down to 5.10:
 * the fine clock (bpf_ktime_get_coarse_ns is 5.11), bounded loops in a
 * global function of scalars for the member scan (bpf_loop is 5.17), and
 * global functions whose only pointer is the context (pointer arguments
 * are 5.12): slow_path reads the packet from a per-CPU scratch slot and the
 * flow-sharing helpers are static calls. Same maps, same records. */
#ifdef KEEPBIT_COMPAT
#define now_ns() bpf_ktime_get_ns()
#define KEEPBIT_SUBPROG static __always_inline
#define KEEPBIT_REPORT_FN static __noinline
#else
#define now_ns() bpf_ktime_get_coarse_ns()
#define KEEPBIT_SUBPROG __noinline
#define KEEPBIT_REPORT_FN __noinline
#endif

/* Limits and layout constants are enums, not macros, so that they reach
 * BTF and bpf2go emits them for the loader (keepbit_abi below);
 * loader/abi_test.go checks the loader's constants against them. */
enum limits {
	MAX_SERVICES = 4096,
	MAX_BACKENDS = 65536, /* backend IDs; ID 0 means "no backend" */
	MAX_FLOWS = 262144,   /* default; the loader may resize */
	MAX_FRAGS = 16384,
	MAX_PORTS = 64,
	MAX_GROUPS = 8,
	MAX_MEMBERS = 1024,       /* per service */
	SCAN_CHUNK = 64,          /* members per scan_chunk call (compatible build) */
	FLOW_CACHE_SIZE = 8192,   /* per CPU, power of two; default, the loader may resize */
	FLOW_CACHE_FLUSH = 64,    /* packets between refreshes of the flow table */
	/* ...or at most this long (now_ns): a slow flow's
	 * last_seen lags by at most this much, so drain -wait and the LRU see
	 * it live. */
	FLOW_CACHE_FLUSH_NS = 250000000,
	/* A flow that misses the flow cache is checked for a flow report
	 * when now_ns() >> this changes between two of its
	 * packets: at most every 2^28 ns (268 ms), like a flush. */
	SHARE_SLOW_PERIOD_SHIFT = 28,
	/* Passive detection: a TCP SYN (no ACK) for a flow first seen less
	 * than this long ago, with fewer than SYN_RETRANS_MAX_PACKETS
	 * packets so far (all SYNs: a completed handshake sends an ACK at
	 * once), is the client retransmitting because the backend never
	 * answered. Linux clients retransmit a SYN after 1 s. */
	SYN_RETRANS_WINDOW_NS = 2000000000,
	SYN_RETRANS_MAX_PACKETS = 8,
	VIP_FILTER_WORDS = 1024, /* 65536-bit prefilter of VIP addresses */
};

/* Layout of one service table buffer, a sequence of u32 words (stored
 * TBL_CHUNK words to an array element, see struct table_buffer):
 *   [TBL_SIZE]        Maglev table size M (0 = service has no backend)
 *   [TBL_MEMBERS]     member count n
 *   [TBL_GROUPS]      priority-group count g
 *   [TBL_GENERATION]  table generation, for observers
 *   [TBL_GROUP_END+k] end index (exclusive) of group k in the member list
 *   [TBL_HDR, TBL_HDR+M)        Maglev slots: backend IDs
 *   [TBL_HDR+M, TBL_HDR+M+n)    members: backend IDs, most preferred group first
 */
enum table_layout {
	TBL_SIZE = 0,
	TBL_MEMBERS = 1,
	TBL_GROUPS = 2,
	TBL_GENERATION = 3,
	TBL_GROUP_END = 4,
	TBL_HDR = 16,
	TBL_CHUNK = 16, /* words per buffer element; a power of two */
};

enum backend_state_value {
	BACKEND_DOWN = 0, /* also what a never-written ID reads as */
	BACKEND_UP = 1,
	BACKEND_DRAINING = 2,
};

/* backend_state word (u64, one atomic store): bits 0-1 state, bit 2 which
 * backend_info slot is live, bits 8-31 incarnation (bumped whenever the ID
 * is reused, so flow entries that still name the old owner of the ID
 * re-select), bits 32-63 a sequence the loader bumps on every write of the
 * word and never resets, so that no two writes leave the same word (a
 * down -> up flap would otherwise restore the word a per-CPU flow cache
 * entry was filled with, and revive it). Bit 7 is never set by the loader:
 * STATE_INVALID marks a flow cache entry that matches no state word. */
enum state_word {
	STATE_MASK = 0x3,
	STATE_INFO_SLOT = 0x4,
	STATE_INVALID = 0x80,
	STATE_INC_SHIFT = 8,
	STATE_SEQ_SHIFT = 32,
};

enum service_flags {
	SERVICE_F_PASS_NO_BACKEND = 1, /* no usable backend: XDP_PASS instead of drop */
};

enum vip_flags {
	VIP_F_PORTS = 1,    /* some service of this (VIP, proto) names a port */
	VIP_F_CATCHALL = 2, /* catchall holds the port-0 service */
};

enum backend_flags {
	BACKEND_F_IPV6 = 1,
};

/* Every packet is counted under exactly one reason. */
enum reason {
	REASON_PASS_NOT_IP = 0,      /* not IPv4/IPv6 (ARP, LLDP, 3+ VLAN tags, ...) */
	REASON_PASS_MALFORMED_L2,    /* truncated VLAN header */
	REASON_PASS_MALFORMED_L3,    /* truncated or invalid IP header, bad IHL, IPv4-mapped IPv6 address */
	REASON_PASS_EXT_HEADERS,     /* IPv6 extension chain longer than we walk, or ESP */
	REASON_PASS_MALFORMED_L4,    /* L4 header truncated: the port is unknown */
	REASON_PASS_NO_SERVICE,      /* not addressed to a configured service */
	REASON_PASS_FRAG_UNTRACKED,  /* non-first fragment whose first fragment we did not see */
	REASON_PASS_NO_BACKEND,      /* service has no usable backend, policy pass */
	REASON_DROP_NO_BACKEND,      /* service has no usable backend, policy drop */
	REASON_DROP_NO_TX_PORT,      /* backend's egress port is not in tx_ports */
	REASON_DROP_ADJUST_HEAD,     /* could not grow/shrink the L2 header for VLAN retag */
	REASON_TX,                   /* forwarded out of the ingress port */
	REASON_REDIRECT,             /* forwarded out of another port */
	REASON_ICMP_TO_BACKEND,      /* ICMP frag-needed / packet-too-big sent to the flow's backend */
	REASON_PASS_ICMP_CONTROL,    /* ICMPv6 neighbour discovery, MLD and other link control: the stack's */
	REASON_MAX,
};

/* Why a flow is reported to the other nodes (flow_reports). */
enum flow_report_reason {
	FLOW_REPORT_MOVED = 1,      /* backend differs from the live Maglev table's slot */
	FLOW_REPORT_LONG_LIVED = 2, /* older than share_settings.long_lived_ns */
};

/* Flow sharing counters (share_stats, per CPU). */
enum share_stat {
	SHARE_REPORTED = 0,   /* reports written to flow_reports */
	SHARE_REPORT_DROPPED, /* ring buffer full: not reported, forwarded anyway */
	SHARE_HIT,            /* local flow miss answered by shared_flows */
	SHARE_STALE,          /* shared entry's backend not usable or ID reused: Maglev */
	SHARE_STAT_MAX,
};

enum share_flags {
	SHARE_F_ENABLED = 1, /* report flows and consult shared_flows */
};

enum share_limits {
	FLOW_REPORTS_BYTES = 1 << 20, /* ring buffer: 16384 reports of 64 bytes */
};

/* Keeps enum reason in BTF so bpf2go emits it for the Go side. */
const volatile enum reason reason_count = REASON_MAX;

/* The flow cache's index mask: its size minus one. The loader sizes the
 * cache at load time (Options.FlowCacheSize) and sets this to match; it is
 * read-only once loaded, so the verifier sees a constant. */
const volatile __u32 flow_cache_mask = FLOW_CACHE_SIZE - 1;


struct service_key {
	__u8 addr[16]; /* IPv4 as ::ffff:a.b.c.d */
	__be16 port;   /* 0 = every port of the VIP */
	__u8 proto;
	__u8 pad;
};

struct service_value {
	__u32 id;
	__u32 flags; /* enum service_flags */
};

/* vips is looked up first, by (VIP, proto): most VIPs serve one port-0
 * service or a few ports, and one lookup settles the port-0 case. */
struct vip_key {
	__u8 addr[16];
	__u8 proto;
	__u8 pad[3];
};

struct vip_value {
	__u32 flags; /* enum vip_flags */
	struct service_value catchall;
};

struct backend_info {
	__u8 dst_mac[6];
	__u8 src_mac[6]; /* MAC of the egress port */
	__u16 vlan;      /* 0 = untagged */
	__u16 flags;     /* enum backend_flags */
	__u32 ifindex;   /* egress port */
	__u32 weight;    /* not used by XDP: kept so a restarted loader can adopt */
	__u32 group;     /* priority group, 0 most preferred; same reason */
	__u32 service_id;
	__u8 addr[16];
};

struct __attribute__((aligned(4))) flow_key {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct flow_value {
	__u32 backend;
	__u32 incarnation;
	__u64 last_seen_ns; /* now_ns(): CLOCK_MONOTONIC */
	__u64 packets;      /* approximate: plain adds from every CPU */
	__u64 bytes;
	__u64 first_seen_ns; /* when this node learned the flow */
	__u64 reported_ns;   /* last flow report; 0: never, or the backend changed since */
};

/* What the program tells the loader about a flow worth sharing. */
struct flow_report {
	struct flow_key key;
	__u32 backend;
	__u32 incarnation;
	__u32 service;
	__u32 reason; /* enum flow_report_reason */
};

/* A flow another node forwards, written by the loader: the backend ID and
 * incarnation on this node of the backend the other node named. */
struct shared_flow_value {
	__u32 backend;
	__u32 incarnation;
};

struct share_settings_value {
	__u32 flags; /* enum share_flags */
	__u32 pad;
	__u64 long_lived_ns; /* report flows older than this... */
	__u64 refresh_ns;    /* ...and any flow at most once per this */
};

/* A per-CPU direct-mapped cache of flow table entries: an established
 * flow is forwarded with array lookups only (a hash lookup costs as much as
 * the whole minimal XDP program here). The backend's whole state word is
 * still checked on every packet, and at every flush the flow table entry
 * must still name this backend and incarnation (the flow table is the
 * authority: another CPU may have re-selected the flow). */
struct flow_cache_entry {
	struct flow_key key;
	__u32 backend;
	__u32 service;
	__u64 state_word; /* backend_state at fill time: any write (state,
			   * record slot, incarnation, sequence) sends the next
			   * packet down the slow path, which refills the entry */
	__u32 ifindex;    /* egress port */
	__u8 macs[12];    /* destination (backend) and source (egress port) */
	__u16 vlan;
	__u8 strike;      /* another flow wanted this slot since the last hit
			   * (flow_cache_fill); 0 in an entry the loader cleared */
	__u8 pad;
	__u32 pending_packets; /* not yet added to the flow table entry */
	__u64 pending_bytes;
	__u64 last_flush_ns;   /* now_ns() of the last flush */
};

struct frag_key {
	__u8 src[16];
	__u8 dst[16];
	__u32 id;
	__u8 proto;
	__u8 pad[3];
};

struct frag_value {
	__be16 sport;
	__be16 dport;
	__u32 pad;
};

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct settings_value {
	__u32 hash_seed; /* same on every node: same flow, same backend */
	__u32 flags;
};

/* Port-specific services; port-0 services live in vips. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct service_key);
	__type(value, struct service_value);
} services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct vip_key);
	__type(value, struct vip_value);
} vips SEC(".maps");

/* Bit vip_filter_bit(addr) is set for every VIP: a clear bit proves a
 * packet is not for a VIP without a hash lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VIP_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} vip_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOW_CACHE_SIZE);
	__type(key, __u32);
	__type(value, struct flow_cache_entry);
} flow_cache SEC(".maps");

/* bit 0: which of the two table buffers of the service is live. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
} service_active SEC(".maps");

/* A table buffer holds its words TBL_CHUNK to an element: the loader
 * writes a 2,053-slot table as 135 elements, not 2,069 (the kernel's batch
 * update costs about 50 ns an element, whatever its size, and stores a
 * 4-byte value in 8 bytes). Not mmap-able: that makes the kernel allocate
 * every buffer with vmalloc, 2.4x the cost of creating it, and the loader
 * reads and writes buffers by batch. (An array type, not a struct: clang
 * left a struct that only the inner map definition names as an unsized
 * forward declaration in BTF.) */
struct table_buffer {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(max_entries, (TBL_HDR + 1 + MAX_MEMBERS + TBL_CHUNK - 1) / TBL_CHUNK);
	__type(key, __u32);
	__type(value, __u32[TBL_CHUNK]);
};

/* index: service_id * 2 + buffer. Installing an inner map waits for an RCU
 * grace period, so the loader does it once per service, off the hot path,
 * and afterwards rewrites the idle buffer in place by batch update. */
/* One entry more than the services use: the outer map's own attributes
 * then differ from those of the layout with one word an element. A loader
 * compares only those (the kernel verifies a program against the inner
 * template), so a loader of that layout refuses these pins before it
 * switches the program, instead of running it on buffers it misreads. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MAX_SERVICES * 2 + 1);
	__type(key, __u32);
	__array(values, struct table_buffer);
} tables SEC(".maps");

/* table_get reads word idx of a table buffer (0 past its end). */
static __always_inline __u32 table_get(void *tbl, __u32 idx)
{
	__u32 chunk = idx / TBL_CHUNK;
	__u32 *c = bpf_map_lookup_elem(tbl, &chunk);

	return c ? c[idx % TBL_CHUNK] : 0;
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __u64);
} backend_state SEC(".maps");

/* index: backend_id * 2 + info slot (see STATE_INFO_SLOT). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS * 2);
	__type(key, __u32);
	__type(value, struct backend_info);
} backends SEC(".maps");

/* One LRU shared by all CPUs: BPF_F_NO_COMMON_LRU would give each possible
 * CPU max_entries / possible CPUs and evict there, so flows arriving on one
 * CPU could use only a fraction of the table. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

/* Flows other nodes reported, consulted on a local miss before Maglev so
 * that a connection ECMP moves here keeps its backend. A map of its own:
 * what others say never overwrites what this node learned. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct shared_flow_value);
} shared_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, FLOW_REPORTS_BYTES);
} flow_reports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct share_settings_value);
} share_settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SHARE_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} share_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_FRAGS);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
} frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings_value);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REASON_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} reason_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct counter);
} service_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct counter);
} backend_stats SEC(".maps");

/* Retransmitted SYNs per backend ID (passive detection; select.h). In
 * direct server return the backend's answers bypass this node, but the
 * client's retransmissions of an unanswered SYN do not. Zero when an ID
 * is given to a new backend (reset on reuse), like backend_stats.
 * One array for all CPUs, counted by atomic add: a retransmitted SYN is
 * rare, while a per-CPU array is allocated one element at a time (65,536
 * per-CPU allocations took 45-100 ms of keepbitd's start, against under
 * 1 ms for this array) and costs its size once per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __u64);
} backend_syn_retrans SEC(".maps");

/* Keeps the other enums and records in BTF for bpf2go (see enum limits). */
struct keepbit_abi {
	enum limits limits;
	enum table_layout table_layout;
	enum state_word state_word;
	enum backend_state_value backend_state;
	enum service_flags service_flags;
	enum vip_flags vip_flags;
	enum backend_flags backend_flags;
	enum flow_report_reason flow_report_reason;
	enum share_stat share_stat;
	enum share_flags share_flags;
	enum share_limits share_limits;
	struct flow_report flow_report; /* only reserved in the ring buffer otherwise */
};
const volatile struct keepbit_abi keepbit_abi = {.limits = MAX_SERVICES};

static __always_inline void count(void *map, __u32 idx, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(map, &idx);

	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}
