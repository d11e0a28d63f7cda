package control

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/vip"
	"github.com/keepbit/keepbit/vip/vrrp"
)

// vrrpInstance is what control uses of a running *vrrp.Instance (tests
// put a fake in its place).
type vrrpInstance interface {
	State() (vrrp.State, uint8, netip.Addr)
	Counters() vrrp.Counters
	Track(fault bool, reason string, priority uint8)
	Update(ctx context.Context, cfg vrrp.InstanceConfig) error
}

// vrrpRun is one running VRRP instance and what tracking knows of it.
type vrrpRun struct {
	inst   vrrpInstance
	ctx    context.Context // the instance's lifetime
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	cfg     config.VRRP // replaced by in-place reloads
	last    vrrp.Event
	applied struct {
		fault  bool
		reason string
		prio   uint8
		set    bool
	}
	cmdOK      []bool             // last result of each track command
	stopTracks context.CancelFunc // ends the track command loops
}

// restartReason says why an instance configured as old must be replaced
// (stopped, which resigns a master, and started again) to take new, or ""
// when the change applies in place. Only what the sockets and the machine
// are made of needs a new instance: see vrrp.Instance.Update.
func restartReason(old, new config.VRRP) string {
	family := func(v config.VRRP) bool { return len(v.VIPs) > 0 && v.VIPs[0].Unmap().Is6() }
	switch {
	case old.Interface != new.Interface:
		return "interface"
	case old.VRID != new.VRID:
		return "vrid"
	case family(old) != family(new):
		return "address family"
	case (len(old.Peers) == 0) != (len(new.Peers) == 0):
		return "multicast or unicast peers"
	case (old.Priority == vrrp.OwnerPriority) != (new.Priority == vrrp.OwnerPriority):
		return "address owner (priority 255)"
	}
	return ""
}

func instanceConfig(v config.VRRP) vrrp.InstanceConfig {
	return vrrp.InstanceConfig{
		Name: v.Name, Interface: v.Interface, Peers: v.Peers,
		Burst:   vip.Burst{Count: v.Announce.Count, Spacing: v.Announce.Spacing, Late: *v.Announce.Late},
		Refresh: *v.Announce.Refresh,
		Machine: vrrp.Config{VRID: v.VRID, Priority: v.Priority, Interval: v.AdvertInterval, Preempt: *v.Preempt,
			PreemptDelay: v.PreemptDelay, Addrs: v.VIPs},
	}
}

// reloadVRRP starts, updates or stops instances to match cfg. A changed
// instance is updated in place (a master stays master) unless the change
// needs a new one (restartReason). Instances live as long as base: a
// graceful stop of keepbitd resigns them.
//
// A VIP may move between instances on one interface in a reload, and an
// instance losing a VIP removes it from the interface (a stopped master
// releases all of its own, an updated one those it no longer lists); done
// after the instance gaining it took it, that left a master without its
// VIP until its next state change. So stops go first, then updates, and
// an updated instance that gained a VIP which another one gave up in this
// reload is updated once more, which makes a master take its VIPs again.
func (c *Controller) reloadVRRP(cfg *config.Config) error {
	c.mu.Lock()
	base := c.base
	c.mu.Unlock()
	want := map[string]config.VRRP{}
	for _, v := range cfg.VRRP {
		want[v.Name] = v
	}
	dropped := map[netip.Addr]bool{} // VIPs some instance gave up
	stop := func(name string, r *vrrpRun, cur config.VRRP, why string) {
		c.log.Info("vrrp instance stops", "instance", name, "reason", why)
		r.stop()
		c.mu.Lock()
		delete(c.vrrp, name)
		c.mu.Unlock()
		c.rec.Add(recorder.Event{Kind: "vrrp-stopped", Reason: name + ": " + why})
		for _, a := range cur.VIPs {
			dropped[a] = true
		}
	}
	type change struct {
		name string
		r    *vrrpRun
		cur  config.VRRP
		v    config.VRRP
	}
	var inPlace, updated []change
	for name, r := range c.vrrpRuns() {
		r.mu.Lock()
		cur := r.cfg
		r.mu.Unlock()
		v, ok := want[name]
		switch {
		case ok && reflect.DeepEqual(v, cur):
		case !ok:
			stop(name, r, cur, "removed")
		case restartReason(cur, v) != "":
			stop(name, r, cur, restartReason(cur, v))
		default:
			inPlace = append(inPlace, change{name, r, cur, v})
		}
	}
	for _, ch := range inPlace {
		if err := c.updateVRRP(ch.r, ch.v); err != nil {
			stop(ch.name, ch.r, ch.cur, err.Error())
			continue
		}
		c.rec.Add(recorder.Event{Kind: "vrrp-updated", Reason: ch.name})
		updated = append(updated, ch)
		for _, a := range ch.cur.VIPs {
			if !slices.Contains(ch.v.VIPs, a) {
				dropped[a] = true
			}
		}
	}
	for _, ch := range updated {
		if !slices.ContainsFunc(ch.v.VIPs, func(a netip.Addr) bool { return dropped[a] && !slices.Contains(ch.cur.VIPs, a) }) {
			continue
		}
		ctx, cancel := context.WithTimeout(ch.r.ctx, 5*time.Second)
		if err := ch.r.inst.Update(ctx, instanceConfig(ch.v)); err != nil {
			c.log.Error("vrrp: retake moved vips", "instance", ch.name, "error", err)
		}
		cancel()
	}
	var errs []error
	for _, v := range cfg.VRRP {
		c.mu.Lock()
		_, running := c.vrrp[v.Name]
		c.mu.Unlock()
		if running {
			continue
		}
		r, err := c.startVRRP(base, v)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c.mu.Lock()
		c.vrrp[v.Name] = r
		c.mu.Unlock()
	}
	return errors.Join(errs...)
}

