package ownership

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keepbit/keepbit/vip/bfd"
)

// Interleavings of the BGP owner's inputs (BFD events, reloads, drains,
// health) that each once left the speaker in the wrong state.

var testPeer = netip.MustParseAddr("10.91.0.1")

func (r *bgpRig) bfdEvent(from, to, remote bfd.State, diag bfd.Diag) {
	r.bfd.onChange(bfd.Event{Local: netip.MustParseAddr("10.91.0.11"), Peer: testPeer, Interface: "eth0",
		From: from, To: to, RemoteState: remote, Diag: diag, At: time.Now()})
}

func (r *bgpRig) bfdUp()   { r.bfdEvent(bfd.Down, bfd.Up, bfd.Up, bfd.DiagNone) }
func (r *bgpRig) bfdDown() { r.bfdEvent(bfd.Up, bfd.Down, bfd.Down, bfd.DiagDetectionTimeExpired) }

// started: config loaded, the peer's BFD session added, BFD Up and the
// session let up.
func startedRig(t *testing.T) *bgpRig {
	t.Helper()
	r := newBGPRig(t)
	r.health.up["web"], r.health.up["dns"] = true, true
	r.reload(t, bgpConfig(0))
	r.o.ensureBFD(context.Background())
	r.o.pass(context.Background())
	r.bfdUp()
	r.bfd.took()
	r.spk.took()
	return r
}

// A BFD Down delivered after the peer's bfd section was removed (the
// manager's notifier delivers asynchronously: the Down of the session
// being removed can arrive after the reload let the peer up) must not
// hold the BGP session down: no BFD session is left to let it up again.
func TestBGPStaleBFDDownAfterBFDRemoved(t *testing.T) {
	r := startedRig(t)
	cfg := bgpConfig(0)
	cfg.BGP.Peers[0].BFD = nil
	r.reload(t, cfg)
	r.bfdDown() // queued before the removal, delivered after
	if r.spk.isHeld(testPeer.String()) {
		t.Fatalf("peer held down by a BFD session that no longer exists; speaker got %q", r.spk.took())
	}
}

