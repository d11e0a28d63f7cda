package loader

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// ForgetFlows drops what this node learned about the flows to vips: their
// flow-table entries and every CPU's flow-cache entries. A node that
// hands a VIP to its peer calls it: the flows go on on the peer, placed
// by the peer's table, and an entry kept here would send them elsewhere
// if the VIP came back (a backend re-picked here earlier, or an earlier
// connection on the same 5-tuple). Without entries the node places them
// by its table, as the peer did. It returns how many entries went.
func (d *Dataplane) ForgetFlows(vips []netip.Addr) (flows, cached int, err error) {
	dst := map[[16]byte]bool{}
	for _, v := range vips {
		dst[addr16(v)] = true
	}
	if len(dst) == 0 {
		return 0, 0, nil
	}
	defer d.readerTurn()()
	var keys []keepbitFlowKey
	if err := d.walkFlows(func(k *keepbitFlowKey, _ *keepbitFlowValue) {
		if dst[k.Dst] {
			keys = append(keys, *k)
		}
	}); err != nil {
		return 0, 0, err
	}
	for i := range keys {
		// Gone already (the LRU, or the program re-learning it) is fine.
		if err := d.objs.Flows.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return flows, 0, fmt.Errorf("forget flow: %w", err)
		}
		flows++
	}
	var per []keepbitFlowCacheEntry
	for idx := range d.objs.FlowCache.MaxEntries() {
		if err := d.objs.FlowCache.Lookup(idx, &per); err != nil {
			return flows, cached, fmt.Errorf("flow cache %d: %w", idx, err)
		}
		hit := false
		for c := range per {
			if dst[per[c].Key.Dst] {
				per[c] = keepbitFlowCacheEntry{StateWord: uint64(keepbitStateWordSTATE_INVALID)}
				hit = true
				cached++
			}
		}
		if hit {
			// A CPU may refill its entry meanwhile: that entry comes from
			// a packet placed now, which is what forgetting is for.
			if err := d.objs.FlowCache.Put(idx, per); err != nil {
				return flows, cached, fmt.Errorf("flow cache %d: %w", idx, err)
			}
		}
	}
	return flows, cached, nil
}
