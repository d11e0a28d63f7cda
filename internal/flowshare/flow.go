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