// The settle timer's PeerUp racing a BFD Down: the Down must win, whatever
// the order the two goroutines reach the speaker in.
func TestBGPSettleRacesBFDDown(t *testing.T) {
	r := startedRig(t)
	r.bfdDown()
	if !r.spk.isHeld(testPeer.String()) {
		t.Fatal("bfd down did not hold the session down")
	}
	gate, entered := make(chan struct{}), make(chan struct{}, 1)
	r.spk.mu.Lock()
	r.spk.upGate, r.spk.upEntered = gate, entered
	r.spk.mu.Unlock()
	r.bfdUp()
	<-entered // the settle timer decided to let the session up...
	downDone := make(chan struct{})
	go func() { r.bfdDown(); close(downDone) }() // ...and BFD goes down again
	select {
	case <-downDone:
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	<-downDone
	waitFor(t, "the settle's PeerUp returned", func() bool {
		r.spk.mu.Lock()
		defer r.spk.mu.Unlock()
		return slices.Contains(r.spk.calls, "peer-up "+testPeer.String())
	})
	if !r.spk.isHeld(testPeer.String()) {
		t.Fatalf("BFD is down but the session is let up; speaker got %q", r.spk.took())
	}
}

// A peer whose BFD is down stays held down when drain-node closed the
// sessions (the peers leave the speaker, and their holds with them) and
// undrain opens them again.
func TestBGPUndrainKeepsBFDHold(t *testing.T) {
	r := startedRig(t)
	ctx := context.Background()
	if _, err := r.o.Drain(ctx, "drain-node", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sessions closed after the hold", func() bool { return r.o.Status().SessionsClosed })
	r.bfdDown() // the router's BFD went away while drained
	if err := r.o.Undrain(ctx); err != nil {
		t.Fatal(err)
	}
	if !r.spk.isHeld(testPeer.String()) {
		t.Fatalf("undrain let up a session whose BFD is down; speaker got %q", r.spk.took())
	}
	r.bfdUp()
	waitFor(t, "session let up once BFD is up again", func() bool { return !r.spk.isHeld(testPeer.String()) })
}

// Undrain during a reload that adds a peer: undrain opens the sessions of
// the config the reload applied, not of the one before.
func TestBGPUndrainDuringReload(t *testing.T) {
	r := startedRig(t)
	ctx := context.Background()
	if _, err := r.o.Drain(ctx, "drain-node", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sessions closed after the hold", func() bool { return r.o.Status().SessionsClosed })
	cfg := bgpConfig(0)
	cfg.BGP.Peers[0].BFD.Multiplier = 5 // the reload stops in the BFD timer change
	second := cfg.BGP.Peers[0]
	second.Address, second.BFD = netip.MustParseAddr("10.91.0.2"), nil
	cfg.BGP.Peers = append(cfg.BGP.Peers, second)

	gate, entered := make(chan struct{}), make(chan struct{}, 1)
	r.bfd.mu.Lock()
	r.bfd.gate, r.bfd.entered = gate, entered
	r.bfd.mu.Unlock()
	reloaded := make(chan error, 1)
	go func() { reloaded <- r.o.Reload(ctx, cfg) }()
	<-entered
	undrained := make(chan error, 1)
	go func() { undrained <- r.o.Undrain(ctx) }()
	time.Sleep(50 * time.Millisecond) // undrain is waiting for the reload
	close(gate)
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
	if err := <-undrained; err != nil {
		t.Fatal(err)
	}
	r.spk.mu.Lock()
	n := len(r.spk.peers)
	r.spk.mu.Unlock()
	if n != 2 {
		t.Fatalf("after undrain the speaker has %d peers, want the reloaded config's 2; speaker got %q", n, r.spk.took())
	}
}

// A second drain of a node whose sessions the first drain closed keeps
// them closed: a reload then must not open them (drain-node twice, or a
// stop of a drained node).
func TestBGPDrainAgainKeepsSessionsClosed(t *testing.T) {
	r := startedRig(t)
	ctx := context.Background()
	if _, err := r.o.Drain(ctx, "drain-node", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sessions closed after the hold", func() bool { return r.o.Status().SessionsClosed })
	if _, err := r.o.Drain(ctx, "drain-node", 0); err != nil {
		t.Fatal(err)
	}
	r.spk.took()
	r.reload(t, bgpConfig(0))
	if got := r.spk.took(); len(got) != 0 {
		t.Errorf("reload after a second drain: speaker got %q, want the sessions kept closed", got)
	}
	if st := r.o.Status(); !st.SessionsClosed {
		t.Errorf("status after a second drain: sessions not closed: %+v", st)
	}
}

// A reload that changes the damping settings keeps each VIP's hysteresis:
// a VIP that waits for announce_after is not announced at once.
func TestBGPReloadKeepsHysteresis(t *testing.T) {
	r := newBGPRig(t)
	r.health.up["web"], r.health.up["dns"] = true, true
	r.reload(t, bgpConfig(time.Hour))
	ctx := context.Background()
	r.o.pass(ctx)
	r.health.up["web"] = false
	r.o.pass(ctx)
	r.health.up["web"] = true
	r.o.pass(ctx) // healthy again: waits an hour
	if r.spk.announced("10.90.9.9/32") {
		t.Fatal("announced before announce_after")
	}
	cfg := bgpConfig(time.Hour)
	cfg.BGP.Damping.Window = 2 * time.Minute
	r.reload(t, cfg)
	r.o.pass(ctx)
	if r.spk.announced("10.90.9.9/32") {
		t.Fatalf("a reload of the damping window announced a VIP that waits for announce_after; speaker got %q", r.spk.took())
	}
}

// BFD timers changed by a reload while the session is being added (the
// pass's ensureBFD) reach the session, and a peer removed meanwhile does
// not leave its session running.
func TestBGPReloadDuringBFDAdd(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*bgpRig)
		want func(*testing.T, *bgpRig)
	}{
		{"timers changed", func(r *bgpRig) {
			cfg := bgpConfig(0)
			cfg.BGP.Peers[0].BFD.Multiplier = 5
			_ = r.o.Reload(context.Background(), cfg)
		}, func(t *testing.T, r *bgpRig) {
			r.bfd.mu.Lock()
			defer r.bfd.mu.Unlock()
			if got := r.bfd.sessions[testPeer].Multiplier; got != 5 {
				t.Errorf("session runs multiplier %d, want the reload's 5; bfd got %q", got, r.bfd.calls)
			}
		}},
		{"bfd removed", func(r *bgpRig) {
			cfg := bgpConfig(0)
			cfg.BGP.Peers[0].BFD = nil
			_ = r.o.Reload(context.Background(), cfg)
		}, func(t *testing.T, r *bgpRig) {
			r.bfd.mu.Lock()
			defer r.bfd.mu.Unlock()
			if len(r.bfd.sessions) != 0 {
				t.Errorf("bfd sessions %v left running for a peer without bfd; bfd got %q", r.bfd.sessions, r.bfd.calls)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newBGPRig(t)
			r.reload(t, bgpConfig(0))
			gate, entered := make(chan struct{}), make(chan struct{}, 1)
			r.bfd.mu.Lock()
			r.bfd.gate, r.bfd.entered = gate, entered
			r.bfd.mu.Unlock()
			added := make(chan struct{})
			go func() { r.o.ensureBFD(context.Background()); close(added) }()
			<-entered
			r.bfd.mu.Lock()
			r.bfd.gate = nil // the reload's own calls go through
			r.bfd.mu.Unlock()
			reloaded := make(chan struct{})
			go func() { tc.edit(r); close(reloaded) }()
			select {
			case <-reloaded:
			case <-time.After(100 * time.Millisecond):
			}
			close(gate)
			<-added
			<-reloaded
			tc.want(t, r)
		})
	}
}

// Decisions that arrive quickly land in order: the speaker's last word on
// a VIP is the last decision, whichever goroutine (pass, drain, reload)
// made it.
func TestBGPQuickDecisionsLandInOrder(t *testing.T) {
	r := newBGPRig(t)
	r.health.up["web"], r.health.up["dns"] = true, true
	r.reload(t, bgpConfig(0))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.o.Run(ctx)
	waitFor(t, "announced", func() bool { return r.spk.announced("10.90.9.9/32") })
	var wg sync.WaitGroup
	for i := range 200 {
		r.health.set("web", i%2 == 1)
		r.health.set("web-tls", false)
		if i%50 == 0 {
			wg.Go(func() { r.o.Drain(context.Background(), "drain-node", 0) })
			wg.Go(func() { r.o.Undrain(context.Background()) })
		}
	}
	wg.Wait()
	r.health.set("web", false)
	r.o.Undrain(context.Background())
	vip := netip.MustParsePrefix("10.90.9.9/32")
	settled := func() bool {
		r.spk.mu.Lock()
		defer r.spk.mu.Unlock()
		return !r.spk.routes[vip] && r.spk.why[vip] == "no usable backend"
	}
	waitFor(t, "withdrawn at the end, for want of a backend", settled)
	time.Sleep(3 * DefaultBGPPoll)
	if !settled() {
		t.Fatalf("a stale decision landed after the last withdrawal; speaker got %q", r.spk.took())
	}
}

// A stop of a node drained for longer than drain_hold closes at once: its
// routes were withdrawn long ago and its sessions are closed already.
func TestBGPStopWhileDrained(t *testing.T) {
	r := newBGPRig(t)
	cfg := bgpConfig(0)
	cfg.BGP.DrainHold = 2 * time.Second
	r.health.up["web"] = true
	r.reload(t, cfg)
	ctx := context.Background()
	r.o.pass(ctx)
	if _, err := r.o.Drain(ctx, "drain-node", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sessions closed after the hold", func() bool { return r.o.Status().SessionsClosed })
	start := time.Now()
	r.o.Stop(ctx)
	if took := time.Since(start); took > time.Second {
		t.Errorf("stop of a drained node took %v: it waited drain_hold (2s) again", took)
	}
}

// A VIP removed from the config whose withdrawal fails is not leaked: the
// next passes withdraw it (no decision names it any more).
func TestBGPRemovedVIPWithdrawalRetried(t *testing.T) {
	r := newBGPRig(t)
	r.health.up["web"], r.health.up["dns"] = true, true
	r.reload(t, bgpConfig(0))
	ctx := context.Background()
	r.o.pass(ctx)
	if !r.spk.announced("10.90.9.8/32") {
		t.Fatal("dns VIP not announced")
	}
	cfg := bgpConfig(0)
	cfg.Services = cfg.Services[:2] // dns leaves
	r.spk.mu.Lock()
	r.spk.failWithdraw = 1
	r.spk.mu.Unlock()
	if err := r.o.Reload(ctx, cfg); err == nil {
		t.Error("reload hid the failed withdrawal")
	}
	r.o.pass(ctx)
	if r.spk.announced("10.90.9.8/32") {
		t.Fatalf("the route of a VIP removed from the config stays announced; speaker got %q", r.spk.took())
	}
}

// The dataplane of one interface failing withdraws every route within a
// poll (it sends no signal); back, the routes return only after
// announce_after of continuous health.
func TestBGPDataplaneFailureAndBack(t *testing.T) {
	r := runBGPRig(t, 300*time.Millisecond)
	both := func(announced bool) func() bool {
		return func() bool {
			return r.spk.announced("10.90.9.9/32") == announced && r.spk.announced("10.90.9.8/32") == announced
		}
	}
	waitFor(t, "both announced", both(true))
	setDP := func(err error) {
		r.health.mu.Lock()
		r.health.dpErr = err
		r.health.mu.Unlock()
	}
	setDP(errors.New("eth1: heartbeat stopped"))
	waitFor(t, "every route withdrawn", both(false))
	back := time.Now()
	setDP(nil)
	waitFor(t, "both announced again", both(true))
	if took := time.Since(back); took < 300*time.Millisecond {
		t.Errorf("announced again %v after the dataplane came back, before announce_after (300ms)", took)
	}
}

// runBGPRig runs a BGP owner polling every 10 ms, with web and dns up and
// announce_after as given, until the test ends.
func runBGPRig(t *testing.T, announceAfter time.Duration) *bgpRig {
	r := newBGPRig(t)
	r.o.poll = 10 * time.Millisecond
	r.health.up["web"], r.health.up["dns"] = true, true
	r.reload(t, bgpConfig(announceAfter))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go r.o.Run(ctx)
	return r
}

// TestBGPWaitsForRisingBackends: a VIP whose service is up again while
// another of its backends is still rising (checks passing, short of rise)
// stays withdrawn until that backend is up, past announce_after: a node
// back from a partition announces with the backend set its peers have. A
// VIP that is announced stays announced whatever rises.
func TestBGPWaitsForRisingBackends(t *testing.T) {
	r := runBGPRig(t, 50*time.Millisecond)
	web, dns := "10.90.9.9/32", "10.90.9.8/32"
	waitFor(t, "both announced", func() bool { return r.spk.announced(web) && r.spk.announced(dns) })

	r.health.set("web", false)
	waitFor(t, "web withdrawn", func() bool { return !r.spk.announced(web) })
	r.health.mu.Lock()
	r.health.rising["web"], r.health.rising["dns"] = true, true
	r.health.mu.Unlock()
	r.health.set("web", true)
	time.Sleep(300 * time.Millisecond) // 6x announce_after
	if r.spk.announced(web) {
		t.Fatal("web announced while one of its backends was still rising")
	}
	if !r.spk.announced(dns) {
		t.Fatal("dns withdrawn for a rising backend while it was announced")
	}
	r.health.mu.Lock()
	r.health.rising["web"] = false
	r.health.mu.Unlock()
	r.health.set("web", true) // the rising backend is up: the controller signals
	waitFor(t, "web announced once nothing rises", func() bool { return r.spk.announced(web) })
}
