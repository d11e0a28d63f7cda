package control

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// Passive detection (a service's `passive:` section): every
// config.PassiveSample the controller reads how many retransmitted SYNs
// the XDP program counted per backend (loader.SynRetransmits). A backend
// with syn_retransmits of them within window is flagged and, with action
// eject, taken down through desiredLocked like every other state,
// bounded like prediction: never the last usable backend, never beyond
// the panic threshold, never more than max_ejected of the service at
// once. It returns once hold has passed and its active check has passed
// rise times in a row since the ejection: a backend that blackholes
// traffic fails its checks too and stays out until it is repaired.

// passiveState is one backend's SYN-retransmission history.
type passiveState struct {
	sampled bool
	lastID  uint32 // the dataplane ID the last count belongs to
	last    uint64 // that ID's count
	recent  []passiveSample
	total   uint64 // retransmitted SYNs counted since configured

	ejected   bool // flagged (and, with action eject, down if allowed)
	since     time.Time
	reason    string
	acted     string // "ejected", "flagged", or why not ejected
	ejections uint64
	passes    int // probe results passed in a row since the ejection
}

type passiveSample struct {
	at time.Time
	n  uint64
}

// Passivity is a backend's passive detection as Status reports it.
type Passivity struct {
	Ejected   bool
	Acted     string
	Reason    string
	Since     time.Time
	InWindow  uint64 // retransmitted SYNs within the window now
	Total     uint64
	Ejections uint64
}

func (p *passiveState) inWindow() uint64 {
	var n uint64
	for _, s := range p.recent {
		n += s.n
	}
	return n
}

// passivityLocked is b's Passivity, nil when its service has none.
func (c *Controller) passivityLocked(b *backend) *Passivity {
	if b.svc.cfg.Passive == nil {
		return nil
	}
	p := b.passive
	if p == nil {
		return &Passivity{}
	}
	return &Passivity{Ejected: p.ejected, Acted: p.acted, Reason: p.reason, Since: p.since, InWindow: p.inWindow(), Total: p.total, Ejections: p.ejections}
}

// passiveLoop samples the counters of every service with passive
// detection until ctx ends.
func (c *Controller) passiveLoop(ctx context.Context) {
	t := time.NewTicker(config.PassiveSample)
	defer t.Stop()
	type job struct {
		name string
		key  loader.ServiceKey
		dp   *loader.Dataplane
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var jobs []job
		c.mu.Lock()
		for name, s := range c.svcs {
			if s.cfg.Passive != nil && s.dp != nil {
				jobs = append(jobs, job{name, s.key, s.dp})
			}
		}
		c.mu.Unlock()
		for _, j := range jobs {
			counts, err := j.dp.SynRetransmits(j.key)
			if err != nil {
				c.log.Debug("passive detection: read counters", "service", j.name, "error", err)
				continue
			}
			c.passiveObserve(j.name, counts, time.Now())
		}
	}
}

// passiveObserve takes one reading of a service's counters.
func (c *Controller) passiveObserve(name string, counts map[netip.Addr]loader.SynRetransmits, now time.Time) {
	var events []recorder.Event
	var moves []move
	c.mu.Lock()
	s := c.svcs[name]
	if s == nil || s.cfg.Passive == nil {
		c.mu.Unlock()
		return
	}
	pa := s.cfg.Passive
	for _, addr := range s.order {
		b := s.backends[addr]
		got, ok := counts[addr]
		if !ok {
			continue
		}
		if b.passive == nil {
			b.passive = &passiveState{}
		}
		p := b.passive
		// A new ID starts from zero: only the same ID's counts compare.
		if p.sampled && p.lastID == got.ID && got.Count > p.last {
			d := got.Count - p.last
			p.total += d
			p.recent = append(p.recent, passiveSample{at: now, n: d})
		}
		p.sampled, p.lastID, p.last = true, got.ID, got.Count
		for len(p.recent) > 0 && now.Sub(p.recent[0].at) > pa.Window {
			p.recent = p.recent[1:]
		}
		n := p.inWindow()
		if p.ejected || n < uint64(pa.SynRetransmits) || b.health == probe.Down {
			continue
		}
		p.ejected, p.since, p.passes = true, now, 0
		p.ejections++
		p.reason = fmt.Sprintf("%d retransmitted SYNs within %v (threshold %d)", n, pa.Window, pa.SynRetransmits)
		p.acted = "flagged"
		if pa.Action == "eject" {
			moves = append(moves, c.settleLocked(s, b, p.recent[0].at, now)...)
		}
		events = append(events, recorder.Event{Kind: "passive-ejected", Service: name, Backend: addr.String(),
			Reason: p.acted + ": " + p.reason, Detect: p.recent[0].at, Decide: now})
	}
	c.mu.Unlock()
	for _, ev := range events {
		c.rec.Add(ev)
		c.log.Warn("backend "+ev.Kind, "service", ev.Service, "backend", ev.Backend, "reason", ev.Reason)
	}
	c.report(moves)
}

