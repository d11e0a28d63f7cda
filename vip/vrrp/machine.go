package vrrp

import (
	"fmt"
	"net/netip"
	"time"
)

// State of a virtual router (RFC 5798 section 6.4), plus Fault: a node
// whose tracked objects say it must not own the VIPs.
type State int

const (
	Initialize State = iota
	Backup
	Master
	Fault
)

func (s State) String() string {
	return [...]string{"initialize", "backup", "master", "fault"}[s]
}

// Config of one virtual router.
type Config struct {
	VRID     uint8
	Priority uint8 // 1-254, 255 for the address owner
	// Interval is Advertisement_Interval: 10 ms steps, 10 ms to 40.95 s.
	Interval time.Duration
	Preempt  bool
	// PreemptDelay: after Start, a Backup does not preempt a lower
	// priority Master for this long.
	PreemptDelay time.Duration
	Addrs        []netip.Addr
	// Primary is this router's own address on the link, which breaks
	// priority ties (the higher address wins).
	Primary netip.Addr
}

// Action is what the machine asks its runner to do, in order.
type Action struct {
	Kind     ActionKind
	Priority uint8  // SendAdvert: the priority to advertise (0 on resignation)
	To       State  // Transition
	Reason   string // Transition
}

type ActionKind int

const (
	SendAdvert ActionKind = iota // send an ADVERTISEMENT
	Announce                     // take the VIPs and send gratuitous ARP / unsolicited NA
	Release                      // give the VIPs up
	Transition                   // the state changed
)

// Machine is the RFC 5798 state machine, driven by explicit times so that
// tests can run it on a fake clock. Not safe for concurrent use.
type Machine struct {
	cfg     Config
	prio    uint8 // effective priority (tracking may lower it)
	state   State
	started time.Time
	// Master_Adver_Interval learnt from the Master.
	masterInterval time.Duration
	masterDown     time.Time // Master_Down_Timer deadline, zero when off
	adver          time.Time // Adver_Timer deadline, zero when off
	master         netip.Addr
}

// NewMachine returns a machine in Initialize.
func NewMachine(cfg Config) *Machine {
	return &Machine{cfg: cfg, prio: cfg.Priority, masterInterval: cfg.Interval}
}

func (m *Machine) State() State { return m.state }

// Priority is the priority in force (configured, or lowered by tracking).
func (m *Machine) Priority() uint8 { return m.prio }

// Master is the address of the Master last heard (or our own primary
// address when we are Master).
func (m *Machine) Master() netip.Addr { return m.master }

// SkewTime is ((256 - Priority) * Master_Adver_Interval) / 256.
func (m *Machine) SkewTime() time.Duration {
	return time.Duration(256-int(m.prio)) * m.masterInterval / 256
}

// MasterDownInterval is 3 * Master_Adver_Interval + Skew_Time.
func (m *Machine) MasterDownInterval() time.Duration {
	return 3*m.masterInterval + m.SkewTime()
}

// Deadline is when Tick must next be called; zero when no timer runs.
func (m *Machine) Deadline() time.Time {
	switch m.state {
	case Backup:
		return m.masterDown
	case Master:
		return m.adver
	}
	return time.Time{}
}

func transition(to State, reason string) Action {
	return Action{Kind: Transition, To: to, Reason: reason}
}

// Start is the Startup event.
func (m *Machine) Start(now time.Time) []Action {
	if m.state != Initialize {
		return nil
	}
	m.started = now
	if m.prio == OwnerPriority {
		return m.becomeMaster(now, "address owner (priority 255) starting")
	}
	m.masterInterval = m.cfg.Interval
	m.masterDown = now.Add(m.MasterDownInterval())
	m.state = Backup
	return []Action{transition(Backup, "startup")}
}

func (m *Machine) becomeMaster(now time.Time, reason string) []Action {
	m.state = Master
	m.masterDown = time.Time{}
	m.adver = now.Add(m.cfg.Interval)
	m.master = m.cfg.Primary
	return []Action{{Kind: SendAdvert, Priority: m.prio}, {Kind: Announce}, transition(Master, reason)}
}

// Shutdown is the Shutdown event: a Master resigns with priority 0 so a
// Backup takes over at once.
func (m *Machine) Shutdown(now time.Time) []Action {
	var acts []Action
	switch m.state {
	case Master:
		acts = append(acts, Action{Kind: SendAdvert, Priority: 0}, Action{Kind: Release})
	case Initialize:
		return nil
	}
	m.state, m.adver, m.masterDown = Initialize, time.Time{}, time.Time{}
	return append(acts, transition(Initialize, "shutdown"))
}

