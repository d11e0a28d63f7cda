package bfd

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// SlowTx is the least Desired Min TX Interval a session advertises and
// uses while it is not Up (RFC 5880 section 6.8.3): a session that cannot
// come up costs one packet a second.
const SlowTx = time.Second

// Config is a session's timers: the bfd.DesiredMinTxInterval (once Up),
// bfd.RequiredMinRxInterval and bfd.DetectMult of RFC 5880 section 6.8.1.
type Config struct {
	DesiredMinTx  time.Duration
	RequiredMinRx time.Duration
	Multiplier    uint8
}

func (c Config) validate() error {
	switch {
	case c.Multiplier == 0:
		return fmt.Errorf("multiplier: 0, want 1-255")
	case c.DesiredMinTx < time.Microsecond || c.DesiredMinTx > maxInterval:
		return fmt.Errorf("desired min tx: %v, want 1us-%v", c.DesiredMinTx, maxInterval)
	case c.RequiredMinRx < 0 || c.RequiredMinRx > maxInterval:
		// 0 is legal: "send me nothing" (RFC 5880 section 6.8.1).
		return fmt.Errorf("required min rx: %v, want 0-%v", c.RequiredMinRx, maxInterval)
	}
	return nil
}

// ActionKind says what an Action asks of the runner.
type ActionKind int

const (
	Send       ActionKind = iota // transmit Packet now
	Transition                   // the session state changed
)

// Action is what the machine asks its runner to do, in order.
type Action struct {
	Kind   ActionKind
	Packet Packet // Send
	From   State  // Transition
	To     State  // Transition
	Diag   Diag   // Transition: the local diagnostic that goes with To
}

// Status is what the machine knows about its session.
type Status struct {
	State, RemoteState State
	Diag, RemoteDiag   Diag
	LocalDiscr         uint32
	RemoteDiscr        uint32 // 0 while the remote is not heard
	// TxInterval is the negotiated transmit interval before jitter: the
	// larger of our Desired Min TX in force and the remote's Required
	// Min RX (section 6.8.2).
	TxInterval time.Duration
	// DetectTime is the remote's Detect Mult times the larger of our
	// Required Min RX in force and the remote's Desired Min TX (section
	// 6.8.4); 0 until the remote is heard.
	DetectTime time.Duration
	// What we advertise (DesiredMinTx is at least SlowTx while not Up).
	DesiredMinTx, RequiredMinRx time.Duration
	// What the remote advertised last.
	RemoteDesiredMinTx, RemoteMinRx time.Duration
	RemoteMultiplier                uint8
	RemoteDemand                    bool
	Polling                         bool // a Poll Sequence of ours waits for its Final
	UpSince                         time.Time
	LastReceived                    time.Time
}

// Machine is one session's RFC 5880 section 6.8 state machine in
// asynchronous mode, driven by explicit times so that tests run it on a
// fake clock. It takes the active role (it transmits before it hears the
// remote). Not safe for concurrent use.
type Machine struct {
	cfg    Config
	jitter func() float64 // [0, 1)

	state, remoteState State
	diag, remoteDiag   Diag
	localDiscr         uint32
	remoteDiscr        uint32
	remoteDemand       bool
	remoteMult         uint8
	remoteMinRx        time.Duration // bfd.RemoteMinRxInterval
	remoteMinTx        time.Duration // the remote's last Desired Min TX

	// The intervals we advertise, and the ones in force: while Up, a
	// longer transmit interval or a shorter receive interval waits for
	// the Final of the Poll Sequence that announced it (section 6.8.3),
	// so that neither side's detection timer fires on the change.
	advTx, advRx   time.Duration
	useTx, useRx   time.Duration
	polling        bool
	repoll         bool          // the values changed again during the poll
	txIv           time.Duration // TxInterval the schedule was made with
	lastTx, nextTx time.Time     // nextTx zero: no periodic transmission
	lastRx         time.Time
	detectAt       time.Time // zero: no detection timer
	adminUntil     time.Time // AdminDown: periodic packets until then
	upSince        time.Time
}

// NewMachine returns a machine in Down that has not sent yet (Start).
// localDiscr must be non-zero and unique among the system's sessions.
// jitter returns uniform numbers in [0, 1) for the transmit jitter; nil
// means math/rand/v2.
func NewMachine(cfg Config, localDiscr uint32, jitter func() float64) (*Machine, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if localDiscr == 0 {
		return nil, fmt.Errorf("local discriminator: 0, want non-zero")
	}
	if jitter == nil {
		jitter = rand.Float64
	}
	m := &Machine{cfg: cfg, jitter: jitter, state: Down, remoteState: Down, localDiscr: localDiscr,
		remoteMinRx: time.Microsecond} // section 6.8.1: the initial bfd.RemoteMinRxInterval
	m.advTx, m.advRx = m.wantTx(), cfg.RequiredMinRx
	m.useTx, m.useRx = m.advTx, m.advRx
	return m, nil
}

func (m *Machine) State() State { return m.state }

