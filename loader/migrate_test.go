package loader

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// TestAdoptWordBuffers: a pin directory whose tables is of the earlier
// size, holding buffers of the earlier layout (one word an element,
// mmap-able) or already of this one, is adopted. Every buffer is rebuilt
// with the same words, the program forwards each flow to the backend it
// went to before, the pin names the new outer map, the next adoption
// rebuilds nothing, and a loader of the earlier layout would refuse the
// new map before switching its program.
func TestAdoptWordBuffers(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) { adoptWordBuffers(t, chunked) })
	}
}

func adoptWordBuffers(t *testing.T, chunked bool) {
	l, reopen := pinnedLab(t)
	s1, s2 := svc("198.51.100.71", 80, TCP), svc("2001:db8::71", 80, TCP)
	var bs1, bs2 []BackendSpec
	for i := range 5 {
		bs1 = append(bs1, backend(fmt.Sprintf("10.7.7.%d", i+1), fmt.Sprintf("02:77:00:00:00:%02x", i+1)))
		bs2 = append(bs2, backend(fmt.Sprintf("2001:db8:7::%d", i+1), fmt.Sprintf("02:78:00:00:00:%02x", i+1)))
	}
	l.apply(s1, ServiceSpec{TableSize: 251, Backends: bs1})
	l.apply(s2, ServiceSpec{Backends: bs2})
	l.apply(s1, ServiceSpec{TableSize: 251, Backends: bs1[:4]}) // both of s1's buffers written
	type flow struct {
		vip, client string
		sport       uint16
	}
	var flows []flow
	for sport := range uint16(40) {
		flows = append(flows, flow{"198.51.100.71", "203.0.113.71", 7000 + sport}, flow{"2001:db8::71", "2001:db8:ffff::71", 7000 + sport})
	}
	before := map[flow]string{}
	for _, f := range flows {
		before[f] = l.chosen(f.vip, f.client, f.sport)
	}
	// The earlier layout of every buffer, with its words, in an outer map
	// with the earlier template, pinned in place of tables.
	words := map[uint32][]uint32{}
	wordSpec := func(n uint32) *ebpf.MapSpec {
		return &ebpf.MapSpec{Name: "kb_table", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: n, Flags: bpfFInnerMap | 1<<10}
	}
	earlier := &ebpf.MapSpec{Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: wordTables, InnerMap: wordSpec(tblHdr + 1 + MaxMembers)}
	outerSpec := earlier.Copy()
	if chunked {
		outerSpec.InnerMap = tableBufferSpec(1)
	}
	outer, err := ebpf.NewMap(outerSpec)
	must(t, err, "earlier outer map")
	defer outer.Close()
	for _, s := range l.dp.services {
		for b, buf := range s.buffers {
			w, err := l.dp.readBuffer(buf)
			must(t, err, "read buffer")
			k := s.id*2 + uint32(b)
			words[k] = w
			if chunked {
				must(t, outer.Put(k, buf), "install buffer")
				continue
			}
			old, err := ebpf.NewMap(wordSpec(uint32(len(w))))
			must(t, err, "earlier buffer")
			keys := make([]uint32, len(w))
			for i := range keys {
				keys[i] = uint32(i)
			}
			_, err = old.BatchUpdate(keys, w, nil)
			must(t, err, "write earlier buffer")
			must(t, outer.Put(k, old), "install earlier buffer")
			old.Close()
		}
	}
	dir := l.dp.pinDir
	must(t, l.dp.Close(), "close")
	pin := filepath.Join(dir, keepbitMapTables)
	must(t, os.Remove(pin), "unpin tables")
	must(t, outer.Pin(pin), "pin the earlier layout")

	n := reopen()
	if !n.dp.Adopted() {
		t.Fatal("not adopted")
	}
	checkPins(t, n.dp)
	for k, w := range words {
		var buf *ebpf.Map
		must(t, n.dp.objs.Tables.Lookup(k, &buf), "rebuilt buffer")
		if buf.ValueSize() != 4*tblChunk || buf.Flags() != bpfFInnerMap {
			t.Errorf("buffer %d: value %d bytes, flags %#x after the adoption", k, buf.ValueSize(), buf.Flags())
		}
		got, err := n.dp.readBuffer(buf)
		buf.Close()
		must(t, err, "read rebuilt buffer")
		if len(got) < len(w) || !slices.Equal(got[:len(w)], w) || slices.ContainsFunc(got[len(w):], func(x uint32) bool { return x != 0 }) {
			t.Errorf("buffer %d: %d words after the adoption, not the %d before", k, len(got), len(w))
		}
	}
	for _, f := range flows {
		if got := n.chosen(f.vip, f.client, f.sport); got != before[f] {
			t.Errorf("flow %v went to %s after the adoption, %s before", f, got, before[f])
		}
	}
	info, err := n.dp.objs.Tables.Info()
	must(t, err, "tables info")
	id, _ := info.ID()
	must(t, n.dp.Close(), "close")

	again := reopen()
	defer again.dp.Close()
	checkPins(t, again.dp)
	if err := earlier.Compatible(again.dp.objs.Tables); err == nil {
		t.Error("a loader of the earlier layout would take the new tables as its own")
	}
	info, err = again.dp.objs.Tables.Info()
	must(t, err, "tables info")
	if id2, _ := info.ID(); id2 != id {
		t.Errorf("tables rebuilt again at the second adoption (map %d, then %d)", id, id2)
	}
	for _, f := range flows[:4] {
		if got := again.chosen(f.vip, f.client, f.sport); got != before[f] {
			t.Errorf("flow %v went to %s after the second adoption, %s before", f, got, before[f])
		}
	}
}

