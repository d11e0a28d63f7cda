package loader

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestAdoptPerCPUSynRetrans: a pin directory whose backend_syn_retrans is
// the earlier per-CPU array is adopted. The map becomes one array, each
// ID's count is the sum of its per-CPU counts, added once (a migration
// that copies before and after the switch would add them twice), the pin
// names the new map, and the next adoption finds nothing left to migrate.
func TestAdoptPerCPUSynRetrans(t *testing.T) {
	privtest.Require(t)
	root := tempPinRoot(t)
	port := attachedPort(t, root)
	ctx := context.Background()
	d, err := Open(ctx, Options{Interface: port, PinRoot: root})
	must(t, err, "open")
	dir := d.pinDir
	must(t, d.Close(), "close")

	// Put the earlier layout in place of the pinned array, with counts.
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: maxBackends})
	must(t, err, "earlier layout")
	defer old.Close()
	ncpu := ebpf.MustPossibleCPU()
	counts := []struct {
		id  uint32
		per []uint64
	}{
		{3, append([]uint64{5}, make([]uint64, ncpu-1)...)},
		{9, func() []uint64 { p := make([]uint64, ncpu); p[ncpu-1] = 2; p[0] += 4; return p }()},
		{maxBackends - 1, append([]uint64{1}, make([]uint64, ncpu-1)...)},
	}
	want := map[uint32]uint64{3: 5, 9: 6, maxBackends - 1: 1, 4: 0}
	for _, c := range counts {
		must(t, old.Put(c.id, c.per), "count")
	}
	pin := filepath.Join(dir, keepbitMapBackendSynRetrans)
	must(t, os.Remove(pin), "unpin the array")
	must(t, old.Pin(pin), "pin the earlier layout")

	d, err = Open(ctx, Options{Interface: port, PinRoot: root})
	must(t, err, "adopt")
	if !d.Adopted() {
		t.Fatal("not adopted")
	}
	checkPins(t, d)
	if typ := d.objs.BackendSynRetrans.Type(); typ != ebpf.Array {
		t.Fatalf("backend_syn_retrans is a %v after the adoption, want an array", typ)
	}
	for id, n := range want {
		var got uint64
		must(t, d.objs.BackendSynRetrans.Lookup(id, &got), "read count")
		if got != n {
			t.Errorf("ID %d: %d retransmitted SYNs after the migration, want %d", id, got, n)
		}
	}
	must(t, d.Close(), "close")

	d, err = Open(ctx, Options{Interface: port, PinRoot: root})
	must(t, err, "adopt again")
	defer d.Close()
	checkPins(t, d)
	var got uint64
	must(t, d.objs.BackendSynRetrans.Lookup(uint32(9), &got), "read count")
	if got != 6 {
		t.Errorf("ID 9: %d after the second adoption, want 6", got)
	}
}

// TestSynRetransCountsAcrossTheSwitch drives openPinned and finish
// directly: the old program still counts into the per-CPU map after
// openPinned (before the switch), and the new program counts into the new
// map between the switch and finish. Both must survive the migration,
// once: a migration that overwrote the new map, or copied only before the
// switch, loses one of them.
func TestSynRetransCountsAcrossTheSwitch(t *testing.T) {
	privtest.Require(t)
	root := tempPinRoot(t)
	dir := filepath.Join(root, "kbreview")
	must(t, ensureBPFFS(root, dir), "bpffs")
	spec, err := loadKeepbit()
	must(t, err, "spec")
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: maxBackends})
	must(t, err, "old")
	defer old.Close()
	ncpu := ebpf.MustPossibleCPU()
	per := make([]uint64, ncpu)
	per[0] = 5
	must(t, old.Put(uint32(3), per), "count")
	must(t, old.Pin(filepath.Join(dir, keepbitMapBackendSynRetrans)), "pin")

	st, err := openPinned(spec, dir)
	must(t, err, "openPinned")
	defer st.close()
	var mm *migratedMap
	for _, m := range st.migrated {
		if m.name == keepbitMapBackendSynRetrans {
			mm = m
		}
	}
	if mm == nil {
		t.Fatal("not migrated")
	}
	// The old program counts on until the link update.
	per[ncpu-1] += 2
	must(t, old.Put(uint32(3), per), "late count of the old program")
	// The link update; the new program counts into cur.
	must(t, mm.cur.Put(uint32(3), uint64(10)), "count of the new program")
	st.missing = nil
	must(t, st.finish(dir, nil), "finish")
	var got uint64
	must(t, mm.cur.Lookup(uint32(3), &got), "read")
	if got != 5+2+10 {
		t.Fatalf("ID 3: %d after the migration, want 17 (5+2 of the old program, 10 of the new)", got)
	}
	pinned, err := ebpf.LoadPinnedMap(filepath.Join(dir, keepbitMapBackendSynRetrans), nil)
	must(t, err, "load pin")
	defer pinned.Close()
	if pinned.Type() != ebpf.Array {
		t.Fatalf("pin names a %v", pinned.Type())
	}
}
