package loader

import (
	"net/netip"
	"testing"
)

// TestEvictedFlowKeepsCachedBackend: when the LRU evicts the flow-table
// entry of a flow that a CPU still holds in its cache, and the table has
// changed since the flow was learned, the flow must stay on its backend:
// the cache's flush puts the entry back instead of re-picking from the new
// table (which moved about a third of these flows to the new backend, an
// established connection broken by an eviction), and the other CPU then
// follows the restored entry.
func TestEvictedFlowKeepsCachedBackend(t *testing.T) {
	needCPUs(t, 2)
	l := newLab(t)
	const vip, client = "198.51.100.47", "203.0.113.84"
	key := svc(vip, 80, TCP)
	a := backend("10.6.4.1", "02:64:00:00:00:01")
	b := backend("10.6.4.2", "02:64:00:00:00:02")
	c := backend("10.6.4.3", "02:64:00:00:00:03")
	l.apply(key, ServiceSpec{TableSize: 251, Backends: []BackendSpec{a, b}})

	const flows = 60
	first := map[uint16]string{}
	dpOnCPU(t, 0, func() {
		for sport := uint16(9000); sport < 9000+flows; sport++ {
			first[sport] = l.chosen(vip, client, sport)
		}
	})
	// c arrives: the table now maps some of these flows to it.
	l.apply(key, ServiceSpec{TableSize: 251, Backends: []BackendSpec{a, b, c}})
	if err := l.dp.Sync(); err != nil {
		t.Fatal(err)
	}
	// The LRU evicts every entry; CPU 0 still has them all cached.
	for sport := uint16(9000); sport < 9000+flows; sport++ {
		if _, ok := l.flowEntry(client, vip, sport); !ok {
			t.Fatalf("flow %d was not learned", sport)
		}
		k := flowKeyOf(client, vip, sport)
		if err := l.dp.objs.Flows.Delete(&k); err != nil {
			t.Fatal(err)
		}
	}
	// Enough packets on CPU 0 for every cache entry to flush.
	dpOnCPU(t, 0, func() {
		for sport := uint16(9000); sport < 9000+flows; sport++ {
			for i := range 2 * flowCacheFlushPackets {
				if got := l.chosen(vip, client, sport); got != first[sport] {
					t.Fatalf("cpu 0, flow %d, packet %d after its entry was evicted: went to %s, was on %s", sport, i, got, first[sport])
				}
			}
		}
	})
	moved := 0
	dpOnCPU(t, 1, func() {
		for sport := uint16(9000); sport < 9000+flows; sport++ {
			if got := l.chosen(vip, client, sport); got != first[sport] {
				moved++
				t.Errorf("cpu 1, flow %d: went to %s, cpu 0 and the restored entry have %s", sport, got, first[sport])
			}
		}
	})
	t.Logf("%d of %d evicted flows moved", moved, flows)
}

// flowKeyOf is the flow key of client:sport -> vip:80/tcp.
func flowKeyOf(client, vip string, sport uint16) keepbitFlowKey {
	var k keepbitFlowKey
	k.Src = addr16(netip.MustParseAddr(client))
	k.Dst = addr16(netip.MustParseAddr(vip))
	k.Sport = hostToNet16(sport)
	k.Dport = hostToNet16(80)
	k.Proto = uint8(TCP)
	return k
}
