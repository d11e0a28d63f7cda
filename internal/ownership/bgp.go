package ownership

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/vip/bfd"
	"github.com/keepbit/keepbit/vip/bgp"
)

// ErrRestartRequired: a reload changed what the BGP speaker is made of
// (asn, router_id, listen_port, graceful_restart). GoBGP takes them at
// start only, and changing them under running sessions would re-open
// every session anyway; the running bgp settings keep serving.
var ErrRestartRequired = errors.New("a restart of keepbitd is needed to apply it; the running bgp settings keep serving")

// Speaker is what the BGP owner uses of a running *bgp.Speaker (tests put
// a fake in its place).
type Speaker interface {
	SetPeers(ctx context.Context, peers []bgp.Peer) error
	Announce(ctx context.Context, r bgp.Route) error
	Withdraw(ctx context.Context, prefix netip.Prefix, why string) error
	WithdrawAll(ctx context.Context, why string) error
	Forget(prefix netip.Prefix)
	PeerDown(addr netip.Addr, reason string)
	PeerUp(addr netip.Addr)
	Peers() []bgp.PeerStatus
	Routes() []bgp.RouteStatus
	Stop(ctx context.Context) error
}

// BFDSessions is what the BGP owner uses of a *bfd.Manager (tests put a
// fake in its place); the manager reports state changes through the
// callback it was made with.
type BFDSessions interface {
	Add(ctx context.Context, cfg bfd.SessionConfig) error
	SetTimers(ctx context.Context, cfg bfd.SessionConfig) error
	Remove(ctx context.Context, cfg bfd.SessionConfig) error
	Sessions() []bfd.SessionStatus
	Close(ctx context.Context) error
}

// bfdManager adapts *bfd.Manager to BFDSessions.
type bfdManager struct{ m *bfd.Manager }

func (b bfdManager) Add(ctx context.Context, cfg bfd.SessionConfig) error {
	_, err := b.m.Add(ctx, cfg)
	return err
}

func (b bfdManager) SetTimers(ctx context.Context, cfg bfd.SessionConfig) error {
	s := b.m.Lookup(cfg.Local, cfg.Peer, cfg.Interface)
	if s == nil {
		return fmt.Errorf("bfd session %s: not configured", cfg.Peer)
	}
	return s.SetTimers(ctx, cfg.DesiredMinTx, cfg.RequiredMinRx, cfg.Multiplier)
}

func (b bfdManager) Remove(ctx context.Context, cfg bfd.SessionConfig) error {
	return b.m.Remove(ctx, cfg.Local, cfg.Peer, cfg.Interface)
}
func (b bfdManager) Sessions() []bfd.SessionStatus   { return b.m.Sessions() }
func (b bfdManager) Close(ctx context.Context) error { return b.m.Close(ctx) }

// BGP announces the VIPs to the upstream routers (vip/bgp) while this node
// can serve them, and runs a BFD session (vip/bfd) per peer that asks for
// one: every node announces the same VIPs and the routers spread flows
// over the nodes by ECMP. What it announces follows Health: a VIP while
// some service on it has a usable backend, every VIP while the dataplane
// of every interface is attached and alive, none while the node drains or
// warms up; the hysteresis is vip/bgp's Health.
type BGP struct {
	log    *slog.Logger
	rec    *recorder.Recorder
	health Health
	// poll is how often a pass runs without a signal: the dataplane's
	// liveness (heartbeat) sends none. A stopped program is seen after two
	// samples with packets and no run (loader's CheckAlive), so a route
	// is withdrawn two to three polls after the program stops.
	poll time.Duration
	kick chan struct{}

	// What the owner runs, replaceable by tests.
	startSpeaker func(ctx context.Context, cfg bgp.Config) (Speaker, error)
	newBFD       func(onChange func(bfd.Event)) BFDSessions
	localFor     func(peer netip.Addr) (local netip.Addr, iface string, err error)

	passMu sync.Mutex // one pass (or drain step) at a time
	// holdMu orders BFD's holds: a decision to hold a session down or let
	// it up and the speaker call that carries it out happen under it, so
	// that a PeerUp decided before a BFD Down cannot land after its
	// PeerDown. Taken before mu.
	holdMu sync.Mutex

	mu     sync.Mutex
	cfg    *config.BGP // running; nil: no bgp section
	ifaces []string
	vips   map[netip.Addr]*bgpVIP
	spk    Speaker
	bfdm   BFDSessions
	bfds   map[netip.Addr]*bfdPeer // peers with bfd configured
	hh     *bgp.Health
	hcfg   bgp.HealthConfig
	warm   <-chan struct{} // nil or closed: warm
	drain  *drainState
	sent   map[netip.Addr]sentRoute // what the speaker was last told
	// orphans: VIPs a reload removed whose withdrawal failed; every pass
	// tries again (they are in no decision any more).
	orphans map[netip.Addr]bool
	detect  time.Time             // when the pending pass was asked for
	trans   map[netip.Addr]uint64 // session state changes per peer
	sessEst map[netip.Addr]uint64 // sessions established per peer
}

