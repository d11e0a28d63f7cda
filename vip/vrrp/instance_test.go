package vrrp

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

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
	r := &router{events: make(chan Event, 16), done: make(chan struct{})}
	in, err := NewInstance(InstanceConfig{Name: name, Interface: ifname, Burst: vip.Burst{Count: 1}, Peers: peers,
		Machine: Config{VRID: 42, Priority: prio, Interval: 10 * time.Millisecond, Preempt: preempt, Addrs: addrs}},
		slog.New(slog.NewTextHandler(io.Discard, nil)), func(e Event) { r.events <- e })
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
