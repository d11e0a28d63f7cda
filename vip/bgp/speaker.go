package bgp

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	gobgp "github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"github.com/osrg/gobgp/v3/pkg/server"
)

// Config starts a Speaker.
type Config struct {
	ASN      uint32
	RouterID netip.Addr // IPv4
	// ListenPort: -1 listens nowhere (dial the routers only); a port
	// accepts sessions from passive peers' routers (and any configured
	// peer that dials in).
	ListenPort int
	// ListenAddresses: default every address (0.0.0.0 and ::).
	ListenAddresses []netip.Addr
	// GracefulRestart announces RFC 4724 (restart time 120 s) to every
	// peer. Off by default: a router keeps a dead node's routes for the
	// restart time, while ECMP needs them gone at once.
	GracefulRestart bool
	// Logger receives GoBGP's own messages: its warnings and errors at
	// their level, its (chatty) info and debug messages at debug.
	Logger *slog.Logger
	// OnEvent, if set, is called for every peer state change, in order,
	// from one goroutine. It must not block for long.
	OnEvent func(PeerEvent)
}

// Peer is one router as the Speaker runs it.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	Port    uint16 // 0: 179
	// HoldTime and Keepalive in whole seconds; 0 HoldTime: no hold timer.
	HoldTime, Keepalive time.Duration
	Password            string
	Passive             bool
	LocalAddress        netip.Addr // invalid: the kernel's choice
	// NextHops: at most one per family. A family's next hop replaces
	// "self" (the session's local address) for routes sent to this peer;
	// routes of the family other than the session's are sent only if one
	// is given (the session then negotiates that family too).
	NextHops []netip.Addr
}

// Route is one announced prefix with its attributes.
type Route struct {
	Prefix netip.Prefix // a /32 or /128 VIP
	// NextHop: invalid means self (the session's local address, or the
	// peer's next hop of the family).
	NextHop          netip.Addr
	Communities      []uint32
	LargeCommunities []LargeCommunity
	MED              *uint32
}

// LargeCommunity is one RFC 8092 large community.
type LargeCommunity struct{ Global, Local1, Local2 uint32 }

// SessionState is the RFC 4271 FSM state of a session.
type SessionState string

const (
	StateIdle        SessionState = "idle"
	StateConnect     SessionState = "connect"
	StateActive      SessionState = "active"
	StateOpenSent    SessionState = "opensent"
	StateOpenConfirm SessionState = "openconfirm"
	StateEstablished SessionState = "established"
)

// PeerStatus is what `keepbitctl bgp` shows of one session.
type PeerStatus struct {
	Address netip.Addr
	ASN     uint32
	State   SessionState
	// AdminDown: held down by PeerDown (BFD) until PeerUp.
	AdminDown bool
	// Since: when State last changed (as seen by this Speaker).
	Since time.Time
	// Uptime of the established session (0 when not established).
	Uptime time.Duration
	// Reason: why the session is not established, or the last reason it
	// went down ("" when none is known).
	Reason     string
	RoutesSent int
}

// RouteStatus is one VIP route as this Speaker last handled it.
type RouteStatus struct {
	Prefix    netip.Prefix
	Announced bool
	Why       string // for a withdrawn route
	Since     time.Time
}

// PeerEvent is a session state change.
type PeerEvent struct {
	Time     time.Time
	Address  netip.Addr
	From, To SessionState
	Reason   string
}

type peerState struct {
	conf    Peer
	state   SessionState
	since   time.Time
	upSince time.Time
	downBy  string // PeerDown's reason while held down
	// cfgDown: the AdminDown GoBGP's copy of the config holds (an update
	// with another value re-creates the session).
	cfgDown   bool
	lastError string
}

type routeState struct {
	route     Route
	announced bool
	why       string
	since     time.Time
}

// Speaker is this node's BGP speaker: GoBGP running inside keepbitd.
type Speaker struct {
	cfg    Config
	log    *slog.Logger
	srv    *server.BgpServer
	cancel context.CancelFunc
	events chan PeerEvent
	done   chan struct{}

	// The admin loop drives GoBGP's admin state of every peer to what
	// PeerDown/PeerUp asked for (see adminLoop).
	adminKick   chan struct{}
	adminCancel context.CancelFunc
	adminDone   chan struct{}

	// opMu serialises changes to the server (peers, routes, policy), so
	// that the bookkeeping below follows the order GoBGP applied them in.
	opMu    sync.Mutex
	mu      sync.Mutex
	peers   map[netip.Addr]*peerState
	routes  map[netip.Prefix]*routeState
	stopped bool
}

