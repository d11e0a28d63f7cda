package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/vip"
)

// InstanceConfig is one virtual router on one interface.
type InstanceConfig struct {
	Name      string
	Interface string
	Machine   Config // Primary is filled in from the interface when zero
	// Peers switches to unicast advertisements to these addresses;
	// empty means the VRRP multicast group.
	Peers []netip.Addr
	// Burst of announcements on becoming Master, and the period of
	// re-announcement while Master (0 = none).
	Burst   vip.Burst
	Refresh time.Duration
}

// Event is a state change with the timing words of ARCHITECTURE.md
// ("Timing words"). It is delivered after its actions were carried out;
// Decide, not the delivery, is when the transition happened.
type Event struct {
	Instance string
	From, To State
	Reason   string
	Detect   time.Time // timer fired / advertisement received
	Decide   time.Time // state changed: the event's time
	Announce time.Time // first gratuitous ARP / NA round sent (to Master)
}

// Counters of received packets, by what happened to them.
type Counters struct {
	Accepted, BadTTL, Malformed, OtherVRID, Own, NotPeer, OwnerDiscard uint64
}

// Instance runs a Machine on an interface.
type Instance struct {
	cfg    InstanceConfig
	log    *slog.Logger
	events func(Event)
	v6     bool
	ifc    *net.Interface
	p4     *ipv4.PacketConn
	p6     *ipv6.PacketConn
	ann    *vip.Announcer

	mu       sync.Mutex
	m        *Machine
	last     State // reported to events
	counters Counters
	// The latest tracking verdict; the run loop applies it when poked.
	wantFault  bool
	wantReason string
	wantPrio   uint8
	trackKick  chan struct{}
	// stopBurst ends the announcement burst of the current mastership:
	// rounds left over after a release would pull clients to a node that
	// no longer owns the VIPs.
	stopBurst context.CancelFunc

	// updates carries Update's configurations to the run loop, which
	// alone changes cfg (under mu, for the read loop); stopped is closed
	// when Run returns.
	updates chan update
	stopped chan struct{}
}

type update struct {
	cfg  InstanceConfig
	done chan error
}

// ErrRestart says that a configuration change cannot be applied to a
// running instance: it needs other sockets or another machine.
var ErrRestart = errors.New("vrrp: the change needs a new instance")

type received struct {
	adv Advertisement
	src netip.Addr
	at  time.Time
}

// NewInstance opens the sockets of cfg. events receives every state change.
func NewInstance(cfg InstanceConfig, log *slog.Logger, events func(Event)) (*Instance, error) {
	if len(cfg.Machine.Addrs) == 0 || len(cfg.Machine.Addrs) > 255 {
		return nil, fmt.Errorf("vrrp %s: %d virtual addresses, want 1-255 (the advertisement's count is 8 bits)", cfg.Name, len(cfg.Machine.Addrs))
	}
	ifc, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("vrrp %s: interface %q: %w", cfg.Name, cfg.Interface, err)
	}
	in := &Instance{cfg: cfg, log: log, events: events, ifc: ifc, v6: cfg.Machine.Addrs[0].Unmap().Is6(),
		trackKick: make(chan struct{}, 1), updates: make(chan update), stopped: make(chan struct{})}
	if !in.cfg.Machine.Primary.IsValid() {
		if in.cfg.Machine.Primary, err = primary(ifc, in.v6); err != nil {
			return nil, fmt.Errorf("vrrp %s: %w", cfg.Name, err)
		}
	}
	// The interface scopes it; the machine compares bare addresses.
	in.cfg.Machine.Primary = in.cfg.Machine.Primary.WithZone("")
	if err := in.open(); err != nil {
		return nil, fmt.Errorf("vrrp %s: %w", cfg.Name, err)
	}
	if in.ann, err = vip.NewAnnouncer(cfg.Interface, cfg.Machine.Addrs); err != nil {
		in.close()
		return nil, fmt.Errorf("vrrp %s: %w", cfg.Name, err)
	}
	in.m = NewMachine(in.cfg.Machine)
	return in, nil
}

