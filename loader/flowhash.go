package loader

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// flowHash is the Go twin of flow_hash in bpf/hash.h: murmur3-32 over the
// ten little-endian words of a flow_key. It lets the control plane and the
// tests say which Maglev slot a flow takes without asking the kernel.
func flowHash(k *keepbitFlowKey, seed uint32) uint32 {
	var b [40]byte
	copy(b[0:16], k.Src[:])
	copy(b[16:32], k.Dst[:])
	binary.LittleEndian.PutUint16(b[32:], k.Sport)
	binary.LittleEndian.PutUint16(b[34:], k.Dport)
	b[36] = k.Proto
	h := seed
	for i := 0; i < 40; i += 4 {
		w := binary.LittleEndian.Uint32(b[i:])
		w *= 0xcc9e2d51
		w = bits.RotateLeft32(w, 15)
		w *= 0x1b873593
		h ^= w
		h = bits.RotateLeft32(h, 13)
		h = h*5 + 0xe6546b64
	}
	h ^= 40
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// addr16 stores a as the dataplane does: IPv4 as ::ffff:a.b.c.d.
func addr16(a netip.Addr) [16]byte {
	return netip.AddrFrom16(a.As16()).As16()
}

// addrFrom16 undoes addr16.
func addrFrom16(b [16]byte) netip.Addr {
	return netip.AddrFrom16(b).Unmap()
}

// hostToNet16 and netToHost16 convert ports between host order and the
// big-endian bytes the dataplane compares; bpf2go types hold them as
// native uint16 read from those bytes.
func hostToNet16(v uint16) uint16 { return v<<8 | v>>8 }
func netToHost16(v uint16) uint16 { return v<<8 | v>>8 }

// FlowSlot returns the Maglev slot index that a new flow client->vip takes
// in a table of size m under seed.
func FlowSlot(client, vip netip.AddrPort, proto Proto, m, seed uint32) uint32 {
	k := keepbitFlowKey{
		Src:   addr16(client.Addr()),
		Dst:   addr16(vip.Addr()),
		Sport: hostToNet16(client.Port()),
		Dport: hostToNet16(vip.Port()),
		Proto: uint8(proto),
	}
	return flowHash(&k, seed) % m
}
