package vrrp

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

var (
	t0     = time.Unix(1_000_000, 0)
	us     = netip.MustParseAddr("10.0.0.2")
	higher = netip.MustParseAddr("10.0.0.3") // wins priority ties against us
	lower  = netip.MustParseAddr("10.0.0.1")
)

func cfg(prio uint8, preempt bool) Config {
	return Config{VRID: 7, Priority: prio, Interval: time.Second, Preempt: preempt,
		Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}, Primary: us}
}

func adv(prio uint8, interval time.Duration) Advertisement {
	return Advertisement{VRID: 7, Priority: prio, Interval: interval, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}
}

func kinds(acts []Action) []string {
	var out []string
	for _, a := range acts {
		switch a.Kind {
		case SendAdvert:
			out = append(out, "advert:"+string('0'+rune(a.Priority/100))+string('0'+rune(a.Priority/10%10))+string('0'+rune(a.Priority%10)))
		case Announce:
			out = append(out, "announce")
		case Release:
			out = append(out, "release")
		case Transition:
			out = append(out, "->"+a.To.String())
		}
	}
	return out
}

func TestTimers(t *testing.T) {
	m := NewMachine(cfg(100, true))
	if got, want := m.SkewTime(), 609375*time.Microsecond; got != want {
		t.Errorf("Skew_Time at priority 100, 1 s: %v, want %v", got, want)
	}
	if got, want := m.MasterDownInterval(), 3609375*time.Microsecond; got != want {
		t.Errorf("Master_Down_Interval: %v, want %v", got, want)
	}
	m.Start(t0)
	m.Receive(t0, adv(200, 10*time.Millisecond), higher)
	// Master_Adver_Interval is learnt from the Master: 10 ms.
	if got, want := m.MasterDownInterval(), 30*time.Millisecond+1560*time.Millisecond/256; got != want {
		t.Errorf("Master_Down_Interval after a 10 ms master: %v, want %v", got, want)
	}
}

