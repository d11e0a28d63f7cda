package bfd

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Config returns the session's configuration.
func (s *Session) Config() SessionConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// State returns the session's state.
func (s *Session) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m.State()
}

// Status returns the session's state, timers and counters.
func (s *Session) Status() SessionStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return SessionStatus{Local: s.cfg.Local, Peer: s.cfg.Peer, Interface: s.cfg.Interface, Status: s.m.Status(), Counters: s.counters}
}

// SetTimers changes the session's intervals and multiplier without taking
// it down (a Poll Sequence announces them; see Machine.SetConfig).
func (s *Session) SetTimers(ctx context.Context, tx, rx time.Duration, mult uint8) error {
	cfg := Config{DesiredMinTx: tx, RequiredMinRx: rx, Multiplier: mult}
	errc := make(chan error, 1)
	if err := s.call(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		err := s.m.SetConfig(time.Now(), cfg)
		if err == nil {
			s.cfg.DesiredMinTx, s.cfg.RequiredMinRx, s.cfg.Multiplier = tx, rx, mult
		}
		errc <- err
	}); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("bfd session %s: %w", s.cfg.Peer, err)
	}
	return nil
}

// call runs fn on the session's loop.
func (s *Session) call(ctx context.Context, fn func()) error {
	select {
	case s.ctl <- fn:
		return nil
	case <-s.stopped:
		return fmt.Errorf("bfd session %s: stopped", s.cfg.Peer)
	case <-ctx.Done():
		return fmt.Errorf("bfd session %s: %w", s.cfg.Peer, ctx.Err())
	}
}

// freeze stops the session's loop (no packets in or out, no timers) until
// thaw is called, as if the process were stopped: tests use it to make a
// neighbour detect us.
func (s *Session) freeze(ctx context.Context) (thaw func(), err error) {
	ch := make(chan struct{})
	if err := s.call(ctx, func() {
		select {
		case <-ch:
		case <-s.stop:
		}
	}); err != nil {
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }, nil
}

// shutdown is Remove's work: AdminDown on the loop, wait for the machine
// to be done with it (or ctx), stop the loop, unregister.
func (s *Session) shutdown(ctx context.Context) error {
	s.mu.Lock()
	already := s.removing
	s.removing = true
	s.mu.Unlock()
	var err error
	if !already {
		err = s.call(ctx, func() {
			s.mu.Lock()
			acts := s.m.AdminDown(time.Now())
			s.mu.Unlock()
			s.do(acts, time.Now())
		})
	}
	if err == nil {
		select {
		case <-s.stopped:
		case <-ctx.Done():
			err = fmt.Errorf("bfd session %s: admin down cut short: %w", s.cfg.Peer, ctx.Err())
		}
	}
	s.halt()
	return err
}

// halt stops the loop at once and unregisters the session.
func (s *Session) halt() {
	m := s.mgr
	m.mu.Lock()
	if m.sessions[s.key] == s {
		delete(m.sessions, s.key)
		delete(m.byDiscr, s.discr)
		if l := m.listeners[s.lkey]; l != nil {
			m.releaseListener(l)
		}
		close(s.stop)
	}
	m.mu.Unlock()
	<-s.stopped
	s.tx.Close()
}

// run is the session's loop: the machine's timers, its packets, and calls
// from the API, one at a time.
func (s *Session) run() {
	defer close(s.stopped)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	s.mu.Lock()
	acts := s.m.Start(time.Now())
	s.mu.Unlock()
	s.do(acts, time.Now())
	for {
		s.mu.Lock()
		dl, done := s.m.Deadline(), s.m.Done() && s.removing
		s.mu.Unlock()
		if done {
			return
		}
		if dl.IsZero() {
			timer.Reset(time.Hour)
		} else {
			timer.Reset(time.Until(dl))
		}
		select {
		case <-s.stop:
			return
		case r := <-s.rx:
			s.receive(r)
		case <-timer.C:
			// Packets the reader already holds arrived before this tick
			// is handled: after a stall that delayed both, they must
			// count before the detection timer is judged.
			for drained := false; !drained; {
				select {
				case r := <-s.rx:
					s.receive(r)
				default:
					drained = true
				}
			}
			now := time.Now()
			s.mu.Lock()
			acts := s.m.Tick(now)
			s.mu.Unlock()
			s.do(acts, now)
		case fn := <-s.ctl:
			fn()
		}
	}
}

func (s *Session) receive(r received) {
	s.mu.Lock()
	s.counters.PacketsIn++
	acts := s.m.Receive(r.at, r.p)
	s.mu.Unlock()
	s.do(acts, r.at)
}

// do sends the machine's packets and reports its transitions; at is when
// their cause happened.
func (s *Session) do(acts []Action, at time.Time) {
	var buf [PacketLen]byte
	for _, a := range acts {
		switch a.Kind {
		case Send:
			b, err := a.Packet.AppendMarshal(buf[:0])
			if err == nil {
				_, err = s.tx.WriteToUDPAddrPort(b, s.to)
			}
			s.mu.Lock()
			if err != nil {
				s.counters.SendErrors++
			} else {
				s.counters.PacketsOut++
			}
			s.mu.Unlock()
		case Transition:
			s.mu.Lock()
			st := s.m.Status()
			if a.From == Up {
				s.counters.UpDown++
			}
			s.mu.Unlock()
			ev := Event{Local: s.cfg.Local, Peer: s.cfg.Peer, Interface: s.cfg.Interface, From: a.From, To: a.To,
				Diag: a.Diag, RemoteState: st.RemoteState, RemoteDiag: st.RemoteDiag, At: at}
			s.mgr.log.Info("bfd: session state", "peer", s.cfg.Peer, "interface", s.cfg.Interface,
				"from", a.From, "to", a.To, "diag", a.Diag, "remote_state", st.RemoteState, "remote_diag", st.RemoteDiag)
			s.mgr.notes.post(ev)
		}
	}
}

// notifier delivers events in order on its own goroutine, so that no
// consumer can hold up a session's timers: the queue grows instead.
type notifier struct {
	fn   func(Event)
	mu   sync.Mutex
	q    []Event
	kick chan struct{}
	quit chan struct{}
	done chan struct{}
}

func newNotifier(fn func(Event)) *notifier {
	n := &notifier{fn: fn, kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go n.loop()
	return n
}

func (n *notifier) post(ev Event) {
	if n.fn == nil {
		return
	}
	n.mu.Lock()
	n.q = append(n.q, ev)
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

func (n *notifier) loop() {
	defer close(n.done)
	for {
		if n.drain() > 0 {
			continue
		}
		select {
		case <-n.kick:
		case <-n.quit:
			n.drain() // what was queued before quit is still delivered
			return
		}
	}
}

// drain delivers what is queued, in order, and says how many.
func (n *notifier) drain() int {
	n.mu.Lock()
	q := n.q
	n.q = nil
	n.mu.Unlock()
	for _, ev := range q {
		n.fn(ev)
	}
	return len(q)
}

// close delivers what is queued and stops.
func (n *notifier) close() {
	select {
	case <-n.quit:
	default:
		close(n.quit)
	}
	<-n.done
}

// String names the session for logs.
func (s *Session) String() string {
	return fmt.Sprintf("bfd %s->%s%s", s.cfg.Local, s.cfg.Peer, zone(s.cfg.Interface))
}

func zone(ifname string) string {
	if ifname == "" {
		return ""
	}
	return "%" + ifname
}