const nextHopPolicy = "keepbit-next-hop"

// Start runs a speaker with no peers and no routes.
func Start(ctx context.Context, cfg Config) (*Speaker, error) {
	if !cfg.RouterID.Is4() {
		return nil, fmt.Errorf("router id %s: want an IPv4 address", cfg.RouterID)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Speaker{
		cfg: cfg, log: cfg.Logger,
		peers:     map[netip.Addr]*peerState{},
		routes:    map[netip.Prefix]*routeState{},
		events:    make(chan PeerEvent, 256),
		done:      make(chan struct{}),
		adminKick: make(chan struct{}, 1),
		adminDone: make(chan struct{}),
	}
	s.srv = server.NewBgpServer(server.LoggerOption(&logger{l: cfg.Logger}))
	go s.srv.Serve()
	g := &api.Global{
		Asn:        cfg.ASN,
		RouterId:   cfg.RouterID.String(),
		ListenPort: int32(cfg.ListenPort),
	}
	for _, a := range cfg.ListenAddresses {
		g.ListenAddresses = append(g.ListenAddresses, a.String())
	}
	if cfg.ListenPort > 0 && len(g.ListenAddresses) == 0 {
		g.ListenAddresses = []string{"0.0.0.0", "::"}
	}
	if err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: g}); err != nil {
		s.srv.Stop()
		return nil, fmt.Errorf("start bgp: %w", err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	err := s.srv.WatchEvent(wctx, &api.WatchEventRequest{Peer: &api.WatchEventRequest_Peer{}}, s.onWatch)
	if err != nil {
		cancel()
		s.srv.Stop()
		return nil, fmt.Errorf("watch peer events: %w", err)
	}
	go s.deliver()
	actx, acancel := context.WithCancel(context.Background())
	s.adminCancel = acancel
	go s.adminLoop(actx)
	return s, nil
}

// Retry bounds of the admin loop: a request GoBGP dropped is sent again
// after adminRetryMin, doubling up to adminRetryMax while it does not
// take.
const (
	adminRetryMin = 10 * time.Millisecond
	adminRetryMax = time.Second
)

func (s *Speaker) kickAdmin() {
	select {
	case s.adminKick <- struct{}{}:
	default:
	}
}

// adminLoop makes GoBGP's admin state of each peer what PeerDown/PeerUp
// last asked for, checking it with ListPeer and asking again with backoff
// until it holds. GoBGP queues one admin request per peer and silently
// drops a second one that arrives while the first is still queued
// ("previous setting admin state request is still remaining"): a BFD
// session that goes Down and straight back Up (Down -> Init -> Up takes
// microseconds when the neighbour answers at once) had its EnablePeer
// dropped and the session held down for good; a PeerDown right after a
// PeerUp would likewise leave a session up that BFD says is down. A peer
// re-created by SetPeers also starts with the admin state of its config,
// not the hold. A state that holds is checked again every adminRetryMax,
// since a request still queued in GoBGP can undo it. It ends with Stop.
func (s *Speaker) adminLoop(ctx context.Context) {
	defer close(s.adminDone)
	backoff := adminRetryMin
	var retry *time.Timer
	var retryC <-chan time.Time
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.adminKick:
			backoff = adminRetryMin
		case <-retryC:
		}
		if retry != nil {
			retry.Stop()
			retry, retryC = nil, nil
		}
		wait := backoff
		if s.reconcileAdmin(ctx) == 0 {
			// As wanted now, but a request sent earlier may still be
			// queued in GoBGP and undo it when it runs (PeerDown, then
			// PeerUp before the DisablePeer ran: ListPeer still says up,
			// then the queued request takes the peer down). Look again
			// every adminRetryMax for as long as the loop runs.
			backoff, wait = adminRetryMin, adminRetryMax
		} else {
			backoff = min(2*backoff, adminRetryMax)
		}
		retry = time.NewTimer(wait)
		retryC = retry.C
	}
}

