package bgp

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// birdConf is the upstream router: it learns this node's /32 over eBGP
// and installs it in its namespace's kernel table.
const birdConf = `router id 10.99.0.1;
protocol device {}
protocol kernel {
	ipv4 { export all; };
}
protocol bgp node {
	local 10.99.0.1 as 65000;
	neighbor 10.99.0.2 as 65001;
	hold time 9;
	ipv4 { import all; export none; };
}
`

// kernelRoute returns the route to dst in ns's main table ("" if none) as
// "dst via gw".
func kernelRoute(t *testing.T, h *netlink.Handle, dst netip.Prefix) string {
	t.Helper()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)}}, netlink.RT_FILTER_DST)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == dst.String() {
			return r.Dst.String() + " via " + r.Gw.String()
		}
	}
	return ""
}

// TestBIRDLearnsAndForgetsVIP: BIRD 2 peers with a Speaker (the test's
// namespace, 10.99.0.2) over a veth, learns the announced /32 with its
// community and MED, installs it in its kernel table via the node, and
// removes it again on withdrawal; PeerDown makes BIRD drop the route at
// once.
func TestBIRDLearnsAndForgetsVIP(t *testing.T) {
	privtest.Require(t)
	routerNS := privtest.NewNS(t)
	privtest.Veth(t, lab.VethEnd{NS: netns.None(), Name: "bgp-n0", Addrs: []string{"10.99.0.2/24"}},
		lab.VethEnd{NS: routerNS, Name: "bgp-r0", Addrs: []string{"10.99.0.1/24"}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bird, err := lab.StartBIRD(ctx, routerNS, t.TempDir(), birdConf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bird.Close() })
	rh, err := lab.Handle(routerNS)
	if err != nil {
		t.Fatal(err)
	}
	defer rh.Delete()

	node, nev := startSpeaker(t, Config{ASN: 65001, RouterID: netip.MustParseAddr("10.99.0.2"), ListenPort: -1})
	routerAddr := netip.MustParseAddr("10.99.0.1")
	if err := node.SetPeers(ctx, []Peer{{Address: routerAddr, ASN: 65000, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	nev.waitFor(t, 0, 30*time.Second, "session to BIRD", established(routerAddr))
	if err := bird.WaitProtocol(ctx, "node", "Established"); err != nil {
		t.Fatal(err)
	}
	t.Logf("session with BIRD established %v after the peer was added", time.Since(start).Round(time.Millisecond))

	vip := netip.MustParsePrefix("192.0.2.10/32")
	med := uint32(50)
	start = time.Now()
	if err := node.Announce(ctx, Route{Prefix: vip, Communities: []uint32{65000<<16 | 100}, MED: &med}); err != nil {
		t.Fatal(err)
	}
	waitKernel := func(want string) time.Duration {
		t.Helper()
		for time.Since(start) < 10*time.Second {
			if kernelRoute(t, rh, vip) == want {
				return time.Since(start)
			}
			time.Sleep(500 * time.Microsecond)
		}
		out, _ := bird.Cmd(ctx, "show", "route", "all")
		t.Fatalf("router kernel route to %s: %q, want %q; bird routes:\n%s\nbird log:\n%s", vip, kernelRoute(t, rh, vip), want, out, bird.Log())
		return 0
	}
	d := waitKernel("192.0.2.10/32 via 10.99.0.2")
	t.Logf("announce -> in BIRD's kernel table: %v", d)
	out, err := bird.Cmd(ctx, "show", "route", "192.0.2.10/32", "all")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"via 10.99.0.2 on bgp-r0", "BGP.med: 50", "BGP.community: (65000,100)", "BGP.as_path: 65001"} {
		if !strings.Contains(out, want) {
			t.Errorf("bird's route lacks %q:\n%s", want, out)
		}
	}

	start = time.Now()
	if err := node.Withdraw(ctx, vip, "no usable backend"); err != nil {
		t.Fatal(err)
	}
	d = waitKernel("")
	t.Logf("withdraw -> gone from BIRD's kernel table: %v", d)

	if err := node.Announce(ctx, Route{Prefix: vip}); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	waitKernel("192.0.2.10/32 via 10.99.0.2")
	start = time.Now()
	node.PeerDown(routerAddr, "bfd: neighbor signaled session down")
	d = waitKernel("")
	t.Logf("PeerDown -> gone from BIRD's kernel table: %v", d)
	if out, _ := bird.Cmd(ctx, "show", "protocols", "node"); strings.Contains(out, "Established") {
		t.Errorf("BIRD still has the session after PeerDown:\n%s", out)
	}
}
