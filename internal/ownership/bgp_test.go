package ownership

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/vip/bfd"
	"github.com/keepbit/keepbit/vip/bgp"
)

// fakeSpeaker records what the owner tells it.
type fakeSpeaker struct {
	mu      sync.Mutex
	calls   []string
	peers   []bgp.Peer
	setN    int
	routes  map[netip.Prefix]bool
	why     map[netip.Prefix]string
	stopped bool
	// held: peers held down, as a real speaker keeps them (a peer removed
	// by SetPeers forgets its hold, PeerDown of an unknown peer is lost).
	held map[netip.Addr]bool
	// upGate, when set, makes PeerUp wait for it after it is entered
	// (upEntered) and before it takes effect.
	upGate, upEntered chan struct{}
	failWithdraw      int // so many Withdraw calls fail
}

func newFakeSpeaker() *fakeSpeaker {
	return &fakeSpeaker{routes: map[netip.Prefix]bool{}, why: map[netip.Prefix]string{}, held: map[netip.Addr]bool{}}
}

func (f *fakeSpeaker) isHeld(a string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held[netip.MustParseAddr(a)]
}

func (f *fakeSpeaker) hasPeer(a netip.Addr) bool {
	for _, p := range f.peers {
		if p.Address == a {
			return true
		}
	}
	return false
}

func (f *fakeSpeaker) log(format string, a ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, a...))
}

func (f *fakeSpeaker) SetPeers(_ context.Context, ps []bgp.Peer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.peers, f.setN = slices.Clone(ps), f.setN+1
	for a := range f.held {
		if !f.hasPeer(a) {
			delete(f.held, a)
		}
	}
	f.log("peers %d", len(ps))
	return nil
}

func (f *fakeSpeaker) Announce(_ context.Context, r bgp.Route) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes[r.Prefix] = true
	f.log("announce %s", r.Prefix)
	return nil
}

func (f *fakeSpeaker) Withdraw(_ context.Context, p netip.Prefix, why string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failWithdraw > 0 {
		f.failWithdraw--
		f.log("withdraw %s failed", p)
		return fmt.Errorf("withdraw %s: injected failure", p)
	}
	if f.routes[p] {
		f.log("withdraw %s (%s)", p, why)
	}
	f.routes[p] = false
	f.why[p] = why
	return nil
}

func (f *fakeSpeaker) WithdrawAll(ctx context.Context, why string) error { return errors.New("unused") }

// Forget, like the real one, drops only a withdrawn route's record.
func (f *fakeSpeaker) Forget(p netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.routes[p] {
		delete(f.routes, p)
	}
	f.log("forget %s", p)
}

func (f *fakeSpeaker) PeerDown(a netip.Addr, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.hasPeer(a) {
		f.held[a] = true
	}
	f.log("peer-down %s (%s)", a, reason)
}

func (f *fakeSpeaker) PeerUp(a netip.Addr) {
	f.mu.Lock()
	gate, entered := f.upGate, f.upEntered
	f.mu.Unlock()
	if gate != nil {
		entered <- struct{}{}
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.held, a)
	f.log("peer-up %s", a)
}

func (f *fakeSpeaker) Peers() []bgp.PeerStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []bgp.PeerStatus
	for _, p := range f.peers {
		out = append(out, bgp.PeerStatus{Address: p.Address, ASN: p.ASN, State: bgp.StateEstablished})
	}
	return out
}

func (f *fakeSpeaker) Routes() []bgp.RouteStatus { return nil }
func (f *fakeSpeaker) Stop(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	f.log("stop")
	return nil
}

func (f *fakeSpeaker) took() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.calls
	f.calls = nil
	return out
}

func (f *fakeSpeaker) announced(p string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.routes[netip.MustParsePrefix(p)]
}

// fakeBFD records sessions; tests send state changes through onChange.
type fakeBFD struct {
	mu       sync.Mutex
	onChange func(bfd.Event)
	sessions map[netip.Addr]bfd.SessionConfig
	calls    []string
	// gate, when set, makes Add and SetTimers wait for it after they are
	// entered (entered) and before they take effect.
	gate, entered chan struct{}
}

func (f *fakeBFD) wait() {
	f.mu.Lock()
	gate, entered := f.gate, f.entered
	f.mu.Unlock()
	if gate != nil {
		entered <- struct{}{}
		<-gate
	}
}

