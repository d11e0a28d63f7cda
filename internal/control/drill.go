package control

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// What a drill (internal/drill) asks of the controller: take a backend out
// the way a failure would, and give it back to its checks. The drill
// package owns the rest (refusals, timing, measurement, history).

// ErrDrill is the failed check a drill injects; the backend's reason then
// reads "check failed: drill: ...", so status and the recorder say why.
var ErrDrill = errors.New("drill: taken out by keepbitctl drill")

// DrillDown takes the backend out as a failing check would: its check stops
// probing (so a passing probe cannot bring it back during the hold) and a
// Down verdict goes through onProbe, the path a real failed check takes
// (flap accounting, settle, panic threshold and keep-last, recorder, log,
// notify hooks). It returns the backend's state after the verdict: a
// policy may have kept it up (panic, keep-last).
func (c *Controller) DrillDown(service string, addr netip.Addr) (loader.State, error) {
	addr = addr.Unmap()
	c.mu.Lock()
	b, err := c.backendLocked(service, addr)
	var id string
	if err == nil {
		id = b.checkID
	}
	c.mu.Unlock()
	if err != nil {
		return loader.Down, err
	}
	c.sched.Remove(id)
	now := time.Now()
	c.onProbe(probe.Event{Check: id, From: probe.Up, To: probe.Down, Detect: now, Decide: now, Err: ErrDrill})
	c.mu.Lock()
	defer c.mu.Unlock()
	return b.state, nil
}

// DrillRestore hands the backend back to its checks: the check starts over
// (unknown), and the backend returns only when it has passed rise times,
// through the same onProbe path as any recovery. A reload that replaced
// the backend meanwhile has re-added its check already; adding it again
// only restarts its count.
func (c *Controller) DrillRestore(service string, addr netip.Addr) error {
	addr = addr.Unmap()
	// The check is read and added under c.mu, as a reload adds checks:
	// otherwise a reload between the two would be undone by the older
	// spec.
	c.mu.Lock()
	defer c.mu.Unlock()
	b, err := c.backendLocked(service, addr)
	if err != nil {
		return err
	}
	spec, _ := b.checkSpec()
	if err := c.sched.Add(b.checkID, spec); err != nil {
		return fmt.Errorf("service %q: backend %s: restore check: %w", service, addr, err)
	}
	return nil
}

// ServiceCounters reads the counters of the one dataplane carrying
// service (a drill samples them every few milliseconds; Counters would
// read every interface).
func (c *Controller) ServiceCounters(service string) (ServiceCounters, error) {
	c.mu.Lock()
	s := c.svcs[service]
	var dp *loader.Dataplane
	var key loader.ServiceKey
	var iface string
	if s != nil {
		dp, key, iface = s.dp, s.key, s.cfg.Interface
	}
	c.mu.Unlock()
	if s == nil {
		return ServiceCounters{}, fmt.Errorf("service %q: %w", service, ErrNotConfigured)
	}
	st, err := dp.Stats()
	if err != nil {
		return ServiceCounters{}, fmt.Errorf("interface %s: %w", iface, err)
	}
	sc, held := st.Services[key]
	if !held {
		return ServiceCounters{}, fmt.Errorf("service %q: not in the dataplane of %s", service, iface)
	}
	return ServiceCounters{Interface: iface, Service: sc, Backends: st.Backends[key]}, nil
}

func (c *Controller) backendLocked(service string, addr netip.Addr) (*backend, error) {
	s := c.svcs[service]
	if s == nil {
		return nil, fmt.Errorf("service %q: %w", service, ErrNotConfigured)
	}
	b := s.backends[addr]
	if b == nil {
		return nil, fmt.Errorf("service %q: backend %s: %w", service, addr, ErrNotConfigured)
	}
	return b, nil
}