// updateVRRP applies v to a running instance in place: the instance takes
// its part first (an error leaves everything as it was), then tracking
// and notify follow v; tracking re-applies its verdict at its next pass,
// computed from v's priority and tracked objects.
func (c *Controller) updateVRRP(r *vrrpRun, v config.VRRP) error {
	ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	defer cancel()
	if err := r.inst.Update(ctx, instanceConfig(v)); err != nil {
		return err
	}
	// The config and the results of its track commands change under one
	// hold of r.mu: a tracking pass must never judge new command i by the
	// old command i's result (a failing weight-0 one would fault a master).
	r.mu.Lock()
	old := r.cfg
	r.cfg = v
	r.applied.set = false
	var start func()
	if !reflect.DeepEqual(old.Track.Commands, v.Track.Commands) {
		start = r.swapTracksLocked(v.Track.Commands)
	}
	r.mu.Unlock()
	if start != nil {
		start()
	}
	return nil
}

func (c *Controller) vrrpRuns() map[string]*vrrpRun {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.vrrp)
}

func (c *Controller) startVRRP(base context.Context, v config.VRRP) (*vrrpRun, error) {
	r := &vrrpRun{cfg: v, done: make(chan struct{})}
	// A VIP that an earlier keepbitd (killed before it could resign) left
	// on the interface must not keep answering ARP: the election decides.
	if v.Priority != vrrp.OwnerPriority {
		if _, removed, err := vip.Reconcile(v.Interface, v.VIPs, nil); err != nil {
			return nil, fmt.Errorf("instance %s: %w", v.Name, err)
		} else if len(removed) > 0 {
			c.log.Warn("removed stale VIPs left by an earlier run", "instance", v.Name, "vips", removed)
		}
	}
	inst, err := vrrp.NewInstance(instanceConfig(v), c.log, func(e vrrp.Event) { c.onVRRP(r, e) })
	if err != nil {
		return nil, err
	}
	r.inst = inst
	r.ctx, r.cancel = context.WithCancel(base)
	go func() {
		defer close(r.done)
		_ = inst.Run(r.ctx)
	}()
	r.startTracks(v.Track.Commands)
	return r, nil
}

// startTracks (re)starts the loops of cmds, ending those of an earlier
// set. Each loop writes into the result slice of its own set, so a loop
// of the old set that is still finishing never writes into the new one.
func (r *vrrpRun) startTracks(cmds []config.TrackCommand) {
	r.mu.Lock()
	start := r.swapTracksLocked(cmds)
	r.mu.Unlock()
	start()
}

