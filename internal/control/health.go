package control

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// The controller is the Health of VIP ownership (ownership.Health): the
// owners ask it about one service or one interface at a time, and wait on
// Changed instead of polling the status.

// ServiceUp reports whether the service has at least one backend up in the
// dataplane.
func (c *Controller) ServiceUp(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.svcs[name]
	if s == nil {
		return false
	}
	for _, b := range s.backends {
		if b.state == loader.Up {
			return true
		}
	}
	return false
}

// ServiceRising reports whether an enabled backend of the service is down
// while its checks pass, short of rise: the set of usable backends is
// about to grow. A node that announces a VIP then would pick other
// backends for the flows ECMP gives it than its peers do, for as long as
// the rise takes (see ownership.BGP).
func (c *Controller) ServiceRising(name string) bool {
	c.mu.Lock()
	s := c.svcs[name]
	var ids []string
	if s != nil {
		for _, b := range s.backends {
			if b.admin == Enabled && b.state != loader.Up && b.checkID != "" {
				ids = append(ids, b.checkID)
			}
		}
	}
	c.mu.Unlock()
	for _, id := range ids {
		if c.sched.Rising(id) {
			return true
		}
	}
	return false
}

// DataplaneUp is nil while Keepbit's forwarder is attached on iface; else
// it says why not. Once the loader can tell whether the program runs
// (CheckAlive: heartbeat advancing), that is asked instead.
func (c *Controller) DataplaneUp(iface string) error {
	c.mu.Lock()
	dp := c.dps[iface]
	c.mu.Unlock()
	if dp == nil {
		return fmt.Errorf("no dataplane on %s", iface)
	}
	if a, ok := any(dp).(interface{ CheckAlive() error }); ok {
		return a.CheckAlive()
	}
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return err
	}
	if x := l.Attrs().Xdp; x == nil || !x.Attached {
		return errors.New("not attached")
	}
	return nil
}

// Changed returns a channel closed at the next change that may move a
// ServiceUp answer (a backend written up or down, a service added or
// removed). Take it before asking, and a new one after it fires.
func (c *Controller) Changed() <-chan struct{} {
	c.changedMu.Lock()
	defer c.changedMu.Unlock()
	if c.changed == nil {
		c.changed = make(chan struct{})
	}
	return c.changed
}

// signalChanged wakes every reader of Changed. Nothing is allocated while
// nobody waits, so a state write pays a mutex and a nil check.
func (c *Controller) signalChanged() {
	c.changedMu.Lock()
	defer c.changedMu.Unlock()
	if c.changed != nil {
		close(c.changed)
		c.changed = nil
	}
}

// Settled reports whether every backend has had enough check results for
// a verdict (none is still "waiting for checks") and the dataplane holds
// what those verdicts ask for: each backend's state written and each
// service's table rebuilt from those states (a backend that came up is in
// no table until then). Until then a node's
// dataplane may hold fewer backends up than its peers do, so its table
// (and its use of shared flows, which need the backend up) can differ
// from theirs: a node should not draw traffic before (see WaitSettled).
func (c *Controller) Settled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.svcs {
		for _, b := range s.backends {
			// A backend without a MAC yet is not in the dataplane: not
			// settled either.
			if b.admin == Enabled && (!b.inDP || b.health == probe.Unknown) {
				return false
			}
			// A verdict is taken in two steps (health, then the write
			// after the lock was let go): until the write, the table is
			// not yet what the verdicts ask for.
			if want, _, _ := c.desiredLocked(b); b.inDP && want != b.state {
				return false
			}
		}
		if s.dp != nil && !s.dp.TablesCurrent() {
			return false
		}
	}
	return true
}

// WaitSettled returns once Settled, or after max (a backend whose checks
// never conclude must not keep a node out for good), or when ctx ends.
func (c *Controller) WaitSettled(ctx context.Context, max time.Duration) bool {
	deadline := time.NewTimer(max)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !c.Settled() {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return false
		case <-tick.C:
		}
	}
	return true
}
