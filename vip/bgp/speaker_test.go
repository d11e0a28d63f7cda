package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	gobgp "github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("KEEPBIT_BGP_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func freePort(t *testing.T, addr string) int {
	l, err := net.Listen("tcp", addr+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// events collects a speaker's peer events.
type events struct {
	mu  sync.Mutex
	evs []PeerEvent
}

func (e *events) add(ev PeerEvent) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }

// waitFor waits until some event after index from matches.
func (e *events) waitFor(t *testing.T, from int, timeout time.Duration, what string, match func(PeerEvent) bool) PeerEvent {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		e.mu.Lock()
		for _, ev := range e.evs[min(from, len(e.evs)):] {
			if match(ev) {
				e.mu.Unlock()
				return ev
			}
		}
		e.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("no %s within %v; events %+v", what, timeout, e.all())
	return PeerEvent{}
}

func (e *events) len() int { e.mu.Lock(); defer e.mu.Unlock(); return len(e.evs) }
func (e *events) all() []PeerEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.evs)
}

// received lists the routes s has in its global table, as
// "prefix nh=... med=... comm=... large=...".
func received(t *testing.T, s *Speaker) []string {
	t.Helper()
	var out []string
	for _, f := range []*api.Family{family(netip.IPv4Unspecified()), family(netip.IPv6Unspecified())} {
		err := s.srv.ListPath(context.Background(), &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: f}, func(d *api.Destination) {
			for _, p := range d.Paths {
				attrs, err := apiutil.GetNativePathAttributes(p)
				if err != nil {
					t.Error(err)
					return
				}
				line := d.Prefix
				for _, a := range attrs {
					switch a := a.(type) {
					case *gobgp.PathAttributeNextHop:
						line += " nh=" + a.Value.String()
					case *gobgp.PathAttributeMpReachNLRI:
						line += " nh=" + a.Nexthop.String()
					case *gobgp.PathAttributeMultiExitDisc:
						line += fmt.Sprintf(" med=%d", a.Value)
					case *gobgp.PathAttributeCommunities:
						for _, c := range a.Value {
							line += fmt.Sprintf(" comm=%d:%d", c>>16, c&0xffff)
						}
					case *gobgp.PathAttributeLargeCommunities:
						for _, c := range a.Values {
							line += fmt.Sprintf(" large=%d:%d:%d", c.ASN, c.LocalData1, c.LocalData2)
						}
					}
				}
				out = append(out, line)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(out)
	return out
}

func waitRoutes(t *testing.T, s *Speaker, timeout time.Duration, want ...string) time.Duration {
	t.Helper()
	start := time.Now()
	var got []string
	for time.Since(start) < timeout {
		got = received(t, s)
		if strings.Join(got, "\n") == strings.Join(want, "\n") {
			return time.Since(start)
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("routes at the peer:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	return 0
}

func startSpeaker(t *testing.T, cfg Config) (*Speaker, *events) {
	t.Helper()
	ev := &events{}
	cfg.OnEvent = ev.add
	cfg.Logger = testLogger(t)
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	return s, ev
}

func established(to netip.Addr) func(PeerEvent) bool {
	return func(ev PeerEvent) bool { return ev.Address == to && ev.To == StateEstablished }
}

func left(to netip.Addr) func(PeerEvent) bool {
	return func(ev PeerEvent) bool { return ev.Address == to && ev.From == StateEstablished }
}

// TestSpeakersExchangeRoutes: two Speakers on loopback, the router side
// passive and listening, the node side dialling from 127.0.0.2. The node
// announces an IPv4 /32 (community, large community, MED) and an IPv6
// /128 over the IPv4 session (MP_REACH with its IPv6 next hop); the
// router's table shows them and loses them on withdrawal; PeerDown drops
// the session at once on both ends and PeerUp brings it back; a reload
// that changes only timers and next hops keeps the session.
func TestSpeakersExchangeRoutes(t *testing.T) {
	routerAddr, nodeAddr := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	port := freePort(t, routerAddr.String())
	router, rev := startSpeaker(t, Config{ASN: 65000, RouterID: netip.MustParseAddr("10.255.0.1"), ListenPort: port, ListenAddresses: []netip.Addr{routerAddr}})
	v6 := netip.MustParseAddr("2001:db8::1") // lets the router side negotiate IPv6 unicast too
	if err := router.SetPeers(context.Background(), []Peer{{Address: nodeAddr, ASN: 65001, Passive: true, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second, NextHops: []netip.Addr{v6}}}); err != nil {
		t.Fatal(err)
	}
	node, nev := startSpeaker(t, Config{ASN: 65001, RouterID: netip.MustParseAddr("10.255.0.2"), ListenPort: -1})
	nodePeer := Peer{Address: routerAddr, ASN: 65000, Port: uint16(port), HoldTime: 9 * time.Second, Keepalive: 3 * time.Second,
		LocalAddress: nodeAddr, NextHops: []netip.Addr{netip.MustParseAddr("2001:db8::2")}}
	if err := node.SetPeers(context.Background(), []Peer{nodePeer}); err != nil {
		t.Fatal(err)
	}
	// GoBGP dials 5-10 s after a peer is added (its floor).
	start := time.Now()
	nev.waitFor(t, 0, 30*time.Second, "session up at the node", established(routerAddr))
	rev.waitFor(t, 0, 5*time.Second, "session up at the router", established(nodeAddr))
	t.Logf("session established %v after the peer was added", time.Since(start).Round(time.Millisecond))

	ctx := context.Background()
	med := uint32(20)
	vip4, vip6 := netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("2001:db8:f::10/128")
	if err := node.Announce(ctx, Route{Prefix: vip4, Communities: []uint32{65000<<16 | 100}, LargeCommunities: []LargeCommunity{{65000, 1, 2}}, MED: &med}); err != nil {
		t.Fatal(err)
	}
	if err := node.Announce(ctx, Route{Prefix: vip6}); err != nil {
		t.Fatal(err)
	}
	d := waitRoutes(t, router, 5*time.Second,
		"192.0.2.10/32 nh=127.0.0.2 med=20 comm=65000:100 large=65000:1:2",
		"2001:db8:f::10/128 nh=2001:db8::2")
	t.Logf("announce -> in the peer's table: %v", d)
	if ps := node.Peers(); len(ps) != 1 || ps[0].State != StateEstablished || ps[0].RoutesSent != 2 || ps[0].Uptime <= 0 || ps[0].ASN != 65000 {
		t.Errorf("node peers %+v", ps)
	}

	// Re-announcing the same route is a no-op; other attributes replace it.
	med2 := uint32(30)
	if err := node.Announce(ctx, Route{Prefix: vip4, MED: &med2}); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, router, 5*time.Second, "192.0.2.10/32 nh=127.0.0.2 med=30", "2001:db8:f::10/128 nh=2001:db8::2")

	if err := node.Withdraw(ctx, vip4, "no usable backend"); err != nil {
		t.Fatal(err)
	}
	d = waitRoutes(t, router, 5*time.Second, "2001:db8:f::10/128 nh=2001:db8::2")
	t.Logf("withdraw -> gone from the peer's table: %v", d)
	rs := node.Routes()
	if len(rs) != 2 || rs[0].Prefix != vip4 || rs[0].Announced || rs[0].Why != "no usable backend" || !rs[1].Announced {
		t.Errorf("routes %+v", rs)
	}

	// Reload: timers and the IPv6 next hop change, the session stays.
	if err := node.Announce(ctx, Route{Prefix: vip4}); err != nil {
		t.Fatal(err)
	}
	n0 := nev.len()
	nodePeer.HoldTime, nodePeer.Keepalive = 30*time.Second, 10*time.Second
	nodePeer.NextHops = []netip.Addr{netip.MustParseAddr("2001:db8::3")}
	if err := node.SetPeers(ctx, []Peer{nodePeer}); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, router, 5*time.Second, "192.0.2.10/32 nh=127.0.0.2", "2001:db8:f::10/128 nh=2001:db8::3")
	// And an explicit IPv4 next hop for this peer.
	nodePeer.NextHops = append(nodePeer.NextHops, netip.MustParseAddr("127.0.0.9"))
	if err := node.SetPeers(ctx, []Peer{nodePeer}); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, router, 5*time.Second, "192.0.2.10/32 nh=127.0.0.9", "2001:db8:f::10/128 nh=2001:db8::3")
	if evs := nev.all()[n0:]; len(evs) != 0 {
		t.Fatalf("the reload moved the session: %+v", evs)
	}

	// BFD says the router is gone: the session drops at once, both ends.
	n0, r0 := nev.len(), rev.len()
	start = time.Now()
	node.PeerDown(routerAddr, "bfd: control detection time expired")
	nev.waitFor(t, n0, 2*time.Second, "session down at the node", left(routerAddr))
	dNode := time.Since(start)
	rev.waitFor(t, r0, 2*time.Second, "session down at the router", left(nodeAddr))
	dRouter := time.Since(start)
	waitRoutes(t, router, 2*time.Second)
	dRoutes := time.Since(start)
	t.Logf("PeerDown -> down at the node %v, at the router %v, routes gone there %v", dNode, dRouter, dRoutes)
	ps := node.Peers()
	if !ps[0].AdminDown || ps[0].State == StateEstablished || ps[0].Reason != "held down: bfd: control detection time expired" {
		t.Errorf("held-down peer %+v", ps[0])
	}
	// Held down: it does not come back on its own.
	time.Sleep(12 * time.Second)
	if ps := node.Peers(); ps[0].State == StateEstablished {
		t.Fatalf("came back while held down: %+v", ps[0])
	}
	n0 = nev.len()
	start = time.Now()
	node.PeerUp(routerAddr)
	nev.waitFor(t, n0, 30*time.Second, "session back after PeerUp", established(routerAddr))
	waitRoutes(t, router, 5*time.Second, "192.0.2.10/32 nh=127.0.0.9", "2001:db8:f::10/128 nh=2001:db8::3")
	t.Logf("PeerUp -> established again and routes back %v (GoBGP redials after 5-10 s)", time.Since(start).Round(time.Millisecond))
	if ps := node.Peers(); ps[0].AdminDown || ps[0].Reason != "" {
		t.Errorf("peer after PeerUp %+v", ps[0])
	}

	// WithdrawAll, then removing the peer closes its session.
	if err := node.WithdrawAll(ctx, "draining"); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, router, 5*time.Second)
	r0 = rev.len()
	if err := node.SetPeers(ctx, nil); err != nil {
		t.Fatal(err)
	}
	rev.waitFor(t, r0, 5*time.Second, "session closed at the router", left(nodeAddr))
	if ps := node.Peers(); len(ps) != 0 {
		t.Errorf("peers after removal %+v", ps)
	}
}

func TestRouteChecks(t *testing.T) {
	s, _ := startSpeaker(t, Config{ASN: 65001, RouterID: netip.MustParseAddr("10.255.0.2"), ListenPort: -1})
	ctx := context.Background()
	for _, c := range []struct {
		r    Route
		want string
	}{
		{Route{Prefix: netip.MustParsePrefix("192.0.2.0/24")}, "prefix 192.0.2.0/24: want a /32 (IPv4) or /128 (IPv6) VIP"},
		{Route{Prefix: netip.MustParsePrefix("::ffff:192.0.2.1/128")}, "prefix ::ffff:192.0.2.1/128: want a /32 (IPv4) or /128 (IPv6) VIP"},
		{Route{Prefix: netip.MustParsePrefix("192.0.2.1/32"), NextHop: netip.MustParseAddr("2001:db8::1")}, "route 192.0.2.1/32: next hop 2001:db8::1 is of the other family"},
	} {
		if err := s.Announce(ctx, c.r); err == nil || err.Error() != c.want {
			t.Errorf("%v: %v, want %s", c.r.Prefix, err, c.want)
		}
	}
	if _, err := Start(ctx, Config{ASN: 65001, RouterID: netip.MustParseAddr("2001:db8::1")}); err == nil {
		t.Error("IPv6 router ID accepted")
	}
}
