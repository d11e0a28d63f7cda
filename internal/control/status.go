package control

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
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

// BackendStatus is one backend as the daemon sees it. States stay typed
// here; the API prints them.
type BackendStatus struct {
	Address netip.Addr
	MAC     net.HardwareAddr // nil until resolved
	Weight  uint32
	Group   uint8
	Health  probe.State  // what the checks say
	State   loader.State // what the dataplane holds
	Admin   Admin
	Reason  string
	Since   time.Time
	Predict *Prediction // nil unless the service has a predictive section
	Passive *Passivity  // nil unless the service has a passive section
}

// ServiceStatus is one service as the daemon sees it.
type ServiceStatus struct {
	Name      string
	Key       loader.ServiceKey
	Interface string
	Backends  []BackendStatus
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
		ss := ServiceStatus{Name: sc.Name, Key: s.key, Interface: sc.Interface}
		for _, addr := range s.order {
			b := s.backends[addr]
			ss.Backends = append(ss.Backends, BackendStatus{Address: addr, MAC: slices.Clone(b.mac), Weight: b.cfg.Weight, Group: b.cfg.Group,
				Health: b.health, State: b.state, Admin: b.admin, Reason: b.reason, Since: b.since, Predict: c.predictionLocked(b), Passive: c.passivityLocked(b)})
		}
		out = append(out, ss)
	}
	return out
}

// Counters is one read of every dataplane's counters.
type Counters struct {
	// Services the dataplanes hold, by name. A configured service missing
	// here has no counters in this read: its dataplane does not hold it
	// (yet, or any more: mid-reload) or could not be read.
	Services map[string]ServiceCounters
	// Reasons counts every packet the program saw, by interface and
	// verdict reason.
	Reasons map[string]map[string]loader.Counter
	// Failed names the interfaces whose counters could not be read.
	Failed map[string]error
}

// ServiceCounters is what a service forwarded, in all and per backend.
type ServiceCounters struct {
	Interface string
	Service   loader.Counter
	Backends  map[netip.Addr]loader.Counter
}

// Counters reads each dataplane's counters once, however many services it
// carries: a read walks all of them, so reading per service made an API
// call or a scrape quadratic (about 1.3 s at 200 services).
func (c *Controller) Counters() Counters {
	c.mu.Lock()
	dps := maps.Clone(c.dps)
	names := map[string]map[loader.ServiceKey]string{} // interface -> key -> service
	for name, s := range c.svcs {
		if names[s.cfg.Interface] == nil {
			names[s.cfg.Interface] = map[loader.ServiceKey]string{}
		}
		names[s.cfg.Interface][s.key] = name
	}
	c.mu.Unlock()
	out := Counters{Services: map[string]ServiceCounters{}, Reasons: map[string]map[string]loader.Counter{}, Failed: map[string]error{}}
	for iface, dp := range dps {
		st, err := dp.Stats()
		if err != nil {
			out.Failed[iface] = err
			continue
		}
		out.Reasons[iface] = st.Reasons
		for key, name := range names[iface] {
			sc, held := st.Services[key]
			if !held {
				continue
			}
			out.Services[name] = ServiceCounters{Interface: iface, Service: sc, Backends: st.Backends[key]}
		}
	}
	return out
}

// KernelMemory reads, per interface, what the kernel charged for the
// dataplane's maps; an interface whose maps could not be read is in the
// second map with the reason.
func (c *Controller) KernelMemory() (map[string]loader.KernelMemory, map[string]error) {
	c.mu.Lock()
	dps := maps.Clone(c.dps)
	c.mu.Unlock()
	out, failed := map[string]loader.KernelMemory{}, map[string]error{}
	for iface, dp := range dps {
		km, err := dp.KernelMemory()
		if err != nil {
			failed[iface] = err
			continue
		}
		out[iface] = km
	}
	return out, failed
}

// Flows returns the limit flows with the most packets over every
// dataplane.
func (c *Controller) Flows(limit int) ([]loader.Flow, error) {
	var lists [][]loader.Flow
	for iface, dp := range c.dataplanes() {
		fl, err := dp.Flows(limit)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", iface, err)
		}
		lists = append(lists, fl)
	}
	return topFlows(lists, limit), nil
}

// topFlows merges each dataplane's top flows into the limit with the most
// packets, in that order.
func topFlows(lists [][]loader.Flow, limit int) []loader.Flow {
	var all []loader.Flow
	for _, l := range lists {
		all = append(all, l...)
	}
	slices.SortStableFunc(all, func(a, b loader.Flow) int { return cmp.Compare(b.Packets, a.Packets) })
	return all[:min(max(limit, 0), len(all))]
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