// Status returns what the machine knows.
func (m *Machine) Status() Status {
	return Status{
		State: m.state, RemoteState: m.remoteState, Diag: m.diag, RemoteDiag: m.remoteDiag,
		LocalDiscr: m.localDiscr, RemoteDiscr: m.remoteDiscr,
		TxInterval: m.txInterval(), DetectTime: m.detectTime(),
		DesiredMinTx: m.advTx, RequiredMinRx: m.advRx,
		RemoteDesiredMinTx: m.remoteMinTx, RemoteMinRx: m.remoteMinRx, RemoteMultiplier: m.remoteMult,
		RemoteDemand: m.remoteDemand, Polling: m.polling, UpSince: m.upSince, LastReceived: m.lastRx,
	}
}

// Deadline is when Tick must next be called; zero when no timer runs.
func (m *Machine) Deadline() time.Time {
	dl := m.nextTx
	for _, t := range []time.Time{m.detectAt, m.adminUntil} {
		if !t.IsZero() && (dl.IsZero() || t.Before(dl)) {
			dl = t
		}
	}
	return dl
}

// Done says that an administratively downed session has told the remote
// for long enough (section 6.8.16) and can be removed.
func (m *Machine) Done() bool {
	return m.state == AdminDown && m.adminUntil.IsZero()
}

// wantTx is bfd.DesiredMinTxInterval for the current state.
func (m *Machine) wantTx() time.Duration {
	if m.state != Up {
		return max(m.cfg.DesiredMinTx, SlowTx)
	}
	return m.cfg.DesiredMinTx
}

func (m *Machine) txInterval() time.Duration { return max(m.useTx, m.remoteMinRx) }

func (m *Machine) detectTime() time.Duration {
	return time.Duration(m.remoteMult) * max(m.useRx, m.remoteMinTx)
}

// jittered is one interval between periodic packets: 0-25% less than iv,
// or 10-25% less with a Detect Mult of 1 (section 6.8.7), so that one late
// packet never makes the remote's detection time pass.
func (m *Machine) jittered(iv time.Duration) time.Duration {
	r := m.jitter()
	if m.cfg.Multiplier == 1 {
		return iv*3/4 + time.Duration(float64(iv)*0.15*r)
	}
	return iv - time.Duration(float64(iv)*0.25*r)
}

// periodic says whether periodic transmission is allowed now (section
// 6.8.7): not while the remote asks for no packets (Required Min RX 0),
// not while the remote runs Demand mode with both sides Up and no Poll of
// ours is out, and not after the AdminDown window.
func (m *Machine) periodic() bool {
	switch {
	case m.remoteMinRx == 0:
		return false
	case m.remoteDemand && m.state == Up && m.remoteState == Up && !m.polling:
		return false
	case m.state == AdminDown && m.adminUntil.IsZero():
		return false
	}
	return true
}

func (m *Machine) packet(final bool) Packet {
	return Packet{Diag: m.diag, State: m.state, Poll: m.polling && !final, Final: final,
		DetectMult: m.cfg.Multiplier, MyDiscr: m.localDiscr, YourDiscr: m.remoteDiscr,
		DesiredMinTx: m.advTx, RequiredMinRx: m.advRx}
}

// sendNow is an extra packet outside the periodic schedule (a state
// change); the periodic schedule starts again from it.
func (m *Machine) sendNow(now time.Time) Action {
	m.lastTx = now
	m.txIv = m.txInterval()
	m.nextTx = now.Add(m.jittered(m.txIv))
	return Action{Kind: Send, Packet: m.packet(false)}
}

// retime follows a change of the transmit interval at once (section
// 6.8.7): the next packet is due one new interval after the last one.
func (m *Machine) retime(now time.Time) {
	iv := m.txInterval()
	if iv == m.txIv || m.nextTx.IsZero() {
		return
	}
	m.txIv = iv
	next := m.lastTx.Add(m.jittered(iv))
	if next.Before(now) {
		next = now
	}
	m.nextTx = next
}

func (m *Machine) rearmDetect() {
	if !m.lastRx.IsZero() && !m.detectAt.IsZero() {
		m.detectAt = m.lastRx.Add(m.detectTime())
	}
}

// applyTimers brings the advertised intervals in line with the
// configuration and the state, and starts a Poll Sequence when they
// change (section 6.8.3).
func (m *Machine) applyTimers(now time.Time) {
	tx, rx := m.wantTx(), m.cfg.RequiredMinRx
	if tx == m.advTx && rx == m.advRx {
		return
	}
	m.advTx, m.advRx = tx, rx
	up := m.state == Up
	if !up || tx < m.useTx {
		m.useTx = tx
	}
	if !up || rx > m.useRx {
		m.useRx = rx
	}
	if m.polling {
		// The Final that ends this poll may answer a packet sent
		// before the change: poll once more after it.
		m.repoll = true
	} else {
		m.polling = true
	}
	m.retime(now)
	m.rearmDetect()
}

// endPoll is the Final's arrival: the advertised values are in force.
func (m *Machine) endPoll(now time.Time) {
	m.polling = false
	m.useTx, m.useRx = m.advTx, m.advRx
	if m.repoll {
		m.repoll, m.polling = false, true
	}
	m.retime(now)
	m.rearmDetect()
}