// reconcileAdmin asks GoBGP again for every peer whose admin state is not
// the one wanted and returns how many were not; the next round checks
// whether the requests took.
func (s *Speaker) reconcileAdmin(ctx context.Context) int {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return 0
	}
	want := make(map[netip.Addr]string, len(s.peers)) // "" up, else PeerDown's reason
	for a, p := range s.peers {
		want[a] = p.downBy
	}
	s.mu.Unlock()
	down := map[netip.Addr]bool{}
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		a, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err == nil {
			down[a.Unmap()] = p.GetState().GetAdminState() == api.PeerState_DOWN
		}
	})
	if err != nil {
		s.log.Debug("bgp: list peers for their admin state", "err", err)
		return len(want)
	}
	off := 0
	for a, by := range want {
		isDown, known := down[a]
		if !known || isDown == (by != "") {
			continue // not (yet, or no longer) in GoBGP, or as wanted
		}
		if ctx.Err() != nil {
			return off
		}
		off++
		if by != "" {
			err = s.srv.DisablePeer(ctx, &api.DisablePeerRequest{Address: a.String(), Communication: by})
		} else {
			err = s.srv.EnablePeer(ctx, &api.EnablePeerRequest{Address: a.String()})
		}
		s.log.Debug("bgp: admin state asked again", "peer", a, "down", by != "", "err", err)
	}
	return off
}

// deliver hands events to OnEvent in order, off GoBGP's goroutine.
func (s *Speaker) deliver() {
	defer close(s.done)
	for ev := range s.events {
		if s.cfg.OnEvent != nil {
			s.cfg.OnEvent(ev)
		}
	}
}

func sessionState(st api.PeerState_SessionState) SessionState {
	switch st {
	case api.PeerState_IDLE:
		return StateIdle
	case api.PeerState_CONNECT:
		return StateConnect
	case api.PeerState_ACTIVE:
		return StateActive
	case api.PeerState_OPENSENT:
		return StateOpenSent
	case api.PeerState_OPENCONFIRM:
		return StateOpenConfirm
	case api.PeerState_ESTABLISHED:
		return StateEstablished
	}
	return SessionState(fmt.Sprintf("unknown(%d)", st))
}

func (s *Speaker) onWatch(r *api.WatchEventResponse) {
	pe := r.GetPeer()
	if pe == nil || pe.Type != api.WatchEventResponse_PeerEvent_STATE || pe.Peer.GetState() == nil {
		return
	}
	addr, err := netip.ParseAddr(pe.Peer.State.NeighborAddress)
	if err != nil {
		return
	}
	addr = addr.Unmap()
	to := sessionState(pe.Peer.State.SessionState)
	now := time.Now()
	s.mu.Lock()
	p := s.peers[addr]
	if p == nil || s.stopped || p.state == to {
		s.mu.Unlock()
		return
	}
	ev := PeerEvent{Time: now, Address: addr, From: p.state, To: to}
	switch {
	case to == StateEstablished:
		p.upSince, p.lastError = now, ""
	case p.state == StateEstablished:
		p.upSince = time.Time{}
		p.lastError = "session closed"
		if p.downBy != "" {
			p.lastError = "held down: " + p.downBy
		}
	}
	p.state, p.since = to, now
	ev.Reason = p.lastError
	select {
	case s.events <- ev:
	default:
		s.log.Warn("bgp: peer event dropped, the consumer is slow", "peer", addr, "to", to)
	}
	s.mu.Unlock()
}

func family(a netip.Addr) *api.Family {
	if a.Is4() {
		return &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	}
	return &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
}

// apiPeer is p as GoBGP takes it.
func (s *Speaker) apiPeer(p Peer, adminDown bool) *api.Peer {
	port := p.Port
	if port == 0 {
		port = 179
	}
	fams := []*api.Family{family(p.Address)}
	for _, nh := range p.NextHops {
		if nh.Is4() != p.Address.Is4() {
			fams = append(fams, family(nh))
		}
	}
	ap := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			AuthPassword:    p.Password,
			AdminDown:       adminDown,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          uint64(p.HoldTime / time.Second),
			KeepaliveInterval: uint64(p.Keepalive / time.Second),
			// GoBGP's floor is 5 s whatever this says; the default 120 s
			// would leave a node cut off for minutes after a router restart.
			ConnectRetry:           5,
			IdleHoldTimeAfterReset: 1,
		}},
		Transport: &api.Transport{
			PassiveMode: p.Passive,
			RemotePort:  uint32(port),
		},
		GracefulRestart: &api.GracefulRestart{Enabled: s.cfg.GracefulRestart, RestartTime: 120},
	}
	if p.LocalAddress.IsValid() {
		ap.Transport.LocalAddress = p.LocalAddress.String()
	}
	for _, f := range fams {
		afi := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: f, Enabled: true}}
		if s.cfg.GracefulRestart {
			afi.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
		}
		ap.AfiSafis = append(ap.AfiSafis, afi)
	}
	return ap
}