// primary is the interface's first IPv4 address, or its IPv6 link-local
// address (RFC 5798: IPv6 advertisements come from the link-local).
func primary(ifc *net.Interface, v6 bool) (netip.Addr, error) {
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP)
		ip = ip.Unmap()
		if !v6 && ip.Is4() {
			return ip, nil
		}
		if v6 && ip.Is6() && ip.IsLinkLocalUnicast() {
			return ip.WithZone(ifc.Name), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("interface %s has no %s address to advertise from", ifc.Name, map[bool]string{false: "IPv4", true: "IPv6 link-local"}[v6])
}

func bindToDevice(c net.PacketConn, ifname string) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return errors.New("socket without a descriptor")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), ifname) }); err != nil {
		return err
	}
	return serr
}

func (in *Instance) open() error {
	if !in.v6 {
		c, err := net.ListenPacket("ip4:112", "0.0.0.0")
		if err != nil {
			return fmt.Errorf("vrrp socket: %w", err)
		}
		if err := bindToDevice(c, in.ifc.Name); err != nil {
			c.Close()
			return fmt.Errorf("bind to %s: %w", in.ifc.Name, err)
		}
		p := ipv4.NewPacketConn(c)
		in.p4 = p
		if err := errors.Join(p.SetControlMessage(ipv4.FlagTTL|ipv4.FlagDst, true), p.SetMulticastTTL(TTL), p.SetTTL(TTL),
			p.SetMulticastInterface(in.ifc), p.SetMulticastLoopback(false)); err != nil {
			c.Close()
			return err
		}
		if len(in.cfg.Peers) == 0 {
			if err := p.JoinGroup(in.ifc, &net.IPAddr{IP: MulticastV4.AsSlice()}); err != nil {
				c.Close()
				return fmt.Errorf("join %s: %w", MulticastV4, err)
			}
		}
		return nil
	}
	c, err := net.ListenPacket("ip6:112", "::")
	if err != nil {
		return fmt.Errorf("vrrp socket: %w", err)
	}
	if err := bindToDevice(c, in.ifc.Name); err != nil {
		c.Close()
		return fmt.Errorf("bind to %s: %w", in.ifc.Name, err)
	}
	p := ipv6.NewPacketConn(c)
	in.p6 = p
	if err := errors.Join(p.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagDst, true), p.SetMulticastHopLimit(TTL), p.SetHopLimit(TTL),
		p.SetMulticastInterface(in.ifc), p.SetMulticastLoopback(false)); err != nil {
		c.Close()
		return err
	}
	if len(in.cfg.Peers) == 0 {
		if err := p.JoinGroup(in.ifc, &net.IPAddr{IP: MulticastV6.AsSlice()}); err != nil {
			c.Close()
			return fmt.Errorf("join %s: %w", MulticastV6, err)
		}
	}
	return nil
}

func (in *Instance) close() {
	if in.p4 != nil {
		in.p4.Close()
	}
	if in.p6 != nil {
		in.p6.Close()
	}
	if in.ann != nil {
		in.ann.Close()
	}
}

// State returns the current state, priority and master.
func (in *Instance) State() (State, uint8, netip.Addr) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.m.State(), in.m.Priority(), in.m.Master()
}

// Counters returns the receive counters.
func (in *Instance) Counters() Counters {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.counters
}

// Track applies a tracking verdict: fault or not, and the priority in
// force otherwise.
func (in *Instance) Track(fault bool, reason string, priority uint8) {
	in.mu.Lock()
	in.wantFault, in.wantReason, in.wantPrio = fault, reason, priority
	in.mu.Unlock()
	select {
	case in.trackKick <- struct{}{}:
	default:
	}
}

