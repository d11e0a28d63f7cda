package bfd

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1_000_000, 0)

const (
	ms          = time.Millisecond
	localDiscr  = 0x1111
	remoteDiscr = 0x2222
)

var fast = Config{DesiredMinTx: 10 * ms, RequiredMinRx: 10 * ms, Multiplier: 3}

// rp is a packet from the remote: state, flags ("P", "F", "D") and its
// intervals; Your Discriminator is ours unless the remote is Down or
// AdminDown and has not heard us (your0).
func rp(st State, flags string, tx, rx time.Duration) Packet {
	p := Packet{State: st, DetectMult: 3, MyDiscr: remoteDiscr, YourDiscr: localDiscr, DesiredMinTx: tx, RequiredMinRx: rx}
	for _, f := range flags {
		switch f {
		case 'P':
			p.Poll = true
		case 'F':
			p.Final = true
		case 'D':
			p.Demand = true
		case '0':
			p.YourDiscr = 0
		}
	}
	return p
}

// describe turns actions into "->state" and "sent:state/diag flags".
func describe(acts []Action) []string {
	var out []string
	for _, a := range acts {
		switch a.Kind {
		case Transition:
			out = append(out, fmt.Sprintf("->%s/%s", a.To, a.Diag))
		case Send:
			p := a.Packet
			s := fmt.Sprintf("%s/%s", p.State, p.Diag)
			if p.Poll {
				s += " P"
			}
			if p.Final {
				s += " F"
			}
			if p.Demand || p.CPIndependent || p.RequiredMinEchoRx != 0 {
				s += " UNEXPECTED-BITS"
			}
			out = append(out, s)
		}
	}
	return out
}

type step struct {
	at   time.Duration // since t0
	do   string        // start, tick, recv, admin, enable, config
	pkt  Packet        // recv
	cfg  Config        // config
	want []string      // describe() of the actions
	// After the step (zero values are not checked except state):
	state    State
	txIv     time.Duration // Status().TxInterval
	detect   time.Duration // Status().DetectTime
	deadline time.Duration // Deadline() since t0; -1: none
	check    func(t *testing.T, s Status)
}

func runSteps(t *testing.T, cfg Config, jitter float64, steps []step) {
	t.Helper()
	m, err := NewMachine(cfg, localDiscr, func() float64 { return jitter })
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range steps {
		now := t0.Add(s.at)
		var acts []Action
		switch s.do {
		case "start":
			acts = m.Start(now)
		case "tick":
			acts = m.Tick(now)
		case "recv":
			acts = m.Receive(now, s.pkt)
		case "admin":
			acts = m.AdminDown(now)
		case "enable":
			acts = m.Enable(now)
		case "config":
			if err := m.SetConfig(now, s.cfg); err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
		default:
			t.Fatalf("step %d: unknown %q", i, s.do)
		}
		st := m.Status()
		for _, a := range acts {
			if a.Kind != Send {
				continue
			}
			p := a.Packet
			// Invariants of every packet we send.
			if p.MyDiscr != localDiscr || p.YourDiscr != st.RemoteDiscr || p.DetectMult != cfg.Multiplier && s.do != "config" {
				t.Fatalf("step %d: sent %v: discriminators or multiplier wrong", i, p)
			}
			if p.State != Up && p.DesiredMinTx < SlowTx {
				t.Fatalf("step %d: sent %v: below 1 s while not up (RFC 5880 6.8.3)", i, p)
			}
			if p.Poll && p.Final {
				t.Fatalf("step %d: sent %v: P and F together", i, p)
			}
			if _, err := p.Marshal(); err != nil {
				t.Fatalf("step %d: sent %v: %v", i, p, err)
			}
		}
		if got := describe(acts); !slices.Equal(got, s.want) {
			t.Fatalf("step %d (%s at %v): actions %q, want %q", i, s.do, s.at, got, s.want)
		}
		if st.State != s.state {
			t.Fatalf("step %d (%s at %v): state %s, want %s", i, s.do, s.at, st.State, s.state)
		}
		if s.txIv != 0 && st.TxInterval != s.txIv {
			t.Fatalf("step %d: tx interval %v, want %v", i, st.TxInterval, s.txIv)
		}
		if s.detect != 0 && st.DetectTime != s.detect {
			t.Fatalf("step %d: detection time %v, want %v", i, st.DetectTime, s.detect)
		}
		if s.deadline != 0 {
			dl := m.Deadline()
			got := time.Duration(-1)
			if !dl.IsZero() {
				got = dl.Sub(t0)
			}
			if got != s.deadline {
				t.Fatalf("step %d: deadline %v, want %v", i, got, s.deadline)
			}
		}
		if s.check != nil {
			s.check(t, st)
		}
	}
}

