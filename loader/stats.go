package loader

import (
	"cmp"
	"container/heap"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Stats is a snapshot of the dataplane's counters.
type Stats struct {
	Reasons  map[string]Counter
	Services map[ServiceKey]Counter
	Backends map[ServiceKey]map[netip.Addr]Counter
	Sharing  FlowShareCounters
}

func sum(cs []keepbitCounter) Counter {
	var c Counter
	for _, x := range cs {
		c.Packets += x.Packets
		c.Bytes += x.Bytes
	}
	return c
}

// Stats reads every counter, summed over CPUs, in the readers' turn (it
// may wait for a flow-table walk). It never holds the index lock across a
// kernel read: failover (SetBackendState) takes that lock, and
// a reader must not delay it. The index is copied one service at a time,
// then the counters are read from the copy; a service or backend removed
// meanwhile may still appear with its last counts.
func (d *Dataplane) Stats() (Stats, error) {
	defer d.readerTurn()()
	s := Stats{Reasons: map[string]Counter{}, Services: map[ServiceKey]Counter{}, Backends: map[ServiceKey]map[netip.Addr]Counter{}}
	var per []keepbitCounter
	for r := Reason(0); r < keepbitReasonREASON_MAX; r++ {
		if err := d.objs.ReasonStats.Lookup(uint32(r), &per); err != nil {
			return s, fmt.Errorf("reason counter %s: %w", ReasonName(r), err)
		}
		s.Reasons[ReasonName(r)] = sum(per)
	}
	for _, ref := range d.serviceRefs() {
		if err := d.objs.ServiceStats.Lookup(ref.id, &per); err != nil {
			return s, fmt.Errorf("service %s counter: %w", ref.key, err)
		}
		s.Services[ref.key] = sum(per)
		ms := d.memberRefs(ref.svc)
		bs := make(map[netip.Addr]Counter, len(ms))
		for _, m := range ms {
			if err := d.objs.BackendStats.Lookup(m.id, &per); err != nil {
				return s, fmt.Errorf("service %s backend %s counter: %w", ref.key, m.addr, err)
			}
			bs[m.addr] = sum(per)
		}
		s.Backends[ref.key] = bs
	}
	var err error
	s.Sharing, err = d.FlowShareStats()
	return s, err
}

type serviceRef struct {
	key ServiceKey
	id  uint32
	svc *service
}

type memberRef struct {
	addr netip.Addr
	id   uint32
	inc  uint32
}

// serviceRefs copies the service list; the lock is held for one pass over
// the services map, not for any kernel read.
func (d *Dataplane) serviceRefs() []serviceRef {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]serviceRef, 0, len(d.services))
	for key, svc := range d.services {
		out = append(out, serviceRef{key: key, id: svc.id, svc: svc})
	}
	return out
}

// memberRefs copies one service's members (at most MaxMembers) under the
// lock, which keeps each hold short however many services there are.
func (d *Dataplane) memberRefs(svc *service) []memberRef {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]memberRef, 0, len(svc.members))
	for addr, m := range svc.members {
		out = append(out, memberRef{addr: addr, id: m.id, inc: m.inc})
	}
	return out
}

// flowBatch is how many flow entries one BPF_MAP_LOOKUP_BATCH call copies
// out: 4096 entries of 88 bytes, 352 KiB per call, 64 calls for the
// default table instead of 2 syscalls per entry with an iterator.
const flowBatch = 4096

// readerTurn waits for the readers' turn (see Dataplane.readTurn) and
// returns the call that ends it.
func (d *Dataplane) readerTurn() func() {
	d.readTurn <- struct{}{}
	return func() { <-d.readTurn }
}