// sessionKey is what, when it changes, needs a new session (a new OPEN).
func sessionKey(p Peer) string {
	fams := []bool{}
	for _, nh := range p.NextHops {
		fams = append(fams, nh.Is4() != p.Address.Is4())
	}
	return fmt.Sprint(p.ASN, p.Port, p.Password, p.Passive, p.LocalAddress, slices.Contains(fams, true))
}

// SetPeers makes the configured peers exactly peers: new ones are added,
// gone ones removed (their sessions closed), changed ones updated in place
// where BGP allows (timers take effect at the next session, next hops at
// once) and re-created otherwise. Unchanged sessions are not touched.
func (s *Speaker) SetPeers(ctx context.Context, peers []Peer) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.isStopped() {
		return errors.New("speaker stopped")
	}
	want := map[netip.Addr]Peer{}
	for _, p := range peers {
		p.Address = p.Address.Unmap()
		if _, dup := want[p.Address]; dup {
			return fmt.Errorf("peer %s listed twice", p.Address)
		}
		want[p.Address] = p
	}
	var errs []error
	nextHopsChanged := map[netip.Addr]bool{}
	s.mu.Lock()
	old := map[netip.Addr]peerState{}
	for a, p := range s.peers {
		old[a] = *p
	}
	s.mu.Unlock()
	for a := range old {
		if _, keep := want[a]; keep {
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: a.String()}); err != nil {
			errs = append(errs, fmt.Errorf("remove peer %s: %w", a, err))
			continue
		}
		s.mu.Lock()
		delete(s.peers, a)
		s.mu.Unlock()
	}
	for a, p := range want {
		o, had := old[a]
		// Re-created sessions start held down if BFD holds them down.
		adminDown := had && o.downBy != ""
		cfgDown := had && o.cfgDown
		switch {
		case !had:
			if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(p, false)}); err != nil {
				errs = append(errs, fmt.Errorf("add peer %s: %w", a, err))
				continue
			}
			s.mu.Lock()
			s.peers[a] = &peerState{conf: p, state: StateIdle, since: time.Now()}
			s.mu.Unlock()
			nextHopsChanged[a] = len(p.NextHops) > 0
			continue
		case sessionKey(o.conf) != sessionKey(p):
			// A new OPEN is needed: GoBGP re-creates the peer itself.
			if _, err := s.srv.UpdatePeer(ctx, &api.UpdatePeerRequest{Peer: s.apiPeer(p, adminDown)}); err != nil {
				errs = append(errs, fmt.Errorf("update peer %s: %w", a, err))
				continue
			}
			cfgDown = adminDown
		case o.conf.HoldTime != p.HoldTime || o.conf.Keepalive != p.Keepalive:
			// Same AdminDown as GoBGP holds, or it would re-create the session.
			if _, err := s.srv.UpdatePeer(ctx, &api.UpdatePeerRequest{Peer: s.apiPeer(p, cfgDown)}); err != nil {
				errs = append(errs, fmt.Errorf("update peer %s: %w", a, err))
				continue
			}
		}
		if !slices.Equal(o.conf.NextHops, p.NextHops) {
			nextHopsChanged[a] = true
		}
		s.mu.Lock()
		if ps := s.peers[a]; ps != nil {
			ps.conf, ps.cfgDown = p, cfgDown
		}
		s.mu.Unlock()
	}
	// A re-created session takes the admin state of its config: the admin
	// loop checks that held-down ones stay down.
	s.kickAdmin()
	changed := false
	for _, c := range nextHopsChanged {
		changed = changed || c
	}
	if changed {
		if err := s.setNextHopPolicy(ctx, want); err != nil {
			errs = append(errs, err)
		}
		for a, c := range nextHopsChanged {
			if c {
				// Re-send what the peer has with the new next hops.
				if err := s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: a.String(), Soft: true, Direction: api.ResetPeerRequest_OUT}); err != nil {
					s.log.Debug("bgp: soft reset out", "peer", a, "err", err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// setNextHopPolicy replaces the global export policy that sets each
// peer's explicit next hops (GoBGP applies export policies globally, so a
// statement per peer and family matches on the neighbour).
func (s *Speaker) setNextHopPolicy(ctx context.Context, peers map[netip.Addr]Peer) error {
	_ = s.srv.DeletePolicyAssignment(ctx, &api.DeletePolicyAssignmentRequest{
		Assignment: &api.PolicyAssignment{Name: "global", Direction: api.PolicyDirection_EXPORT}, All: true})
	_ = s.srv.DeletePolicy(ctx, &api.DeletePolicyRequest{Policy: &api.Policy{Name: nextHopPolicy}, All: true})
	_ = s.srv.ListDefinedSet(ctx, &api.ListDefinedSetRequest{DefinedType: api.DefinedType_NEIGHBOR}, func(d *api.DefinedSet) {
		_ = s.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: d, All: true})
	})
	addrs := make([]netip.Addr, 0, len(peers))
	for a := range peers {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	pol := &api.Policy{Name: nextHopPolicy}
	for _, a := range addrs {
		p := peers[a]
		if len(p.NextHops) == 0 {
			continue
		}
		set := "peer-" + a.String()
		err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: &api.DefinedSet{
			DefinedType: api.DefinedType_NEIGHBOR, Name: set, List: []string{netip.PrefixFrom(a, a.BitLen()).String()}}})
		if err != nil {
			return fmt.Errorf("next hop policy for %s: %w", a, err)
		}
		for _, nh := range p.NextHops {
			pol.Statements = append(pol.Statements, &api.Statement{
				Name: fmt.Sprintf("%s-%s", set, map[bool]string{true: "ipv4", false: "ipv6"}[nh.Is4()]),
				Conditions: &api.Conditions{
					NeighborSet: &api.MatchSet{Name: set, Type: api.MatchSet_ANY},
					AfiSafiIn:   []*api.Family{family(nh)},
				},
				Actions: &api.Actions{RouteAction: api.RouteAction_NONE, Nexthop: &api.NexthopAction{Address: nh.String()}},
			})
		}
	}
	if len(pol.Statements) == 0 {
		return nil
	}
	if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: pol}); err != nil {
		return fmt.Errorf("next hop policy: %w", err)
	}
	err := s.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name: "global", Direction: api.PolicyDirection_EXPORT,
		Policies: []*api.Policy{{Name: nextHopPolicy}}, DefaultAction: api.RouteAction_ACCEPT,
	}})
	if err != nil {
		return fmt.Errorf("next hop policy: %w", err)
	}
	return nil
}

