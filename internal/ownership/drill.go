package ownership

import "maps"

// What a node drill (internal/drill) asks of the VRRP owner: a planned
// handoff. While it lasts, tracking's verdict for each instance handed
// off is a fault with the drill's reason, so a master resigns (priority 0: a
// backup takes over after its skew time) and no instance takes the VIPs
// back until the drill releases it, whatever tracking sees meanwhile.

// HandoffInfo is one instance as a node drill plans with it.
type HandoffInfo struct {
	Name  string
	State string // initialize, backup, master, fault
	// Peers: configured unicast peers (0: multicast). Heard:
	// advertisements accepted from other routers since start.
	Peers int
	Heard uint64
}

// HandoffInfo describes the instances in config order.
func (o *VRRP) HandoffInfo() []HandoffInfo {
	var out []HandoffInfo
	for _, st := range o.Status() {
		peers := 0
		if r := o.vrrpRuns()[st.Name]; r != nil {
			r.mu.Lock()
			peers = len(r.cfg.Peers)
			r.mu.Unlock()
		}
		out = append(out, HandoffInfo{Name: st.Name, State: st.State.String(), Peers: peers, Heard: st.Received.Accepted})
	}
	return out
}

// Handoff puts the named instances out (fault, reason why) until release
// is called; release lets tracking decide again at once. A node drill
// names the instances that are master here: a backup put out would not
// stand by for its master meanwhile.
func (o *VRRP) Handoff(why string, names []string) (release func()) {
	o.mu.Lock()
	if o.handoff == nil {
		o.handoff = map[string]string{}
	}
	for _, n := range names {
		o.handoff[n] = why
	}
	o.mu.Unlock()
	o.reapply()
	return func() {
		o.mu.Lock()
		for _, n := range names {
			delete(o.handoff, n)
		}
		o.mu.Unlock()
		o.reapply()
	}
}

// handoffs returns the instances a drill keeps out, and why.
func (o *VRRP) handoffs() map[string]string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.handoff)
}

// reapply makes tracking hand its verdict to every instance, changed or
// not, in a pass of its own loop now (Run: passes never overlap, so an
// older verdict cannot land after this one).
func (o *VRRP) reapply() {
	for _, r := range o.vrrpRuns() {
		r.mu.Lock()
		r.applied.set = false
		r.mu.Unlock()
	}
	o.wake()
}