// swapTracksLocked ends the loops of the earlier set and installs the
// result slice of cmds; the returned function starts cmds' loops (after
// r.mu is released: they take it). r.mu must be held.
func (r *vrrpRun) swapTracksLocked(cmds []config.TrackCommand) func() {
	ctx, cancel := context.WithCancel(r.ctx)
	ok := make([]bool, len(cmds))
	for i := range ok {
		ok[i] = true // innocent until a run says otherwise
	}
	if r.stopTracks != nil {
		r.stopTracks()
	}
	r.cmdOK, r.stopTracks = ok, cancel
	return func() {
		for i, tc := range cmds {
			go r.runTrackCommand(ctx, ok, i, tc)
		}
	}
}

func (r *vrrpRun) stop() {
	r.cancel()
	<-r.done
}

func (r *vrrpRun) runTrackCommand(ctx context.Context, ok []bool, i int, tc config.TrackCommand) {
	t := time.NewTicker(tc.Interval)
	defer t.Stop()
	for {
		err := trackCommandOnce(ctx, tc)
		r.mu.Lock()
		ok[i] = err == nil
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Controller) onVRRP(r *vrrpRun, e vrrp.Event) {
	r.mu.Lock()
	r.last = e
	notify := r.cfg.Notify
	r.mu.Unlock()
	ev := c.rec.Add(recorder.Event{Kind: "vrrp-" + e.To.String(), Service: e.Instance, Reason: e.Reason,
		Detect: e.Detect, Decide: e.Decide, Announce: e.Announce})
	c.log.Info("vrrp "+e.To.String(), "instance", e.Instance, "from", e.From.String(), "reason", e.Reason,
		"detect_to_decide", e.Decide.Sub(e.Detect), "detect_to_announce", ev.DetectToAnnounce)
	if notify.Command != "" {
		go c.runNotify(notify, ev)
	}
}

// trackLoop re-evaluates every instance's tracked objects every 100 ms.
func (c *Controller) trackLoop(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.track()
		}
	}
}

type verdictOf struct {
	fault   bool
	reasons []string
	penalty int
}

func (v *verdictOf) add(weight int, what string) {
	if weight == 0 {
		v.fault = true
	} else {
		v.penalty += weight
	}
	v.reasons = append(v.reasons, what)
}

func linkUp(name string) bool {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return false
	}
	a := l.Attrs()
	return a.Flags&1 != 0 && (a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown)
}

func xdpAttached(name string) bool {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return false
	}
	x := l.Attrs().Xdp
	return x != nil && x.Attached
}

// world is what tracking looks at, so that the decision can be tested
// without interfaces.
type world struct {
	linkUp      func(string) bool
	xdpAttached func(string) bool
	serviceUp   map[string]bool // some backend up
	commandOK   func(instance string, i int) bool
}

type trackVerdict struct {
	fault  bool
	prio   uint8
	reason string
}

// decide computes each instance's verdict. Its own interface down is a
// fault; tracked objects subtract their weight (0 = fault). Members of a
// sync group share one verdict (a fault of one faults all, penalties add
// up), so they move together. The owner's priority 255 never changes.
func decide(cfgs map[string]config.VRRP, w world) map[string]trackVerdict {
	verdicts := map[string]*verdictOf{}
	for name, cfg := range cfgs {
		v := &verdictOf{}
		if !w.linkUp(cfg.Interface) {
			v.add(0, "interface "+cfg.Interface+" down")
		}
		if d := cfg.Track.Dataplane; d != nil && !w.xdpAttached(cfg.Interface) {
			v.add(d.Weight, "dataplane not attached on "+cfg.Interface)
		}
		for _, it := range cfg.Track.Interfaces {
			if !w.linkUp(it.Name) {
				v.add(it.Weight, "tracked interface "+it.Name+" down")
			}
		}
		for _, it := range cfg.Track.Services {
			if !w.serviceUp[it.Name] {
				v.add(it.Weight, "all backends of service "+it.Name+" down")
			}
		}
		for i, tc := range cfg.Track.Commands {
			if !w.commandOK(name, i) {
				v.add(tc.Weight, "track command "+tc.Command+" failed")
			}
		}
		verdicts[name] = v
	}
	groups := map[string]*verdictOf{}
	names := make([]string, 0, len(cfgs))
	for name := range cfgs {
		names = append(names, name)
	}
	sort.Strings(names) // stable reasons
	for _, name := range names {
		if g := cfgs[name].SyncGroup; g != "" {
			if groups[g] == nil {
				groups[g] = &verdictOf{}
			}
			gv, v := groups[g], verdicts[name]
			gv.fault = gv.fault || v.fault
			gv.penalty += v.penalty
			for _, why := range v.reasons {
				gv.reasons = append(gv.reasons, name+": "+why)
			}
		}
	}
	out := map[string]trackVerdict{}
	for name, cfg := range cfgs {
		v := verdicts[name]
		if g := cfg.SyncGroup; g != "" {
			v = groups[g]
		}
		prio := uint8(max(1, min(254, int(cfg.Priority)-v.penalty)))
		if cfg.Priority == vrrp.OwnerPriority {
			prio = vrrp.OwnerPriority
		}
		out[name] = trackVerdict{fault: v.fault, prio: prio, reason: strings.Join(v.reasons, "; ")}
	}
	return out
}

