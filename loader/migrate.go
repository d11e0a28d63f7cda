package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// flowValueV1 is struct flow_value as keepbitd wrote it before flow
// sharing added first_seen_ns and reported_ns.
type flowValueV1 struct {
	Backend     uint32
	Incarnation uint32
	LastSeenNs  uint64
	Packets     uint64
	Bytes       uint64
}

func init() {
	// The flow table is the one map an upgrade must carry over: its
	// entries are what keeps established connections on their backends.
	migrations[keepbitMapFlows] = migration{
		from: func(old *ebpf.Map) bool {
			return old.Type() == ebpf.LRUHash && old.KeySize() == 40 && old.ValueSize() == 32
		},
		newMap: func(spec *ebpf.MapSpec, old *ebpf.Map) (*ebpf.Map, error) {
			s := spec.Copy()
			s.MaxEntries = old.MaxEntries() // the capacity the operator chose
			s.Pinning = ebpf.PinNone
			return ebpf.NewMap(s)
		},
		copyInto: copyFlowsV1,
	}
}

func init() {
	// backend_syn_retrans was a per-CPU array until it became one array
	// counted by atomic add (a per-CPU array of 65,536 elements took
	// 45-100 ms to create). Passive detection reads differences of these
	// counts, so the totals carry over.
	migrations[keepbitMapBackendSynRetrans] = migration{
		from: func(old *ebpf.Map) bool {
			return old.Type() == ebpf.PerCPUArray && old.KeySize() == 4 && old.ValueSize() == 8
		},
		newMap: func(spec *ebpf.MapSpec, old *ebpf.Map) (*ebpf.Map, error) {
			s := spec.Copy()
			s.Pinning = ebpf.PinNone
			return ebpf.NewMap(s)
		},
		copyInto:    addPerCPUCounts,
		afterSwitch: true,
	}
}

// addPerCPUCounts adds each ID's per-CPU counts in old to its count in
// cur. It runs after the switch, when only the new program counts (into
// cur): an increment that lands between the read and the write of an ID
// here is lost, a window of microseconds for a rare event, once per
// upgrade. A crash before the new map's pin replaces the old one loses
// what the new program counted until then: the next start migrates again
// from the old map, which the old pin still names.
func addPerCPUCounts(old, cur *ebpf.Map) error {
	var per []uint64
	for id := range min(old.MaxEntries(), cur.MaxEntries()) {
		if err := old.Lookup(id, &per); err != nil {
			return fmt.Errorf("read counts of %d: %w", id, err)
		}
		var sum uint64
		for _, n := range per {
			sum += n
		}
		if sum == 0 {
			continue
		}
		var now uint64
		if err := cur.Lookup(id, &now); err != nil {
			return fmt.Errorf("read count of %d: %w", id, err)
		}
		if err := cur.Put(id, now+sum); err != nil {
			return fmt.Errorf("write count of %d: %w", id, err)
		}
	}
	return nil
}

// copyFlowsV1 copies every entry of a flow table in the layout before flow
// sharing into cur, leaving the entries cur already has: the program that
// runs on cur may have refreshed them. A copied flow's age starts now (its
// real age is unknown), and it was never reported.
func copyFlowsV1(old, cur *ebpf.Map) error {
	now, err := monotonicNow()
	if err != nil {
		return err
	}
	var k keepbitFlowKey
	var v flowValueV1
	it := old.Iterate()
	for it.Next(&k, &v) {
		nv := keepbitFlowValue{
			Backend: v.Backend, Incarnation: v.Incarnation, LastSeenNs: v.LastSeenNs,
			Packets: v.Packets, Bytes: v.Bytes, FirstSeenNs: now,
		}
		if err := cur.Update(&k, &nv, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return fmt.Errorf("copy flow: %w", err)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read flows: %w", err)
	}
	return nil
}
