package bgp

import (
	"context"
	"net/netip"
	"runtime"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
)

// adminState is GoBGP's own admin state of the peer at addr (not the
// Speaker's bookkeeping): true when down.
func adminState(t *testing.T, s *Speaker, addr netip.Addr) bool {
	t.Helper()
	down, found := false, false
	err := s.srv.ListPeer(context.Background(), &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) {
		found = true
		down = p.GetState().GetAdminState() == api.PeerState_DOWN
	})
	if err != nil || !found {
		t.Fatalf("list peer %s: found %v, %v", addr, found, err)
	}
	return down
}

func waitAdmin(t *testing.T, s *Speaker, addr netip.Addr, down bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for adminState(t, s, addr) != down {
		if time.Now().After(deadline) {
			t.Fatalf("%s: GoBGP's admin state of %s is not %s within 5s", what, addr, map[bool]string{true: "down", false: "up"}[down])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPeerDownThenUpAtOnce: GoBGP queues one admin request per peer and
// drops a second that arrives while the first is queued. PeerDown followed
// at once by PeerUp (a BFD session that goes Down and straight back Up)
// must still leave the session let up, and PeerUp followed at once by
// PeerDown must leave it held down; each round checks GoBGP's own admin
// state, so a dropped request shows.
func TestPeerDownThenUpAtOnce(t *testing.T) {
	before := runtime.NumGoroutine()
	s, err := Start(context.Background(), Config{ASN: 65001, RouterID: netip.MustParseAddr("10.255.0.2"), ListenPort: -1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing listens there: the session never comes up, which does not
	// matter to the admin state.
	peer := netip.MustParseAddr("127.0.0.1")
	port := freePort(t, peer.String())
	if err := s.SetPeers(context.Background(), []Peer{{Address: peer, ASN: 65000, Port: uint16(port)}}); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		s.PeerDown(peer, "bfd: detection-time-expired")
		s.PeerUp(peer)
		waitAdmin(t, s, peer, false, "PeerDown then PeerUp")
		s.PeerDown(peer, "bfd: detection-time-expired")
		waitAdmin(t, s, peer, true, "PeerDown")
		s.PeerUp(peer)
		s.PeerDown(peer, "bfd: detection-time-expired")
		waitAdmin(t, s, peer, true, "PeerUp then PeerDown")
		s.PeerUp(peer)
		if t.Failed() {
			t.Fatalf("round %d", i)
		}
	}
	waitAdmin(t, s, peer, false, "last PeerUp")

	// A held-down peer stays held down when a reload re-creates its
	// session (a new OPEN: another password).
	s.PeerDown(peer, "bfd: detection-time-expired")
	if err := s.SetPeers(context.Background(), []Peer{{Address: peer, ASN: 65000, Port: uint16(port), Password: "x"}}); err != nil {
		t.Fatal(err)
	}
	waitAdmin(t, s, peer, true, "held down across a re-created session")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// GoBGP leaves its Serve goroutine and a few of its own behind after
	// Stop (v3 offers no way to end them); the admin loop must not add to
	// them: what is left is bounded, not growing with the rounds above.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+gobgpLeftBehind && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+gobgpLeftBehind {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Stop, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// gobgpLeftBehind: goroutines GoBGP v3 leaves running after Stop.
const gobgpLeftBehind = 1 // its Serve loop