// up is the handshake that brings a fast session Up at 10 ms, with the
// Poll Sequence for the 10 ms timers finished at 20 ms.
var up = []step{
	{at: 0, do: "start", want: []string{"down/none"}, state: Down, txIv: time.Second, deadline: time.Second},
	{at: 5 * ms, do: "recv", pkt: rp(Down, "0", time.Second, 10*ms), want: []string{"->init/none", "init/none"}, state: Init,
		txIv: time.Second, detect: 3 * time.Second, deadline: 5*ms + time.Second},
	// The remote came Up and polls for its fast timers: we come Up, answer
	// with a Final (no P on it) and start our own poll.
	{at: 10 * ms, do: "recv", pkt: rp(Up, "P", 10*ms, 10*ms), want: []string{"->up/none", "up/none F"}, state: Up,
		txIv: 10 * ms, detect: 30 * ms, deadline: 15 * ms,
		check: func(t *testing.T, s Status) {
			if !s.Polling || s.DesiredMinTx != 10*ms || s.UpSince != t0.Add(10*ms) {
				t.Fatalf("after up: %+v", s)
			}
		}},
	{at: 15 * ms, do: "tick", want: []string{"up/none P"}, state: Up, deadline: 25 * ms},
	{at: 20 * ms, do: "recv", pkt: rp(Up, "F", 10*ms, 10*ms), state: Up, detect: 30 * ms, deadline: 25 * ms,
		check: func(t *testing.T, s Status) {
			if s.Polling {
				t.Fatal("the Final did not end the poll")
			}
		}},
	{at: 25 * ms, do: "tick", want: []string{"up/none"}, state: Up, deadline: 35 * ms},
}

func after(steps ...step) []step { return append(slices.Clone(up), steps...) }

