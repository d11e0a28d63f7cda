package control

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// Admin is an operator's override of a backend.
type Admin string

const (
	Enabled  Admin = ""         // follow the health checks
	Draining Admin = "draining" // keep established flows, no new ones
	Disabled Admin = "disabled" // down
)

// onProbe turns a check's verdict into the backend's dataplane state,
// through the operator's override and the service's policies.
func (c *Controller) onProbe(ev probe.Event) {
	c.mu.Lock()
	b := c.byCheck[ev.Check]
	if b == nil {
		c.mu.Unlock()
		return
	}
	changed := b.health != ev.To
	b.health = ev.To
	if ev.To == probe.Down && ev.Err != nil {
		b.reason = "check failed: " + ev.Err.Error()
	} else {
		b.reason = "check " + ev.To.String()
	}
	// Only a change of health is a transition: a check re-added by a
	// reload starts unknown and repeats the health the backend has.
	if s := b.svc.cfg.Flap; s.Transitions > 0 && changed {
		now := time.Now()
		b.flaps = append(b.flaps, now)
		for len(b.flaps) > 0 && now.Sub(b.flaps[0]) > s.Within {
			b.flaps = b.flaps[1:]
		}
		if len(b.flaps) >= s.Transitions {
			b.heldUntil = now.Add(s.HoldDown)
			b.flaps = nil
			b.reason = fmt.Sprintf("flapping: %d transitions within %v, held down for %v", s.Transitions, s.Within, s.HoldDown)
			time.AfterFunc(s.HoldDown, func() { c.reevaluate(b) })
		}
	}
	c.mu.Unlock()
	c.settle(b, ev.Detect, ev.Decide)
}

func (c *Controller) reevaluate(b *backend) {
	c.settle(b, time.Time{}, time.Now())
}

// settle computes what the dataplane should hold for b, writes it, and
// re-settles the rest of b's service when that moved anything.
func (c *Controller) settle(b *backend, detect, decide time.Time) {
	c.mu.Lock()
	moves := c.settleLocked(b.svc, b, detect, decide)
	c.mu.Unlock()
	c.report(moves)
}

// move is one outcome of settling a backend, reported after c.mu is let go.
type move struct {
	svc     string
	addr    netip.Addr
	want    loader.State
	kind    string // "panic", "keep-last": a policy refused to take it out
	reason  string
	detect  time.Time
	decide  time.Time
	applied time.Time // zero: nothing written
	err     error
	notify  config.Notify
}

// settleLocked writes what the dataplane should hold for first (nil: for
// every backend of s), and then, as long as a pass writes anything,
// settles s's other backends: the panic threshold and keep-last depend on
// how many backends are up, so a backend they kept up while failing must
// go once the others recover. Each pass only moves a failing backend down
// or a healthy one up, so the passes end; the bound is a safety net, not
// a limit ever reached. Writes take microseconds (one state word each).
func (c *Controller) settleLocked(s *service, first *backend, detect, decide time.Time) []move {
	if c.svcs[s.cfg.Name] != s {
		return nil // removed meanwhile
	}
	var moves []move
	try := func(b *backend, detect, decide time.Time, trigger bool) bool {
		want, kind, reason := c.desiredLocked(b)
		if want == b.state || !b.inDP {
			if trigger && (kind == "panic" || kind == "keep-last") {
				moves = append(moves, move{svc: s.cfg.Name, addr: b.cfg.Address, want: want, kind: kind, reason: reason, detect: detect, decide: decide})
			}
			return false
		}
		ch, err := c.writeStateLocked(s, b.cfg.Address, want)
		if err != nil {
			moves = append(moves, move{svc: s.cfg.Name, addr: b.cfg.Address, want: want, err: err})
			return false
		}
		if want == loader.Up || b.state == loader.Up {
			c.signalChanged()
		}
		b.state, b.since = want, ch.Returned
		moves = append(moves, move{svc: s.cfg.Name, addr: b.cfg.Address, want: want, kind: kind, reason: reason,
			detect: detect, decide: decide, applied: ch.Returned, notify: s.cfg.Notify})
		return true
	}
	again := first == nil
	if first != nil {
		if s.backends[first.cfg.Address] != first {
			return nil // removed meanwhile
		}
		// A backend drained by prediction yields to a failure a policy
		// refused (predict.go), so its service is re-settled then too.
		again = try(first, detect, decide, true) || c.predictDrainedLocked(s) || c.passiveFlaggedLocked(s)
	}
	for pass := 0; again && pass <= len(s.order); pass++ {
		again = false
		now := time.Now()
		for _, addr := range s.order {
			if try(s.backends[addr], time.Time{}, now, first == nil && pass == 0) {
				again = true
			}
		}
	}
	return moves
}

