package loader

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestBackendCountersOnReuse: a backend that takes a never-used ID of
// maps this process created starts at zero counts without a reset write;
// one that takes an ID another backend counted on, or any ID of adopted
// maps, gets its counters reset before its state names it.
func TestBackendCountersOnReuse(t *testing.T) {
	l := newLab(t)
	d := l.dp
	key := svc("198.51.100.91", 80, TCP)
	var mu sync.Mutex
	var ops []string
	d.beforeWrite = func(op string) error { mu.Lock(); defer mu.Unlock(); ops = append(ops, op); return nil }
	t.Cleanup(func() { d.beforeWrite = nil })
	applyRecording := func(backends ...BackendSpec) []string {
		t.Helper()
		mu.Lock()
		ops = nil
		mu.Unlock()
		l.apply(key, ServiceSpec{Backends: backends})
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(ops)
	}
	resets := func(ops []string) int {
		n := 0
		for _, op := range ops {
			if op == "backend_stats" || op == "backend_syn_retrans" {
				n++
			}
		}
		return n
	}
	idOf := func(addr string) uint32 {
		t.Helper()
		d.mu.Lock()
		defer d.mu.Unlock()
		m, ok := d.services[key].members[netip.MustParseAddr(addr)]
		if !ok {
			t.Fatalf("backend %s is not a member", addr)
		}
		return m.id
	}
	ncpu := ebpf.MustPossibleCPU()
	counted := func(id uint32) (uint64, uint64) {
		t.Helper()
		var per []keepbitCounter
		var s uint64
		must(t, d.objs.BackendStats.Lookup(id, &per), "read counters")
		must(t, d.objs.BackendSynRetrans.Lookup(id, &s), "read SYN retransmissions")
		var p uint64
		for i := range per {
			p += per[i].Packets
		}
		return p, s
	}

	a := backend("10.9.0.1", "02:90:00:00:00:01")
	b := backend("10.9.0.2", "02:90:00:00:00:02")
	c := backend("10.9.0.3", "02:90:00:00:00:03")
	if n := resets(applyRecording(a, b)); n != 0 {
		t.Errorf("fresh IDs: %d counter resets, want none", n)
	}
	idA := idOf("10.9.0.1")
	// A's traffic, as the program would count it.
	per := make([]keepbitCounter, ncpu)
	per[0].Packets = 41
	must(t, d.objs.BackendStats.Put(idA, per), "count")
	must(t, d.objs.BackendSynRetrans.Put(idA, uint64(3)), "count SYNs")

	// A leaves; its ID comes back out of quarantine, and C takes it (the
	// allocator reuses an ID as late as possible, so the test puts it
	// first).
	applyRecording(b)
	d.grace()
	d.mu.Lock()
	d.reclaimLocked()
	i := slices.Index(d.freeBe, idA)
	if i < 0 {
		d.mu.Unlock()
		t.Fatalf("ID %d not free after its backend left", idA)
	}
	d.freeBe = append([]uint32{idA}, slices.Delete(d.freeBe, i, i+1)...)
	d.mu.Unlock()
	if n := resets(applyRecording(b, c)); n != 2 {
		t.Errorf("reused ID: %d counter resets, want 2", n)
	}
	if got := idOf("10.9.0.3"); got != idA {
		t.Fatalf("C has ID %d, want A's %d", got, idA)
	}
	if p, s := counted(idA); p != 0 || s != 0 {
		t.Errorf("C starts with A's counts: %d packets, %d SYN retransmissions", p, s)
	}

	// Adopted maps: no ID is known zero.
	d.mu.Lock()
	d.countersZero = nil
	d.mu.Unlock()
	if n := resets(applyRecording(b, c, backend("10.9.0.4", "02:90:00:00:00:04"))); n != 2 {
		t.Errorf("adopted maps: %d counter resets for a new backend, want 2", n)
	}
}

// TestBatchWrite: values land at their keys in one batch where the map
// supports it (an array), and one write at a time where it does not (a
// device map has no batch operations) or batches are off, each write then
// a kernel write of its own.
func TestBatchWrite(t *testing.T) {
	privtest.Require(t)
	lo, err := net.InterfaceByName("lo")
	must(t, err, "loopback")
	for _, c := range []struct {
		name    string
		typ     ebpf.MapType
		noBatch bool
		writes  int
	}{
		{"array (batched)", ebpf.Array, false, 1},
		{"array, batches off", ebpf.Array, true, 3},
		{"device map (one by one)", ebpf.DevMap, false, 4}, // the refused batch, then three
	} {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: c.typ, KeySize: 4, ValueSize: 4, MaxEntries: 8})
		must(t, err, c.name)
		writes := 0
		d := &Dataplane{noBatch: c.noBatch, beforeWrite: func(string) error { writes++; return nil }}
		keys := []uint32{1, 5, 6}
		vals := []uint32{uint32(lo.Index), uint32(lo.Index), uint32(lo.Index)}
		if err := batchWrite(d, "test", m, keys, vals); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if writes != c.writes {
			t.Errorf("%s: %d kernel writes, want %d", c.name, writes, c.writes)
		}
		for k := uint32(0); k < 8; k++ {
			var v uint32
			err := m.Lookup(k, &v)
			want := uint32(0)
			if slices.Contains(keys, k) {
				want = uint32(lo.Index)
			}
			if c.typ == ebpf.DevMap && want == 0 {
				continue // a device map's empty slot reads as missing
			}
			if err != nil || v != want {
				t.Errorf("%s: key %d: %d (%v), want %d", c.name, k, v, err, want)
			}
		}
		m.Close()
	}
}