// bgpVIP is one announced VIP: its route and the services behind it.
type bgpVIP struct {
	route    bgp.Route
	services []string
}

// bfdPeer is the BFD session of one BGP peer.
type bfdPeer struct {
	want    config.BGPBFD
	cfg     bfd.SessionConfig // valid once added
	added   bool
	lastTry time.Time
	lastErr string
	state   bfd.State
	diag    bfd.Diag
	since   time.Time
	changes uint64 // also tells a settle timer whether BFD moved since
	held    bool   // this session holds its BGP session down
}

type sentRoute struct {
	announce bool
	reason   string
	route    bgp.Route
	since    time.Time
	until    time.Time
}

type drainState struct {
	why     string
	since   time.Time
	closeAt time.Time // zero: sessions stay
	closed  bool      // the sessions were closed after the hold
	timer   *time.Timer
}

// DefaultBGPPoll: the dataplane heartbeat is checked this often.
const DefaultBGPPoll = 100 * time.Millisecond

// NewBGP returns a BGP owner with nothing running; Reload starts the
// speaker when the config has a bgp section, Run makes the decisions.
func NewBGP(log *slog.Logger, rec *recorder.Recorder, health Health) *BGP {
	o := &BGP{log: log, rec: rec, health: health, poll: DefaultBGPPoll, kick: make(chan struct{}, 1),
		vips: map[netip.Addr]*bgpVIP{}, bfds: map[netip.Addr]*bfdPeer{}, sent: map[netip.Addr]sentRoute{}, orphans: map[netip.Addr]bool{},
		trans: map[netip.Addr]uint64{}, sessEst: map[netip.Addr]uint64{}}
	o.startSpeaker = func(ctx context.Context, cfg bgp.Config) (Speaker, error) { return bgp.Start(ctx, cfg) }
	o.newBFD = func(onChange func(bfd.Event)) BFDSessions {
		return bfdManager{bfd.NewManager(log.With("component", "bfd"), onChange)}
	}
	o.localFor = routeSource
	return o
}

// SetWarmUp gates every announcement on warm being closed (the flow
// sharing warm-up: a node that (re)joins learns the shared flows before
// routers send it any). Without one the node is warm at once. Call it
// before the first Reload.
func (o *BGP) SetWarmUp(warm <-chan struct{}) {
	o.mu.Lock()
	o.warm = warm
	o.mu.Unlock()
	o.wake()
}

func (o *BGP) wake() {
	o.mu.Lock()
	if o.detect.IsZero() {
		o.detect = time.Now()
	}
	o.mu.Unlock()
	wake(o.kick)
}

// CheckReload says whether cfg can be applied in place: nil, or an error
// wrapping ErrRestartRequired that names each field that cannot.
func (o *BGP) CheckReload(cfg *config.Config) error {
	o.mu.Lock()
	cur := o.cfg
	o.mu.Unlock()
	if cur == nil || cfg.BGP == nil {
		return nil
	}
	next := cfg.BGP
	var errs []error
	if cur.ASN != next.ASN {
		errs = append(errs, fmt.Errorf("bgp.asn: changed from %d to %d: %w", cur.ASN, next.ASN, ErrRestartRequired))
	}
	if cur.RouterID != next.RouterID {
		errs = append(errs, fmt.Errorf("bgp.router_id: changed from %s to %s: %w", cur.RouterID, next.RouterID, ErrRestartRequired))
	}
	if cur.ListenPort != next.ListenPort {
		errs = append(errs, fmt.Errorf("bgp.listen_port: changed from %d to %d: %w", cur.ListenPort, next.ListenPort, ErrRestartRequired))
	}
	if cur.GracefulRestart != next.GracefulRestart {
		errs = append(errs, fmt.Errorf("bgp.graceful_restart: changed from %v to %v: %w", cur.GracefulRestart, next.GracefulRestart, ErrRestartRequired))
	}
	return errors.Join(errs...)
}

func peersOf(b *config.BGP) []bgp.Peer {
	out := make([]bgp.Peer, 0, len(b.Peers))
	for _, p := range b.Peers {
		// No next hop given: "self", the session's local address, which
		// is this node's address towards the peer (what a route lookup
		// would pick, and right for each peer even when peers sit on
		// different interfaces).
		out = append(out, bgp.Peer{Address: p.Address, ASN: p.ASN, Port: p.Port, HoldTime: p.HoldTime, Keepalive: p.Keepalive,
			Password: p.Password, Passive: p.Passive, LocalAddress: p.LocalAddress, NextHops: slices.Clone(p.NextHop)})
	}
	return out
}

func vipsOf(cfg *config.Config) map[netip.Addr]*bgpVIP {
	out := map[netip.Addr]*bgpVIP{}
	for _, v := range cfg.BGP.Announced(cfg) {
		r := bgp.Route{Prefix: netip.PrefixFrom(v.Address, v.Address.BitLen()), Communities: slices.Clone(v.CommunityValues), MED: v.MED}
		for _, lc := range v.LargeValues {
			r.LargeCommunities = append(r.LargeCommunities, bgp.LargeCommunity{Global: lc.Global, Local1: lc.Local1, Local2: lc.Local2})
		}
		out[v.Address] = &bgpVIP{route: r}
	}
	for _, s := range cfg.Services {
		if v := out[s.VIP]; v != nil && !slices.Contains(v.services, s.Name) {
			v.services = append(v.services, s.Name)
		}
	}
	return out
}

