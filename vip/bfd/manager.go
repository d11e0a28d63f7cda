package bfd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// SessionConfig is one single-hop session to a neighbour.
type SessionConfig struct {
	// Local is our address towards Peer: packets go out from it and are
	// received on it. Both of one family; an IPv6 link-local Peer needs
	// Interface.
	Local, Peer netip.Addr
	// Interface binds the session's sockets to a device and, for a Peer
	// heard before it knows our discriminator, demultiplexes by ingress
	// interface. Empty: any interface.
	Interface string
	// DesiredMinTx and RequiredMinRx are our intervals once Up (RFC 5880
	// section 6.8.1; 1 s at least while not Up); Multiplier is the detect
	// multiplier the remote applies to our interval.
	DesiredMinTx, RequiredMinRx time.Duration
	Multiplier                  uint8
}

func (c SessionConfig) timers() Config {
	return Config{DesiredMinTx: c.DesiredMinTx, RequiredMinRx: c.RequiredMinRx, Multiplier: c.Multiplier}
}

func (c SessionConfig) validate() error {
	switch {
	case !c.Peer.IsValid() || c.Peer.IsUnspecified() || c.Peer.IsMulticast():
		return fmt.Errorf("peer: %v is not a unicast address", c.Peer)
	case !c.Local.IsValid() || c.Local.IsUnspecified() || c.Local.IsMulticast():
		return fmt.Errorf("local: %v is not a unicast address", c.Local)
	case c.Local.Unmap().Is4() != c.Peer.Unmap().Is4():
		return fmt.Errorf("local: %v and peer %v are of different families", c.Local, c.Peer)
	case c.Peer.Is6() && c.Peer.IsLinkLocalUnicast() && c.Interface == "":
		return fmt.Errorf("interface: needed for the link-local peer %v", c.Peer)
	}
	return c.timers().validate()
}

// Event is a session's state change.
type Event struct {
	Local, Peer netip.Addr
	Interface   string
	From, To    State
	Diag        Diag  // ours: why (DiagDetectionTimeExpired, DiagNeighborDown, DiagAdminDown)
	RemoteState State // as last heard (Down once the remote is timed out)
	RemoteDiag  Diag
	At          time.Time // when the machine decided (a timer fired or a packet arrived)
}

// PathDown says the event is the failure a BFD client acts on: an Up
// session went Down, and not because the neighbour took its end
// administratively down (RFC 5882 section 3.2: that must not be taken as a
// failure of the path).
func (e Event) PathDown() bool {
	return e.From == Up && e.To == Down && e.RemoteState != AdminDown
}

// SessionCounters count one session's packets.
type SessionCounters struct {
	PacketsIn, PacketsOut uint64
	SendErrors            uint64
	// RxOverflow: packets dropped because the session's loop was behind.
	RxOverflow uint64
	// UpDown: how often the session left Up.
	UpDown uint64
}

// SessionStatus is a session's configuration, machine state and counters.
type SessionStatus struct {
	Local, Peer netip.Addr
	Interface   string
	Status
	Counters SessionCounters
}

// Counters are the Manager's receive-side drops (before a session sees
// the packet).
type Counters struct {
	Received  uint64
	BadTTL    uint64 // TTL / hop limit not 255 (RFC 5881 section 5)
	Malformed uint64 // refused by Unmarshal (RFC 5880 section 6.8.6)
	Auth      uint64 // A bit set: we run no authentication
	NoSession uint64 // unknown Your Discriminator, or nothing configured for the source
}

// peerKey finds a session from a packet that does not name it (Your
// Discriminator 0): by our address it came to, its source and, when the
// session has one, the interface (RFC 5881 section 3).
type peerKey struct {
	local, peer netip.Addr
	ifindex     int // 0: any interface
}

// Manager runs single-hop BFD sessions (RFC 5881): it listens on UDP 3784
// on each session's local address, checks TTL 255, demultiplexes by Your
// Discriminator (or, before the peer knows ours, by source address and
// interface), and runs one loop per session.
type Manager struct {
	log      *slog.Logger
	onChange func(Event)

	mu        sync.Mutex
	closed    bool
	sessions  map[peerKey]*Session
	byDiscr   map[uint32]*Session
	listeners map[listenKey]*listener
	counters  Counters
	wg        sync.WaitGroup // read loops

	notes *notifier
}

