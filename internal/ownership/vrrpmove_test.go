package ownership

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/privtest"
	"github.com/keepbit/keepbit/vip"
	"github.com/keepbit/keepbit/vip/vrrp"
)

// TestReloadMovesVIPBetweenInstances: a reload that moves a VIP from one
// master instance to another on the same interface leaves it on the
// interface, whatever order the instances are reconfigured or replaced
// in. Before, when the instance gaining the VIP was updated first, the
// one losing it (updated in place, or stopped for a restart) removed it
// afterwards: the master's VIP was gone until its next state change.
func TestReloadMovesVIPBetweenInstances(t *testing.T) {
	privtest.Require(t)
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "kbm0"}, PeerName: "kbm1"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(v) })
	peer, err := netlink.LinkByName("kbm1")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName("kbm0")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/kbm0/accept_local", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr("10.69.0.1/24")
	if err := netlink.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	x, y, z := netip.MustParseAddr("10.69.0.10"), netip.MustParseAddr("10.69.0.11"), netip.MustParseAddr("10.69.0.12")
	inst := func(name string, vrid uint8, vips ...netip.Addr) config.VRRP {
		return vrrpConf(func(v *config.VRRP) {
			v.Name, v.VRID, v.Interface, v.Priority, v.AdvertInterval, v.VIPs = name, vrid, "kbm0", 200, 10*time.Millisecond, vips
			v.Track, v.Notify = config.Track{}, config.Notify{}
		})
	}
	steps := []struct {
		name string
		vrrp []config.VRRP
	}{
		{"start", []config.VRRP{inst("a", 1, x, y), inst("b", 2, z)}},
		{"y to b in place", []config.VRRP{inst("a", 1, x), inst("b", 2, z, y)}},
		{"y back to a in place", []config.VRRP{inst("a", 1, x, y), inst("b", 2, z)}},
		{"swap in place", []config.VRRP{inst("a", 1, x, z), inst("b", 2, y)}},
		{"swap back in place", []config.VRRP{inst("a", 1, x, y), inst("b", 2, z)}},
		{"y to b, a restarts", []config.VRRP{inst("a", 3, x), inst("b", 2, z, y)}},
		{"y to a, b restarts", []config.VRRP{inst("a", 3, x, y), inst("b", 4, z)}},
		{"y to b in place again", []config.VRRP{inst("a", 3, x), inst("b", 4, z, y)}},
		{"y back to a in place again", []config.VRRP{inst("a", 3, x, y), inst("b", 4, z)}},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := testOwner(ctx, 256, map[string]*vrrpRun{})
	t.Cleanup(c.Close)
	for _, s := range steps {
		if err := c.Reload(ctx, &config.Config{VRRP: s.vrrp}); err != nil {
			t.Fatalf("%s: reload: %v", s.name, err)
		}
		// Every instance is alone on the link: master within a few
		// Master_Down_Intervals (about 40 ms).
		deadline := time.Now().Add(3 * time.Second)
		for name, r := range c.vrrpRuns() {
			for st, _, _ := r.inst.State(); st != vrrp.Master; st, _, _ = r.inst.State() {
				if time.Now().After(deadline) {
					t.Fatalf("%s: instance %s not master within 3s: %s", s.name, name, st)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		// A new master takes its VIPs right after it reports Master.
		for _, addr := range []netip.Addr{x, y, z} {
			for has, err := vip.Has("kbm0", addr); err != nil || !has; has, err = vip.Has("kbm0", addr) {
				if time.Now().After(deadline) {
					t.Fatalf("%s: VIP %s not on the interface (err %v) while its instance is master", s.name, addr, err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
}

// TestReloadTrackCommandsConsistent: the track commands of a run's config
// and the results tracking reads for them change together. Before, an
// in-place reload set the new config, released the lock, then swapped the
// results: a tracking pass in between judged the new command i by the old
// command i's result, so replacing a failing weight-0 command could fault
// a master for one pass (priority 0, VIPs released).
func TestReloadTrackCommandsConsistent(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := func(name string) config.TrackCommand {
		// Not found: every run fails at once, without forking.
		return config.TrackCommand{Command: "/nonexistent/" + name, Interval: time.Hour, Timeout: time.Second}
	}
	one := vrrpConf(func(v *config.VRRP) { v.Track.Commands = []config.TrackCommand{cmd("a")} })
	two := vrrpConf(func(v *config.VRRP) { v.Track.Commands = []config.TrackCommand{cmd("a"), cmd("b")} })
	r := &vrrpRun{cfg: one, inst: &fakeInstance{}, done: make(chan struct{})}
	r.ctx, r.cancel = context.WithCancel(ctx)
	defer r.cancel()
	r.startTracks(one.Track.Commands)
	c := testOwner(ctx, 64, map[string]*vrrpRun{"v": r})
	stop := make(chan struct{})
	mismatches := make(chan int, 1)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				mismatches <- n
				return
			default:
			}
			r.mu.Lock()
			if len(r.cmdOK) != len(r.cfg.Track.Commands) {
				n++
			}
			r.mu.Unlock()
		}
	}()
	for i := range 2000 {
		if err := c.updateVRRP(r, []config.VRRP{two, one}[i%2]); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	if n := <-mismatches; n > 0 {
		t.Fatalf("%d times tracking could see a config and command results that do not belong together", n)
	}
}
