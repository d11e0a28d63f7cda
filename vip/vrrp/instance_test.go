package vrrp

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/privtest"
	"github.com/keepbit/keepbit/vip"
)

// routerPair: kbr0 <-> kbr1, both in this test's namespace, each with its
// own address; VRRP multicast crosses the veth, never loops back.
func routerPair(t *testing.T, n0, n1 string) {
	privtest.Require(t)
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: n0}, PeerName: n1}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(v) })
	for i, name := range []string{n0, n1} {
		// Both ends live in this namespace, so each sees the other's
		// source as a local address: accept it instead of dropping it as
		// martian (two real nodes do not need this).
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+name+"/accept_local", []byte("1"), 0); err != nil {
			t.Fatal(err)
		}
		l, _ := netlink.LinkByName(name)
		a, _ := netlink.ParseAddr([]string{"10.67.0.1/24", "10.67.0.2/24"}[i])
		_ = netlink.AddrAdd(l, a)
		_ = netlink.LinkSetUp(l)
	}
	time.Sleep(100 * time.Millisecond) // link-local addresses
}

type router struct {
	in     *Instance
	events chan Event
	cancel context.CancelFunc
	done   chan struct{}
}

func startRouter(t *testing.T, name, ifname string, prio uint8, preempt bool, addrs []netip.Addr, peers ...netip.Addr) *router {
	return startRouterWith(t, InstanceConfig{Name: name, Interface: ifname, Burst: vip.Burst{Count: 1}, Peers: peers,
		Machine: Config{VRID: 42, Priority: prio, Interval: 10 * time.Millisecond, Preempt: preempt, Addrs: addrs}})
}

func startRouterWith(t *testing.T, cfg InstanceConfig) *router {
	r := &router{events: make(chan Event, 16), done: make(chan struct{})}
	in, err := NewInstance(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), func(e Event) { r.events <- e })
	if err != nil {
		t.Fatal(err)
	}
	r.in = in
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { _ = in.Run(ctx); close(r.done) }()
	t.Cleanup(r.stop)
	return r
}

func (r *router) stop() {
	r.cancel()
	<-r.done
}

func (r *router) wait(t *testing.T, want State, within time.Duration) Event {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case e := <-r.events:
			if e.To == want {
				return e
			}
		case <-deadline:
			st, _, _ := r.in.State()
			t.Fatalf("%s: no transition to %s within %v (state %s)", r.in.cfg.Name, want, within, st)
		}
	}
}