// Tick fires the timer that is due at now, if any.
func (m *Machine) Tick(now time.Time) []Action {
	switch m.state {
	case Backup:
		if !m.masterDown.IsZero() && !now.Before(m.masterDown) {
			return m.becomeMaster(now, fmt.Sprintf("no advertisement from the master for %v (Master_Down_Interval)", m.MasterDownInterval()))
		}
	case Master:
		if !m.adver.IsZero() && !now.Before(m.adver) {
			m.adver = now.Add(m.cfg.Interval)
			return []Action{{Kind: SendAdvert, Priority: m.prio}}
		}
	}
	return nil
}

// Receive handles an ADVERTISEMENT for this VRID from src that passed the
// receiver's checks.
func (m *Machine) Receive(now time.Time, a Advertisement, src netip.Addr) []Action {
	switch m.state {
	case Backup:
		if a.Priority == 0 {
			// The Master resigned: take over after Skew_Time only.
			m.masterDown = now.Add(m.SkewTime())
			return nil
		}
		preempting := m.cfg.Preempt && now.Sub(m.started) >= m.cfg.PreemptDelay
		if !preempting || a.Priority >= m.prio {
			m.masterInterval = a.Interval
			m.masterDown = now.Add(m.MasterDownInterval())
			m.master = src
			return nil
		}
		// Preempting a lower-priority Master: let its advertisements
		// lapse and Master_Down_Timer fire.
		return nil
	case Master:
		if a.Priority == 0 {
			m.adver = now.Add(m.cfg.Interval)
			return []Action{{Kind: SendAdvert, Priority: m.prio}}
		}
		if a.Priority > m.prio || (a.Priority == m.prio && src.Compare(m.cfg.Primary) > 0) {
			m.masterInterval = a.Interval
			m.adver = time.Time{}
			m.masterDown = now.Add(m.MasterDownInterval())
			m.state = Backup
			m.master = src
			return []Action{{Kind: Release}, transition(Backup, fmt.Sprintf("advertisement from %s with priority %d beats ours (%d)", src, a.Priority, m.prio))}
		}
		// A lower-priority router thinks it is Master (split brain). The
		// RFC discards its advertisement; our next one makes it back off.
		// Announce again so that ARP/ND caches that followed it return.
		return []Action{{Kind: Announce}}
	}
	return nil
}

// SetPriority applies a tracking change (1-254; the owner's 255 is fixed).
// A Master whose priority drops keeps advertising the new value; Backups
// with preemption then take over.
func (m *Machine) SetPriority(p uint8) {
	if m.cfg.Priority == OwnerPriority || p == 0 {
		return
	}
	m.prio = p
}

// Reconfigure applies the parts of cfg that need no new machine: the
// configured priority, the advertisement interval, preemption and the
// addresses (VRID and Primary stay as they are; turning the address owner
// on or off needs a new machine). The state and its timers run on: a
// Master stays Master and never resigns for a reconfiguration. An
// effective priority that tracking lowered (SetPriority) stays until
// tracking sets it again; otherwise the new configured one is in force
// at once. A shorter interval takes effect by the next advertisement.
func (m *Machine) Reconfigure(now time.Time, cfg Config) {
	cfg.VRID, cfg.Primary = m.cfg.VRID, m.cfg.Primary
	if m.cfg.Priority == OwnerPriority || cfg.Priority == OwnerPriority {
		cfg.Priority = m.cfg.Priority
	}
	if m.prio == m.cfg.Priority {
		m.prio = cfg.Priority
	}
	m.cfg = cfg
	if m.state == Master {
		if next := now.Add(cfg.Interval); m.adver.IsZero() || next.Before(m.adver) {
			m.adver = next
		}
	}
}

// EnterFault releases the VIPs and stops taking part until LeaveFault.
func (m *Machine) EnterFault(now time.Time, reason string) []Action {
	if m.state == Fault {
		return nil
	}
	var acts []Action
	if m.state == Master {
		acts = append(acts, Action{Kind: SendAdvert, Priority: 0}, Action{Kind: Release})
	}
	m.state, m.adver, m.masterDown = Fault, time.Time{}, time.Time{}
	return append(acts, transition(Fault, reason))
}

// LeaveFault restarts the machine from Initialize.
func (m *Machine) LeaveFault(now time.Time) []Action {
	if m.state != Fault {
		return nil
	}
	m.state = Initialize
	return m.Start(now)
}