// walkFlows calls fn for every entry of the flow table. It takes no lock:
// the XDP program changes the table all the time anyway, so a walk is a
// loose snapshot whatever the loader does, and holding the index lock
// across it would stall failover for the whole walk. fn must not keep its
// pointers.
func (d *Dataplane) walkFlows(fn func(k *keepbitFlowKey, v *keepbitFlowValue)) error {
	keys := make([]keepbitFlowKey, flowBatch)
	vals := make([]keepbitFlowValue, flowBatch)
	var cursor ebpf.MapBatchCursor
	for first := true; ; first = false {
		n, err := d.objs.Flows.BatchLookup(&cursor, keys, vals, nil)
		if first && errors.Is(err, ebpf.ErrNotSupported) {
			return d.iterateFlows(fn)
		}
		for i := range n {
			fn(&keys[i], &vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read flows: %w", err)
		}
	}
}

// iterateFlows is walkFlows for kernels without batch map operations.
func (d *Dataplane) iterateFlows(fn func(k *keepbitFlowKey, v *keepbitFlowValue)) error {
	var k keepbitFlowKey
	var v keepbitFlowValue
	it := d.objs.Flows.Iterate()
	for it.Next(&k, &v) {
		fn(&k, &v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate flows: %w", err)
	}
	return nil
}

// rawFlow is a flow-table entry as read: no pointers, so collecting a
// whole table gives the garbage collector nothing to scan.
type rawFlow struct {
	k keepbitFlowKey
	v keepbitFlowValue
}

// flowHeap is a min-heap on packets: the top limit flows of a walk are
// kept without collecting and sorting the whole table.
type flowHeap []rawFlow

func (h flowHeap) Len() int           { return len(h) }
func (h flowHeap) Less(i, j int) bool { return h[i].v.Packets < h[j].v.Packets }
func (h flowHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *flowHeap) Push(x any)        { *h = append(*h, x.(rawFlow)) }
func (h *flowHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Flows returns up to limit flow-table entries (all with limit <= 0), most
// packets first. The table is walked without the index lock; backends are
// resolved afterwards (see resolveBackends).
func (d *Dataplane) Flows(limit int) ([]Flow, error) {
	now, err := monotonicNow()
	if err != nil {
		return nil, err
	}
	var h flowHeap
	done := d.readerTurn()
	err = d.walkFlows(func(k *keepbitFlowKey, v *keepbitFlowValue) {
		switch {
		case limit <= 0:
			h = append(h, rawFlow{*k, *v})
		case len(h) < limit:
			heap.Push(&h, rawFlow{*k, *v})
		case v.Packets > h[0].v.Packets:
			h[0] = rawFlow{*k, *v}
			heap.Fix(&h, 0)
		}
	})
	done()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(h, func(a, b rawFlow) int { return cmp.Compare(b.v.Packets, a.v.Packets) })
	owners := d.resolveBackends(h)
	out := make([]Flow, len(h))
	for i, r := range h {
		f := Flow{
			Client:  netip.AddrPortFrom(addrFrom16(r.k.Src), netToHost16(r.k.Sport)),
			VIP:     netip.AddrPortFrom(addrFrom16(r.k.Dst), netToHost16(r.k.Dport)),
			Proto:   Proto(r.k.Proto),
			Packets: r.v.Packets,
			Bytes:   r.v.Bytes,
		}
		if o, ok := owners[r.v.Backend]; ok && o.inc == r.v.Incarnation {
			f.Backend = o.addr
		}
		if now > r.v.LastSeenNs {
			f.LastSeen = time.Duration(now - r.v.LastSeenNs)
		}
		out[i] = f
	}
	return out, nil
}

// resolveChunk bounds how many backend IDs are resolved per hold of the
// index lock, so that even a table naming every backend ID delays a
// concurrent SetBackendState by microseconds only.
const resolveChunk = 256

// resolveBackends maps the backend IDs the flows name to the address and
// incarnation the index holds for them now. A flow whose incarnation no
// longer matches belongs to a released backend and stays unresolved.
func (d *Dataplane) resolveBackends(flows []rawFlow) map[uint32]memberRef {
	ids := make([]uint32, 0, 64)
	seen := map[uint32]bool{}
	for _, f := range flows {
		if !seen[f.v.Backend] {
			seen[f.v.Backend] = true
			ids = append(ids, f.v.Backend)
		}
	}
	out := make(map[uint32]memberRef, len(ids))
	for chunk := range slices.Chunk(ids, resolveChunk) {
		d.mu.Lock()
		for _, id := range chunk {
			if m, ok := d.members[id]; ok {
				out[id] = memberRef{addr: m.spec.Addr, id: id, inc: m.inc}
			}
		}
		d.mu.Unlock()
	}
	return out
}

// LiveFlows counts the flow-table entries of one backend of one service
// that saw a packet within idle, and reads that backend's packet counter:
// what `drain -wait` polls. Only matching entries are looked at; nothing
// is collected or sorted, and the index lock is held only to find the
// backend's ID.
func (d *Dataplane) LiveFlows(key ServiceKey, addr netip.Addr, idle time.Duration) (flows int, packets uint64, err error) {
	key.VIP = key.VIP.Unmap()
	addr = addr.Unmap()
	d.mu.Lock()
	svc, ok := d.services[key]
	var m *member
	if ok {
		m = svc.members[addr]
	}
	var id, inc uint32
	if m != nil {
		id, inc = m.id, m.inc
	}
	d.mu.Unlock()
	if !ok {
		return 0, 0, fmt.Errorf("service %s: not configured", key)
	}
	if m == nil {
		return 0, 0, fmt.Errorf("service %s: backend %s: not configured", key, addr)
	}
	now, err := monotonicNow()
	if err != nil {
		return 0, 0, err
	}
	vip := addr16(key.VIP)
	port := hostToNet16(key.Port)
	window := uint64(max(idle, 0))
	defer d.readerTurn()()
	err = d.walkFlows(func(k *keepbitFlowKey, v *keepbitFlowValue) {
		if v.Backend != id || v.Incarnation != inc || k.Dst != vip || k.Proto != uint8(key.Proto) ||
			(key.Port != 0 && k.Dport != port) {
			return
		}
		if v.LastSeenNs >= now || now-v.LastSeenNs <= window {
			flows++
		}
	})
	if err != nil {
		return 0, 0, err
	}
	var per []keepbitCounter
	if err := d.objs.BackendStats.Lookup(id, &per); err != nil {
		return 0, 0, fmt.Errorf("service %s backend %s counter: %w", key, addr, err)
	}
	// The ID may have been released and reused during the walk: then the
	// count and the counter are another backend's.
	d.mu.Lock()
	same := d.members[id] == m && m.inc == inc
	d.mu.Unlock()
	if !same {
		return 0, 0, fmt.Errorf("service %s: backend %s: removed while counting", key, addr)
	}
	return flows, sum(per).Packets, nil
}

// monotonicNow is CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_coarse_ns.
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read monotonic clock: %w", err)
	}
	return uint64(ts.Nano()), nil
}

// ServiceInfo describes a configured service as the dataplane holds it.
type ServiceInfo struct {
	Key        ServiceKey
	TableSize  uint32
	Generation uint32
	NoBackend  NoBackendPolicy
	Backends   []BackendSpec
}

// Services lists the configured services, backends in address order.
func (d *Dataplane) Services() []ServiceInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []ServiceInfo
	for key, svc := range d.services {
		out = append(out, infoLocked(key, svc))
	}
	slices.SortFunc(out, func(a, b ServiceInfo) int { return compareKeys(a.Key, b.Key) })
	return out
}

// Service is Services' entry for one service (false: not configured). A
// caller that wants one service asks for it alone: listing them all for
// each of 1,000 services being created cost time quadratic in the count.
func (d *Dataplane) Service(key ServiceKey) (ServiceInfo, bool) {
	key.VIP = key.VIP.Unmap()
	d.mu.Lock()
	defer d.mu.Unlock()
	svc, ok := d.services[key]
	if !ok {
		return ServiceInfo{}, false
	}
	return infoLocked(key, svc), true
}

func infoLocked(key ServiceKey, svc *service) ServiceInfo {
	si := ServiceInfo{Key: key, TableSize: svc.tableSize, Generation: svc.generation, NoBackend: svc.noBackend}
	for _, m := range svc.members {
		si.Backends = append(si.Backends, m.spec)
	}
	slices.SortFunc(si.Backends, func(a, b BackendSpec) int { return a.Addr.Compare(b.Addr) })
	return si
}

func compareKeys(a, b ServiceKey) int {
	if c := a.VIP.Compare(b.VIP); c != 0 {
		return c
	}
	if a.Port != b.Port {
		return int(a.Port) - int(b.Port)
	}
	return int(a.Proto) - int(b.Proto)
}
