package ownership

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/vip/vrrp"
)

// Run tracks what the instances' priorities depend on until ctx ends:
// at once when Health says a service may have changed, when a link
// changes (netlink notification), when a reload or a track command's
// result changed, and every poll for what sends no signal (the
// forwarder's attachment and heartbeat). A pass asks Health about the
// tracked services only: nothing else is read or built.
func (o *VRRP) Run(ctx context.Context) {
	links := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) { o.log.Debug("vrrp tracking: link notifications", "error", err) },
	}); err != nil {
		o.log.Warn("vrrp tracking: no link notifications, link state is polled", "every", o.poll, "error", err)
		links = nil
	}
	defer func() {
		close(done)
		// The subscription's reader may be blocked sending: let it finish.
		if links != nil {
			go func() {
				for range links {
				}
			}()
		}
	}()
	poll := time.NewTicker(o.poll)
	defer poll.Stop()
	for {
		changed := o.health.Changed() // before the pass: no change is missed
		o.track()
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-o.kick:
		case <-links:
		case <-poll.C:
		}
	}
}

// wake asks tracking for a pass now; a pass already asked for is enough.
func wake(kick chan struct{}) {
	if kick == nil {
		return
	}
	select {
	case kick <- struct{}{}:
	default:
	}
}

func (o *VRRP) wake() { wake(o.kick) }

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

// world is what tracking looks at, so that the decision can be tested
// without interfaces.
type world struct {
	linkUp      func(string) bool
	dataplaneUp func(iface string) error
	serviceUp   func(name string) bool // some backend up
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
		if d := cfg.Track.Dataplane; d != nil {
			if err := w.dataplaneUp(cfg.Interface); err != nil {
				v.add(d.Weight, "dataplane on "+cfg.Interface+" down: "+err.Error())
			}
		}
		for _, it := range cfg.Track.Interfaces {
			if !w.linkUp(it.Name) {
				v.add(it.Weight, "tracked interface "+it.Name+" down")
			}
		}
		for _, it := range cfg.Track.Services {
			if !w.serviceUp(it.Name) {
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
func (o *VRRP) track() {
	runs := o.vrrpRuns()
	w := world{linkUp: linkUp, dataplaneUp: o.health.DataplaneUp, serviceUp: o.health.ServiceUp,
		commandOK: func(name string, i int) bool {
			r := runs[name]
			r.mu.Lock()
			defer r.mu.Unlock()
			// A reload may have changed the commands since cfgs was read.
			return i >= len(r.cmdOK) || r.cmdOK[i]
		}}
	cfgs := map[string]config.VRRP{}
	for name, r := range runs {
		r.mu.Lock()
		cfgs[name] = r.cfg
		r.mu.Unlock()
	}
	handoff := o.handoffs()
	for name, v := range decide(cfgs, w) {
		if why := handoff[name]; why != "" {
			v.fault, v.reason = true, why
		}
		r := runs[name]
		r.mu.Lock()
		same := r.applied.set && r.applied.fault == v.fault && r.applied.prio == v.prio
		if !same {
			r.applied.set, r.applied.fault, r.applied.reason, r.applied.prio = true, v.fault, v.reason, v.prio
		}
		r.mu.Unlock()
		if !same {
			if v.reason != "" {
				o.log.Info("vrrp tracking", "instance", name, "fault", v.fault, "priority", v.prio, "reason", v.reason)
			}
			r.inst.Track(v.fault, v.reason, v.prio)
		}
	}
}
