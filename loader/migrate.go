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
