package control

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
)

// ForgetFlows drops every dataplane's flow state for vips (the VRRP owner
// calls it when this node hands them over; see loader.ForgetFlows).
func (c *Controller) ForgetFlows(vips []netip.Addr) (flows, cached int, err error) {
	c.mu.Lock()
	dps := maps.Clone(c.dps)
	c.mu.Unlock()
	var errs []error
	for iface, dp := range dps {
		f, k, err := dp.ForgetFlows(vips)
		flows, cached = flows+f, cached+k
		if err != nil {
			errs = append(errs, fmt.Errorf("interface %s: %w", iface, err))
		}
	}
	return flows, cached, errors.Join(errs...)
}
