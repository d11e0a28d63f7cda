package loader

import (
	"fmt"
	"net/netip"
)

// SynRetransmits is one backend's count of retransmitted TCP SYNs: SYNs
// that arrived again for a flow the program had sent to it moments
// before (the XDP program's passive signal that the backend does not
// answer). ID is the backend's dataplane ID: a count is comparable with
// an earlier one only for the same ID, since a new ID starts at zero.
type SynRetransmits struct {
	ID    uint32
	Count uint64
}

// SynRetransmits reads the counts of every backend of one service. It
// holds the index lock only to copy the member list.
func (d *Dataplane) SynRetransmits(key ServiceKey) (map[netip.Addr]SynRetransmits, error) {
	d.mu.Lock()
	svc := d.services[key]
	d.mu.Unlock()
	if svc == nil {
		return nil, fmt.Errorf("service %s: not in the dataplane", key)
	}
	out := map[netip.Addr]SynRetransmits{}
	for _, m := range d.memberRefs(svc) {
		var n uint64
		if err := d.objs.BackendSynRetrans.Lookup(m.id, &n); err != nil {
			return nil, fmt.Errorf("service %s backend %s SYN retransmissions: %w", key, m.addr, err)
		}
		out[m.addr] = SynRetransmits{ID: m.id, Count: n}
	}
	return out, nil
}
