package loader

import "net/netip"

// BackendStates returns the state the dataplane holds for each backend of
// the service key (nil when the service is not configured). It costs one
// service's members, not a walk of every service: the control loop reads
// it back under its own lock after every ApplyService, so that its idea of
// each backend's state is what the dataplane holds.
func (d *Dataplane) BackendStates(key ServiceKey) map[netip.Addr]State {
	key.VIP = key.VIP.Unmap()
	d.mu.Lock()
	defer d.mu.Unlock()
	svc, ok := d.services[key]
	if !ok {
		return nil
	}
	out := make(map[netip.Addr]State, len(svc.members))
	for addr, m := range svc.members {
		out[addr] = m.spec.State
	}
	return out
}