func (f *fakeBFD) Add(_ context.Context, c bfd.SessionConfig) error {
	f.wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sessions[c.Peer] = c
	f.calls = append(f.calls, fmt.Sprintf("add %s from %s tx %v x%d", c.Peer, c.Local, c.DesiredMinTx, c.Multiplier))
	return nil
}

func (f *fakeBFD) SetTimers(_ context.Context, c bfd.SessionConfig) error {
	f.wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sessions[c.Peer] = c
	f.calls = append(f.calls, fmt.Sprintf("timers %s tx %v x%d", c.Peer, c.DesiredMinTx, c.Multiplier))
	return nil
}

func (f *fakeBFD) Remove(_ context.Context, c bfd.SessionConfig) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.sessions, c.Peer)
	f.calls = append(f.calls, "remove "+c.Peer.String())
	return nil
}

func (f *fakeBFD) Sessions() []bfd.SessionStatus { return nil }
func (f *fakeBFD) Close(context.Context) error   { return nil }

func (f *fakeBFD) took() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.calls
	f.calls = nil
	return out
}

type bgpRig struct {
	o      *BGP
	spk    *fakeSpeaker
	bfd    *fakeBFD
	health *fakeHealth
	rec    *recorder.Recorder
}

func newBGPRig(t *testing.T) *bgpRig {
	t.Helper()
	r := &bgpRig{spk: newFakeSpeaker(), health: newFakeHealth(), rec: recorder.New(256)}
	r.o = NewBGP(slog.New(slog.NewTextHandler(io.Discard, nil)), r.rec, r.health)
	r.o.startSpeaker = func(context.Context, bgp.Config) (Speaker, error) { return r.spk, nil }
	r.o.newBFD = func(on func(bfd.Event)) BFDSessions {
		r.bfd = &fakeBFD{onChange: on, sessions: map[netip.Addr]bfd.SessionConfig{}}
		return r.bfd
	}
	r.o.localFor = func(peer netip.Addr) (netip.Addr, string, error) {
		return netip.MustParseAddr("10.91.0.11"), "eth0", nil
	}
	t.Cleanup(r.o.Close)
	return r
}

// bgpConfig: services web (VIP .9, two names on it) and dns (VIP .8), one
// peer with BFD, announce_after 0 unless set.
func bgpConfig(announceAfter time.Duration) *config.Config {
	mk := func(name, vip string) config.Service {
		return config.Service{Name: name, VIP: netip.MustParseAddr(vip), Interface: "eth0"}
	}
	return &config.Config{
		Interfaces: []config.Interface{{Name: "eth0"}, {Name: "eth1"}},
		Services:   []config.Service{mk("web", "10.90.9.9"), mk("web-tls", "10.90.9.9"), mk("dns", "10.90.9.8")},
		BGP: &config.BGP{ASN: 65001, RouterID: netip.MustParseAddr("10.91.0.11"), ListenPort: -1,
			AnnounceAfter: announceAfter, Damping: config.BGPDamping{Window: time.Minute, MaxHoldDown: time.Minute},
			WithdrawOnStop: true, DrainHold: 50 * time.Millisecond,
			Peers: []config.BGPPeer{{Address: netip.MustParseAddr("10.91.0.1"), ASN: 65000, Port: 179, HoldTime: 3 * time.Second,
				Keepalive: time.Second, BFD: &config.BGPBFD{MinTx: 100 * time.Millisecond, MinRx: 100 * time.Millisecond, Multiplier: 3}}}},
	}
}