// TestTableBufferRoundTrip: words written into a table buffer read back
// the same, by batch and element by element, whatever their count's
// remainder in elements; a table that does not fit is refused.
func TestTableBufferRoundTrip(t *testing.T) {
	privtest.Require(t)
	cases := []struct {
		words, elements uint32
		wantErr         bool
	}{
		{1, 1, false},
		{15, 1, false},
		{16, 1, false},
		{17, 2, false},
		{tblHdr + 2053 + 64, chunksFor(tblHdr + 2053 + 64), false},
		{17, 1, true},
	}
	for _, noBatch := range []bool{false, true} {
		for _, c := range cases {
			t.Run(fmt.Sprintf("noBatch=%v/%d-words-in-%d", noBatch, c.words, c.elements), func(t *testing.T) {
				buf, err := ebpf.NewMap(tableBufferSpec(c.elements))
				must(t, err, "buffer")
				defer buf.Close()
				words := make([]uint32, c.words)
				for i := range words {
					words[i] = uint32(i)*2654435761 + 1
				}
				err = writeBuffer(buf, words, noBatch)
				if c.wantErr {
					if err == nil {
						t.Fatalf("%d words written into %d elements", c.words, c.elements)
					}
					return
				}
				must(t, err, "write")
				d := &Dataplane{noBatch: noBatch}
				got, err := d.readBuffer(buf)
				must(t, err, "read")
				if len(got) != int(c.elements)*tblChunk || !slices.Equal(got[:len(words)], words) {
					t.Fatalf("read %d words, want %d beginning with the %d written", len(got), c.elements*tblChunk, len(words))
				}
				for i, w := range got[len(words):] {
					if w != 0 {
						t.Fatalf("word %d past the table is %d", len(words)+i, w)
					}
				}
				// A window of words, across elements and past the end
				// (read as 0), as adoption reads the header and members.
				for _, start := range []uint64{0, 3, 15, 16, uint64(len(got)) - 2} {
					win, err := readWords(buf, start, 20)
					must(t, err, "read words")
					for i, w := range win {
						want := uint32(0)
						if at := start + uint64(i); at < uint64(len(got)) {
							want = got[at]
						}
						if w != want {
							t.Fatalf("readWords(%d, 20)[%d] = %d, want %d", start, i, w, want)
						}
					}
				}
			})
		}
	}
}