// NewManager returns a Manager with no sessions. onChange (may be nil)
// receives every state change, in order, on a goroutine of its own: a slow
// callback delays later events but never a session's timers.
func NewManager(log *slog.Logger, onChange func(Event)) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{log: log, onChange: onChange,
		sessions: map[peerKey]*Session{}, byDiscr: map[uint32]*Session{}, listeners: map[listenKey]*listener{}}
	m.notes = newNotifier(onChange)
	return m
}

// Session is one running session.
type Session struct {
	mgr     *Manager
	cfg     SessionConfig
	key     peerKey
	lkey    listenKey
	discr   uint32
	tx      *net.UDPConn
	to      netip.AddrPort
	rx      chan received
	ctl     chan func()
	stop    chan struct{} // closed: leave the loop at once
	stopped chan struct{} // closed by the loop

	mu       sync.Mutex
	m        *Machine
	counters SessionCounters
	removing bool
}

type received struct {
	p  Packet
	at time.Time
}

// Add starts a session; sockets are opened in the calling thread's network
// namespace.
func (m *Manager) Add(ctx context.Context, cfg SessionConfig) (*Session, error) {
	cfg.Local, cfg.Peer = cfg.Local.Unmap().WithZone(""), cfg.Peer.Unmap().WithZone("")
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("bfd session %s: %w", cfg.Peer, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bfd session %s: %w", cfg.Peer, err)
	}
	key := peerKey{local: cfg.Local, peer: cfg.Peer}
	if cfg.Interface != "" {
		ifc, err := net.InterfaceByName(cfg.Interface)
		if err != nil {
			return nil, fmt.Errorf("bfd session %s: interface: %w", cfg.Peer, err)
		}
		key.ifindex = ifc.Index
	}
	lkey := listenKey{local: cfg.Local, ifname: cfg.Interface}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, fmt.Errorf("bfd session %s: manager closed", cfg.Peer)
	}
	if _, dup := m.sessions[key]; dup {
		return nil, fmt.Errorf("bfd session %s: already configured from %s on interface %q", cfg.Peer, cfg.Local, cfg.Interface)
	}
	var discr uint32
	for discr == 0 || m.byDiscr[discr] != nil {
		discr = rand.Uint32()
	}
	mach, err := NewMachine(cfg.timers(), discr, nil)
	if err != nil {
		return nil, fmt.Errorf("bfd session %s: %w", cfg.Peer, err)
	}
	l := m.listeners[lkey]
	if l == nil {
		if l, err = openListener(ctx, lkey); err != nil {
			return nil, fmt.Errorf("bfd session %s: %w", cfg.Peer, err)
		}
		m.listeners[lkey] = l
		m.wg.Add(1)
		go m.readLoop(l)
	}
	tx, err := openSender(ctx, cfg.Local, cfg.Interface)
	if err != nil {
		m.releaseListener(l)
		return nil, fmt.Errorf("bfd session %s: %w", cfg.Peer, err)
	}
	l.refs++
	s := &Session{mgr: m, cfg: cfg, key: key, lkey: lkey, discr: discr, tx: tx, m: mach,
		to: udpAddr(cfg.Peer, cfg.Interface, Port),
		rx: make(chan received, 16), ctl: make(chan func()), stop: make(chan struct{}), stopped: make(chan struct{})}
	m.sessions[key] = s
	m.byDiscr[discr] = s
	go s.run()
	m.log.Info("bfd: session added", "peer", cfg.Peer, "local", cfg.Local, "interface", cfg.Interface,
		"tx", cfg.DesiredMinTx, "rx", cfg.RequiredMinRx, "multiplier", cfg.Multiplier, "discriminator", discr)
	return s, nil
}

// releaseListener drops a reference; m.mu is held.
func (m *Manager) releaseListener(l *listener) {
	if l.refs > 0 {
		l.refs--
	}
	if l.refs == 0 {
		delete(m.listeners, l.key)
		l.conn.Close() // ends its read loop
	}
}