func (r *bgpRig) reload(t *testing.T, cfg *config.Config) {
	t.Helper()
	if err := r.o.Reload(context.Background(), cfg); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

func TestBGPRouteHealth(t *testing.T) {
	r := newBGPRig(t)
	r.health.up["web"], r.health.up["dns"] = true, false
	r.reload(t, bgpConfig(0))
	ctx := context.Background()
	r.o.pass(ctx)
	if got, want := r.spk.took(), []string{"peers 1", "announce 10.90.9.9/32"}; !slices.Equal(got, want) {
		t.Fatalf("start: speaker got %q, want %q", got, want)
	}

	steps := []struct {
		name  string
		set   func()
		want  []string
		event string // kind: reason of the last recorder event
	}{
		{"one service of the VIP down, the other up: stays", func() { r.health.up["web"], r.health.up["web-tls"] = false, true }, nil, ""},
		{"both down: withdrawn with the reason", func() { r.health.up["web-tls"] = false },
			[]string{"withdraw 10.90.9.9/32 (no usable backend)"}, "bgp-withdraw: no usable backend"},
		{"dns up: announced", func() { r.health.up["dns"] = true }, []string{"announce 10.90.9.8/32"}, "bgp-announce: "},
		{"a dataplane down: every route withdrawn, naming it", func() { r.health.dpErr = errors.New("heartbeat stopped") },
			[]string{"withdraw 10.90.9.8/32 (dataplane: eth0: heartbeat stopped)"}, "bgp-withdraw: dataplane: eth0: heartbeat stopped"},
		{"dataplane back, web back: both announced", func() { r.health.dpErr = nil; r.health.up["web"] = true },
			[]string{"announce 10.90.9.8/32", "announce 10.90.9.9/32"}, "bgp-announce: "},
	}
	for _, s := range steps {
		s.set()
		r.o.wake()
		r.o.pass(ctx)
		if got := r.spk.took(); !slices.Equal(got, s.want) {
			t.Errorf("%s: speaker got %q, want %q", s.name, got, s.want)
		}
		if s.event != "" {
			evs := r.rec.Since(0)
			e := evs[len(evs)-1]
			if got := e.Kind + ": " + e.Reason; got != s.event {
				t.Errorf("%s: last event %q, want %q", s.name, got, s.event)
			}
			if e.Detect.IsZero() || e.Decide.Before(e.Detect) || e.Apply.Before(e.Decide) {
				t.Errorf("%s: event times detect %v decide %v sent %v: want all, in order", s.name, e.Detect, e.Decide, e.Apply)
			}
		}
	}
	st := r.o.Status()
	if len(st.Routes) != 2 || !st.Routes[0].Announced || !slices.Equal(st.Routes[1].Services, []string{"web", "web-tls"}) {
		t.Errorf("status routes %+v", st.Routes)
	}
}

func TestBGPAnnounceAfterAndRun(t *testing.T) {
	r := newBGPRig(t)
	r.health.up["web"], r.health.up["dns"] = true, true
	r.reload(t, bgpConfig(150*time.Millisecond))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.o.Run(ctx)
	waitFor(t, "first announcement (no wait at start)", func() bool { return r.spk.announced("10.90.9.9/32") })
	r.health.set("web", false)
	waitFor(t, "withdrawal on Changed", func() bool { return !r.spk.announced("10.90.9.9/32") })
	back := time.Now()
	r.health.set("web", true)
	waitFor(t, "re-announcement at the deadline", func() bool { return r.spk.announced("10.90.9.9/32") })
	if took := time.Since(back); took < 150*time.Millisecond {
		t.Errorf("announced again %v after health came back, before announce_after (150ms)", took)
	}
	if st := r.o.Status(); !st.Routes[1].Announced {
		t.Errorf("status: %+v", st.Routes)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestBGPWarmUpGate(t *testing.T) {
	r := newBGPRig(t)
	warm := make(chan struct{})
	r.o.SetWarmUp(warm)
	r.health.up["web"] = true
	r.reload(t, bgpConfig(0))
	r.o.pass(context.Background())
	if r.spk.announced("10.90.9.9/32") {
		t.Fatal("announced before the warm-up ended")
	}
	if st := r.o.Status(); st.Routes[1].Reason != bgp.ReasonWarmingUp {
		t.Errorf("reason while warming up: %q", st.Routes[1].Reason)
	}
	close(warm)
	r.o.pass(context.Background())
	if !r.spk.announced("10.90.9.9/32") {
		t.Fatal("not announced after the warm-up")
	}
}

func TestBGPDrain(t *testing.T) {
	r := newBGPRig(t)
	r.health.up["web"], r.health.up["dns"] = true, true
	r.reload(t, bgpConfig(0))
	ctx := context.Background()
	r.o.pass(ctx)
	r.spk.took()
	// A 1 s hold: the checks "during the hold" below must run within it
	// on a loaded test machine.
	info, err := r.o.Drain(ctx, "drain-node", time.Second)
	if err != nil || info.Withdrawn != 2 {
		t.Fatalf("drain: %+v, %v; want 2 withdrawn", info, err)
	}
	got := r.spk.took()
	if want := []string{"withdraw 10.90.9.8/32 (draining)", "withdraw 10.90.9.9/32 (draining)"}; !slices.Equal(got, want) {
		t.Errorf("drain: speaker got %q, want %q (sessions kept)", got, want)
	}
	// Health stays good, but nothing comes back while draining.
	r.o.pass(ctx)
	if st := r.o.Status(); !st.Draining || st.SessionsClosed || len(st.Sessions) != 1 {
		t.Errorf("during the hold: %+v, want draining with the session kept", st)
	}
	waitFor(t, "sessions closed after the hold", func() bool { return r.o.Status().SessionsClosed })
	if got := r.spk.took(); !slices.Equal(got, []string{"peers 0"}) {
		t.Errorf("after the hold: speaker got %q, want the peers removed", got)
	}
	// A reload while drained keeps the sessions closed.
	r.reload(t, bgpConfig(0))
	if got := r.spk.took(); len(got) != 0 {
		t.Errorf("reload while drained: speaker got %q", got)
	}
	if err := r.o.Undrain(ctx); err != nil {
		t.Fatal(err)
	}
	r.o.pass(ctx)
	if got, want := r.spk.took(), []string{"peers 1", "announce 10.90.9.8/32", "announce 10.90.9.9/32"}; !slices.Equal(got, want) {
		t.Errorf("undrain: speaker got %q, want %q", got, want)
	}
}

func TestBGPStopWithdrawsThenCloses(t *testing.T) {
	r := newBGPRig(t)
	r.health.up["web"] = true
	r.reload(t, bgpConfig(0))
	r.o.pass(context.Background())
	r.spk.took()
	start := time.Now()
	r.o.Stop(context.Background())
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Errorf("stop took %v: the sessions closed before drain_hold (50ms)", took)
	}
	if got, want := r.spk.took(), []string{"withdraw 10.90.9.9/32 (draining)", "stop"}; !slices.Equal(got, want) {
		t.Errorf("stop: speaker got %q, want %q", got, want)
	}
}

func TestBGPBFDHoldsSessionDown(t *testing.T) {
	r := newBGPRig(t)
	r.reload(t, bgpConfig(0))
	r.o.ensureBFD(context.Background())
	if got, want := r.bfd.took(), []string{"add 10.91.0.1 from 10.91.0.11 tx 100ms x3"}; !slices.Equal(got, want) {
		t.Fatalf("bfd sessions: %q, want %q", got, want)
	}
	peer := netip.MustParseAddr("10.91.0.1")
	ev := func(from, to, remote bfd.State, diag bfd.Diag) {
		r.bfd.onChange(bfd.Event{Local: netip.MustParseAddr("10.91.0.11"), Peer: peer, Interface: "eth0",
			From: from, To: to, RemoteState: remote, Diag: diag, At: time.Now()})
	}
	r.spk.took()
	ev(bfd.Down, bfd.Up, bfd.Up, bfd.DiagNone)
	ev(bfd.Up, bfd.Down, bfd.Down, bfd.DiagDetectionTimeExpired)
	if got, want := r.spk.took(), []string{"peer-down 10.91.0.1 (bfd: detection-time-expired)"}; !slices.Equal(got, want) {
		t.Errorf("bfd down: speaker got %q, want %q at once", got, want)
	}
	// The neighbour's administrative down is no path failure (RFC 5882).
	ev(bfd.Down, bfd.Up, bfd.Up, bfd.DiagNone)
	ev(bfd.Up, bfd.Down, bfd.AdminDown, bfd.DiagNeighborDown)
	time.Sleep(2 * bfdUpSettle)
	if got := r.spk.took(); len(got) != 0 {
		t.Errorf("up then the neighbour's admin down within the settle time: speaker got %q, want nothing", got)
	}
	ev(bfd.Down, bfd.Up, bfd.Up, bfd.DiagNone)
	waitFor(t, "peer up after the settle time", func() bool {
		r.spk.mu.Lock()
		defer r.spk.mu.Unlock()
		return slices.Contains(r.spk.calls, "peer-up 10.91.0.1")
	})
	st := r.o.Status()
	if len(st.Sessions) != 1 || st.Sessions[0].BFD == nil || st.Sessions[0].BFD.Changes != 5 || st.Sessions[0].BFD.State != bfd.Up {
		t.Errorf("status: %+v", st.Sessions)
	}
	evs := r.rec.Since(0)
	var kinds []string
	for _, e := range evs {
		if strings.HasPrefix(e.Kind, "bfd-") {
			kinds = append(kinds, e.Kind)
		}
	}
	if want := []string{"bfd-up", "bfd-down", "bfd-up", "bfd-down", "bfd-up"}; !slices.Equal(kinds, want) {
		t.Errorf("recorder: %q, want %q", kinds, want)
	}

	// Reload: timers change in place, a peer without bfd loses its session.
	cfg := bgpConfig(0)
	cfg.BGP.Peers[0].BFD.Multiplier = 5
	r.reload(t, cfg)
	if got, want := r.bfd.took(), []string{"timers 10.91.0.1 tx 100ms x5"}; !slices.Equal(got, want) {
		t.Errorf("timer change: bfd got %q, want %q", got, want)
	}
	cfg = bgpConfig(0)
	cfg.BGP.Peers[0].BFD = nil
	r.reload(t, cfg)
	if got, want := r.bfd.took(), []string{"remove 10.91.0.1"}; !slices.Equal(got, want) {
		t.Errorf("bfd removed: bfd got %q, want %q", got, want)
	}
}

func TestBGPReload(t *testing.T) {
	r := newBGPRig(t)
	r.health.up["web"], r.health.up["dns"] = true, true
	r.reload(t, bgpConfig(0))
	r.o.pass(context.Background())
	r.spk.took()

	for _, tc := range []struct {
		name string
		edit func(*config.BGP)
		err  string
	}{
		{"asn", func(b *config.BGP) { b.ASN = 65002 }, "bgp.asn: changed from 65001 to 65002: a restart of keepbitd is needed"},
		{"router id", func(b *config.BGP) { b.RouterID = netip.MustParseAddr("10.91.0.99") }, "bgp.router_id: changed from 10.91.0.11 to 10.91.0.99"},
		{"listen port", func(b *config.BGP) { b.ListenPort = 1179 }, "bgp.listen_port: changed from -1 to 1179"},
	} {
		cfg := bgpConfig(0)
		tc.edit(cfg.BGP)
		err := r.o.Reload(context.Background(), cfg)
		if err == nil || !errors.Is(err, ErrRestartRequired) || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: reload error %v, want %q wrapping ErrRestartRequired", tc.name, err, tc.err)
		}
		if got := r.spk.took(); len(got) != 0 {
			t.Errorf("%s: refused reload still told the speaker %q", tc.name, got)
		}
	}

	// In place: a VIP leaves (withdrawn and forgotten), a community is
	// added to another (re-announced with it), the peers are set again
	// (the speaker leaves unchanged sessions alone).
	cfg := bgpConfig(0)
	cfg.Services = cfg.Services[:2]
	cfg.BGP.VIPs = []config.BGPVIP{{Address: netip.MustParseAddr("10.90.9.9"), CommunityValues: []uint32{65000<<16 | 100}}}
	r.reload(t, cfg)
	got := r.spk.took()
	want := []string{"peers 1", "withdraw 10.90.9.8/32 (removed from the config)", "forget 10.90.9.8/32", "announce 10.90.9.9/32"}
	if !slices.Equal(got, want) {
		t.Errorf("in-place reload: speaker got %q, want %q", got, want)
	}
	r.o.pass(context.Background())
	if got := r.spk.took(); len(got) != 0 {
		t.Errorf("pass after the reload: speaker got %q", got)
	}

	// bgp section removed: routes withdrawn with the stop.
	cfg = bgpConfig(0)
	cfg.BGP = nil
	r.reload(t, cfg)
	if got := r.spk.took(); !slices.Equal(got, []string{"stop"}) {
		t.Errorf("bgp removed: speaker got %q", got)
	}
	if st := r.o.Status(); st.Configured {
		t.Errorf("status after removal: %+v", st)
	}
}