// restartReason says why cfg cannot replace the running configuration
// in place, or "" when it can. Sockets are bound to the interface and
// joined to the group (or not, with unicast peers) for one address
// family; the VRID and the owner's fixed priority 255 make the machine.
func (in *Instance) restartReason(cfg InstanceConfig) string {
	cur := in.cfg
	switch {
	case cfg.Name != cur.Name:
		return "name"
	case cfg.Interface != cur.Interface:
		return "interface"
	case cfg.Machine.VRID != cur.Machine.VRID:
		return "vrid"
	case (len(cfg.Peers) == 0) != (len(cur.Peers) == 0):
		return "multicast or unicast peers"
	case (cfg.Machine.Priority == OwnerPriority) != (cur.Machine.Priority == OwnerPriority):
		return "address owner (priority 255)"
	case cfg.Machine.Primary.IsValid() && cfg.Machine.Primary.WithZone("") != cur.Machine.Primary:
		return "primary address"
	case len(cfg.Machine.Addrs) == 0 || len(cfg.Machine.Addrs) > 255:
		return "number of virtual addresses (want 1-255)"
	}
	for _, a := range cfg.Machine.Addrs {
		if a.Unmap().Is6() != in.v6 {
			return "address family"
		}
	}
	return ""
}

// Update applies cfg to the running instance without leaving its state:
// a Master stays Master (no resignation, no priority 0), taking and
// announcing added VIPs and releasing removed ones; a Master takes all its
// VIPs again even when the list did not change. It returns an error
// wrapping ErrRestart, and changes nothing, when cfg differs in what the
// sockets or the machine are made of (see restartReason).
func (in *Instance) Update(ctx context.Context, cfg InstanceConfig) error {
	in.mu.Lock()
	why := in.restartReason(cfg)
	in.mu.Unlock()
	if why != "" {
		return fmt.Errorf("vrrp %s: %s changed: %w", cfg.Name, why, ErrRestart)
	}
	u := update{cfg: cfg, done: make(chan error, 1)}
	select {
	case in.updates <- u:
	case <-in.stopped:
		return fmt.Errorf("vrrp %s: update: instance stopped", cfg.Name)
	case <-ctx.Done():
		return fmt.Errorf("vrrp %s: update: %w", cfg.Name, ctx.Err())
	}
	return <-u.done // the run loop answers at once
}

// apply is Update's work, in the run loop.
func (in *Instance) apply(ctx context.Context, cfg InstanceConfig) {
	now := time.Now()
	cfg.Machine.Primary = in.cfg.Machine.Primary
	old := in.cfg.Machine.Addrs
	in.mu.Lock()
	in.cfg = cfg
	in.m.Reconfigure(now, cfg.Machine)
	st := in.m.State()
	in.mu.Unlock()
	if st != Master {
		return
	}
	if slices.Equal(old, cfg.Machine.Addrs) {
		// Nothing to announce, but take the VIPs again: another instance
		// on the interface may have removed one that moved to this one
		// (Add is idempotent).
		for _, a := range cfg.Machine.Addrs {
			if err := vip.Add(cfg.Interface, a); err != nil {
				in.log.Error("vrrp: take vip", "instance", cfg.Name, "error", err)
			}
		}
		return
	}
	for _, a := range old {
		if !slices.Contains(cfg.Machine.Addrs, a) {
			if err := vip.Remove(in.cfg.Interface, a); err != nil {
				in.log.Error("vrrp: release removed vip", "instance", in.cfg.Name, "error", err)
			}
		}
	}
	// Takes the added VIPs and announces the new set.
	in.do(ctx, []Action{{Kind: Announce}}, now)
}

