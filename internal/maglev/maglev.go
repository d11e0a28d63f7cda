// Package maglev builds Maglev lookup tables (Eisenbud et al., NSDI 2016)
// with weights. The table depends only on the backend names, weights, the
// table size and the seed, never on their order or on the machine, so every
// Keepbit node builds the same table and a flow hashes to the same backend
// whichever node holds the VIP.
package maglev

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
)

// DefaultSize is the table size used when a service sets none: prime, and
// large enough that M > 100 x N holds for up to 655 backends.
const DefaultSize = 65537

// MaxSize bounds the table so slot indices and sizes fit the dataplane's
// 32-bit words with room to spare.
const MaxSize = 1 << 24

// Backend is one member of the table. Name identifies it across nodes (the
// backend's address, say); Weight is its share relative to the others.
type Backend struct {
	Name   string
	Weight uint32
}

// Build returns a table of size m whose entries are indices into backends.
// Backends with weight 0 get no slot. At least one backend must have a
// positive weight, and m must be a prime of at most MaxSize.
func Build(backends []Backend, m uint32, seed uint64) ([]uint32, error) {
	if m < 2 || m > MaxSize || !IsPrime(m) {
		return nil, fmt.Errorf("table size %d: must be a prime between 2 and %d", m, MaxSize)
	}
	seen := make(map[string]bool, len(backends))
	var maxW uint32
	for _, b := range backends {
		if seen[b.Name] {
			return nil, fmt.Errorf("backend %q: listed twice", b.Name)
		}
		seen[b.Name] = true
		maxW = max(maxW, b.Weight)
	}
	if maxW == 0 {
		return nil, errors.New("no backend with a positive weight")
	}

	// Visit backends in name order so the input order cannot matter.
	order := make([]int, len(backends))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		switch {
		case backends[a].Name < backends[b].Name:
			return -1
		case backends[a].Name > backends[b].Name:
			return 1
		}
		return 0
	})

	n := len(backends)
	// pos[i] walks backend i's permutation offset, offset+skip, ... mod m
	// by addition, which is what keeps a 65537-slot build sub-millisecond.
	pos := make([]uint32, n)
	skip := make([]uint32, n)
	credit := make([]uint64, n)
	for i, b := range backends {
		pos[i] = uint32(hash(seed, 0, b.Name) % uint64(m))
		skip[i] = uint32(hash(seed, 1, b.Name)%uint64(m-1) + 1)
	}
	step := func(i int) {
		pos[i] += skip[i]
		if pos[i] >= m {
			pos[i] -= m
		}
	}

	const empty = math.MaxUint32
	table := make([]uint32, m)
	for i := range table {
		table[i] = empty
	}
	// Weighted turns: each round a backend earns its weight and claims one
	// slot per maxW earned, so slot shares follow the weights exactly
	// (up to rounding at the final round).
	for filled := uint32(0); filled < m; {
		for _, i := range order {
			w := uint64(backends[i].Weight)
			if w == 0 {
				continue
			}
			credit[i] += w
			if credit[i] < uint64(maxW) {
				continue
			}
			credit[i] -= uint64(maxW)
			for table[pos[i]] != empty {
				step(i)
			}
			table[pos[i]] = uint32(i)
			step(i)
			filled++
			if filled == m {
				break
			}
		}
	}
	return table, nil
}

// hash is FNV-1a over (seed, which, name) finished with a 64-bit mixer so
// that nearby names give unrelated offsets and skips.
func hash(seed uint64, which byte, name string) uint64 {
	h := fnv.New64a()
	var b [9]byte
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	b[8] = which
	h.Write(b[:])
	h.Write([]byte(name))
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// IsPrime reports whether n is prime.
func IsPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := uint32(3); uint64(d)*uint64(d) <= uint64(n); d += 2 {
		if n%d == 0 {
			return false
		}
	}
	return true
}