func (s *Speaker) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

func checkPrefix(p netip.Prefix) error {
	if !p.IsValid() || p.Bits() != p.Addr().BitLen() || p.Addr().Is4In6() {
		return fmt.Errorf("prefix %s: want a /32 (IPv4) or /128 (IPv6) VIP", p)
	}
	return nil
}

func (r Route) apiPath(withdraw bool) (*api.Path, error) {
	a := r.Prefix.Addr()
	var nlri gobgp.AddrPrefixInterface
	var attrs []gobgp.PathAttributeInterface
	if !withdraw {
		attrs = append(attrs, gobgp.NewPathAttributeOrigin(gobgp.BGP_ORIGIN_ATTR_TYPE_IGP))
	}
	if a.Is4() {
		nlri = gobgp.NewIPAddrPrefix(32, a.String())
		if !withdraw {
			nh := "0.0.0.0"
			if r.NextHop.IsValid() {
				nh = r.NextHop.String()
			}
			attrs = append(attrs, gobgp.NewPathAttributeNextHop(nh))
		}
	} else {
		nlri = gobgp.NewIPv6AddrPrefix(128, a.String())
		if !withdraw {
			nh := "::"
			if r.NextHop.IsValid() {
				nh = r.NextHop.String()
			}
			attrs = append(attrs, gobgp.NewPathAttributeMpReachNLRI(nh, []gobgp.AddrPrefixInterface{nlri}))
		}
	}
	if !withdraw {
		if r.MED != nil {
			attrs = append(attrs, gobgp.NewPathAttributeMultiExitDisc(*r.MED))
		}
		if len(r.Communities) > 0 {
			attrs = append(attrs, gobgp.NewPathAttributeCommunities(r.Communities))
		}
		if len(r.LargeCommunities) > 0 {
			var lc []*gobgp.LargeCommunity
			for _, c := range r.LargeCommunities {
				lc = append(lc, gobgp.NewLargeCommunity(c.Global, c.Local1, c.Local2))
			}
			attrs = append(attrs, gobgp.NewPathAttributeLargeCommunities(lc))
		}
	}
	return apiutil.NewPath(nlri, withdraw, attrs, time.Now())
}