// Run takes part in the election until ctx ends, then resigns (priority
// 0) so a backup takes over at once, and releases the VIPs.
func (in *Instance) Run(ctx context.Context) error {
	defer close(in.stopped)
	defer in.close()
	recv := make(chan received, 64)
	go in.readLoop(recv)
	in.mu.Lock()
	acts := in.m.Start(time.Now())
	in.mu.Unlock()
	in.do(ctx, acts, time.Now())
	var (
		refresh  *time.Ticker
		refreshC <-chan time.Time // nil: no refresh
		period   time.Duration
	)
	setRefresh := func(d time.Duration) {
		if d == period {
			return
		}
		if refresh != nil {
			refresh.Stop()
			refresh, refreshC = nil, nil
		}
		if period = d; d > 0 {
			refresh = time.NewTicker(d)
			refreshC = refresh.C
		}
	}
	setRefresh(in.cfg.Refresh)
	defer func() { setRefresh(0) }()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		in.mu.Lock()
		dl := in.m.Deadline()
		in.mu.Unlock()
		if dl.IsZero() {
			timer.Reset(time.Hour)
		} else {
			timer.Reset(time.Until(dl))
		}
		select {
		case <-ctx.Done():
			in.mu.Lock()
			acts := in.m.Shutdown(time.Now())
			in.mu.Unlock()
			in.do(context.Background(), acts, time.Now())
			return nil
		case r := <-recv:
			in.mu.Lock()
			acts := in.m.Receive(r.at, r.adv, r.src)
			in.mu.Unlock()
			in.do(ctx, acts, r.at)
		case now := <-timer.C:
			in.mu.Lock()
			acts := in.m.Tick(now)
			in.mu.Unlock()
			in.do(ctx, acts, now)
		case <-in.trackKick:
			now := time.Now()
			in.mu.Lock()
			var acts []Action
			if in.wantFault {
				acts = in.m.EnterFault(now, in.wantReason)
			} else {
				if in.wantPrio != 0 {
					in.m.SetPriority(in.wantPrio)
				}
				acts = in.m.LeaveFault(now)
			}
			in.mu.Unlock()
			in.do(ctx, acts, now)
		case u := <-in.updates:
			in.apply(ctx, u.cfg)
			setRefresh(in.cfg.Refresh)
			u.done <- nil
		case <-refreshC:
			if st, _, _ := in.State(); st == Master {
				_ = in.ann.Once(in.cfg.Machine.Addrs)
			}
		}
	}
}

// do carries out actions; detect is when their cause happened. A state
// change is decided when the machine returned it, before it is carried
// out; its announce time is when the first announcement went out.
func (in *Instance) do(ctx context.Context, acts []Action, detect time.Time) {
	var ev *Event
	for _, a := range acts {
		if a.Kind == Transition {
			ev = &Event{Instance: in.cfg.Name, To: a.To, Reason: a.Reason, Detect: detect, Decide: time.Now()}
		}
	}
	for _, a := range acts {
		switch a.Kind {
		case SendAdvert:
			if err := in.send(a.Priority); err != nil {
				in.log.Warn("vrrp: send advertisement", "instance", in.cfg.Name, "error", err)
			}
		case Announce:
			for _, addr := range in.cfg.Machine.Addrs {
				if err := vip.Add(in.cfg.Interface, addr); err != nil {
					in.log.Error("vrrp: take vip", "instance", in.cfg.Name, "error", err)
				}
			}
			if in.stopBurst != nil {
				in.stopBurst()
			}
			var bctx context.Context
			bctx, in.stopBurst = context.WithCancel(ctx)
			if err := in.ann.Burst(bctx, in.cfg.Machine.Addrs, in.cfg.Burst); err != nil {
				in.log.Warn("vrrp: announce", "instance", in.cfg.Name, "error", err)
			}
			if ev != nil && ev.Announce.IsZero() {
				ev.Announce = time.Now()
			}
		case Release:
			if in.stopBurst != nil {
				in.stopBurst()
				in.stopBurst = nil
			}
			for _, addr := range in.cfg.Machine.Addrs {
				if err := vip.Remove(in.cfg.Interface, addr); err != nil {
					in.log.Error("vrrp: release vip", "instance", in.cfg.Name, "error", err)
				}
			}
		}
	}
	if ev != nil {
		in.mu.Lock()
		ev.From = in.last
		in.last = ev.To
		in.mu.Unlock()
		in.events(*ev)
	}
}

