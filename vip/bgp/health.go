package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// HealthConfig: the hysteresis of route health injection.
type HealthConfig struct {
	// AnnounceAfter: a VIP must be healthy this long without a break
	// before it is announced again after a withdrawal. (The first
	// announcement of a VIP after start is gated by the warm-up instead.)
	AnnounceAfter time.Duration
	// Window: failures of an announced VIP closer together than this
	// double the wait each time; a VIP announced for Window without a
	// failure is forgiven (back to AnnounceAfter).
	Window time.Duration
	// MaxHoldDown caps the doubled wait.
	MaxHoldDown time.Duration
	// RisingMax bounds how long a withdrawn VIP that is otherwise ready
	// waits for its rising backends (HealthInput.Rising); 0: it does not
	// wait for them.
	RisingMax time.Duration
}

// HealthInput is everything route health injection looks at, sampled at
// one instant.
type HealthInput struct {
	// Usable: VIP -> at least one usable backend (missing: none).
	Usable map[netip.Addr]bool
	// DataplaneDown: why the XDP program cannot forward ("" = attached
	// and its heartbeat advances). Withdraws every route.
	DataplaneDown string
	// Draining: the operator asked this node to leave (drain-node, stop).
	Draining bool
	// WarmedUp: the node has learnt what it must know before it takes
	// traffic (shared flows); nothing is announced before.
	WarmedUp bool
	// Rising: VIP -> a backend of it is down with its checks passing,
	// short of rise. A withdrawn VIP waits for it (up to RisingMax): the
	// other nodes have that backend up, and a node whose table lacks it
	// sends some of the flows ECMP gives it to other backends than they
	// did (a node back from a partition whose checks had failed).
	Rising map[netip.Addr]bool
}

// Decision is the desired state of one VIP's route.
type Decision struct {
	VIP      netip.Addr
	Announce bool
	// Reason why the route is withdrawn ("" when announced).
	Reason string
	// Until: when a healthy VIP that waits (announce_after, hold-down)
	// will be announced, if it stays healthy; zero otherwise.
	Until time.Time
	// Since: when Announce last changed (start for a VIP never announced).
	Since time.Time
}

// Reasons for a withdrawn route (Decision.Reason), the varying part
// after a colon.
const (
	ReasonNoBackend = "no usable backend"
	ReasonDraining  = "draining"
	ReasonWarmingUp = "warming up"
	ReasonRising    = "waiting for backends coming up"
)

type vipHealth struct {
	announced    bool
	ever         bool      // announced at least once since start
	healthySince time.Time // zero while unhealthy
	rising       bool      // the last Update held it for rising backends
	since        time.Time
	flaps        int // failures of the announced route within Window
	lastFlap     time.Time
	announcedAt  time.Time
}

// Health turns per-VIP and node health into the set of routes to
// announce: withdraw at once on failure, announce only after a stretch of
// continuous health that grows while a VIP keeps flapping (every route
// change reshuffles ECMP upstream, which moves flows between nodes). It is
// pure logic on explicit times, so tests run it on a fake clock. Not safe
// for concurrent use.
type Health struct {
	cfg   HealthConfig
	vips  map[netip.Addr]*vipHealth
	start time.Time
}

// NewHealth tracks vips from now on; none is announced yet.
func NewHealth(cfg HealthConfig, now time.Time, vips []netip.Addr) *Health {
	h := &Health{cfg: cfg, vips: map[netip.Addr]*vipHealth{}, start: now}
	h.SetVIPs(now, vips)
	return h
}

// SetVIPs changes the tracked set (a reload): kept VIPs keep their state,
// new ones start withdrawn as if just started.
func (h *Health) SetVIPs(now time.Time, vips []netip.Addr) {
	keep := map[netip.Addr]*vipHealth{}
	for _, v := range vips {
		if old, ok := h.vips[v]; ok {
			keep[v] = old
		} else {
			keep[v] = &vipHealth{since: now}
		}
	}
	h.vips = keep
}

