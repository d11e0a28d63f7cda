package loader

import (
	"fmt"
	"maps"
	"slices"

	"github.com/cilium/ebpf"
)

// KernelMemory is what the kernel charged for a dataplane's maps (their
// memlock figure, as bpftool shows it): memory that no process's RSS
// shows.
type KernelMemory struct {
	// Maps are the program's own maps (flow table, flow cache, counters,
	// ...), by name.
	Maps map[string]uint64
	// Tables is every service's two lookup-table buffers (the live one
	// and the one the next rebuild writes), Services how many services
	// hold them.
	Tables   uint64
	Services int
}

// Total is every byte of m.
func (m KernelMemory) Total() uint64 {
	t := m.Tables
	for _, b := range m.Maps {
		t += b
	}
	return t
}

// PerService is what one service's tables cost on average (0 with no
// service).
func (m KernelMemory) PerService() uint64 {
	if m.Services == 0 {
		return 0
	}
	return m.Tables / uint64(m.Services)
}

// KernelMemory asks the kernel what it charged for each map. The table
// buffers of services with one table size all cost the same, so one
// buffer per size is asked, and a thousand services cost a few syscalls.
func (d *Dataplane) KernelMemory() (KernelMemory, error) {
	out := KernelMemory{Maps: map[string]uint64{}}
	for _, name := range slices.Sorted(maps.Keys(d.maps)) {
		b, err := memlock(d.maps[name])
		if err != nil {
			return KernelMemory{}, fmt.Errorf("map %s: %w", name, err)
		}
		out.Maps[name] = b
	}
	// applyMu: no buffer is replaced or closed while it is asked.
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.mu.Lock()
	bySize := map[uint32][]*ebpf.Map{}
	for _, s := range d.services {
		out.Services++
		for _, b := range s.buffers {
			if b != nil {
				bySize[b.MaxEntries()] = append(bySize[b.MaxEntries()], b)
			}
		}
	}
	d.mu.Unlock()
	for size, bufs := range bySize {
		b, err := memlock(bufs[0])
		if err != nil {
			return KernelMemory{}, fmt.Errorf("table buffer of %d entries: %w", size, err)
		}
		out.Tables += b * uint64(len(bufs))
	}
	return out, nil
}

func memlock(m *ebpf.Map) (uint64, error) {
	info, err := m.Info()
	if err != nil {
		return 0, err
	}
	b, ok := info.Memlock()
	switch {
	case ok:
		return b, nil
	case m.Type() == ebpf.RingBuf:
		// Linux before 6.4 reports 0 for a ring buffer (its figure came
		// from key and value sizes, which a ring buffer has none of): its
		// data area stands in, which is nearly all of it.
		return uint64(m.MaxEntries()), nil
	}
	return 0, fmt.Errorf("the kernel reports no memlock figure")
}
