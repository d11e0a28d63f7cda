package config

import (
	"fmt"
	"net/netip"
	"time"
)

// Drill is one scheduled drill, an entry of the `drills:` list (absent:
// no scheduled drills). Each runs every Every, the first one Every after
// start (a restarting daemon does not drill at once), never with -force.
//
//	drills:
//	  - {kind: backend, service: web, backend: 10.0.0.1, every: 24h, for: 10s}
//	  - kind: node
//	    every: 168h
//	    for: 30s
//	    notify: {command: /usr/local/bin/drill-result}
type Drill struct {
	Kind    string        `yaml:"kind"` // backend or node
	Service string        `yaml:"service"`
	Backend netip.Addr    `yaml:"backend"`
	Every   time.Duration `yaml:"every"`
	For     time.Duration `yaml:"for"` // default 10s
	// Notify runs with each result in its environment (KEEPBIT_EVENT
	// drill-ok, drill-failed, drill-aborted or drill-refused; the figures
	// in KEEPBIT_REASON).
	Notify Notify `yaml:"notify"`
}

// Drill limits: a scheduled drill takes a target out on purpose, so it
// may not run more often than MinDrillEvery.
const (
	DefaultDrillFor = 10 * time.Second
	MinDrillFor     = 100 * time.Millisecond
	MaxDrillFor     = time.Hour
	MinDrillEvery   = time.Minute
)

func (d *decoder) drillDefaults(c *Config) {
	for i := range c.Drills {
		dr := &c.Drills[i]
		dr.Backend = dr.Backend.Unmap()
		if !d.written(fmt.Sprintf("drills[%d].for", i)) {
			dr.For = DefaultDrillFor
		}
		if dr.Notify.Command != "" && dr.Notify.Timeout == 0 {
			dr.Notify.Timeout = 5 * time.Second
		}
	}
}

func (d *decoder) validateDrills(c *Config) {
	services := map[string]*Service{}
	for i := range c.Services {
		services[c.Services[i].Name] = &c.Services[i]
	}
	targets := map[string]int{}
	for i, dr := range c.Drills {
		p := fmt.Sprintf("drills[%d]", i)
		var target string
		switch dr.Kind {
		case "backend":
			s := services[dr.Service]
			switch {
			case dr.Service == "":
				d.fail(p+".service", "required for a backend drill")
			case s == nil:
				d.fail(p+".service", "%q is not a configured service", dr.Service)
			}
			switch {
			case !dr.Backend.IsValid():
				d.fail(p+".backend", "required for a backend drill")
			case s != nil && !hasBackend(s, dr.Backend):
				d.fail(p+".backend", "%s is not a backend of service %q", dr.Backend, dr.Service)
			}
			target = fmt.Sprintf("backend %s of %s", dr.Backend, dr.Service)
		case "node":
			if dr.Service != "" {
				d.fail(p+".service", "a node drill takes no service")
			}
			if dr.Backend.IsValid() {
				d.fail(p+".backend", "a node drill takes no backend")
			}
			target = "node"
		case "":
			d.fail(p+".kind", "required: backend or node")
		default:
			d.fail(p+".kind", "%q is not one of backend, node", dr.Kind)
		}
		if j, dup := targets[target]; dup && target != "" {
			d.fail(p, "drills the same %s as drills[%d]", target, j)
		} else if target != "" {
			targets[target] = i
		}
		switch {
		case dr.Every == 0:
			d.fail(p+".every", "required: how often the drill runs (at least %v)", MinDrillEvery)
		case dr.Every < MinDrillEvery:
			d.fail(p+".every", "%v, at least %v (a drill takes its target out on purpose)", dr.Every, MinDrillEvery)
		}
		switch {
		case dr.For < MinDrillFor || dr.For > MaxDrillFor:
			d.fail(p+".for", "%v, want %v to %v", dr.For, MinDrillFor, MaxDrillFor)
		case dr.Every != 0 && dr.For >= dr.Every:
			d.fail(p+".for", "%v is not shorter than every (%v)", dr.For, dr.Every)
		}
		if dr.Notify.Command == "" && (len(dr.Notify.Args) > 0 || dr.Notify.Timeout != 0) {
			d.fail(p+".notify.command", "required with args or timeout")
		}
	}
}

func hasBackend(s *Service, a netip.Addr) bool {
	for _, b := range s.Backends {
		if b.Address == a {
			return true
		}
	}
	return false
}