// TestMachine drives the RFC 5880 section 6.8 machine on a fake clock.
// With jitter 0 every interval is exact.
func TestMachine(t *testing.T) {
	cases := []struct {
		name   string
		cfg    Config
		jitter float64
		steps  []step
	}{
		{"handshake down -> init -> up, 1 s while not up, poll for the fast timers", fast, 0, up},
		{"our own poll and theirs at once", fast, 0, []step{
			{at: 0, do: "start", want: []string{"down/none"}, state: Down},
			// The remote is already Init (it heard our first packet).
			{at: 1 * ms, do: "recv", pkt: rp(Init, "", time.Second, 10*ms), want: []string{"->up/none", "up/none P"}, state: Up, txIv: 10 * ms, deadline: 11 * ms},
			{at: 2 * ms, do: "recv", pkt: rp(Up, "P", 10*ms, 10*ms), want: []string{"up/none F"}, state: Up, deadline: 11 * ms},
			{at: 3 * ms, do: "recv", pkt: rp(Up, "F", 10*ms, 10*ms), state: Up},
			{at: 11 * ms, do: "tick", want: []string{"up/none"}, state: Up, deadline: 21 * ms},
		}},
		{"detection time expires: down, diag 1, remote forgotten, back to 1 s", fast, 0, after(
			step{at: 35 * ms, do: "tick", want: []string{"up/none"}, state: Up, deadline: 45 * ms},
			// The last packet came at 20 ms: detection at 20 + 3 x 10 ms.
			step{at: 45 * ms, do: "tick", want: []string{"up/none"}, state: Up, deadline: 50 * ms},
			step{at: 50 * ms, do: "tick", want: []string{"->down/detection-time-expired", "down/detection-time-expired P"}, state: Down,
				txIv: time.Second, deadline: 50*ms + time.Second,
				check: func(t *testing.T, s Status) {
					if s.RemoteDiscr != 0 || s.RemoteState != Down || !s.UpSince.IsZero() || s.DesiredMinTx != time.Second {
						t.Fatalf("after detection: %+v", s)
					}
				}},
		)},
		{"every packet pushes the detection timer", fast, 0, after(
			step{at: 35 * ms, do: "tick", want: []string{"up/none"}, state: Up, deadline: 45 * ms},
			step{at: 44 * ms, do: "recv", pkt: rp(Up, "", 10*ms, 10*ms), state: Up, deadline: 45 * ms},
			step{at: 45 * ms, do: "tick", want: []string{"up/none"}, state: Up, deadline: 55 * ms},
			step{at: 55 * ms, do: "tick", want: []string{"up/none"}, state: Up, deadline: 65 * ms},
			step{at: 65 * ms, do: "tick", want: []string{"up/none"}, state: Up, deadline: 74 * ms},
			step{at: 74 * ms, do: "tick", want: []string{"->down/detection-time-expired", "down/detection-time-expired P"}, state: Down},
		)},
		{"the remote signals down", fast, 0, after(
			step{at: 30 * ms, do: "recv", pkt: rp(Down, "0", time.Second, 10*ms), want: []string{"->down/neighbor-down", "down/neighbor-down P"}, state: Down,
				txIv: time.Second, detect: 3 * time.Second},
			// And comes back: the handshake again; Init keeps the diag.
			step{at: 40 * ms, do: "recv", pkt: rp(Down, "0", time.Second, 10*ms), want: []string{"->init/neighbor-down", "init/neighbor-down P"}, state: Init},
			step{at: 41 * ms, do: "recv", pkt: rp(Up, "F", time.Second, 10*ms), want: []string{"->up/none", "up/none P"}, state: Up, txIv: 10 * ms},
		)},
		{"the remote goes admin down: down with diag 3", fast, 0, after(
			step{at: 30 * ms, do: "recv", pkt: rp(AdminDown, "", time.Second, 10*ms), want: []string{"->down/neighbor-down", "down/neighbor-down P"}, state: Down,
				check: func(t *testing.T, s Status) {
					if s.RemoteState != AdminDown {
						t.Fatalf("remote state %s", s.RemoteState)
					}
				}},
			// Admin down again while Down: nothing.
			step{at: 31 * ms, do: "recv", pkt: rp(AdminDown, "", time.Second, 10*ms), state: Down},
			// Down from it does not bring us up while it is AdminDown... it
			// is Down now, so the handshake starts.
			step{at: 32 * ms, do: "recv", pkt: rp(Down, "", time.Second, 10*ms), want: []string{"->init/neighbor-down", "init/neighbor-down P"}, state: Init},
		)},
		{"down ignores a remote that says up; init ignores down", fast, 0, []step{
			{at: 0, do: "start", want: []string{"down/none"}, state: Down},
			{at: 1 * ms, do: "recv", pkt: rp(Up, "", 10*ms, 10*ms), state: Down},
			{at: 2 * ms, do: "recv", pkt: rp(Down, "0", time.Second, 10*ms), want: []string{"->init/none", "init/none"}, state: Init},
			{at: 3 * ms, do: "recv", pkt: rp(Down, "0", time.Second, 10*ms), state: Init},
			{at: 4 * ms, do: "recv", pkt: rp(Up, "", time.Second, 10*ms), want: []string{"->up/none", "up/none P"}, state: Up},
		}},
		{"init times out after the remote's detect mult x 1 s", fast, 0, []step{
			{at: 0, do: "start", want: []string{"down/none"}, state: Down},
			{at: 1 * ms, do: "recv", pkt: rp(Down, "0", time.Second, 10*ms), want: []string{"->init/none", "init/none"}, state: Init, detect: 3 * time.Second},
			{at: 1*ms + time.Second, do: "tick", want: []string{"init/none"}, state: Init},
			{at: 1*ms + 3*time.Second, do: "tick", want: []string{"->down/detection-time-expired", "down/detection-time-expired"}, state: Down},
		}},
		{"a remote unheard for a detection time while we are down is forgotten", fast, 0, []step{
			{at: 0, do: "start", want: []string{"down/none"}, state: Down},
			{at: 1 * ms, do: "recv", pkt: rp(AdminDown, "0", time.Second, 10*ms), state: Down, deadline: time.Second,
				check: func(t *testing.T, s Status) {
					if s.RemoteDiscr != remoteDiscr {
						t.Fatal("remote discriminator not learnt")
					}
				}},
			{at: time.Second, do: "tick", want: []string{"down/none"}, state: Down, deadline: 2 * time.Second},
			{at: 1*ms + 3*time.Second, do: "tick", want: []string{"down/none"}, state: Down,
				check: func(t *testing.T, s Status) {
					if s.RemoteDiscr != 0 {
						t.Fatal("remote discriminator kept")
					}
				}},
		}},
		{"a poll is answered at once with a final", fast, 0, after(
			step{at: 27 * ms, do: "recv", pkt: rp(Up, "P", 10*ms, 10*ms), want: []string{"up/none F"}, state: Up, deadline: 35 * ms},
		)},
		{"the remote asks for a slower rate: applied to the next packet", fast, 0, after(
			// The next packet is due one new interval after the last (25 ms).
			step{at: 27 * ms, do: "recv", pkt: rp(Up, "P", 10*ms, 50*ms), want: []string{"up/none F"}, state: Up, txIv: 50 * ms, deadline: 57 * ms},
			step{at: 50 * ms, do: "recv", pkt: rp(Up, "", 10*ms, 50*ms), state: Up, deadline: 75 * ms},
			step{at: 75 * ms, do: "tick", want: []string{"up/none"}, state: Up, deadline: 80 * ms}, // next at 125, detection at 80
		)},
		{"a longer tx of ours waits for the final (6.8.3)", fast, 0, after(
			step{at: 30 * ms, do: "config", cfg: Config{DesiredMinTx: 50 * ms, RequiredMinRx: 10 * ms, Multiplier: 3}, state: Up, txIv: 10 * ms, deadline: 35 * ms},
			step{at: 35 * ms, do: "tick", want: []string{"up/none P"}, state: Up, deadline: 45 * ms,
				check: func(t *testing.T, s Status) {
					if s.DesiredMinTx != 50*ms {
						t.Fatalf("advertised %v, want the new 50ms at once", s.DesiredMinTx)
					}
				}},
			step{at: 45 * ms, do: "tick", want: []string{"up/none P"}, state: Up, deadline: 50 * ms},
			// The Final: 50 ms in force, the next packet 50 ms after the
			// last (45 ms); detection at 50 + 30 ms comes first.
			step{at: 50 * ms, do: "recv", pkt: rp(Up, "F", 10*ms, 10*ms), state: Up, txIv: 50 * ms, deadline: 80 * ms},
			step{at: 78 * ms, do: "recv", pkt: rp(Up, "", 10*ms, 10*ms), state: Up, deadline: 95 * ms},
			step{at: 95 * ms, do: "tick", want: []string{"up/none"}, state: Up, deadline: 108 * ms},
		)},
		{"a shorter tx of ours applies at once", Config{DesiredMinTx: 50 * ms, RequiredMinRx: 10 * ms, Multiplier: 3}, 0, []step{
			{at: 0, do: "start", want: []string{"down/none"}, state: Down},
			{at: 1 * ms, do: "recv", pkt: rp(Init, "", time.Second, 10*ms), want: []string{"->up/none", "up/none P"}, state: Up, txIv: 50 * ms},
			{at: 2 * ms, do: "recv", pkt: rp(Up, "F", 10*ms, 10*ms), state: Up, deadline: 32 * ms}, // detection 3 x 10 ms
			{at: 20 * ms, do: "config", cfg: fast, state: Up, txIv: 10 * ms, deadline: 20 * ms},
			{at: 20 * ms, do: "tick", want: []string{"up/none P"}, state: Up, deadline: 30 * ms},
		}},
		{"a shorter rx of ours waits for the final (6.8.3)", Config{DesiredMinTx: 10 * ms, RequiredMinRx: 100 * ms, Multiplier: 3}, 0, []step{
			{at: 0, do: "start", want: []string{"down/none"}, state: Down},
			{at: 1 * ms, do: "recv", pkt: rp(Init, "", time.Second, 10*ms), want: []string{"->up/none", "up/none P"}, state: Up},
			{at: 2 * ms, do: "recv", pkt: rp(Up, "F", 10*ms, 10*ms), state: Up, detect: 300 * ms},
			{at: 5 * ms, do: "config", cfg: Config{DesiredMinTx: 10 * ms, RequiredMinRx: 20 * ms, Multiplier: 3}, state: Up, detect: 300 * ms},
			{at: 11 * ms, do: "tick", want: []string{"up/none P"}, state: Up},
			{at: 12 * ms, do: "recv", pkt: rp(Up, "F", 10*ms, 10*ms), state: Up, detect: 60 * ms, deadline: 21 * ms},
		}},
		{"a longer rx of ours applies at once", fast, 0, after(
			step{at: 30 * ms, do: "config", cfg: Config{DesiredMinTx: 10 * ms, RequiredMinRx: 40 * ms, Multiplier: 3}, state: Up, detect: 120 * ms},
		)},
		{"a change during a poll polls again after its final", fast, 0, after(
			step{at: 30 * ms, do: "config", cfg: Config{DesiredMinTx: 20 * ms, RequiredMinRx: 10 * ms, Multiplier: 3}, state: Up},
			step{at: 31 * ms, do: "config", cfg: Config{DesiredMinTx: 30 * ms, RequiredMinRx: 10 * ms, Multiplier: 3}, state: Up},
			step{at: 32 * ms, do: "recv", pkt: rp(Up, "F", 10*ms, 10*ms), state: Up, txIv: 30 * ms,
				check: func(t *testing.T, s Status) {
					if !s.Polling {
						t.Fatal("no second poll")
					}
				}},
			step{at: 55 * ms, do: "tick", want: []string{"up/none P"}, state: Up},
			step{at: 56 * ms, do: "recv", pkt: rp(Up, "F", 10*ms, 10*ms), state: Up,
				check: func(t *testing.T, s Status) {
					if s.Polling {
						t.Fatal("still polling")
					}
				}},
		)},
		{"remote required min rx 0: no periodic packets, finals still", fast, 0, after(
			step{at: 27 * ms, do: "recv", pkt: rp(Up, "", 10*ms, 0), state: Up},
			step{at: 35 * ms, do: "tick", state: Up},
			step{at: 45 * ms, do: "recv", pkt: rp(Up, "P", 10*ms, 0), want: []string{"up/none F"}, state: Up},
			step{at: 45 * ms, do: "tick", state: Up},
		)},
		{"remote demand mode: periodic packets stop while both up", fast, 0, after(
			step{at: 27 * ms, do: "recv", pkt: rp(Up, "D", 10*ms, 10*ms), state: Up},
			step{at: 35 * ms, do: "tick", state: Up},
			// Its poll is answered; we keep detecting it (we are not in
			// Demand mode ourselves).
			step{at: 40 * ms, do: "recv", pkt: rp(Up, "DP", 10*ms, 10*ms), want: []string{"up/none F"}, state: Up},
			step{at: 70 * ms, do: "tick", want: []string{"->down/detection-time-expired", "down/detection-time-expired P"}, state: Down},
		)},
		{"admin down: diag 7 at once, then for the remote's detection time, then done", Config{DesiredMinTx: 500 * ms, RequiredMinRx: 500 * ms, Multiplier: 3}, 0, []step{
			{at: 0, do: "start", want: []string{"down/none"}, state: Down},
			{at: 1 * ms, do: "recv", pkt: rp(Init, "", time.Second, 500*ms), want: []string{"->up/none", "up/none P"}, state: Up},
			{at: 2 * ms, do: "recv", pkt: rp(Up, "F", 500*ms, 500*ms), state: Up, txIv: 500 * ms},
			// Window: our multiplier x 500 ms; packets at the 1 s pace.
			{at: 100 * ms, do: "admin", want: []string{"->admin-down/admin-down", "admin-down/admin-down"}, state: AdminDown, txIv: time.Second, deadline: 1100 * ms},
			// Packets from the remote no longer change anything.
			{at: 200 * ms, do: "recv", pkt: rp(Up, "P", 500*ms, 500*ms), state: AdminDown},
			{at: 1100 * ms, do: "tick", want: []string{"admin-down/admin-down"}, state: AdminDown, deadline: 1600 * ms},
			{at: 1600 * ms, do: "tick", state: AdminDown, deadline: -1},
			{at: 1700 * ms, do: "enable", want: []string{"->down/none", "down/none"}, state: Down, deadline: 2700 * ms},
		}},
		{"admin down of a session that never heard the remote: one packet, done", fast, 0, []step{
			{at: 0, do: "start", want: []string{"down/none"}, state: Down},
			{at: 10 * ms, do: "admin", want: []string{"->admin-down/admin-down", "admin-down/admin-down"}, state: AdminDown, deadline: -1},
		}},
		{"the remote's required min rx above our tx sets the pace", Config{DesiredMinTx: 10 * ms, RequiredMinRx: 10 * ms, Multiplier: 3}, 0, []step{
			{at: 0, do: "start", want: []string{"down/none"}, state: Down},
			{at: 1 * ms, do: "recv", pkt: rp(Init, "", time.Second, 300*ms), want: []string{"->up/none", "up/none P"}, state: Up, txIv: 300 * ms, deadline: 301 * ms},
			{at: 2 * ms, do: "recv", pkt: rp(Up, "F", 10*ms, 300*ms), state: Up, detect: 30 * ms, deadline: 32 * ms},
			{at: 32 * ms, do: "tick", want: []string{"->down/detection-time-expired", "down/detection-time-expired P"}, state: Down, txIv: time.Second},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { runSteps(t, c.cfg, c.jitter, c.steps) })
	}
}

// TestAdminDownDone: Done says when the AdminDown window is over.
func TestAdminDownDone(t *testing.T) {
	m, _ := NewMachine(fast, localDiscr, func() float64 { return 0 })
	m.Start(t0)
	m.Receive(t0.Add(ms), rp(Init, "", time.Second, 10*ms))
	m.AdminDown(t0.Add(2 * ms))
	if m.Done() {
		t.Fatal("done before the window")
	}
	m.Tick(m.Deadline())
	if !m.Done() {
		t.Fatalf("not done after the window (deadline %v)", m.Deadline())
	}
}

// TestJitter: periodic intervals are 0-25% short of the negotiated one, or
// 10-25% short with a detect mult of 1 (RFC 5880 6.8.7).
func TestJitter(t *testing.T) {
	cases := []struct {
		mult     uint8
		r        float64
		interval time.Duration
	}{
		{3, 0, 100 * ms},
		{3, 0.5, 87500 * time.Microsecond},
		{3, 0.999999, 75000*time.Microsecond + 25*time.Nanosecond},
		{1, 0, 75 * ms},
		{1, 0.999999, 89999985 * time.Nanosecond},
	}
	for _, c := range cases {
		m, _ := NewMachine(Config{DesiredMinTx: 100 * ms, RequiredMinRx: 100 * ms, Multiplier: c.mult}, 1, func() float64 { return c.r })
		if got := m.jittered(100 * ms); got != c.interval {
			t.Errorf("mult %d, r %v: %v, want %v", c.mult, c.r, got, c.interval)
		}
	}
	// With the real source, over many draws.
	for _, mult := range []uint8{1, 3} {
		m, _ := NewMachine(Config{DesiredMinTx: 100 * ms, RequiredMinRx: 100 * ms, Multiplier: mult}, 1, nil)
		lo, hi := 75*ms, 100*ms
		if mult == 1 {
			hi = 90 * ms
		}
		for range 10000 {
			if got := m.jittered(100 * ms); got < lo || got > hi {
				t.Fatalf("mult %d: %v outside [%v, %v]", mult, got, lo, hi)
			}
		}
	}
}

func TestConfigRefused(t *testing.T) {
	for _, c := range []struct {
		cfg   Config
		discr uint32
		field string
	}{
		{Config{DesiredMinTx: ms, RequiredMinRx: ms}, 1, "multiplier"},
		{Config{RequiredMinRx: ms, Multiplier: 3}, 1, "desired min tx"},
		{Config{DesiredMinTx: ms, RequiredMinRx: -1, Multiplier: 3}, 1, "required min rx"},
		{Config{DesiredMinTx: 2 * maxInterval, Multiplier: 3}, 1, "desired min tx"},
		{fast, 0, "local discriminator"},
	} {
		_, err := NewMachine(c.cfg, c.discr, nil)
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%+v: error %v, want one naming %q", c.cfg, err, c.field)
		}
	}
}