func sameRoute(a, b Route) bool {
	return a.Prefix == b.Prefix && a.NextHop == b.NextHop && slices.Equal(a.Communities, b.Communities) &&
		slices.Equal(a.LargeCommunities, b.LargeCommunities) &&
		(a.MED == nil) == (b.MED == nil) && (a.MED == nil || *a.MED == *b.MED)
}

// Announce sends r to every peer that carries its family (now, and to
// every session that comes up later). Announcing an announced route
// again with other attributes replaces it; with the same ones it does
// nothing.
func (s *Speaker) Announce(ctx context.Context, r Route) error {
	if err := checkPrefix(r.Prefix); err != nil {
		return err
	}
	if r.NextHop.IsValid() && r.NextHop.Is4() != r.Prefix.Addr().Is4() {
		return fmt.Errorf("route %s: next hop %s is of the other family", r.Prefix, r.NextHop)
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.isStopped() {
		return errors.New("speaker stopped")
	}
	s.mu.Lock()
	old := s.routes[r.Prefix]
	s.mu.Unlock()
	if old != nil && old.announced && sameRoute(old.route, r) {
		return nil
	}
	path, err := r.apiPath(false)
	if err != nil {
		return fmt.Errorf("route %s: %w", r.Prefix, err)
	}
	if _, err := s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path}); err != nil {
		return fmt.Errorf("announce %s: %w", r.Prefix, err)
	}
	s.mu.Lock()
	s.routes[r.Prefix] = &routeState{route: r, announced: true, since: time.Now()}
	s.mu.Unlock()
	return nil
}

// Withdraw takes prefix back from every peer; why is kept for Routes.
// Withdrawing a route that is not announced only records why.
func (s *Speaker) Withdraw(ctx context.Context, prefix netip.Prefix, why string) error {
	if err := checkPrefix(prefix); err != nil {
		return err
	}
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.isStopped() {
		return errors.New("speaker stopped")
	}
	return s.withdraw(ctx, prefix, why)
}

func (s *Speaker) withdraw(ctx context.Context, prefix netip.Prefix, why string) error {
	s.mu.Lock()
	old := s.routes[prefix]
	s.mu.Unlock()
	if old == nil || !old.announced {
		s.mu.Lock()
		if old == nil {
			s.routes[prefix] = &routeState{route: Route{Prefix: prefix}, why: why, since: time.Now()}
		} else {
			old.why = why
		}
		s.mu.Unlock()
		return nil
	}
	path, err := Route{Prefix: prefix}.apiPath(true)
	if err != nil {
		return fmt.Errorf("route %s: %w", prefix, err)
	}
	if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: path.Family, Path: path}); err != nil {
		return fmt.Errorf("withdraw %s: %w", prefix, err)
	}
	s.mu.Lock()
	old.announced, old.why, old.since = false, why, time.Now()
	s.mu.Unlock()
	return nil
}

// Forget drops a withdrawn route from Routes (its VIP left the config).
func (s *Speaker) Forget(prefix netip.Prefix) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.routes[prefix]; r != nil && !r.announced {
		delete(s.routes, prefix)
	}
}

// WithdrawAll withdraws every announced route (drain, dataplane failure).
func (s *Speaker) WithdrawAll(ctx context.Context, why string) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.isStopped() {
		return errors.New("speaker stopped")
	}
	s.mu.Lock()
	var ps []netip.Prefix
	for p, r := range s.routes {
		if r.announced {
			ps = append(ps, p)
		}
	}
	s.mu.Unlock()
	var errs []error
	for _, p := range ps {
		errs = append(errs, s.withdraw(ctx, p, why))
	}
	return errors.Join(errs...)
}

