package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// bpfFInnerMap is BPF_F_INNER_MAP: an inner map of any max_entries fits
// the template. A table buffer's only flag (abi_test checks the template).
const bpfFInnerMap = 1 << 12

// tableBufferSpec is the spec of a table buffer of entries elements, for
// a migration, which has the outer map and not the collection's template.
func tableBufferSpec(entries uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{Name: "kb_table", Type: ebpf.Array, KeySize: 4, ValueSize: 4 * tblChunk, MaxEntries: entries, Flags: bpfFInnerMap}
}

func init() {
	// Table buffers held one word an element (mmap-able) until they held
	// tblChunk words an element. The outer map looks the same, but the
	// kernel verifies the new program against its inner template, so a
	// pinned tables whose buffers are of the old layout is rebuilt: new
	// buffers with the same words, in a new outer map, before the program
	// switch; the old program reads the old ones until then. An outer
	// map with no buffer at all tells no layout, and is rebuilt too, at
	// the cost of creating an empty map.
	migrations[keepbitMapTables] = migration{
		from: tablesOfWordBuffers,
		newMap: func(spec *ebpf.MapSpec, _ *ebpf.Map) (*ebpf.Map, error) {
			s := spec.Copy()
			s.Pinning = ebpf.PinNone
			return ebpf.NewMap(s)
		},
		copyInto: copyTables,
	}
}

// tablesOfWordBuffers says whether a pinned tables holds buffers of the
// word-per-element layout, or none.
func tablesOfWordBuffers(old *ebpf.Map) bool {
	if old.Type() != ebpf.ArrayOfMaps {
		return false
	}
	var k, id uint32
	it := old.Iterate()
	for it.Next(&k, &id) {
		buf, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			return true // copyTables names the error
		}
		defer buf.Close()
		return buf.ValueSize() != 4*tblChunk
	}
	return true
}

// copyTables gives cur a buffer of this layout, with the same words, for
// every buffer of old that cur has none for (a second call, after the
// switch, finds them all there: nothing writes tables meanwhile). The new
// buffers go in by one batch, one RCU grace period.
func copyTables(old, cur *ebpf.Map) error {
	var keys, fds []uint32
	var bufs []*ebpf.Map
	defer func() {
		for _, b := range bufs {
			b.Close() // cur holds what was installed
		}
	}()
	var k, id uint32
	it := old.Iterate()
	for it.Next(&k, &id) {
		var have uint32
		if err := cur.Lookup(k, &have); err == nil {
			continue
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("table buffer %d: %w", k, err)
		}
		buf, err := rebuildBuffer(ebpf.MapID(id))
		if err != nil {
			return fmt.Errorf("table buffer %d: %w", k, err)
		}
		bufs = append(bufs, buf)
		keys, fds = append(keys, k), append(fds, uint32(buf.FD()))
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read tables: %w", err)
	}
	if len(keys) == 0 {
		return nil
	}
	if err := installInner(cur, keys, fds, false, func(write func() error) error { return write() }); err != nil {
		return fmt.Errorf("install rebuilt table buffers: %w", err)
	}
	return nil
}

// rebuildBuffer copies the words of the word-per-element buffer id into a
// new buffer of this layout.
func rebuildBuffer(id ebpf.MapID) (*ebpf.Map, error) {
	old, err := ebpf.NewMapFromID(id)
	if err != nil {
		return nil, err
	}
	defer old.Close()
	if old.ValueSize() != 4 {
		return nil, fmt.Errorf("value of %d bytes: not a buffer of one word an element", old.ValueSize())
	}
	words, err := lookupAll[uint32](old, false)
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