func (in *Instance) send(prio uint8) error {
	ad := Advertisement{VRID: in.cfg.Machine.VRID, Priority: prio, Interval: in.cfg.Machine.Interval, Addrs: in.cfg.Machine.Addrs}
	dsts := in.cfg.Peers
	if len(dsts) == 0 {
		dsts = []netip.Addr{MulticastV4}
		if in.v6 {
			dsts = []netip.Addr{MulticastV6}
		}
	}
	var errs []error
	for _, dst := range dsts {
		b, err := ad.Marshal(in.cfg.Machine.Primary, dst)
		if err != nil {
			return err
		}
		to := &net.IPAddr{IP: dst.AsSlice()}
		if in.v6 {
			to.Zone = in.ifc.Name
			// The source is set, not left to the kernel: the checksum
			// covered the link-local primary, and towards a global
			// unicast peer the kernel would pick a global source, which
			// makes the checksum wrong on the wire (RFC 5798 section
			// 5.1.2.1: the source is the link-local address anyway).
			_, err = in.p6.WriteTo(b, &ipv6.ControlMessage{Src: in.cfg.Machine.Primary.AsSlice(), IfIndex: in.ifc.Index, HopLimit: TTL}, to)
		} else {
			_, err = in.p4.WriteTo(b, &ipv4.ControlMessage{Src: in.cfg.Machine.Primary.AsSlice(), IfIndex: in.ifc.Index}, to)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// readLoop receives, checks as RFC 5798 section 7.1 asks, and forwards
// advertisements for this VRID to the state machine.
func (in *Instance) readLoop(out chan<- received) {
	// Room for the largest valid advertisement (255 IPv6 addresses: 4088
	// bytes; the options of an IPv4 header pass through this buffer too),
	// so that no valid advertisement is cut short and dropped as
	// malformed. 2048 bytes held 127 IPv6 addresses.
	buf := make([]byte, maxIPv4Header+maxAdvertLen+1)
	for {
		var (
			n       int
			hops    int
			src     netip.Addr
			dst     netip.Addr
			err     error
			fromRaw net.Addr
		)
		if in.v6 {
			var cm *ipv6.ControlMessage
			n, cm, fromRaw, err = in.p6.ReadFrom(buf)
			if cm != nil {
				hops = cm.HopLimit
				dst, _ = netip.AddrFromSlice(cm.Dst)
			}
		} else {
			var cm *ipv4.ControlMessage
			n, cm, fromRaw, err = in.p4.ReadFrom(buf)
			if cm != nil {
				hops = cm.TTL
				dst, _ = netip.AddrFromSlice(cm.Dst)
			}
		}
		if err != nil {
			return // socket closed
		}
		at := time.Now()
		if ipa, ok := fromRaw.(*net.IPAddr); ok {
			src, _ = netip.AddrFromSlice(ipa.IP)
		}
		src, dst = src.Unmap(), dst.Unmap()
		in.mu.Lock()
		verdict := in.check(buf[:n], hops, src, dst)
		in.mu.Unlock()
		if verdict.ok {
			select {
			case out <- received{adv: verdict.adv, src: src, at: at}:
			default: // the loop is behind; the next advertisement will do
			}
		}
	}
}

// fromPeer says whether an advertisement from src to dst comes from one
// of the configured unicast peers. An IPv6 advertisement comes from the
// sender's link-local address (RFC 5798 section 5.1.2.1) while its peers
// are often configured by global address, and nothing in the packet maps
// one to the other; so a link-local source is accepted when the
// advertisement was unicast to us: only a router that lists one of our
// addresses as its peer sends that (the hop limit of 255 already proved
// it on-link). Advertisements to the multicast group still need a
// configured source, so routers in multicast mode on the same link stay
// out of a unicast group.
func (in *Instance) fromPeer(src, dst netip.Addr) bool {
	for _, p := range in.cfg.Peers {
		if p.WithZone("") == src {
			return true
		}
	}
	return in.v6 && src.IsLinkLocalUnicast() && dst.IsValid() && !dst.IsMulticast()
}

type verdict struct {
	ok  bool
	adv Advertisement
}

func (in *Instance) check(b []byte, hops int, src, dst netip.Addr) verdict {
	c := &in.counters
	if src == in.cfg.Machine.Primary {
		c.Own++
		return verdict{}
	}
	if hops != TTL {
		c.BadTTL++
		return verdict{}
	}
	if len(in.cfg.Peers) > 0 && !in.fromPeer(src, dst) {
		c.NotPeer++
		return verdict{}
	}
	a, err := Parse(b, src, dst)
	if err != nil {
		c.Malformed++
		return verdict{}
	}
	if a.VRID != in.cfg.Machine.VRID {
		c.OtherVRID++
		return verdict{}
	}
	if in.cfg.Machine.Priority == OwnerPriority {
		c.OwnerDiscard++
		return verdict{}
	}
	c.Accepted++
	return verdict{ok: true, adv: a}
}