// PeerDown closes the session to addr at once (a NOTIFICATION Cease,
// administrative shutdown, then the TCP close) and keeps it down until
// PeerUp: BFD says the router is gone, so the hold timer need not run
// out. reason shows in Peers. Unknown peers are ignored.
func (s *Speaker) PeerDown(addr netip.Addr, reason string) {
	addr = addr.Unmap()
	s.mu.Lock()
	p := s.peers[addr]
	if p == nil || s.stopped {
		s.mu.Unlock()
		return
	}
	was := p.downBy
	p.downBy = reason
	if reason == "" {
		p.downBy = "peer down"
	}
	p.lastError = "held down: " + p.downBy
	s.mu.Unlock()
	if was != "" {
		return
	}
	// Not under opMu: a reload or an announcement in progress must not
	// delay this.
	if err := s.srv.DisablePeer(context.Background(), &api.DisablePeerRequest{Address: addr.String(), Communication: p.downBy}); err != nil {
		s.log.Warn("bgp: hold peer down", "peer", addr, "err", err)
	}
	s.kickAdmin() // GoBGP may have dropped it (an EnablePeer still queued)
}

// PeerUp lets the session to addr come back (after PeerDown). GoBGP may
// drop the request (a DisablePeer still queued); the admin loop asks again
// until GoBGP's admin state is up, or a PeerDown wants it down again.
func (s *Speaker) PeerUp(addr netip.Addr) {
	addr = addr.Unmap()
	s.mu.Lock()
	p := s.peers[addr]
	if p == nil || s.stopped || p.downBy == "" {
		s.mu.Unlock()
		return
	}
	p.downBy = ""
	s.mu.Unlock()
	if err := s.srv.EnablePeer(context.Background(), &api.EnablePeerRequest{Address: addr.String()}); err != nil {
		s.log.Warn("bgp: let peer up", "peer", addr, "err", err)
	}
	s.kickAdmin()
}

// Peers reports every configured session, sorted by address.
func (s *Speaker) Peers() []PeerStatus {
	sent := map[netip.Addr]int{}
	if !s.isStopped() {
		_ = s.srv.ListPeer(context.Background(), &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
			a, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
			if err != nil {
				return
			}
			for _, af := range p.AfiSafis {
				sent[a.Unmap()] += int(af.GetState().GetAdvertised())
			}
		})
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PeerStatus, 0, len(s.peers))
	for a, p := range s.peers {
		st := PeerStatus{Address: a, ASN: p.conf.ASN, State: p.state, AdminDown: p.downBy != "", Since: p.since, Reason: p.lastError}
		if p.state == StateEstablished {
			st.Uptime = now.Sub(p.upSince)
			st.RoutesSent = sent[a]
		} else if st.Reason == "" && p.conf.Passive {
			st.Reason = "passive: waiting for the router to connect"
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return a.Address.Compare(b.Address) })
	return out
}

// Routes reports every route announced or withdrawn, sorted by prefix.
func (s *Speaker) Routes() []RouteStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]RouteStatus, 0, len(s.routes))
	for p, r := range s.routes {
		out = append(out, RouteStatus{Prefix: p, Announced: r.announced, Why: r.why, Since: r.since})
	}
	slices.SortFunc(out, func(a, b RouteStatus) int {
		return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	})
	return out
}

// Stop closes every session (NOTIFICATION Cease, peer de-configured: the
// routers drop this node's routes at once) and the listeners. Withdraw
// first (WithdrawAll, then wait) for a drain that keeps flows alive.
func (s *Speaker) Stop(ctx context.Context) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	s.mu.Unlock()
	// The admin loop talks to the server: it ends first (its calls are
	// answered promptly while the server runs).
	s.adminCancel()
	<-s.adminDone
	stopped := make(chan struct{})
	go func() {
		// GoBGP's Stop has no context; its Serve goroutine stays behind
		// (idle) after it, which GoBGP v3 offers no way to end.
		s.srv.Stop()
		close(stopped)
	}()
	var err error
	select {
	case <-stopped:
	case <-ctx.Done():
		err = fmt.Errorf("stop bgp: %w", ctx.Err())
	}
	s.cancel()
	s.mu.Lock()
	close(s.events)
	s.mu.Unlock()
	<-s.done
	return err
}