// TestTransitions drives the machine through every transition of RFC 5798
// section 6.4 (and Fault) on a fake clock.
func TestTransitions(t *testing.T) {
	type step struct {
		at     time.Duration // since t0
		do     string        // start, tick, shutdown, fault, recover, recv
		prio   uint8         // recv: advertised priority
		from   netip.Addr    // recv
		want   []string
		state  State
		master netip.Addr // when valid: Master() after the step
	}
	mdi := 3609375 * time.Microsecond
	cases := []struct {
		name  string
		cfg   Config
		steps []step
	}{
		{"owner starts as master", cfg(255, true), []step{
			{0, "start", 0, netip.Addr{}, []string{"advert:255", "announce", "->master"}, Master, us},
			{time.Second, "tick", 0, netip.Addr{}, []string{"advert:255"}, Master, netip.Addr{}},
		}},
		{"backup takes over when the master goes silent", cfg(100, true), []step{
			{0, "start", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
			{mdi - time.Millisecond, "tick", 0, netip.Addr{}, nil, Backup, netip.Addr{}},
			{mdi, "tick", 0, netip.Addr{}, []string{"advert:100", "announce", "->master"}, Master, us},
		}},
		{"advertisements from a better master keep a backup down", cfg(100, true), []step{
			{0, "start", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
			{3 * time.Second, "recv", 150, higher, nil, Backup, higher},
			{3*time.Second + mdi - time.Millisecond, "tick", 0, netip.Addr{}, nil, Backup, netip.Addr{}},
			{3*time.Second + mdi, "tick", 0, netip.Addr{}, []string{"advert:100", "announce", "->master"}, Master, us},
		}},
		{"resignation (priority 0): take over after skew time", cfg(100, true), []step{
			{0, "start", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
			{time.Second, "recv", 0, higher, nil, Backup, netip.Addr{}},
			{time.Second + 609375*time.Microsecond, "tick", 0, netip.Addr{}, []string{"advert:100", "announce", "->master"}, Master, us},
		}},
		{"preempt: a lower master's advertisements are discarded", cfg(100, true), []step{
			{0, "start", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
			{3 * time.Second, "recv", 50, lower, nil, Backup, netip.Addr{}},
			{mdi, "tick", 0, netip.Addr{}, []string{"advert:100", "announce", "->master"}, Master, us},
		}},
		{"no preempt: a lower master is accepted", cfg(100, false), []step{
			{0, "start", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
			{3 * time.Second, "recv", 50, lower, nil, Backup, lower},
			{mdi, "tick", 0, netip.Addr{}, nil, Backup, netip.Addr{}},
		}},
		{"preempt delay: accept a lower master at first, preempt after", func() Config { c := cfg(100, true); c.PreemptDelay = 5 * time.Second; return c }(), []step{
			{0, "start", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
			{3 * time.Second, "recv", 50, lower, nil, Backup, lower},
			{mdi, "tick", 0, netip.Addr{}, nil, Backup, netip.Addr{}},
			{6 * time.Second, "recv", 50, lower, nil, Backup, lower},
			{3*time.Second + mdi, "tick", 0, netip.Addr{}, []string{"advert:100", "announce", "->master"}, Master, us},
		}},
		{"master yields to a higher priority", cfg(255-155, true), []step{
			{0, "start", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
			{mdi, "tick", 0, netip.Addr{}, []string{"advert:100", "announce", "->master"}, Master, us},
			{mdi + time.Second, "tick", 0, netip.Addr{}, []string{"advert:100"}, Master, netip.Addr{}},
			{mdi + 1500*time.Millisecond, "recv", 101, lower, []string{"release", "->backup"}, Backup, lower},
		}},
		{"equal priority: the higher address wins", cfg(100, true), []step{
			{0, "start", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
			{mdi, "tick", 0, netip.Addr{}, []string{"advert:100", "announce", "->master"}, Master, us},
			{mdi + time.Millisecond, "recv", 100, lower, []string{"announce"}, Master, us},
			{mdi + 2*time.Millisecond, "recv", 100, higher, []string{"release", "->backup"}, Backup, higher},
		}},
		{"master answers a resignation at once", cfg(100, true), []step{
			{0, "start", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
			{mdi, "tick", 0, netip.Addr{}, []string{"advert:100", "announce", "->master"}, Master, us},
			{mdi + 300*time.Millisecond, "recv", 0, higher, []string{"advert:100"}, Master, us},
		}},
		{"shutdown: master resigns with priority 0", cfg(255, true), []step{
			{0, "start", 0, netip.Addr{}, []string{"advert:255", "announce", "->master"}, Master, us},
			{time.Second, "shutdown", 0, netip.Addr{}, []string{"advert:000", "release", "->initialize"}, Initialize, netip.Addr{}},
		}},
		{"shutdown of a backup", cfg(100, true), []step{
			{0, "start", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
			{time.Second, "shutdown", 0, netip.Addr{}, []string{"->initialize"}, Initialize, netip.Addr{}},
		}},
		{"fault releases, recovery restarts as backup", cfg(255-155, true), []step{
			{0, "start", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
			{mdi, "tick", 0, netip.Addr{}, []string{"advert:100", "announce", "->master"}, Master, us},
			{mdi + time.Second, "fault", 0, netip.Addr{}, []string{"advert:000", "release", "->fault"}, Fault, netip.Addr{}},
			{mdi + 9*time.Second, "tick", 0, netip.Addr{}, nil, Fault, netip.Addr{}},
			{mdi + 10*time.Second, "recover", 0, netip.Addr{}, []string{"->backup"}, Backup, netip.Addr{}},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := NewMachine(c.cfg)
			for i, s := range c.steps {
				now := t0.Add(s.at)
				var acts []Action
				switch s.do {
				case "start":
					acts = m.Start(now)
				case "tick":
					acts = m.Tick(now)
				case "shutdown":
					acts = m.Shutdown(now)
				case "fault":
					acts = m.EnterFault(now, "tracked interface down")
				case "recover":
					acts = m.LeaveFault(now)
				case "recv":
					acts = m.Receive(now, adv(s.prio, time.Second), s.from)
				}
				if got := kinds(acts); !slices.Equal(got, s.want) {
					t.Fatalf("step %d (%s at %v): actions %v, want %v", i, s.do, s.at, got, s.want)
				}
				if m.State() != s.state {
					t.Fatalf("step %d: state %s, want %s", i, m.State(), s.state)
				}
				if s.master.IsValid() && m.Master() != s.master {
					t.Fatalf("step %d: master %s, want %s", i, m.Master(), s.master)
				}
			}
		})
	}
}

// TestTrackingLowersPriority: a master whose tracking lowers its priority
// advertises the lower value, so a preempting backup takes over.
func TestTrackingLowersPriority(t *testing.T) {
	m := NewMachine(cfg(200, true))
	m.Start(t0)
	m.Tick(t0.Add(m.MasterDownInterval()))
	m.SetPriority(90)
	acts := m.Tick(t0.Add(time.Hour))
	if len(acts) != 1 || acts[0].Kind != SendAdvert || acts[0].Priority != 90 {
		t.Fatalf("advertisement after tracking: %+v", acts)
	}
	owner := NewMachine(cfg(255, true))
	owner.SetPriority(10)
	if owner.Priority() != 255 {
		t.Fatal("the address owner's priority changed")
	}
}

// TestReconfigure: a reconfiguration keeps the state and never resigns;
// a priority lowered by tracking stays until tracking sets it again; a
// shorter interval takes effect by the next advertisement.
func TestReconfigure(t *testing.T) {
	cases := []struct {
		name      string
		prio      uint8 // configured before
		setup     func(m *Machine)
		next      Config
		wantState State
		wantPrio  uint8
		wantDL    time.Time
	}{
		{"master: new priority and shorter interval", 100, func(m *Machine) { m.Start(t0); m.Tick(t0.Add(4 * time.Second)) },
			func() Config { c := cfg(150, true); c.Interval = 100 * time.Millisecond; return c }(),
			Master, 150, t0.Add(4*time.Second + 100*time.Millisecond)},
		{"master: longer interval keeps the due advertisement", 100, func(m *Machine) { m.Start(t0); m.Tick(t0.Add(4 * time.Second)) },
			func() Config { c := cfg(100, true); c.Interval = 3 * time.Second; return c }(),
			Master, 100, t0.Add(5 * time.Second)},
		{"tracked priority stays", 100, func(m *Machine) { m.Start(t0); m.SetPriority(60) }, cfg(150, true), Backup, 60, t0.Add(3609375 * time.Microsecond)},
		{"backup: preemption off", 100, func(m *Machine) { m.Start(t0) }, cfg(100, false), Backup, 100, t0.Add(3609375 * time.Microsecond)},
		{"owner keeps 255", OwnerPriority, func(m *Machine) { m.Start(t0) }, cfg(100, true), Master, 255, t0.Add(time.Second)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := NewMachine(cfg(c.prio, true))
			c.setup(m)
			m.Reconfigure(t0.Add(4*time.Second), c.next)
			if m.State() != c.wantState || m.Priority() != c.wantPrio || !m.Deadline().Equal(c.wantDL) {
				t.Fatalf("state %s prio %d deadline %v; want %s %d %v", m.State(), m.Priority(), m.Deadline().Sub(t0), c.wantState, c.wantPrio, c.wantDL.Sub(t0))
			}
		})
	}
}