// Lookup returns the session from local to peer on iface ("" when
// configured without one), or nil.
func (m *Manager) Lookup(local, peer netip.Addr, iface string) *Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, s := range m.sessions {
		if k.local == local.Unmap().WithZone("") && k.peer == peer.Unmap().WithZone("") && s.cfg.Interface == iface {
			return s
		}
	}
	return nil
}

// Sessions returns the status of every session.
func (m *Manager) Sessions() []SessionStatus {
	m.mu.Lock()
	ss := make([]*Session, 0, len(m.sessions))
	for _, s := range m.sessions {
		ss = append(ss, s)
	}
	m.mu.Unlock()
	out := make([]SessionStatus, 0, len(ss))
	for _, s := range ss {
		out = append(out, s.Status())
	}
	return out
}

// Counters returns the receive-side drop counters.
func (m *Manager) Counters() Counters {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counters
}

// Remove takes the session from local to peer on iface administratively down (diag
// 7, so the neighbour does not count it as a failure), keeps telling the
// neighbour for its detection time or until ctx ends, then closes it.
func (m *Manager) Remove(ctx context.Context, local, peer netip.Addr, iface string) error {
	s := m.Lookup(local, peer, iface)
	if s == nil {
		return fmt.Errorf("bfd session %s->%s on %q: not configured", local, peer, iface)
	}
	return s.shutdown(ctx)
}

// Close removes every session as Remove does (in parallel), then stops.
// Events of the shutdown are delivered before it returns.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	m.closed = true
	ss := make([]*Session, 0, len(m.sessions))
	for _, s := range m.sessions {
		ss = append(ss, s)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(ss))
	for i, s := range ss {
		wg.Go(func() { errs[i] = s.shutdown(ctx) })
	}
	wg.Wait()
	m.mu.Lock()
	for _, l := range m.listeners {
		l.refs = 0
		m.releaseListener(l)
	}
	m.mu.Unlock()
	m.wg.Wait()
	m.notes.close()
	return errors.Join(errs...)
}

// readLoop receives for one listener until its socket closes.
func (m *Manager) readLoop(l *listener) {
	defer m.wg.Done()
	buf := make([]byte, 1500)
	for {
		d, err := l.read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Warn("bfd: receive", "local", l.key.local, "error", err)
			time.Sleep(10 * time.Millisecond) // do not spin on a persistent error
			continue
		}
		at := time.Now()
		s, p := m.demux(l, d, buf[:d.n])
		if s == nil {
			continue
		}
		select {
		case s.rx <- received{p: p, at: at}:
		default:
			s.mu.Lock()
			s.counters.RxOverflow++
			s.mu.Unlock()
		}
	}
}

// demux checks a datagram and finds its session (RFC 5881 sections 3 and
// 5, RFC 5880 section 6.8.6).
func (m *Manager) demux(l *listener, d datagram, b []byte) (*Session, Packet) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := &m.counters
	c.Received++
	if d.hops != TTL {
		c.BadTTL++
		return nil, Packet{}
	}
	p, err := Unmarshal(b)
	if err != nil {
		if errors.Is(err, ErrAuth) {
			c.Auth++
		} else {
			c.Malformed++
		}
		return nil, Packet{}
	}
	var s *Session
	if p.YourDiscr != 0 {
		s = m.byDiscr[p.YourDiscr]
		// The discriminator is ours to pick, but a packet naming it must
		// still come from that session's neighbour: a second neighbour
		// must not be able to keep the session up.
		if s != nil && (s.cfg.Peer != d.src || s.cfg.Local != l.key.local || s.key.ifindex != 0 && s.key.ifindex != d.ifindex) {
			s = nil
		}
	} else {
		s = m.sessions[peerKey{local: l.key.local, peer: d.src, ifindex: d.ifindex}]
		if s == nil {
			s = m.sessions[peerKey{local: l.key.local, peer: d.src}]
		}
	}
	if s == nil {
		c.NoSession++
		return nil, Packet{}
	}
	return s, p
}
