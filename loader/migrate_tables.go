package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// bpfFInnerMap is BPF_F_INNER_MAP: an inner map of any max_entries fits
// the template. A table buffer's only flag (abi_test checks the template).
const bpfFInnerMap = 1 << 12

// bpfFMmapable is BPF_F_MMAPABLE, which buffers of one word an element had.
const bpfFMmapable = 1 << 10

// wordTables is the size of tables when its buffers held one word an
// element; the current tables has one entry more, so that the two
// layouts' outer maps differ where loaders compare them.
const wordTables = 2 * maxServices

// tableBufferSpec is the spec of a table buffer of entries elements, for
// a migration, which has the outer map and not the collection's template.
func tableBufferSpec(entries uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: "kb_table", Type: ebpf.Array, KeySize: 4, ValueSize: 4 * tblChunk, MaxEntries: entries, Flags: bpfFInnerMap}
}

func init() {
	// Table buffers held one word an element (mmap-able) until they held
	// tblChunk words an element. The kernel verifies the new program
	// against the outer map's inner template, so a pinned tables of the
	// earlier layout is rebuilt: new buffers with the same words, in a
	// new outer map, before the program switch; the old program reads
	// the old ones until then.
	migrations[keepbitMapTables] = migration{
		from: func(old *ebpf.Map) bool {
			return old.Type() == ebpf.ArrayOfMaps && old.KeySize() == 4 && old.MaxEntries() == wordTables
		},
		newMap: func(spec *ebpf.MapSpec, _ *ebpf.Map) (*ebpf.Map, error) {
			s := spec.Copy()
			s.Pinning = ebpf.PinNone
			return ebpf.NewMap(s)
		},
		copyInto: copyTables,
	}
}

// copyTables gives cur a buffer of this layout, with the same words, for
// every buffer of old that cur has none for (a second call, after the
// switch, finds them all there: nothing writes tables meanwhile). The
// buffers are rebuilt side by side, one worker per CPU (1,000 services
// of 65,537 slots are 2,000 buffers of 512 KiB), and go in by one batch,
// one RCU grace period.
func copyTables(old, cur *ebpf.Map) error {
	var keys []uint32
	var ids []ebpf.MapID
	var k, id uint32
	it := old.Iterate()
	for it.Next(&k, &id) {
		var have uint32
		if err := cur.Lookup(k, &have); err == nil {
			continue
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("table buffer %d: %w", k, err)
		}
		keys, ids = append(keys, k), append(ids, ebpf.MapID(id))
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read tables: %w", err)
	}
	if len(keys) == 0 {
		return nil
	}
	bufs := make([]*ebpf.Map, len(keys))
	errs := make([]error, len(keys))
	defer func() {
		for _, b := range bufs {
			if b != nil {
				b.Close() // cur holds what was installed
			}
		}
	}()
	next := make(chan int)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := range next {
				if bufs[i], errs[i] = rebuildBuffer(ids[i]); errs[i] != nil {
					errs[i] = fmt.Errorf("table buffer %d: %w", keys[i], errs[i])
				}
			}
		})
	}
	for i := range keys {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fds := make([]uint32, len(bufs))
	for i, b := range bufs {
		fds[i] = uint32(b.FD())
	}
	if err := installInner(cur, keys, fds, false, func(write func() error) error { return write() }); err != nil {
		return fmt.Errorf("install rebuilt table buffers: %w", err)
	}
	return nil
}

// rebuildBuffer returns a buffer of this layout holding the words of
// buffer id: a copy when id holds one word an element, id itself when it
// is of this layout already.
func rebuildBuffer(id ebpf.MapID) (*ebpf.Map, error) {
	old, err := ebpf.NewMapFromID(id)
	if err != nil {
		return nil, err
	}
	if old.ValueSize() == 4*tblChunk && old.Flags() == bpfFInnerMap {
		return old, nil
	}
	defer old.Close()
	if old.ValueSize() != 4 {
		return nil, fmt.Errorf("value of %d bytes: not a table buffer", old.ValueSize())
	}
	words, err := readWordBuffer(old)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	buf, err := ebpf.NewMap(tableBufferSpec(chunksFor(uint32(len(words)))))
	if err != nil {
		return nil, err
	}
	if err := writeBuffer(buf, words, false); err != nil {
		buf.Close()
		return nil, fmt.Errorf("write: %w", err)
	}
	return buf, nil
}

// readWordBuffer reads a buffer of one word an element through a mapping
// (they were mmap-able; the kernel stores each element at an 8-byte
// stride): a 65,617-element buffer took 8.9 ms by batch lookup. By batch
// where it cannot be mapped.
func readWordBuffer(m *ebpf.Map) ([]uint32, error) {
	n := int(m.MaxEntries())
	if m.Flags()&bpfFMmapable == 0 || n == 0 {
		return lookupAll[uint32](m, false)
	}
	mem, err := unix.Mmap(m.FD(), 0, n*8, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return lookupAll[uint32](m, false)
	}
	defer unix.Munmap(mem)
	words := make([]uint32, n)
	for i := range words {
		words[i] = binary.NativeEndian.Uint32(mem[8*i:])
	}
	return words, nil
}