func (m *Machine) setState(now time.Time, to State, diag Diag) Action {
	from := m.state
	m.state, m.diag = to, diag
	switch {
	case to == Up:
		m.upSince = now
	case from == Up:
		m.upSince = time.Time{}
	}
	if to == AdminDown {
		// Nothing to negotiate with a session we are shutting down.
		m.polling, m.repoll = false, false
		m.advTx, m.useTx = m.wantTx(), m.wantTx()
		m.retime(now)
	} else {
		m.applyTimers(now)
	}
	return Action{Kind: Transition, From: from, To: to, Diag: diag}
}

// Start sends the first packet: we take the active role.
func (m *Machine) Start(now time.Time) []Action {
	if !m.lastTx.IsZero() || m.state == AdminDown {
		return nil
	}
	return []Action{m.sendNow(now)}
}

// Tick fires the timers that are due at now.
func (m *Machine) Tick(now time.Time) []Action {
	var acts []Action
	if !m.detectAt.IsZero() && !now.Before(m.detectAt) {
		// Section 6.8.4; and 6.8.1: a remote unheard for a detection
		// time is forgotten, so our packets stop naming it.
		m.detectAt = time.Time{}
		m.remoteDiscr, m.remoteState, m.remoteDemand = 0, Down, false
		if m.state == Init || m.state == Up {
			acts = append(acts, m.setState(now, Down, DiagDetectionTimeExpired), m.sendNow(now))
		}
	}
	if !m.adminUntil.IsZero() && !now.Before(m.adminUntil) {
		m.adminUntil, m.nextTx = time.Time{}, time.Time{}
	}
	if !m.nextTx.IsZero() && !now.Before(m.nextTx) {
		if m.periodic() {
			acts = append(acts, Action{Kind: Send, Packet: m.packet(false)})
			m.lastTx = now
		}
		m.txIv = m.txInterval()
		m.nextTx = now.Add(m.jittered(m.txIv))
	}
	return acts
}

// Receive handles a packet for this session: one that passed Unmarshal,
// the transport's checks (TTL 255) and demultiplexing. It follows RFC 5880
// section 6.8.6 from "Set bfd.RemoteDiscr" on.
func (m *Machine) Receive(now time.Time, p Packet) []Action {
	m.remoteDiscr, m.remoteState, m.remoteDiag = p.MyDiscr, p.State, p.Diag
	m.remoteDemand, m.remoteMult = p.Demand, p.DetectMult
	m.remoteMinRx, m.remoteMinTx = p.RequiredMinRx, p.DesiredMinTx
	m.lastRx = now
	if p.Final && m.polling {
		m.endPoll(now)
	}
	m.retime(now)
	if m.state == AdminDown {
		return nil
	}
	m.detectAt = now.Add(m.detectTime())

	var acts []Action
	to, diag := m.state, m.diag
	if p.State == AdminDown {
		if m.state != Down {
			to, diag = Down, DiagNeighborDown
		}
	} else {
		switch m.state {
		case Down:
			switch p.State {
			case Down:
				to = Init
			case Init:
				to, diag = Up, DiagNone
			}
		case Init:
			if p.State == Init || p.State == Up {
				to, diag = Up, DiagNone
			}
		case Up:
			if p.State == Down {
				to, diag = Down, DiagNeighborDown
			}
		}
	}
	changed := to != m.state
	if changed {
		acts = append(acts, m.setState(now, to, diag))
	}
	switch {
	case p.Poll:
		// Section 6.8.6: a Final at once, whatever the schedule; it
		// carries a state change too.
		acts = append(acts, Action{Kind: Send, Packet: m.packet(true)})
	case changed:
		acts = append(acts, m.sendNow(now))
	}
	return acts
}

// AdminDown takes the session administratively down (diag 7): the remote
// goes Down without treating it as a failure. Packets go on for the
// remote's detection time of us (section 6.8.16), then stop (Done).
func (m *Machine) AdminDown(now time.Time) []Action {
	if m.state == AdminDown {
		return nil
	}
	window := time.Duration(0)
	if m.remoteDiscr != 0 {
		window = time.Duration(m.cfg.Multiplier) * m.txInterval()
	}
	m.detectAt = time.Time{}
	acts := []Action{m.setState(now, AdminDown, DiagAdminDown), m.sendNow(now)}
	if window > 0 {
		m.adminUntil = now.Add(window)
	} else {
		m.nextTx = time.Time{}
	}
	return acts
}

// Enable leaves AdminDown for Down: the session may come up again.
func (m *Machine) Enable(now time.Time) []Action {
	if m.state != AdminDown {
		return nil
	}
	m.adminUntil = time.Time{}
	return []Action{m.setState(now, Down, DiagNone), m.sendNow(now)}
}

// SetConfig changes the timers of a running session. A change of the
// advertised intervals starts a Poll Sequence; while Up, a longer transmit
// interval or a shorter receive interval takes effect with its Final.
func (m *Machine) SetConfig(now time.Time, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	m.cfg = cfg
	if m.state != AdminDown {
		m.applyTimers(now)
	}
	return nil
}