func (c *Controller) writeStateLocked(s *service, addr netip.Addr, st loader.State) (loader.Change, error) {
	if c.writeState != nil {
		return c.writeState(s, addr, st)
	}
	return s.dp.SetBackendState(s.key, addr, st)
}

// readBackLocked makes the controller's idea of each backend's state what
// the dataplane holds for s.
func (c *Controller) readBackLocked(s *service) {
	if c.svcs[s.cfg.Name] != s {
		return
	}
	held := s.dp.BackendStates(s.key)
	for _, addr := range s.order {
		b := s.backends[addr]
		st, ok := held[addr]
		b.inDP = ok
		if !ok {
			// Not in the dataplane (MAC unknown, or the apply failed): it
			// takes no traffic, so it is down, for Status and for the
			// panic threshold and keep-last, which count backends up.
			if b.state != loader.Down {
				if b.state == loader.Up {
					c.signalChanged()
				}
				b.state, b.since = loader.Down, time.Now()
			}
			continue
		}
		if st != b.state {
			c.log.Warn("dataplane holds another state than the controller thought: corrected", "service", s.cfg.Name, "backend", addr,
				"thought", b.state, "holds", st)
			if st == loader.Up || b.state == loader.Up {
				c.signalChanged()
			}
			b.state = st
		}
	}
}

// desiredLocked applies, in order: the operator's override, flap hold-down,
// the health verdict, then the service's panic threshold and keep-last
// policy, which may refuse to take a backend out.
func (c *Controller) desiredLocked(b *backend) (loader.State, string, string) {
	switch b.admin {
	case Disabled:
		return loader.Down, "", "disabled by operator"
	case Draining:
		return loader.Draining, "", "draining by operator"
	}
	if time.Now().Before(b.heldUntil) {
		return loader.Down, "", b.reason
	}
	if st, reason, ok := c.passiveDesiredLocked(b); ok {
		return st, "", reason
	}
	if st, reason, ok := c.predictDesiredLocked(b); ok {
		return st, "", reason
	}
	if b.health == probe.Up {
		return loader.Up, "", b.reason
	}
	if b.health == probe.Unknown {
		return b.state, "", b.reason
	}
	s := b.svc
	if b.state == loader.Up {
		up, total := 0, len(s.backends)
		for _, o := range s.backends {
			if o.state == loader.Up {
				up++
			}
		}
		if t := s.cfg.PanicThreshold; t > 0 && (total-up+1)*100 > t*total {
			return loader.Up, "panic", fmt.Sprintf("%d of %d backends would be down, beyond the panic threshold of %d%%: not ejected (%s)", total-up+1, total, t, b.reason)
		}
		if s.cfg.WhenAllDown == "keep-last" && up == 1 {
			return loader.Up, "keep-last", "last healthy backend kept (when_all_down: keep-last): " + b.reason
		}
	}
	return loader.Down, "", b.reason
}

// SetAdmin applies an operator override to a backend of a service.
func (c *Controller) SetAdmin(service string, addr netip.Addr, a Admin) error {
	addr = addr.Unmap() // as the config keys it (::ffff:a.b.c.d is a.b.c.d)
	c.mu.Lock()
	s := c.svcs[service]
	if s == nil {
		c.mu.Unlock()
		return fmt.Errorf("service %q: %w", service, ErrNotConfigured)
	}
	b := s.backends[addr]
	if b == nil {
		c.mu.Unlock()
		return fmt.Errorf("service %q: backend %s: %w", service, addr, ErrNotConfigured)
	}
	b.admin = a
	c.setOverrideLocked(service, addr, a)
	c.mu.Unlock()
	// Saved before it is applied: a crash in between leaves the override
	// to be applied at the next start, never a backend back in rotation.
	err := c.saveOverrides()
	c.mu.Lock()
	moves := c.settleLocked(b.svc, b, time.Time{}, time.Now())
	c.mu.Unlock()
	c.report(moves)
	// A failed dataplane write is the operator's to know, not only the
	// log's: the override stays and applies at the backend's next settle.
	var werr error
	for _, m := range moves {
		if m.err != nil && m.addr == addr {
			werr = fmt.Errorf("service %q: backend %s: %s recorded but not applied: %w", service, addr, adminName(a), m.err)
		}
	}
	if err != nil {
		return errors.Join(werr, fmt.Errorf("service %q: backend %s: %s applied but not saved (lost on restart): %w", service, addr, adminName(a), err))
	}
	return werr
}
