package config

import (
	"fmt"
	"time"
)

// Passive is a service's `passive:` section (nil when absent: off).
// Present, even empty, it turns on passive detection with the defaults
// below: the XDP program counts, per backend, the TCP SYNs clients send
// again for a flow it sent to that backend moments before (a client
// retransmits a SYN that was not answered), and a backend with
// syn_retransmits of them within window is ejected (action eject) before
// its active check fails: down, within the panic threshold and
// max_ejected, never the last usable backend. It returns once hold has
// passed and its active check has passed rise times in a row since.
//
//	passive:
//	  syn_retransmits: 5    # retransmitted SYNs within window that mark the backend
//	  window: 2s
//	  action: eject         # eject (default) or flag (report only)
//	  hold: 10s             # at least this long out once ejected
//	  max_ejected: 1        # backends of the service ejected by passive detection at once
type Passive struct {
	SynRetransmits int           `yaml:"syn_retransmits"`
	Window         time.Duration `yaml:"window"`
	Action         string        `yaml:"action"`
	Hold           time.Duration `yaml:"hold"`
	MaxEjected     int           `yaml:"max_ejected"`
}

// Passive detection defaults.
const (
	DefaultPassiveSynRetransmits = 5
	DefaultPassiveWindow         = 2 * time.Second
	DefaultPassiveAction         = "eject"
	DefaultPassiveHold           = 10 * time.Second
	DefaultPassiveMaxEjected     = 1
	// PassiveSample is how often the controller reads the counters.
	PassiveSample = 100 * time.Millisecond
)

func (d *decoder) passiveDefaults(c *Config) {
	for i := range c.Services {
		pa := c.Services[i].Passive
		if pa == nil {
			continue
		}
		// An explicit 0 is an error (validate), not a request for the default.
		written := func(f string) bool { return d.written(fmt.Sprintf("services[%d].passive.%s", i, f)) }
		if pa.Action == "" {
			pa.Action = DefaultPassiveAction
		}
		if !written("syn_retransmits") {
			pa.SynRetransmits = DefaultPassiveSynRetransmits
		}
		if !written("window") {
			pa.Window = DefaultPassiveWindow
		}
		if !written("hold") {
			pa.Hold = DefaultPassiveHold
		}
		if !written("max_ejected") {
			pa.MaxEjected = DefaultPassiveMaxEjected
		}
	}
}

func (d *decoder) validatePassive(c *Config) {
	for i := range c.Services {
		s := &c.Services[i]
		pa := s.Passive
		if pa == nil {
			continue
		}
		p := fmt.Sprintf("services[%d].passive", i)
		oneOf(d, p+".action", pa.Action, "eject", "flag")
		if s.Protocol != TCP {
			d.fail(p, "counts retransmitted TCP SYNs: the service's protocol is %s", s.Protocol)
		}
		inRange(d, p+".syn_retransmits", pa.SynRetransmits, 1, 100000)
		durationIn(d, p+".window", pa.Window, PassiveSample, time.Minute)
		durationIn(d, p+".hold", pa.Hold, time.Second, time.Hour)
		if pa.MaxEjected < 1 {
			d.fail(p+".max_ejected", "%d: at least 1 (action flag ejects nothing)", pa.MaxEjected)
		}
	}
}
