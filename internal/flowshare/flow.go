// Package flowshare tells the other Keepbit nodes which backend a flow is
// on, so that a flow that ECMP moves to another node (a node joined, left
// or died) keeps its backend there instead of being re-picked by a Maglev
// table that changed since the flow started.
//
// It owns the node-to-node transport only: the wire format (versioned,
// HMAC-authenticated UDP datagrams), a rate-limited batching sender, a
// receiver that rejects forged, replayed and stale datagrams, and the
// warm-up sync that lets a (re)joining node learn the shared flows before
// it announces its routes. Where flows come from and where they go (the
// dataplane's ring buffer and its shared-flows map) is behind the Sink
// and Snapshot interfaces; this package knows nothing of the loader.
package flowshare

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// Flow is one client connection and the backend it is on.
type Flow struct {
	VIP     netip.Addr
	Port    uint16 // service port, 0 for every-port services
	Proto   uint8  // IP protocol number (6 TCP, 17 UDP, ...)
	Client  netip.AddrPort
	Backend netip.Addr
}

func (f Flow) String() string {
	return fmt.Sprintf("%s -> %s proto %d on %s", f.Client, netip.AddrPortFrom(f.VIP, f.Port), f.Proto, f.Backend)
}

// valid: every address must be set; zones are meaningless off this host.
func (f Flow) valid() bool {
	return f.VIP.IsValid() && f.Client.Addr().IsValid() && f.Backend.IsValid() &&
		f.VIP.Zone() == "" && f.Client.Addr().Zone() == "" && f.Backend.Zone() == ""
}

// compareForWire orders flows so that those of one service, and within it
// those of one backend, sit together: the encoder then writes the service
// and the backend once for a run of flows (see the format in wire.go).
func compareForWire(a, b Flow) int {
	if c := a.VIP.Compare(b.VIP); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Proto, b.Proto); c != 0 {
		return c
	}
	if c := a.Backend.Compare(b.Backend); c != 0 {
		return c
	}
	return a.Client.Compare(b.Client)
}

// grouper puts flows of one service and backend together, services in
// order, in linear time: a sort of every flow by compareForWire cost ~70%
// of the sender's CPU, while only the (few) groups need ordering.
type grouper struct {
	ids    map[groupKey]int // group -> index in keys
	keys   []groupKey
	counts []int // per group, then its next position in dst
	order  []int
	gid    []int32 // per flow
}

type groupKey struct {
	vip     netip.Addr
	port    uint16
	proto   uint8
	backend netip.Addr
}

func (k groupKey) compare(o groupKey) int {
	return compareForWire(Flow{VIP: k.vip, Port: k.port, Proto: k.proto, Backend: k.backend},
		Flow{VIP: o.vip, Port: o.port, Proto: o.proto, Backend: o.backend})
}

// group returns src's flows in dst (reused), grouped; src is unchanged.
func (g *grouper) group(dst, src []Flow) []Flow {
	if g.ids == nil {
		g.ids = map[groupKey]int{}
	}
	clear(g.ids)
	g.keys, g.counts, g.order, g.gid = g.keys[:0], g.counts[:0], g.order[:0], g.gid[:0]
	for _, f := range src {
		k := groupKey{f.VIP, f.Port, f.Proto, f.Backend}
		id, ok := g.ids[k]
		if !ok {
			id = len(g.keys)
			g.ids[k] = id
			g.keys = append(g.keys, k)
			g.counts = append(g.counts, 0)
			g.order = append(g.order, id)
		}
		g.counts[id]++
		g.gid = append(g.gid, int32(id))
	}
	slices.SortFunc(g.order, func(a, b int) int { return g.keys[a].compare(g.keys[b]) })
	pos := 0
	for _, id := range g.order {
		n := g.counts[id]
		g.counts[id] = pos
		pos += n
	}
	dst = slices.Grow(dst[:0], len(src))[:len(src)]
	for i, f := range src {
		id := g.gid[i]
		dst[g.counts[id]] = f
		g.counts[id]++
	}
	return dst
}