func TestTwoRouters(t *testing.T) {
	// Each family gets its own interface names: Go's net package caches
	// name -> index for up to a minute, so a re-created name would mislead it.
	for _, fam := range []struct {
		name   string
		vip    netip.Addr
		n0, n1 string
	}{{"ipv4", netip.MustParseAddr("10.67.0.100"), "kbr0", "kbr1"}, {"ipv6", netip.MustParseAddr("2001:db8:67::100"), "kbs0", "kbs1"}} {
		t.Run(fam.name, func(t *testing.T) {
			routerPair(t, fam.n0, fam.n1)
			addrs := []netip.Addr{fam.vip}
			a := startRouter(t, "a", fam.n0, 200, true, addrs)
			b := startRouter(t, "b", fam.n1, 100, true, addrs)
			a.wait(t, Master, 2*time.Second)
			b.wait(t, Backup, 2*time.Second)
			time.Sleep(100 * time.Millisecond)
			if st, _, master := b.in.State(); st != Backup || master != a.in.cfg.Machine.Primary {
				t.Fatalf("b: %s, master %s; want backup of %s (b counters %+v, a counters %+v)", st, master, a.in.cfg.Machine.Primary, b.in.Counters(), a.in.Counters())
			}
			if has, _ := vip.Has(fam.n0, fam.vip); !has {
				t.Fatal("master does not hold the VIP")
			}
			if has, _ := vip.Has(fam.n1, fam.vip); has {
				t.Fatal("backup holds the VIP")
			}
			if c := b.in.Counters(); c.Accepted == 0 || c.BadTTL+c.Malformed != 0 {
				t.Fatalf("backup's receive counters %+v", c)
			}

			// The master's link goes down: the backup takes over after
			// Master_Down_Interval (3 x 10 ms + skew).
			l0, _ := netlink.LinkByName(fam.n0)
			down := time.Now()
			_ = netlink.LinkSetDown(l0)
			e := b.wait(t, Master, 2*time.Second)
			t.Logf("%s: master link down -> backup announced in %v (detect %v, decide->announce %v)", fam.name,
				e.Announce.Sub(down).Round(time.Microsecond), e.Detect.Sub(down).Round(time.Microsecond), e.Announce.Sub(e.Decide))
			if took := e.Announce.Sub(down); took > 500*time.Millisecond {
				t.Errorf("takeover took %v with 10 ms adverts", took)
			}

			// The old master's link returns (it never left master: nothing
			// told it): the higher priority wins and b steps back.
			_ = netlink.LinkSetUp(l0)
			b.wait(t, Backup, 2*time.Second)
			if st, _, _ := a.in.State(); st != Master {
				t.Fatalf("a: %s after its link returned, want master", st)
			}

			// Graceful stop: priority 0 makes the backup take over within skew time.
			stopped := time.Now()
			a.stop()
			e = b.wait(t, Master, time.Second)
			t.Logf("%s: graceful stop -> backup master in %v", fam.name, e.Decide.Sub(stopped).Round(time.Microsecond))
			if has, _ := vip.Has(fam.n0, fam.vip); has {
				t.Fatal("stopped router kept the VIP")
			}

			// No preempt: a returning higher-priority router stays backup.
			c := startRouter(t, "c", fam.n0, 250, false, addrs)
			c.wait(t, Backup, time.Second)
			time.Sleep(200 * time.Millisecond)
			if st, _, _ := c.in.State(); st != Backup {
				t.Fatalf("non-preempting router took over: %s", st)
			}
			if st, _, _ := b.in.State(); st != Master {
				t.Fatalf("b lost mastership to a non-preempting router: %s", st)
			}
		})
	}
}

// TestUnicastPeers: with peers configured, advertisements go to them by
// unicast (no multicast group joined) and the election works the same.
func TestUnicastPeers(t *testing.T) {
	routerPair(t, "kbu0", "kbu1")
	addrs := []netip.Addr{netip.MustParseAddr("10.67.0.110")}
	pa, pb := netip.MustParseAddr("10.67.0.1"), netip.MustParseAddr("10.67.0.2")
	a := startRouter(t, "a", "kbu0", 200, true, addrs, pb)
	b := startRouter(t, "b", "kbu1", 100, true, addrs, pa)
	a.wait(t, Master, 2*time.Second)
	b.wait(t, Backup, 2*time.Second)
	time.Sleep(100 * time.Millisecond)
	if st, _, master := b.in.State(); st != Backup || master != pa {
		t.Fatalf("b: %s, master %s; want backup of %s (counters %+v)", st, master, pa, b.in.Counters())
	}
	if c := b.in.Counters(); c.Accepted < 5 || c.NotPeer != 0 {
		t.Fatalf("b's counters %+v: want unicast advertisements from its peer accepted", c)
	}
	stopped := time.Now()
	a.stop()
	e := b.wait(t, Master, time.Second)
	t.Logf("unicast: graceful stop -> backup master in %v", e.Decide.Sub(stopped).Round(time.Microsecond))
}

// nsPair: n0 in a new namespace with addr0, n1 in another with addr1,
// joined by a veth; each also has its IPv6 link-local address, usable at
// once (no duplicate address detection).
func nsPair(t *testing.T, n0, n1, addr0, addr1 string) (netns.NsHandle, netns.NsHandle) {
	privtest.Require(t)
	ns := []netns.NsHandle{privtest.NewNS(t), privtest.NewNS(t)}
	for _, h := range ns {
		if err := privtest.InNS(h, func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0)
		}); err != nil {
			t.Fatal(err)
		}
	}
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: n0}, PeerName: n1}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{n0, n1} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetNsFd(l, int(ns[i])); err != nil {
			t.Fatal(err)
		}
		h, err := netlink.NewHandleAt(ns[i])
		if err != nil {
			t.Fatal(err)
		}
		l, _ = h.LinkByName(name)
		a, _ := netlink.ParseAddr([]string{addr0, addr1}[i])
		a.Flags = unix.IFA_F_NODAD
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		h.Delete()
	}
	time.Sleep(100 * time.Millisecond) // link-local addresses
	return ns[0], ns[1]
}