// SetConfig changes the hysteresis in place (a reload): every VIP keeps
// its state and failure history, and a VIP that waits is announced by the
// new settings' wait from when it became healthy.
func (h *Health) SetConfig(cfg HealthConfig) { h.cfg = cfg }

// wait is how long v must have been healthy before it is announced.
func (h *Health) wait(v *vipHealth) time.Duration {
	if !v.ever && v.flaps == 0 {
		return 0 // first announcement: the warm-up was the gate
	}
	w := h.cfg.AnnounceAfter
	for i := 1; i < v.flaps && w < h.cfg.MaxHoldDown; i++ {
		w *= 2
	}
	return min(w, max(h.cfg.MaxHoldDown, h.cfg.AnnounceAfter))
}

// Update takes the input at now and returns the desired state of every
// VIP, sorted by address.
func (h *Health) Update(now time.Time, in HealthInput) []Decision {
	out := make([]Decision, 0, len(h.vips))
	for addr, v := range h.vips {
		out = append(out, h.update(now, addr, v, in))
	}
	slices.SortFunc(out, func(a, b Decision) int { return a.VIP.Compare(b.VIP) })
	return out
}

func (h *Health) update(now time.Time, addr netip.Addr, v *vipHealth, in HealthInput) Decision {
	// Forgiveness: announced without a failure for a whole window.
	if v.announced && v.flaps > 0 && now.Sub(v.announcedAt) >= h.cfg.Window {
		v.flaps = 0
	}
	reason, failure := "", false
	switch {
	case in.DataplaneDown != "":
		reason, failure = "dataplane: "+in.DataplaneDown, true
	case in.Draining:
		reason = ReasonDraining
	case !in.WarmedUp:
		reason = ReasonWarmingUp
	case !in.Usable[addr]:
		reason, failure = ReasonNoBackend, true
	}
	if reason != "" {
		v.healthySince = time.Time{}
		if v.announced {
			v.announced = false
			v.since = now
			if failure {
				if !v.lastFlap.IsZero() && now.Sub(v.lastFlap) < h.cfg.Window {
					v.flaps++
				} else {
					v.flaps = 1
				}
				v.lastFlap = now
			}
		}
		return Decision{VIP: addr, Reason: reason, Since: v.since}
	}
	if v.healthySince.IsZero() {
		v.healthySince = now
	}
	v.rising = false
	if !v.announced {
		at := v.healthySince.Add(h.wait(v))
		if in.Rising[addr] && h.cfg.RisingMax > 0 {
			if until := v.healthySince.Add(h.cfg.RisingMax); now.Before(until) {
				v.rising = true
				return Decision{VIP: addr, Reason: fmt.Sprintf("%s (until %s at most)", ReasonRising, until.Format(clockFormat)), Until: later(at, until), Since: v.since}
			}
		}
		if now.Before(at) {
			why := fmt.Sprintf("waiting for announce_after (until %s)", at.Format(clockFormat))
			if v.flaps > 1 {
				why = fmt.Sprintf("holding down after flap (until %s)", at.Format(clockFormat))
			}
			return Decision{VIP: addr, Reason: why, Until: at, Since: v.since}
		}
		v.announced, v.ever = true, true
		v.announcedAt, v.since = now, now
	}
	return Decision{VIP: addr, Announce: true, Since: v.since}
}

const clockFormat = "15:04:05.000"

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Deadline is when Update must next be called even if no input changes
// (a healthy VIP's wait ends); zero when nothing waits. It reflects the
// last Update.
func (h *Health) Deadline() time.Time {
	var d time.Time
	for _, v := range h.vips {
		if v.announced || v.healthySince.IsZero() {
			continue
		}
		at := v.healthySince.Add(h.wait(v))
		if v.rising {
			at = later(at, v.healthySince.Add(h.cfg.RisingMax))
		}
		if d.IsZero() || at.Before(d) {
			d = at
		}
	}
	return d
}
