package loader

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Stats is a snapshot of the dataplane's counters.
type Stats struct {
	Reasons  map[string]Counter
	Services map[ServiceKey]Counter
	Backends map[ServiceKey]map[netip.Addr]Counter
}

func sum(cs []keepbitCounter) Counter {
	var c Counter
	for _, x := range cs {
		c.Packets += x.Packets
		c.Bytes += x.Bytes
	}
	return c
}

// Stats reads every counter, summed over CPUs.
func (d *Dataplane) Stats() (Stats, error) {
	s := Stats{Reasons: map[string]Counter{}, Services: map[ServiceKey]Counter{}, Backends: map[ServiceKey]map[netip.Addr]Counter{}}
	var per []keepbitCounter
	for r := Reason(0); r < keepbitReasonREASON_MAX; r++ {
		if err := d.objs.ReasonStats.Lookup(uint32(r), &per); err != nil {
			return s, fmt.Errorf("reason counter %s: %w", ReasonName(r), err)
		}
		s.Reasons[ReasonName(r)] = sum(per)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for key, svc := range d.services {
		if err := d.objs.ServiceStats.Lookup(svc.id, &per); err != nil {
			return s, fmt.Errorf("service %s counter: %w", key, err)
		}
		s.Services[key] = sum(per)
		bs := map[netip.Addr]Counter{}
		for addr, m := range svc.members {
			if err := d.objs.BackendStats.Lookup(m.id, &per); err != nil {
				return s, fmt.Errorf("service %s backend %s counter: %w", key, addr, err)
			}
			bs[addr] = sum(per)
		}
		s.Backends[key] = bs
	}
	return s, nil
}

// Flows returns up to limit flow-table entries, most packets first.
func (d *Dataplane) Flows(limit int) ([]Flow, error) {
	now, err := monotonicNow()
	if err != nil {
		return nil, err
	}
	var k keepbitFlowKey
	var v keepbitFlowValue
	var out []Flow
	d.mu.Lock()
	it := d.objs.Flows.Iterate()
	for it.Next(&k, &v) {
		f := Flow{
			Client:  netip.AddrPortFrom(addrFrom16(k.Src), netToHost16(k.Sport)),
			VIP:     netip.AddrPortFrom(addrFrom16(k.Dst), netToHost16(k.Dport)),
			Proto:   Proto(k.Proto),
			Packets: v.Packets,
			Bytes:   v.Bytes,
		}
		if m, ok := d.members[v.Backend]; ok && m.inc == v.Incarnation {
			f.Backend = m.spec.Addr
		}
		if now > v.LastSeenNs {
			f.LastSeen = time.Duration(now - v.LastSeenNs)
		}
		out = append(out, f)
	}
	d.mu.Unlock()
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate flows: %w", err)
	}
	slices.SortFunc(out, func(a, b Flow) int {
		switch {
		case a.Packets > b.Packets:
			return -1
		case a.Packets < b.Packets:
			return 1
		}
		return 0
	})
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
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
		si := ServiceInfo{Key: key, TableSize: svc.tableSize, Generation: svc.generation, NoBackend: svc.noBackend}
		for _, m := range svc.members {
			si.Backends = append(si.Backends, m.spec)
		}
		slices.SortFunc(si.Backends, func(a, b BackendSpec) int { return a.Addr.Compare(b.Addr) })
		out = append(out, si)
	}
	slices.SortFunc(out, func(a, b ServiceInfo) int { return compareKeys(a.Key, b.Key) })
	return out
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
