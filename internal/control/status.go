package control

import (
	"errors"
	"slices"
	"time"

	"github.com/keepbit/keepbit/loader"
)

// ErrNotConfigured is wrapped by the errors of operator calls (SetAdmin,
// Live) that name a service or backend the running config does not have, so
// the API can tell "no such thing" from a failure to carry the call out.
var ErrNotConfigured = errors.New("not configured")

// Generation counts successful config loads.
func (c *Controller) Generation() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// BackendStatus is one backend as the daemon sees it.
type BackendStatus struct {
	Address string    `json:"address"`
	MAC     string    `json:"mac"`
	Weight  uint32    `json:"weight"`
	Group   uint8     `json:"group"`
	Health  string    `json:"health"`
	State   string    `json:"state"`
	Admin   string    `json:"admin,omitempty"`
	Reason  string    `json:"reason"`
	Since   time.Time `json:"since"`
}

// ServiceStatus is one service as the daemon sees it.
type ServiceStatus struct {
	Name      string          `json:"name"`
	Key       string          `json:"key"`
	Interface string          `json:"interface"`
	Backends  []BackendStatus `json:"backends"`
}

// Status lists services in config order.
func (c *Controller) Status() []ServiceStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []ServiceStatus
	if c.cfg == nil {
		return out
	}
	for _, sc := range c.cfg.Services {
		s := c.svcs[sc.Name]
		if s == nil {
			continue
		}
		ss := ServiceStatus{Name: sc.Name, Key: s.key.String(), Interface: sc.Interface}
		for _, addr := range s.order {
			b := s.backends[addr]
			mac := ""
			if b.mac != nil {
				mac = b.mac.String()
			}
			ss.Backends = append(ss.Backends, BackendStatus{Address: addr.String(), MAC: mac, Weight: b.cfg.Weight, Group: b.cfg.Group,
				Health: b.health.String(), State: b.state.String(), Admin: string(b.admin), Reason: b.reason, Since: b.since})
		}
		out = append(out, ss)
	}
	return out
}

// Dataplane returns the dataplane of a service, for counters and flows.
func (c *Controller) Dataplane(service string) (*loader.Dataplane, loader.ServiceKey, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.svcs[service]
	if s == nil {
		return nil, loader.ServiceKey{}, false
	}
	return s.dp, s.key, true
}

// Interfaces lists the open dataplanes by interface name.
func (c *Controller) Interfaces() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := make([]string, 0, len(c.dps))
	for n := range c.dps {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
