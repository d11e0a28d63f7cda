package control

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/keepbit/keepbit/loader"
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
