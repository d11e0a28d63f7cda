package control

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/keepbit/keepbit/loader"
)

// Live reports, for a backend of a service, how many flow-table entries
// saw a packet within idle, and the backend's packet counter: drain waits
// until both stop moving. The dataplane counts that backend's entries
// alone, without the index lock across the walk, so polling drain never
// delays a failover; c.mu is held only to look the backend up.
func (c *Controller) Live(service string, addr netip.Addr, idle time.Duration) (flows int, packets uint64, err error) {
	addr = addr.Unmap() // as the config keys it
	c.mu.Lock()
	s := c.svcs[service]
	var dp *loader.Dataplane
	var key loader.ServiceKey
	known := false
	if s != nil {
		dp, key = s.dp, s.key
		_, known = s.backends[addr]
	}
	c.mu.Unlock()
	if s == nil {
		return 0, 0, fmt.Errorf("service %q: %w", service, ErrNotConfigured)
	}
	if !known {
		return 0, 0, fmt.Errorf("service %q: backend %s: %w", service, addr, ErrNotConfigured)
	}
	return dp.LiveFlows(key, addr, idle)
}
