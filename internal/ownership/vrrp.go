package ownership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/vip"
	"github.com/keepbit/keepbit/vip/vrrp"
)

// VRRP runs the node's VRRP instances (vip/vrrp) as the config says and
// moves their priority with what they track: their interface, other
// interfaces, the dataplane, services (through Health) and track commands.
type VRRP struct {
	log    *slog.Logger
	rec    *recorder.Recorder
	health Health
	notify Notifier
	base   context.Context // lifetime of the instances

	// poll is how often tracking looks at what sends no signal (whether
	// the forwarder is attached and alive); link changes and service
	// health wake it at once.
	poll time.Duration
	kick chan struct{} // a reload or a track command's result changed

	mu    sync.Mutex
	runs  map[string]*vrrpRun
	order []string // instance names in config order, for Status
	// handoff: instances a drill keeps out, and why (drill.go).
	handoff map[string]string
}

// DefaultPoll is how often tracking re-reads what has no change signal.
const DefaultPoll = 500 * time.Millisecond

// NewVRRP returns a VRRP owner with no instances; Reload starts them.
// Instances live as long as ctx (or until Close): a graceful stop of
// keepbitd resigns them. Run does the tracking.
func NewVRRP(ctx context.Context, log *slog.Logger, rec *recorder.Recorder, health Health, notify Notifier) *VRRP {
	return &VRRP{log: log, rec: rec, health: health, notify: notify, base: ctx, poll: DefaultPoll,
		kick: make(chan struct{}, 1), runs: map[string]*vrrpRun{}}
}

// Close resigns every instance (priority 0, so a backup takes the VIPs at
// once) and releases its VIPs.
func (o *VRRP) Close() {
	for name, r := range o.vrrpRuns() {
		r.stop()
		o.mu.Lock()
		delete(o.runs, name)
		o.mu.Unlock()
	}
}

// vrrpInstance is what the owner uses of a running *vrrp.Instance (tests
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
	kick       chan struct{}      // wakes tracking (the owner's)
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

// Reload starts, updates or stops instances to match cfg. A changed
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
func (o *VRRP) Reload(_ context.Context, cfg *config.Config) error {
	base := o.base
	// Instance lifetimes are o.base's, never a reload request's: an
	// update waits at most its own 5 s.
	defer o.wake() // tracking re-applies its verdicts to what changed
	want := map[string]config.VRRP{}
	for _, v := range cfg.VRRP {
		want[v.Name] = v
	}
	dropped := map[netip.Addr]bool{} // VIPs some instance gave up
	stop := func(name string, r *vrrpRun, cur config.VRRP, why string) {
		o.log.Info("vrrp instance stops", "instance", name, "reason", why)
		r.stop()
		o.mu.Lock()
		delete(o.runs, name)
		o.mu.Unlock()
		o.rec.Add(recorder.Event{Kind: "vrrp-stopped", Reason: name + ": " + why})
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
	for name, r := range o.vrrpRuns() {
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
		if err := o.updateVRRP(ch.r, ch.v); err != nil {
			stop(ch.name, ch.r, ch.cur, err.Error())
			continue
		}
		o.rec.Add(recorder.Event{Kind: "vrrp-updated", Reason: ch.name})
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
			o.log.Error("vrrp: retake moved vips", "instance", ch.name, "error", err)
		}
		cancel()
	}
	var errs []error
	for _, v := range cfg.VRRP {
		o.mu.Lock()
		_, running := o.runs[v.Name]
		o.mu.Unlock()
		if running {
			continue
		}
		r, err := o.startVRRP(base, v)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		o.mu.Lock()
		o.runs[v.Name] = r
		o.mu.Unlock()
	}
	order := make([]string, 0, len(cfg.VRRP))
	for _, v := range cfg.VRRP {
		order = append(order, v.Name)
	}
	o.mu.Lock()
	o.order = order
	o.mu.Unlock()
	return errors.Join(errs...)
}

// updateVRRP applies v to a running instance in place: the instance takes
// its part first (an error leaves everything as it was), then tracking
// and notify follow v; tracking re-applies its verdict at its next pass,
// computed from v's priority and tracked objects.
func (o *VRRP) updateVRRP(r *vrrpRun, v config.VRRP) error {
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

func (o *VRRP) vrrpRuns() map[string]*vrrpRun {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.runs)
}