// startRouterIn is startRouter with the instance inside ns: its sockets,
// and the goroutine that runs it (which adds and removes the VIPs), stay
// there.
func startRouterIn(t *testing.T, ns netns.NsHandle, name, ifname string, prio uint8, addrs []netip.Addr, peers ...netip.Addr) *router {
	r := &router{events: make(chan Event, 16), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	started := make(chan error, 1)
	go func() {
		defer close(r.done)
		// The thread never returns to the test's namespace: it ends with
		// this goroutine, still locked.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			started <- err
			return
		}
		in, err := NewInstance(InstanceConfig{Name: name, Interface: ifname, Burst: vip.Burst{Count: 1}, Peers: peers,
			// 50 ms: a loaded test machine must not delay an
			// advertisement past Master_Down_Interval (180 ms).
			Machine: Config{VRID: 42, Priority: prio, Interval: 50 * time.Millisecond, Preempt: true, Addrs: addrs}},
			slog.New(slog.NewTextHandler(io.Discard, nil)), func(e Event) { r.events <- e })
		if err != nil {
			started <- err
			return
		}
		r.in = in
		started <- nil
		_ = in.Run(ctx)
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	return r
}

// TestIPv6PeersInNamespaces: two nodes (one namespace each) elect exactly
// one master over IPv6, with the multicast group and with unicast peers
// configured by global address. Before, unicast advertisements left with
// the global source the kernel picked while the checksum covered the
// link-local primary: the peer dropped them as malformed and both nodes
// became master.
func TestIPv6PeersInNamespaces(t *testing.T) {
	for _, c := range []struct {
		name   string
		n0, n1 string
		peers  bool
	}{
		{"multicast", "kbn0", "kbn1", false},
		{"global unicast peers", "kbp0", "kbp1", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns0, ns1 := nsPair(t, c.n0, c.n1, "2001:db8:68::1/64", "2001:db8:68::2/64")
			addrs := []netip.Addr{netip.MustParseAddr("2001:db8:68::100")}
			var p0, p1 []netip.Addr
			if c.peers {
				p0, p1 = []netip.Addr{netip.MustParseAddr("2001:db8:68::2")}, []netip.Addr{netip.MustParseAddr("2001:db8:68::1")}
			}
			a := startRouterIn(t, ns0, "a", c.n0, 200, addrs, p0...)
			b := startRouterIn(t, ns1, "b", c.n1, 100, addrs, p1...)
			a.wait(t, Master, 2*time.Second)
			b.wait(t, Backup, 2*time.Second)
			time.Sleep(200 * time.Millisecond)
			sa, _, _ := a.in.State()
			sb, _, master := b.in.State()
			if sa != Master || sb != Backup || master != a.in.cfg.Machine.Primary {
				t.Fatalf("a %s, b %s (master %s): want exactly one master, a (%s); b's counters %+v",
					sa, sb, master, a.in.cfg.Machine.Primary, b.in.Counters())
			}
			if cb := b.in.Counters(); cb.Accepted == 0 || cb.Malformed+cb.NotPeer+cb.BadTTL != 0 {
				t.Fatalf("b's receive counters %+v", cb)
			}
			// a resigns: b hears priority 0 and takes over.
			a.stop()
			b.wait(t, Master, time.Second)
		})
	}
}

