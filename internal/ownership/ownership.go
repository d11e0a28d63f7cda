// Package ownership decides whether this node carries the VIPs: VRRP
// (one node of a segment holds them, vrrp.go) today; BGP route health
// injection (every node announces them) goes beside it in bgp.go, with
// the same Health and the same wiring in keepbitd. Each mode
// follows the config through Reload(ctx, cfg) and Close, which the
// controller calls (control.Owner), and learns the health of what it
// announces through Health, which the controller implements: a mode never
// sees the dataplane or the controller's status.
package ownership

import (
	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"net/netip"
)

// Health is what VIP ownership (VRRP tracking, BGP route health injection)
// needs from the controller.
type Health interface {
	// ServiceUp: the service has at least one backend up in the
	// dataplane.
	ServiceUp(name string) bool
	// ServiceRising: a backend of the service is down with its checks
	// passing, short of rise (it is about to be up).
	ServiceRising(name string) bool
	// DataplaneUp is nil while the forwarder is attached on iface (and its
	// heartbeat advances, once the loader has one); else it says why not.
	DataplaneUp(iface string) error
	// Changed returns a channel that is closed after a ServiceUp answer
	// may have changed. Take it before asking ServiceUp, and ask for a new
	// one after it fires: changes in between are then never missed, and
	// a burst of them wakes a reader once.
	Changed() <-chan struct{}
}

// Notifier runs an operator's notify hook for a flight-recorder event
// (the controller's, so backend and VIP hooks run the same way).
// FlowForgetter is a Health that can drop the flow state of VIPs this
// node no longer holds (*control.Controller): the VRRP owner calls it when
// an instance leaves master.
type FlowForgetter interface {
	ForgetFlows(vips []netip.Addr) (flows, cached int, err error)
}

type Notifier interface {
	RunNotify(n config.Notify, e recorder.Event)
}
