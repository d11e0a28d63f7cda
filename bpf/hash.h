/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* hash.h: the flow hash that picks a Maglev slot. Every node must compute
 * the same value for the same flow so that a VIP moving between nodes keeps
 * flows on their backends; loader/flowhash.go is its Go twin and a test keeps
 * them equal. murmur3-32 over the ten little-endian words of a flow_key. */
#pragma once

#include "maps.h"

static __always_inline __u32 rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 murmur_round(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rotl32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 flow_hash(const struct flow_key *key, __u32 seed)
{
	const __u32 *w = (const __u32 *)key;
	__u32 h = seed;

	/* Each round runs where it is written: the empty volatile asm takes
	 * h, so the round must be done by then, and keeps its place among the
	 * volatile loads. Unconstrained, the compiler loads all ten words
	 * first and spills them (up to 168 bytes of stack; a program and the
	 * global functions it calls share 512). */
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*key) / 4); i++) {
		h = murmur_round(h, *(volatile const __u32 *)&w[i]);
		asm volatile("" : "+r"(h));
	}
	h ^= sizeof(*key);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* vip_filter_bit spreads an address over the prefilter; loader/flowhash.go
 * has the twin. */
static __always_inline __u32 vip_filter_bit(const __u8 *addr)
{
	const __u32 *w = (const __u32 *)addr;
	__u32 h = (w[0] ^ w[1] ^ w[2] ^ w[3]) * 0x9E3779B1u;

	return h >> 16;
}

/* flow_cache_index only spreads flows over the cache; entries are matched on
 * the whole key, so collisions cost a miss, never a wrong backend. */
static __always_inline __u32 flow_cache_index(const struct flow_key *key)
{
	const __u32 *w = (const __u32 *)key;
	__u32 h = (w[0] ^ w[1] ^ w[2] ^ w[3]) * 0x9E3779B1u;

	h ^= (w[4] ^ w[5] ^ w[6] ^ w[7]) * 0x85EBCA77u;
	h ^= (w[8] ^ w[9]) * 0xC2B2AE3Du;
	return (h ^ (h >> 15)) & flow_cache_mask;
}
