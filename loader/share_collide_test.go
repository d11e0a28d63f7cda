package loader

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// flowCacheIndex is bpf/hash.h's flow_cache_index for the default cache
// size, for tests that need two flows on one cache slot.
func flowCacheIndex(k *keepbitFlowKey) uint32 { return flowCacheHash(k) & (DefaultFlowCacheSize - 1) }

// flowCacheHash is flow_cache_index before the mask.
func flowCacheHash(k *keepbitFlowKey) uint32 {
	var b [40]byte
	copy(b[0:16], k.Src[:])
	copy(b[16:32], k.Dst[:])
	binary.LittleEndian.PutUint16(b[32:], k.Sport) // the key holds ports in network order
	binary.LittleEndian.PutUint16(b[34:], k.Dport)
	b[36] = k.Proto
	w := func(i int) uint32 { return binary.LittleEndian.Uint32(b[4*i:]) }
	h := (w(0) ^ w(1) ^ w(2) ^ w(3)) * 0x9E3779B1
	h ^= (w(4) ^ w(5) ^ w(6) ^ w(7)) * 0x85EBCA77
	h ^= (w(8) ^ w(9)) * 0xC2B2AE3D
	return h ^ (h >> 15)
}

// tcpFlowKey is the flow key of client -> vip over TCP.
func tcpFlowKey(client, vip netip.AddrPort) keepbitFlowKey {
	return keepbitFlowKey{Src: addr16(client.Addr()), Dst: addr16(vip.Addr()),
		Sport: hostToNet16(client.Port()), Dport: hostToNet16(vip.Port()), Proto: uint8(TCP)}
}

// sameSlotClient is a client on a's address, another port, whose TCP flow
// to vip has a's flow cache slot (default size).
func sameSlotClient(t testing.TB, a, vip netip.AddrPort) netip.AddrPort {
	t.Helper()
	ka := tcpFlowKey(a, vip)
	for p := a.Port() + 1; p != 0; p++ {
		c := netip.AddrPortFrom(a.Addr(), p)
		if k := tcpFlowKey(c, vip); flowCacheIndex(&k) == flowCacheIndex(&ka) {
			return c
		}
	}
	t.Fatalf("no client port after %s on its flow cache slot", a)
	return netip.AddrPort{}
}

// TestFlowReportCacheCollision: of two long-lived flows on one slot of a
// CPU's flow cache, one keeps the slot and the other misses it at every
// packet, so it never reaches a cache flush (before admission by strike,
// both evicted each other and neither did). Both must be reported all
// the same: a flow the
// other nodes never hear of is reset when ECMP moves it (seen in the BGP
// lab as one reset in 300 connections, in about one run of three).
func TestFlowReportCacheCollision(t *testing.T) {
	needCPUs(t, 1)
	for i, tc := range []struct {
		name    string
		collide bool // the second flow's cache slot is the first's
	}{
		{"one slot", true},
		{"two slots, flushed", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t)
			must(t, l.dp.SetFlowSharing(FlowSharing{Enabled: true, LongLived: 50 * time.Millisecond, Refresh: time.Hour}), "enable sharing")
			key := svc(fmt.Sprintf("198.51.100.%d", 86+i), 80, TCP)
			b := backend("10.8.5.1", "02:ab:00:00:0d:01")
			l.apply(key, ServiceSpec{Backends: []BackendSpec{b}})
			vip := netip.AddrPortFrom(key.VIP, 80)
			flowKey := func(c netip.AddrPort) *keepbitFlowKey {
				return &keepbitFlowKey{
					Src: addr16(c.Addr()), Dst: addr16(vip.Addr()),
					Sport: hostToNet16(c.Port()), Dport: hostToNet16(vip.Port()), Proto: uint8(TCP),
				}
			}
			a := netip.MustParseAddrPort("203.0.113.95:40000")
			var other netip.AddrPort
			for p := uint16(40001); p != 0; p++ {
				c := netip.AddrPortFrom(a.Addr(), p)
				if (flowCacheIndex(flowKey(c)) == flowCacheIndex(flowKey(a))) == tc.collide {
					other = c
					break
				}
			}
			if !other.IsValid() {
				t.Fatal("no second client port found")
			}
			segA, segB := segment(t, a, vip, TCP, false), segment(t, other, vip, TCP, false)
			dpOnCPU(t, 0, func() {
				l.runN(segment(t, a, vip, TCP, true), 1)
				l.runN(segment(t, other, vip, TCP, true), 1)
				// Colliding, b never holds the slot, so no flush runs
				// for it.
				deadline := time.Now().Add(800 * time.Millisecond)
				for time.Now().Before(deadline) {
					if v := l.runN(segA, 1); v != xdpTX {
						t.Fatalf("verdict %s", verdictName(v))
					}
					l.runN(segB, 1)
					time.Sleep(5 * time.Millisecond)
				}
			})
			sink := startReports(t, l.dp)
			got := sink.wait(2)
			seen := map[netip.AddrPort]bool{}
			for _, r := range got {
				if r.Reason == LongLived && r.Backend == b.Addr && r.Service == key {
					seen[r.Client] = true
				}
			}
			if !seen[a] || !seen[other] || len(got) != 2 {
				t.Errorf("reports %+v, want one long-lived report each for %s and %s (cache slots %d, %d); counters %+v",
					got, a, other, flowCacheIndex(flowKey(a)), flowCacheIndex(flowKey(other)), l.shareStats())
			}
		})
	}
}