// passiveResult counts a backend's probe results after its ejection and
// lets it return after hold once its check has passed rise times in a
// row.
func (c *Controller) passiveResult(r probe.Result) {
	c.mu.Lock()
	b := c.byCheck[r.Check]
	if b == nil || b.passive == nil || !b.passive.ejected || b.svc.cfg.Passive == nil {
		c.mu.Unlock()
		return
	}
	p, pa := b.passive, b.svc.cfg.Passive
	if r.Err != nil {
		p.passes = 0
		c.mu.Unlock()
		return
	}
	p.passes++
	now := time.Now()
	if p.passes < max(b.cfg.Check.Rise, 1) || now.Sub(p.since) < pa.Hold {
		c.mu.Unlock()
		return
	}
	p.ejected, p.acted, p.since, p.recent = false, "", now, nil
	ev := recorder.Event{Kind: "passive-recovered", Service: b.svc.cfg.Name, Backend: b.cfg.Address.String(),
		Reason: fmt.Sprintf("check passed %d times since the ejection, held %v", p.passes, pa.Hold), Detect: r.Start, Decide: now}
	moves := c.settleLocked(b.svc, b, r.Start, now)
	c.mu.Unlock()
	c.rec.Add(ev)
	c.log.Info("backend "+ev.Kind, "service", ev.Service, "backend", ev.Backend, "reason", ev.Reason)
	c.report(moves)
}

// passiveDesiredLocked is the ejection a flagged backend gets (action
// eject), if its service can spare it; ok false leaves b to the rest of
// desiredLocked.
func (c *Controller) passiveDesiredLocked(b *backend) (st loader.State, reason string, ok bool) {
	p, pa := b.passive, b.svc.cfg.Passive
	if pa == nil || pa.Action != "eject" || p == nil || !p.ejected {
		return 0, "", false
	}
	acted, ok := spareLocked(b, "ejected", "by passive detection", "max_ejected", pa.MaxEjected, func(o *backend) bool {
		return o.passive != nil && o.passive.ejected && o.passive.acted == "ejected"
	})
	p.acted = acted
	if !ok {
		return 0, "", false
	}
	return loader.Down, "passive: " + p.reason, true
}

// spareLocked decides whether b's service can spare b for a detector's
// action (verb: "drained", "ejected"; by: the detector): capacity left
// without b (backends taking new flows that no check has failed; one a
// policy keeps up while failing is not capacity) must not be nothing,
// nor beyond the panic threshold, and fewer than max of its backends may
// be taken by the detector already (taken). acted says what happened, or
// why not.
func spareLocked(b *backend, verb, by, maxName string, max int, taken func(o *backend) bool) (acted string, ok bool) {
	s := b.svc
	usable, already, total := 0, 0, len(s.backends)
	for _, o := range s.backends {
		if o == b {
			continue
		}
		if o.state == loader.Up && o.health != probe.Down {
			usable++
		}
		if taken(o) {
			already++
		}
	}
	switch t := s.cfg.PanicThreshold; {
	case usable == 0:
		return "not " + verb + ": the last usable backend", false
	case t > 0 && (total-usable)*100 > t*total:
		return fmt.Sprintf("not %s: %d of %d backends would be out, beyond the panic threshold of %d%%", verb, total-usable, total, t), false
	case already >= max:
		return fmt.Sprintf("not %s: %d %s %s already (%s %d)", verb, already, verb, by, maxName, max), false
	}
	return verb, true
}

// passiveFlaggedLocked reports whether a backend of s is flagged for
// ejection: settleLocked then re-settles s after any verdict, so a
// refused ejection happens once capacity allows, and an ejected backend
// gives its capacity back when the others fail.
func (c *Controller) passiveFlaggedLocked(s *service) bool {
	if s.cfg.Passive == nil || s.cfg.Passive.Action != "eject" {
		return false
	}
	for _, b := range s.backends {
		if b.passive != nil && b.passive.ejected {
			return true
		}
	}
	return false
}