// TestLargeIPv6Advert: an advertisement of 255 IPv6 addresses (4088 bytes,
// the largest valid one) is received whole and accepted. Before, the read
// buffer held 2048 bytes: the message was cut and counted malformed.
func TestLargeIPv6Advert(t *testing.T) {
	routerPair(t, "kbl0", "kbl1")
	var addrs []netip.Addr
	for i := range 255 {
		addrs = append(addrs, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x69, 14: 1, 15: byte(i)}))
	}
	b := startRouter(t, "b", "kbl1", 100, true, addrs[:1])
	b.wait(t, Backup, 2*time.Second)

	ifc, err := net.InterfaceByName("kbl0")
	if err != nil {
		t.Fatal(err)
	}
	src, err := primary(ifc, true)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenPacket("ip6:112", "::")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc := ipv6.NewPacketConn(c)
	ad := Advertisement{VRID: 42, Priority: 250, Interval: 10 * time.Millisecond, Addrs: addrs}
	msg, err := ad.Marshal(src.WithZone(""), MulticastV6)
	if err != nil {
		t.Fatal(err)
	}
	if len(msg) != maxAdvertLen {
		t.Fatalf("advertisement of %d bytes, want the largest valid, %d", len(msg), maxAdvertLen)
	}
	for range 5 {
		if _, err := pc.WriteTo(msg, &ipv6.ControlMessage{Src: src.AsSlice(), IfIndex: ifc.Index, HopLimit: TTL},
			&net.IPAddr{IP: MulticastV6.AsSlice(), Zone: "kbl0"}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		cnt := b.in.Counters()
		if cnt.Malformed != 0 {
			t.Fatalf("the advertisement of 255 addresses was dropped as malformed: %+v", cnt)
		}
		if _, _, master := b.in.State(); cnt.Accepted > 0 && master == src.WithZone("") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("advertisement not accepted: counters %+v", cnt)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestUpdateInPlace: a running Master takes a new priority, interval,
// preemption, announcement settings and VIP list without leaving Master:
// no transition, no priority-0 advertisement, the added VIP taken, the
// removed one released. (Before, any change of a VRRP entry stopped the
// instance, which resigned with priority 0, and started a new one.) A
// change of what the sockets are made of is refused with ErrRestart.
func TestUpdateInPlace(t *testing.T) {
	routerPair(t, "kbw0", "kbw1")
	v1, v2, v3 := netip.MustParseAddr("10.67.0.121"), netip.MustParseAddr("10.67.0.122"), netip.MustParseAddr("10.67.0.123")
	// 100 ms advertisements: the backup must not take over because a
	// loaded test machine delayed one (Master_Down_Interval is 360 ms).
	start := func(name, ifname string, prio uint8) *router {
		return startRouterWith(t, InstanceConfig{Name: name, Interface: ifname, Burst: vip.Burst{Count: 1},
			Machine: Config{VRID: 42, Priority: prio, Interval: 100 * time.Millisecond, Preempt: true, Addrs: []netip.Addr{v1, v2}}})
	}
	a := start("a", "kbw0", 200)
	b := start("b", "kbw1", 100)
	a.wait(t, Master, 2*time.Second)
	b.wait(t, Backup, 2*time.Second)

	// Listen on b's side to what a advertises.
	c, err := net.ListenPacket("ip4:112", "0.0.0.0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := bindToDevice(c, "kbw1"); err != nil {
		t.Fatal(err)
	}
	pc := ipv4.NewPacketConn(c)
	ifc, _ := net.InterfaceByName("kbw1")
	if err := pc.JoinGroup(ifc, &net.IPAddr{IP: MulticastV4.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	_ = pc.SetControlMessage(ipv4.FlagDst, true)
	primaryA := a.in.cfg.Machine.Primary // before any update: the test reads it unlocked
	heard := make(chan Advertisement, 1024)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, cm, from, err := pc.ReadFrom(buf)
			if err != nil {
				close(heard)
				return
			}
			src, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
			dst, _ := netip.AddrFromSlice(cm.Dst)
			if ad, err := Parse(buf[:n], src.Unmap(), dst.Unmap()); err == nil && src.Unmap() == primaryA {
				select {
				case heard <- ad:
				default:
				}
			}
		}
	}()

	// The interval grows on the update (100 -> 200 ms): a shorter one
	// would give the backup a Master_Down_Interval that a loaded test
	// machine's scheduling delay can exceed (a takeover, not the update,
	// would then fail the test).
	cfg := InstanceConfig{Name: "a", Interface: "kbw0", Burst: vip.Burst{Count: 2, Spacing: 5 * time.Millisecond}, Refresh: 50 * time.Millisecond,
		Machine: Config{VRID: 42, Priority: 210, Interval: 200 * time.Millisecond, Preempt: false, Addrs: []netip.Addr{v1, v3}}}
	if err := a.in.Update(context.Background(), cfg); err != nil {
		t.Fatalf("update: %v", err)
	}
	time.Sleep(700 * time.Millisecond)
	c.Close()
	var newPrio int
	for ad := range heard {
		if ad.Priority == 0 {
			t.Fatal("the master resigned (priority 0) for an update")
		}
		if ad.Priority == 210 {
			newPrio++
			if ad.Interval != 200*time.Millisecond || !slices.Equal(ad.Addrs, []netip.Addr{v1, v3}) {
				t.Fatalf("advertisement after the update: %+v", ad)
			}
		}
	}
	if newPrio == 0 {
		t.Fatal("no advertisement with the new priority")
	}
	select {
	case e := <-a.events:
		t.Fatalf("transition on update: %+v", e)
	case e := <-b.events:
		t.Fatalf("backup's transition on update: %+v", e)
	default:
	}
	if st, prio, _ := a.in.State(); st != Master || prio != 210 {
		t.Fatalf("a: %s at priority %d, want master at 210", st, prio)
	}
	for vipAddr, want := range map[netip.Addr]bool{v1: true, v2: false, v3: true} {
		if has, _ := vip.Has("kbw0", vipAddr); has != want {
			t.Errorf("master holds %s: %v, want %v", vipAddr, has, want)
		}
	}

	for _, c := range []struct {
		name   string
		change func(*InstanceConfig)
	}{
		{"interface", func(c *InstanceConfig) { c.Interface = "kbw1" }},
		{"vrid", func(c *InstanceConfig) { c.Machine.VRID = 43 }},
		{"unicast peers", func(c *InstanceConfig) { c.Peers = []netip.Addr{netip.MustParseAddr("10.67.0.2")} }},
		{"owner", func(c *InstanceConfig) { c.Machine.Priority = OwnerPriority }},
		{"family", func(c *InstanceConfig) { c.Machine.Addrs = []netip.Addr{netip.MustParseAddr("2001:db8::1")} }},
	} {
		bad := cfg
		c.change(&bad)
		if err := a.in.Update(context.Background(), bad); !errors.Is(err, ErrRestart) {
			t.Errorf("%s changed: %v, want ErrRestart", c.name, err)
		}
	}
	if st, prio, _ := a.in.State(); st != Master || prio != 210 {
		t.Fatalf("a: %s at priority %d after refused updates", st, prio)
	}
}

// TestCheckPeers: with unicast peers, an advertisement counts when its
// source is a configured peer, or, for IPv6 (whose advertisements come
// from link-local addresses), when a link-local source unicast it to us;
// not when it went to the multicast group. Without peers, any source.
func TestCheckPeers(t *testing.T) {
	ll, us := netip.MustParseAddr("fe80::2"), netip.MustParseAddr("fe80::1")
	global, other := netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::9")
	ours := netip.MustParseAddr("2001:db8::1")
	cases := []struct {
		name     string
		peers    []netip.Addr
		src, dst netip.Addr
		want     bool
	}{
		{"multicast mode, any source", nil, ll, MulticastV6, true},
		{"peer by global address, sent from it", []netip.Addr{global}, global, ours, true},
		{"peer by global address, link-local source unicast to us", []netip.Addr{global}, ll, ours, true},
		{"link-local source to the group", []netip.Addr{global}, ll, MulticastV6, false},
		{"global source not a peer", []netip.Addr{global}, other, ours, false},
		{"peer by link-local address", []netip.Addr{ll}, ll, MulticastV6, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := &Instance{v6: true, cfg: InstanceConfig{Peers: c.peers,
				Machine: Config{VRID: 42, Priority: 100, Primary: us}}}
			msg, err := Advertisement{VRID: 42, Priority: 200, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::100")}}.Marshal(c.src, c.dst)
			if err != nil {
				t.Fatal(err)
			}
			v := in.check(msg, TTL, c.src, c.dst)
			if v.ok != c.want || (!c.want && in.counters.NotPeer != 1) {
				t.Fatalf("accepted %v (counters %+v), want %v", v.ok, in.counters, c.want)
			}
		})
	}
}