// track applies decide's verdicts to the running instances, when changed.
func (c *Controller) track() {
	runs := c.vrrpRuns()
	w := world{linkUp: linkUp, xdpAttached: xdpAttached, serviceUp: map[string]bool{},
		commandOK: func(name string, i int) bool {
			r := runs[name]
			r.mu.Lock()
			defer r.mu.Unlock()
			// A reload may have changed the commands since cfgs was read.
			return i >= len(r.cmdOK) || r.cmdOK[i]
		}}
	for _, s := range c.Status() {
		for _, b := range s.Backends {
			w.serviceUp[s.Name] = w.serviceUp[s.Name] || b.State == "up"
		}
	}
	cfgs := map[string]config.VRRP{}
	for name, r := range runs {
		r.mu.Lock()
		cfgs[name] = r.cfg
		r.mu.Unlock()
	}
	for name, v := range decide(cfgs, w) {
		r := runs[name]
		r.mu.Lock()
		same := r.applied.set && r.applied.fault == v.fault && r.applied.prio == v.prio
		if !same {
			r.applied.set, r.applied.fault, r.applied.reason, r.applied.prio = true, v.fault, v.reason, v.prio
		}
		r.mu.Unlock()
		if !same {
			if v.reason != "" {
				c.log.Info("vrrp tracking", "instance", name, "fault", v.fault, "priority", v.prio, "reason", v.reason)
			}
			r.inst.Track(v.fault, v.reason, v.prio)
		}
	}
}

// VIPStatus is one VRRP instance as keepbitctl vip shows it.
type VIPStatus struct {
	Name         string    `json:"name"`
	VRID         uint8     `json:"vrid"`
	Interface    string    `json:"interface"`
	VIPs         []string  `json:"vips"`
	State        string    `json:"state"`
	Priority     uint8     `json:"priority"`
	BasePriority uint8     `json:"base_priority"`
	Master       string    `json:"master,omitempty"`
	Since        time.Time `json:"since,omitzero"`
	Reason       string    `json:"reason,omitempty"`
	Tracking     string    `json:"tracking,omitempty"`
	// Received advertisements by what happened to them.
	Received vrrp.Counters `json:"received"`
}

// VIPs lists the VRRP instances in config order.
func (c *Controller) VIPs() []VIPStatus {
	runs := c.vrrpRuns()
	c.mu.Lock()
	var order []string
	if c.cfg != nil {
		for _, v := range c.cfg.VRRP {
			order = append(order, v.Name)
		}
	}
	c.mu.Unlock()
	var out []VIPStatus
	for _, name := range order {
		r := runs[name]
		if r == nil {
			continue
		}
		st, prio, master := r.inst.State()
		r.mu.Lock()
		rc := r.cfg
		r.mu.Unlock()
		vs := VIPStatus{Name: name, VRID: rc.VRID, Interface: rc.Interface, State: st.String(), Priority: prio, BasePriority: rc.Priority,
			Received: r.inst.Counters()}
		for _, a := range rc.VIPs {
			vs.VIPs = append(vs.VIPs, a.String())
		}
		if master.IsValid() {
			vs.Master = master.String()
		}
		r.mu.Lock()
		vs.Since, vs.Reason, vs.Tracking = r.last.Decide, r.last.Reason, r.applied.reason
		r.mu.Unlock()
		out = append(out, vs)
	}
	return out
}

// stopVRRP resigns every instance (priority 0) and releases its VIPs.
func (c *Controller) stopVRRP() {
	for name, r := range c.vrrpRuns() {
		r.stop()
		c.mu.Lock()
		delete(c.vrrp, name)
		c.mu.Unlock()
	}
}