// risingMax bounds how long a VIP coming back waits for backends whose
// checks are passing but short of rise: like keepbitd's settle at start, a
// check that never concludes must not keep a node out for good.
const risingMax = 10 * time.Second

func healthConfig(b *config.BGP) bgp.HealthConfig {
	return bgp.HealthConfig{AnnounceAfter: b.AnnounceAfter, Window: b.Damping.Window, MaxHoldDown: b.Damping.MaxHoldDown, RisingMax: risingMax}
}

func sortedAddrs[V any](m map[netip.Addr]V) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Reload starts the speaker (first bgp section), applies peers, VIPs and
// timers in place (sessions of unchanged peers are not touched), or stops
// it (bgp section removed: routes withdrawn, sessions closed). A change of
// what needs a restart (CheckReload) changes nothing and is an error.
func (o *BGP) Reload(ctx context.Context, cfg *config.Config) error {
	if err := o.CheckReload(cfg); err != nil {
		return err
	}
	o.passMu.Lock()
	defer o.passMu.Unlock()
	defer o.wake()
	o.mu.Lock()
	running := o.spk
	o.mu.Unlock()
	if cfg.BGP == nil {
		if running != nil {
			o.log.Info("bgp section removed: withdrawing every route and closing the sessions")
			o.stopLocked(ctx, "bgp removed from the config")
		}
		return nil
	}
	b := cfg.BGP
	if running == nil {
		spk, err := o.startSpeaker(ctx, bgp.Config{ASN: b.ASN, RouterID: b.RouterID, ListenPort: b.ListenPort,
			GracefulRestart: b.GracefulRestart, Logger: o.log.With("component", "gobgp"), OnEvent: o.onSession})
		if err != nil {
			return fmt.Errorf("bgp: %w", err)
		}
		now := time.Now()
		o.mu.Lock()
		o.spk = spk
		o.bfdm = o.newBFD(o.onBFD)
		o.hcfg = healthConfig(b)
		o.hh = bgp.NewHealth(o.hcfg, now, nil)
		o.mu.Unlock()
		o.log.Info("bgp speaker started", "asn", b.ASN, "router_id", b.RouterID, "listen_port", b.ListenPort)
		o.rec.Add(recorder.Event{Kind: "bgp-started", Reason: fmt.Sprintf("asn %d, router id %s", b.ASN, b.RouterID)})
	}
	o.mu.Lock()
	spk, drained := o.spk, o.drain != nil && o.drain.closed
	o.mu.Unlock()
	var errs []error
	if !drained { // a drained node's sessions stay closed until undrain
		if err := spk.SetPeers(ctx, peersOf(b)); err != nil {
			errs = append(errs, fmt.Errorf("bgp peers: %w", err))
		}
	}
	errs = append(errs, o.reloadBFD(ctx, b))

	vips := vipsOf(cfg)
	now := time.Now()
	o.mu.Lock()
	old := o.vips
	o.vips = vips
	o.cfg = b
	o.ifaces = o.ifaces[:0]
	for _, ifc := range cfg.Interfaces {
		o.ifaces = append(o.ifaces, ifc.Name)
	}
	if hc := healthConfig(b); hc != o.hcfg {
		// In place: a fresh Health would forget which VIPs wait for
		// announce_after or sit in a hold-down and announce them at once.
		o.hcfg = hc
		o.hh.SetConfig(hc)
	}
	o.hh.SetVIPs(now, sortedAddrs(vips))
	var gone []netip.Addr
	var redecorate []bgp.Route
	for a, v := range old {
		nv := vips[a]
		switch {
		case nv == nil:
			gone = append(gone, a)
			delete(o.sent, a)
		case !reflect.DeepEqual(nv.route, v.route) && o.sent[a].announce:
			redecorate = append(redecorate, nv.route)
			s := o.sent[a]
			s.route = nv.route
			o.sent[a] = s
		}
	}
	for a := range vips {
		delete(o.orphans, a) // back in the config: the passes decide it again
	}
	o.mu.Unlock()
	errs = append(errs, o.withdrawGone(ctx, spk, gone)...)
	for _, r := range redecorate {
		if err := spk.Announce(ctx, r); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// withdrawGone withdraws the routes of VIPs that left the config. One whose
// withdrawal fails is kept as an orphan for the next pass to try again:
// nothing else would ever withdraw it, and the routers would keep sending
// its traffic here.
func (o *BGP) withdrawGone(ctx context.Context, spk Speaker, gone []netip.Addr) []error {
	var errs []error
	for _, a := range gone {
		p := netip.PrefixFrom(a, a.BitLen())
		if err := spk.Withdraw(ctx, p, "removed from the config"); err != nil {
			errs = append(errs, err)
			o.mu.Lock()
			o.orphans[a] = true
			o.mu.Unlock()
			continue
		}
		o.mu.Lock()
		delete(o.orphans, a)
		o.mu.Unlock()
		spk.Forget(p)
		o.rec.Add(recorder.Event{Kind: "bgp-withdraw", Service: p.String(), Reason: "removed from the config", Apply: time.Now()})
	}
	return errs
}

// bfdTimersOf is the session timers of a peer's bfd section.
func bfdTimersOf(f config.BGPBFD) (time.Duration, time.Duration, uint8) {
	return f.MinTx, f.MinRx, uint8(f.Multiplier)
}

// reloadBFD removes the sessions of peers gone or without bfd, changes
// timers in place, and leaves new ones to ensureBFD (the next pass: the
// local address may need a route that is not there yet).
func (o *BGP) reloadBFD(ctx context.Context, b *config.BGP) error {
	want := map[netip.Addr]config.BGPPeer{}
	for _, p := range b.Peers {
		if p.BFD != nil {
			want[p.Address] = p
		}
	}
	o.mu.Lock()
	m := o.bfdm
	var remove []bfd.SessionConfig
	var retime []bfd.SessionConfig
	for a, bp := range o.bfds {
		p, ok := want[a]
		switch {
		case !ok || p.LocalAddress.IsValid() && bp.added && p.LocalAddress != bp.cfg.Local:
			if bp.added {
				remove = append(remove, bp.cfg)
			}
			delete(o.bfds, a)
		case *p.BFD != bp.want:
			bp.want = *p.BFD
			if bp.added {
				bp.cfg.DesiredMinTx, bp.cfg.RequiredMinRx, bp.cfg.Multiplier = bfdTimersOf(bp.want)
				retime = append(retime, bp.cfg)
			}
		}
	}
	for a, p := range want {
		if o.bfds[a] == nil {
			o.bfds[a] = &bfdPeer{want: *p.BFD, state: bfd.Down}
		}
	}
	o.mu.Unlock()
	var errs []error
	for _, c := range remove {
		o.speakerPeerUp(c.Peer) // BFD no longer holds it down
		if err := m.Remove(ctx, c); err != nil {
			errs = append(errs, err)
		}
	}
	for _, c := range retime {
		if err := m.SetTimers(ctx, c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reapplyHolds holds down again the sessions BFD holds down, after
// SetPeers re-added them to spk (drain-node closed the sessions: the
// speaker forgot the peers and their holds, and BFD, down meanwhile or
// still, sends no new event).
func (o *BGP) reapplyHolds(spk Speaker) {
	o.holdMu.Lock()
	defer o.holdMu.Unlock()
	o.mu.Lock()
	held := map[netip.Addr]string{}
	for a, bp := range o.bfds {
		if bp.held {
			held[a] = "bfd: " + bp.diag.String()
		}
	}
	o.mu.Unlock()
	for _, a := range sortedAddrs(held) {
		spk.PeerDown(a, held[a])
	}
}

func (o *BGP) speakerPeerUp(a netip.Addr) {
	o.holdMu.Lock()
	defer o.holdMu.Unlock()
	o.mu.Lock()
	spk := o.spk
	o.mu.Unlock()
	if spk != nil {
		spk.PeerUp(a)
	}
}

// ensureBFD adds the BFD sessions not running yet (at most one attempt per
// peer a second: a failure is usually a missing route or address).
//
// It runs under passMu, like Reload: a reload between picking a session's
// settings and recording it added would change the timers of a session
// not added yet (never applied) or remove its peer (the session then ran
// on with nothing to remove it).
func (o *BGP) ensureBFD(ctx context.Context) {
	o.passMu.Lock()
	defer o.passMu.Unlock()
	o.mu.Lock()
	m, cfg := o.bfdm, o.cfg
	var todo []netip.Addr
	now := time.Now()
	for a, bp := range o.bfds {
		if !bp.added && now.Sub(bp.lastTry) >= time.Second {
			bp.lastTry = now
			todo = append(todo, a)
		}
	}
	o.mu.Unlock()
	if m == nil || cfg == nil {
		return
	}
	for _, a := range todo {
		var local netip.Addr
		for _, p := range cfg.Peers {
			if p.Address == a {
				local = p.LocalAddress
			}
		}
		found, iface, err := o.localFor(a)
		if !local.IsValid() {
			local = found
		}
		var sc bfd.SessionConfig
		if err == nil {
			o.mu.Lock()
			bp := o.bfds[a]
			if bp == nil {
				o.mu.Unlock()
				continue
			}
			tx, rx, mult := bfdTimersOf(bp.want)
			o.mu.Unlock()
			sc = bfd.SessionConfig{Local: local, Peer: a, Interface: iface, DesiredMinTx: tx, RequiredMinRx: rx, Multiplier: mult}
			err = m.Add(ctx, sc)
		}
		o.mu.Lock()
		if bp := o.bfds[a]; bp != nil {
			if err != nil {
				if bp.lastErr != err.Error() {
					o.log.Warn("bfd session not started; retrying every second", "peer", a, "error", err)
				}
				bp.lastErr = err.Error()
			} else {
				bp.added, bp.cfg, bp.lastErr = true, sc, ""
				o.log.Info("bfd session added", "peer", a, "local", sc.Local, "interface", sc.Interface,
					"min_tx", sc.DesiredMinTx, "min_rx", sc.RequiredMinRx, "multiplier", sc.Multiplier)
			}
		}
		o.mu.Unlock()
	}
}

// onBFD takes a BFD session's state change: a path failure (Up -> Down,
// not the neighbour's administrative shutdown) holds the BGP session down
// at once; Up lets it come back.
func (o *BGP) onBFD(e bfd.Event) {
	o.holdMu.Lock()
	defer o.holdMu.Unlock()
	o.mu.Lock()
	bp := o.bfds[e.Peer]
	spk := o.spk
	if bp == nil || bp.added && (e.Local != bp.cfg.Local || e.Interface != bp.cfg.Interface) {
		// A session a reload removed (the manager delivers its events
		// asynchronously, so they can come after the reload): no BFD
		// session is left to let the BGP session up again if this one
		// held it down.
		o.mu.Unlock()
		o.log.Debug("bfd: event of a session no longer configured", "peer", e.Peer, "local", e.Local, "to", e.To.String())
		return
	}
	bp.state, bp.diag, bp.since = e.To, e.Diag, e.At
	bp.changes++
	gen := bp.changes
	if e.PathDown() && spk != nil {
		bp.held = true
	}
	o.mu.Unlock()
	reason := fmt.Sprintf("bfd %s -> %s (%s)", e.From, e.To, e.Diag)
	ev := recorder.Event{Kind: "bfd-" + e.To.String(), Service: e.Peer.String(), Reason: reason, Detect: e.At}
	switch {
	case e.PathDown() && spk != nil:
		ev.Decide = time.Now()
		spk.PeerDown(e.Peer, "bfd: "+e.Diag.String())
		ev.Apply = time.Now()
		ev.Reason += ": bgp session held down"
		o.log.Warn("bfd down: bgp session held down", "peer", e.Peer, "diag", e.Diag.String(), "remote_state", e.RemoteState.String())
	case e.To == bfd.Up && spk != nil:
		// The session is let up once BFD has stayed up for bfdUpSettle:
		// a BFD session that flaps must not flap BGP with it.
		ev.Reason += fmt.Sprintf(": bgp session allowed up after %v", bfdUpSettle)
		time.AfterFunc(bfdUpSettle, func() { o.bfdUpSettled(bp, e.Peer, spk, gen) })
		o.log.Info("bfd up", "peer", e.Peer)
	default:
		o.log.Info("bfd state", "peer", e.Peer, "from", e.From.String(), "to", e.To.String(), "diag", e.Diag.String())
	}
	o.rec.Add(ev)
}

// bfdUpSettle is how long BFD must stay up before the BGP session it held
// down may come back (GoBGP dials 5-10 s later anyway).
const bfdUpSettle = 200 * time.Millisecond

// bfdUpSettled lets the BGP session to peer up if its BFD session (bp,
// still configured) has not changed since it came up (gen), on the same
// speaker.
func (o *BGP) bfdUpSettled(bp *bfdPeer, peer netip.Addr, spk Speaker, gen uint64) {
	o.holdMu.Lock()
	defer o.holdMu.Unlock()
	o.mu.Lock()
	ok := o.bfds[peer] == bp && bp.state == bfd.Up && bp.changes == gen && o.spk == spk
	if ok {
		bp.held = false
	}
	o.mu.Unlock()
	if ok {
		spk.PeerUp(peer)
		o.log.Info("bfd up for a while: bgp session allowed up", "peer", peer)
	}
}

// onSession records a BGP session's state change.
func (o *BGP) onSession(e bgp.PeerEvent) {
	o.mu.Lock()
	o.trans[e.Address]++
	if e.To == bgp.StateEstablished {
		o.sessEst[e.Address]++
	}
	o.mu.Unlock()
	if e.To == bgp.StateEstablished || e.From == bgp.StateEstablished {
		o.log.Info("bgp session "+string(e.To), "peer", e.Address, "from", string(e.From), "reason", e.Reason)
	} else {
		o.log.Debug("bgp session "+string(e.To), "peer", e.Address, "from", string(e.From), "reason", e.Reason)
	}
	o.rec.Add(recorder.Event{Time: e.Time, Kind: "bgp-session-" + string(e.To), Service: e.Address.String(), Reason: e.Reason})
}

// Run makes the announcement decisions until ctx ends: at once when Health
// says a service may have changed, at the health logic's deadline (an
// announce_after or hold-down ends), on a reload, drain or warm-up, and
// every poll for the dataplane's liveness.
func (o *BGP) Run(ctx context.Context) {
	poll := time.NewTicker(o.poll)
	defer poll.Stop()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		changed := o.health.Changed() // before the pass: no change is missed
		deadline, warm := o.pass(ctx)
		var at <-chan time.Time
		if timer != nil {
			timer.Stop()
		}
		if !deadline.IsZero() {
			timer = time.NewTimer(max(0, time.Until(deadline)))
			at = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-o.kick:
		case <-poll.C:
			o.ensureBFD(ctx)
		case <-at:
		case <-warm:
			warm = nil
		}
		o.mu.Lock()
		if o.detect.IsZero() {
			o.detect = time.Now()
		}
		o.mu.Unlock()
	}
}

// pass samples Health, asks the route health logic and tells the speaker
// what changed. It returns the logic's deadline and the warm-up channel to
// wait on (nil once warm).
func (o *BGP) pass(ctx context.Context) (time.Time, <-chan struct{}) {
	o.passMu.Lock()
	defer o.passMu.Unlock()
	o.mu.Lock()
	spk, hh := o.spk, o.hh
	if spk == nil || hh == nil {
		o.detect = time.Time{}
		o.mu.Unlock()
		return time.Time{}, nil
	}
	detect := o.detect
	o.detect = time.Time{}
	if detect.IsZero() {
		detect = time.Now()
	}
	ifaces := slices.Clone(o.ifaces)
	services := map[netip.Addr][]string{}
	for a, v := range o.vips {
		services[a] = v.services
	}
	routes := map[netip.Addr]bgp.Route{}
	for a, v := range o.vips {
		routes[a] = v.route
	}
	in := bgp.HealthInput{Usable: map[netip.Addr]bool{}, Rising: map[netip.Addr]bool{}, Draining: o.drain != nil, WarmedUp: true}
	warm := o.warm
	orphans := sortedAddrs(o.orphans)
	o.mu.Unlock()
	for _, err := range o.withdrawGone(ctx, spk, orphans) {
		o.log.Error("bgp: route of a VIP removed from the config not withdrawn; retrying", "error", err)
	}

	if warm != nil {
		select {
		case <-warm:
			warm = nil
		default:
			in.WarmedUp = false
		}
	}
	for _, ifc := range ifaces {
		if err := o.health.DataplaneUp(ifc); err != nil {
			in.DataplaneDown = ifc + ": " + err.Error()
			break
		}
	}
	for a, names := range services {
		for _, n := range names {
			if o.health.ServiceUp(n) {
				in.Usable[a] = true
			}
			if o.health.ServiceRising(n) {
				in.Rising[a] = true
			}
		}
	}
	now := time.Now()
	o.mu.Lock()
	ds := hh.Update(now, in)
	deadline := hh.Deadline()
	o.mu.Unlock()
	decide := time.Now()
	for _, d := range ds {
		o.mu.Lock()
		prev, known := o.sent[d.VIP]
		o.mu.Unlock()
		if known && prev.announce == d.Announce && prev.reason == d.Reason {
			if prev.until != d.Until {
				o.mu.Lock()
				prev.until = d.Until
				o.sent[d.VIP] = prev
				o.mu.Unlock()
			}
			continue
		}
		r := routes[d.VIP]
		var err error
		if d.Announce {
			err = spk.Announce(ctx, r)
		} else {
			err = spk.Withdraw(ctx, r.Prefix, d.Reason)
		}
		sentAt := time.Now()
		if err != nil {
			// Not recorded as sent: the next pass tries again.
			o.log.Error("bgp: route not updated", "vip", d.VIP, "announce", d.Announce, "error", err)
			continue
		}
		o.mu.Lock()
		o.sent[d.VIP] = sentRoute{announce: d.Announce, reason: d.Reason, route: r, since: d.Since, until: d.Until}
		o.mu.Unlock()
		// Only announcements and withdrawals of announced routes are
		// events; a withdrawn route's reason changing (waiting for
		// announce_after, a VIP not announced yet at start) is not.
		if (known || !d.Announce) && prev.announce == d.Announce {
			o.log.Debug("bgp route stays withdrawn", "vip", d.VIP, "reason", d.Reason)
			continue
		}
		kind, verb := "bgp-withdraw", "bgp route withdrawn"
		if d.Announce {
			kind, verb = "bgp-announce", "bgp route announced"
		}
		ev := o.rec.Add(recorder.Event{Kind: kind, Service: r.Prefix.String(), Reason: d.Reason, Detect: detect, Decide: decide, Apply: sentAt})
		o.log.Info(verb, "vip", d.VIP, "reason", d.Reason, "detect_to_sent", ev.DetectToApply)
	}
	return deadline, warm
}

// DrainInfo answers a drain.
type DrainInfo struct {
	Withdrawn int       // routes that were announced
	CloseAt   time.Time // when the sessions close (zero: they stay)
}

// ErrNotConfigured: the config has no bgp section.
var ErrNotConfigured = errors.New("bgp is not configured (no bgp section)")

// Drain withdraws every route (drain-node) and keeps the sessions, and so
// the routers' view of this node, for hold, while the dataplane keeps
// forwarding what the routers still send here; then it closes the
// sessions. hold 0 keeps them; a negative hold is bgp.drain_hold.
// Undrain undoes it.
func (o *BGP) Drain(ctx context.Context, why string, hold time.Duration) (DrainInfo, error) {
	o.mu.Lock()
	if o.spk == nil {
		o.mu.Unlock()
		return DrainInfo{}, ErrNotConfigured
	}
	if hold < 0 {
		hold = o.cfg.DrainHold
	}
	announced := 0
	for _, s := range o.sent {
		if s.announce {
			announced++
		}
	}
	if o.drain != nil && o.drain.timer != nil {
		o.drain.timer.Stop()
	}
	now := time.Now()
	d := &drainState{why: why, since: now}
	if prev := o.drain; prev != nil && prev.closed {
		// Drained again (drain-node twice, a stop of a drained node): the
		// sessions the first drain closed stay closed; nothing to wait for.
		d.closed, d.since = true, prev.since
		hold = 0
	}
	if hold > 0 {
		d.closeAt = now.Add(hold)
		d.timer = time.AfterFunc(hold, func() { o.closeSessions(d) })
	}
	o.drain = d
	o.detect = now
	o.mu.Unlock()
	o.rec.Add(recorder.Event{Kind: "bgp-drain", Reason: fmt.Sprintf("%s; sessions close after %v", why, hold)})
	o.log.Info("node draining: withdrawing every route", "reason", why, "hold", hold)
	o.pass(ctx) // the withdrawal goes out before the answer
	return DrainInfo{Withdrawn: announced, CloseAt: d.closeAt}, nil
}

func (o *BGP) closeSessions(d *drainState) {
	o.passMu.Lock()
	defer o.passMu.Unlock()
	o.mu.Lock()
	if o.drain != d || o.spk == nil {
		o.mu.Unlock()
		return
	}
	d.closed = true
	spk := o.spk
	o.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := spk.SetPeers(ctx, nil); err != nil {
		o.log.Error("bgp: close sessions after the drain", "error", err)
	}
	o.log.Info("drain hold over: bgp sessions closed")
	o.rec.Add(recorder.Event{Kind: "bgp-sessions-closed", Reason: d.why})
}

// Undrain ends a drain: sessions closed by it open again, and every VIP is
// announced as its health says (after announce_after).
func (o *BGP) Undrain(ctx context.Context) error {
	// passMu first: the sessions opened are those of the config a reload
	// in progress is applying, not of the one it replaces.
	o.passMu.Lock()
	o.mu.Lock()
	d, spk, cfg := o.drain, o.spk, o.cfg
	if spk == nil || d == nil {
		o.mu.Unlock()
		o.passMu.Unlock()
		if spk == nil {
			return ErrNotConfigured
		}
		return nil
	}
	if d.timer != nil {
		d.timer.Stop()
	}
	o.drain = nil
	o.mu.Unlock()
	var err error
	if d.closed {
		err = spk.SetPeers(ctx, peersOf(cfg))
		o.reapplyHolds(spk)
	}
	o.passMu.Unlock()
	o.rec.Add(recorder.Event{Kind: "bgp-undrain", Reason: "routes announced again as health allows"})
	o.log.Info("node undrained")
	o.wake()
	return err
}

// Stop ends BGP for a keepbitd stop. With bgp.withdraw_on_stop every
// route is withdrawn, forwarding goes on for drain_hold while the sessions
// stay, then they close; without, they close at once (the routers drop
// this node's routes themselves). The dataplane is never touched. ctx may
// cut the hold short.
func (o *BGP) Stop(ctx context.Context) {
	o.mu.Lock()
	running, cfg := o.spk != nil, o.cfg
	o.mu.Unlock()
	if !running || cfg == nil {
		return
	}
	if hold := cfg.DrainHold; cfg.WithdrawOnStop {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := o.Drain(wctx, "keepbitd stopping", 0)
		cancel()
		if err != nil {
			o.log.Error("bgp: withdraw on stop", "error", err)
		}
		// A node that was draining already has had part of the hold; one
		// whose drain closed the sessions gets no traffic from the routers
		// any more.
		o.mu.Lock()
		if d := o.drain; d != nil {
			hold = max(0, hold-time.Since(d.since))
			if d.closed {
				hold = 0
			}
		}
		o.mu.Unlock()
		o.log.Info("keepbitd stopping: routes withdrawn, forwarding for the rest of drain_hold before closing the sessions", "wait", hold)
		select {
		case <-ctx.Done():
		case <-time.After(hold):
		}
	}
	o.passMu.Lock()
	defer o.passMu.Unlock()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o.stopLocked(sctx, "keepbitd stopping")
}

// stopLocked closes the sessions and the speaker; passMu is held.
func (o *BGP) stopLocked(ctx context.Context, why string) {
	o.mu.Lock()
	spk, m := o.spk, o.bfdm
	o.spk, o.bfdm, o.hh, o.cfg = nil, nil, nil, nil
	if o.drain != nil && o.drain.timer != nil {
		o.drain.timer.Stop()
	}
	o.drain = nil
	o.sent = map[netip.Addr]sentRoute{}
	o.orphans = map[netip.Addr]bool{}
	o.bfds = map[netip.Addr]*bfdPeer{}
	o.vips = map[netip.Addr]*bgpVIP{}
	o.mu.Unlock()
	if spk != nil {
		// The sessions go first (NOTIFICATION Cease): then BFD's
		// administrative down cannot be taken for a failure.
		if err := spk.Stop(ctx); err != nil {
			o.log.Warn("bgp: stop", "error", err)
		}
		o.rec.Add(recorder.Event{Kind: "bgp-stopped", Reason: why})
	}
	if m != nil {
		if err := m.Close(ctx); err != nil {
			o.log.Debug("bfd: close", "error", err)
		}
	}
}

// Close closes the sessions at once (the controller's Close).
func (o *BGP) Close() {
	o.passMu.Lock()
	defer o.passMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o.stopLocked(ctx, "keepbitd closing")
}

// BGPStatus is what keepbitctl bgp shows.
type BGPStatus struct {
	Configured bool
	ASN        uint32
	RouterID   netip.Addr
	// Draining: drain-node or a stop; DrainSince, and when the sessions
	// close (zero: they stay).
	Draining        bool
	DrainReason     string
	DrainSince      time.Time
	SessionsCloseAt time.Time
	SessionsClosed  bool
	Sessions        []BGPSession
	Routes          []BGPRoute
}

// BGPSession is one BGP session and its BFD session.
type BGPSession struct {
	bgp.PeerStatus
	// Transitions: session state changes since start; Established: how
	// often it came up.
	Transitions, Established uint64
	BFD                      *BFDStatus // nil: no bfd for this peer
}

// BFDStatus is a peer's BFD session.
type BFDStatus struct {
	State       bfd.State
	RemoteState bfd.State
	Diag        bfd.Diag
	Local       netip.Addr
	Interface   string
	Since       time.Time
	Changes     uint64
	DetectTime  time.Duration
	Error       string // why it is not running
}

// BGPRoute is one VIP's route.
type BGPRoute struct {
	VIP       netip.Addr
	Prefix    netip.Prefix
	Announced bool
	Reason    string    // why not announced
	Since     time.Time // of the last change
	Until     time.Time // a waiting VIP is announced then if it stays healthy
	Services  []string
}

// Status reports sessions and routes.
func (o *BGP) Status() BGPStatus {
	o.mu.Lock()
	spk, m, cfg := o.spk, o.bfdm, o.cfg
	if spk == nil || cfg == nil {
		o.mu.Unlock()
		return BGPStatus{}
	}
	st := BGPStatus{Configured: true, ASN: cfg.ASN, RouterID: cfg.RouterID}
	if d := o.drain; d != nil {
		st.Draining, st.DrainReason, st.DrainSince, st.SessionsCloseAt, st.SessionsClosed = true, d.why, d.since, d.closeAt, d.closed
	}
	bfds := map[netip.Addr]bfdPeer{}
	for a, bp := range o.bfds {
		bfds[a] = *bp
	}
	trans, est := map[netip.Addr]uint64{}, map[netip.Addr]uint64{}
	for a, n := range o.trans {
		trans[a] = n
	}
	for a, n := range o.sessEst {
		est[a] = n
	}
	for _, a := range sortedAddrs(o.vips) {
		v := o.vips[a]
		s, ok := o.sent[a]
		r := BGPRoute{VIP: a, Prefix: v.route.Prefix, Services: slices.Clone(v.services)}
		if ok {
			r.Announced, r.Reason, r.Since, r.Until = s.announce, s.reason, s.since, s.until
		} else {
			r.Reason = "not decided yet"
		}
		st.Routes = append(st.Routes, r)
	}
	o.mu.Unlock()
	live := map[netip.Addr]bfd.SessionStatus{}
	if m != nil {
		for _, s := range m.Sessions() {
			live[s.Peer] = s
		}
	}
	peers := spk.Peers()
	if st.SessionsClosed {
		peers = nil
		for _, p := range cfg.Peers {
			peers = append(peers, bgp.PeerStatus{Address: p.Address, ASN: p.ASN, State: bgp.StateIdle, Reason: "closed by drain-node"})
		}
	}
	for _, p := range peers {
		s := BGPSession{PeerStatus: p, Transitions: trans[p.Address], Established: est[p.Address]}
		if bp, ok := bfds[p.Address]; ok {
			b := &BFDStatus{State: bp.state, Since: bp.since, Changes: bp.changes, Error: bp.lastErr}
			if ls, ok := live[p.Address]; ok {
				b.State, b.RemoteState, b.Diag, b.Local, b.Interface, b.DetectTime = ls.State, ls.RemoteState, ls.Diag, ls.Local, ls.Interface, ls.DetectTime
			}
			s.BFD = b
		}
		st.Sessions = append(st.Sessions, s)
	}
	return st
}

// routeSource is this node's address towards peer and the interface the
// route to it leaves by (the kernel's route lookup): a BFD session's
// local end.
func routeSource(peer netip.Addr) (netip.Addr, string, error) {
	rs, err := netlink.RouteGet(peer.AsSlice())
	if err != nil {
		return netip.Addr{}, "", fmt.Errorf("route to %s: %w", peer, err)
	}
	for _, r := range rs {
		src, ok := netip.AddrFromSlice(r.Src)
		if !ok {
			continue
		}
		iface := ""
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			iface = l.Attrs().Name
		}
		return src.Unmap(), iface, nil
	}
	return netip.Addr{}, "", fmt.Errorf("route to %s: no source address", peer)
}