func (o *VRRP) startVRRP(base context.Context, v config.VRRP) (*vrrpRun, error) {
	r := &vrrpRun{cfg: v, done: make(chan struct{}), kick: o.kick}
	// A VIP that an earlier keepbitd (killed before it could resign) left
	// on the interface must not keep answering ARP: the election decides.
	if v.Priority != vrrp.OwnerPriority {
		if _, removed, err := vip.Reconcile(v.Interface, v.VIPs, nil); err != nil {
			return nil, fmt.Errorf("instance %s: %w", v.Name, err)
		} else if len(removed) > 0 {
			o.log.Warn("removed stale VIPs left by an earlier run", "instance", v.Name, "vips", removed)
		}
	}
	inst, err := vrrp.NewInstance(instanceConfig(v), o.log, func(e vrrp.Event) { o.onVRRP(r, e) })
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
		changed := ok[i] != (err == nil)
		ok[i] = err == nil
		r.mu.Unlock()
		if changed {
			wake(r.kick) // the verdict may move now, not at the next poll
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (o *VRRP) onVRRP(r *vrrpRun, e vrrp.Event) {
	r.mu.Lock()
	r.last = e
	notify := r.cfg.Notify
	vips := slices.Clone(r.cfg.VIPs)
	r.mu.Unlock()
	if e.From == vrrp.Master && e.To != vrrp.Master || e.To == vrrp.Backup {
		// The flows go on on the master, placed by its table: what this
		// node learned of them (before it handed the VIPs over, or
		// before it restarted) is wrong if the VIPs come back.
		if f, ok := o.health.(FlowForgetter); ok {
			go func() {
				flows, cached, err := f.ForgetFlows(vips)
				if err != nil {
					o.log.Warn("forget the flows of a VIP handed over", "instance", e.Instance, "error", err)
					return
				}
				o.log.Info("flows of a VIP handed over forgotten", "instance", e.Instance, "flows", flows, "cache_entries", cached)
			}()
		}
	}
	// The event happened when the machine changed state, not when it
	// reaches the recorder: that is after the VIPs were taken or released
	// and the first announcement went out, later still on a node that
	// was frozen or busy, and a timeline merged by time would misplace it.
	ev := o.rec.Add(recorder.Event{Time: e.Decide, Kind: "vrrp-" + e.To.String(), Service: e.Instance, Reason: e.Reason,
		Detect: e.Detect, Decide: e.Decide, Announce: e.Announce})
	o.log.Info("vrrp "+e.To.String(), "instance", e.Instance, "from", e.From.String(), "reason", e.Reason,
		"detect_to_decide", e.Decide.Sub(e.Detect), "detect_to_announce", ev.DetectToAnnounce)
	if notify.Command != "" {
		go o.notify.RunNotify(notify, ev)
	}
}

// VRRPStatus is one VRRP instance as keepbitctl vip shows it.
type VRRPStatus struct {
	Name         string
	VRID         uint8
	Interface    string
	VIPs         []netip.Addr
	State        vrrp.State
	Priority     uint8 // in force, after tracking
	BasePriority uint8 // configured
	Master       netip.Addr
	Since        time.Time // of the last transition
	Reason       string    // of the last transition
	Tracking     string    // why tracking lowered the priority or faulted it
	// Received advertisements by what happened to them.
	Received vrrp.Counters
}

// Status lists the VRRP instances in config order.
func (o *VRRP) Status() []VRRPStatus {
	runs := o.vrrpRuns()
	o.mu.Lock()
	order := o.order
	o.mu.Unlock()
	var out []VRRPStatus
	for _, name := range order {
		r := runs[name]
		if r == nil {
			continue
		}
		st, prio, master := r.inst.State()
		r.mu.Lock()
		rc := r.cfg
		vs := VRRPStatus{Name: name, VRID: rc.VRID, Interface: rc.Interface, VIPs: slices.Clone(rc.VIPs), State: st, Priority: prio,
			BasePriority: rc.Priority, Master: master, Since: r.last.Decide, Reason: r.last.Reason, Tracking: r.applied.reason}
		r.mu.Unlock()
		vs.Received = r.inst.Counters()
		out = append(out, vs)
	}
	return out
}
