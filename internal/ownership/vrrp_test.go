package ownership

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv4"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/privtest"
	"github.com/keepbit/keepbit/vip"
	"github.com/keepbit/keepbit/vip/vrrp"
)

func TestTrackingDecision(t *testing.T) {
	inst := func(prio uint8, group string, tr config.Track) config.VRRP {
		return config.VRRP{Interface: "eth0", Priority: prio, SyncGroup: group, Track: tr}
	}
	cases := []struct {
		name      string
		cfgs      map[string]config.VRRP
		linksDown []string
		noXDP     bool
		svcDown   []string
		cmdFails  map[string]int // instance -> failing command index
		want      map[string]trackVerdict
	}{
		{"all well", map[string]config.VRRP{"v": inst(150, "", config.Track{})}, nil, false, nil, nil,
			map[string]trackVerdict{"v": {prio: 150}}},
		{"own interface down is a fault", map[string]config.VRRP{"v": inst(150, "", config.Track{})}, []string{"eth0"}, false, nil, nil,
			map[string]trackVerdict{"v": {fault: true, prio: 150, reason: "interface eth0 down"}}},
		{"dataplane weight 0: fault", map[string]config.VRRP{"v": inst(150, "", config.Track{Dataplane: &config.TrackItem{}})}, nil, true, nil, nil,
			map[string]trackVerdict{"v": {fault: true, prio: 150, reason: "dataplane on eth0 down: not attached"}}},
		{"penalties add up", map[string]config.VRRP{"v": inst(150, "", config.Track{
			Interfaces: []config.TrackItem{{Name: "eth1", Weight: 20}},
			Services:   []config.TrackItem{{Name: "web", Weight: 30}}})}, []string{"eth1"}, false, []string{"web"}, nil,
			map[string]trackVerdict{"v": {prio: 100, reason: "tracked interface eth1 down; all backends of service web down"}}},
		{"priority never below 1", map[string]config.VRRP{"v": inst(10, "", config.Track{Services: []config.TrackItem{{Name: "web", Weight: 50}}})}, nil, false, []string{"web"}, nil,
			map[string]trackVerdict{"v": {prio: 1, reason: "all backends of service web down"}}},
		{"owner keeps 255", map[string]config.VRRP{"v": inst(255, "", config.Track{Services: []config.TrackItem{{Name: "web", Weight: 50}}})}, nil, false, []string{"web"}, nil,
			map[string]trackVerdict{"v": {prio: 255, reason: "all backends of service web down"}}},
		{"failing track command", map[string]config.VRRP{"v": inst(150, "", config.Track{Commands: []config.TrackCommand{{Command: "check-a", Weight: 40}, {Command: "check-b", Weight: 0}}})}, nil, false, nil, map[string]int{"v": 0},
			map[string]trackVerdict{"v": {prio: 110, reason: "track command check-a failed"}}},
		{"sync group: one member's fault faults all", map[string]config.VRRP{
			"v4": inst(150, "g", config.Track{Interfaces: []config.TrackItem{{Name: "uplink", Weight: 0}}}),
			"v6": inst(150, "g", config.Track{})}, []string{"uplink"}, false, nil, nil,
			map[string]trackVerdict{
				"v4": {fault: true, prio: 150, reason: "v4: tracked interface uplink down"},
				"v6": {fault: true, prio: 150, reason: "v4: tracked interface uplink down"}}},
		{"sync group: penalties shared", map[string]config.VRRP{
			"v4": inst(150, "g", config.Track{Services: []config.TrackItem{{Name: "web", Weight: 30}}}),
			"v6": inst(140, "g", config.Track{Services: []config.TrackItem{{Name: "dns", Weight: 20}}}),
			"x":  inst(100, "", config.Track{})}, nil, false, []string{"web", "dns"}, nil,
			map[string]trackVerdict{
				"v4": {prio: 100, reason: "v4: all backends of service web down; v6: all backends of service dns down"},
				"v6": {prio: 90, reason: "v4: all backends of service web down; v6: all backends of service dns down"},
				"x":  {prio: 100}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			down := map[string]bool{}
			for _, l := range c.linksDown {
				down[l] = true
			}
			w := world{
				linkUp: func(n string) bool { return !down[n] },
				dataplaneUp: func(string) error {
					if c.noXDP {
						return errors.New("not attached")
					}
					return nil
				},
				serviceUp: func(name string) bool { return !slices.Contains(c.svcDown, name) },
				commandOK: func(name string, i int) bool {
					f, ok := c.cmdFails[name]
					return !ok || f != i
				},
			}
			got := decide(c.cfgs, w)
			for name, want := range c.want {
				if got[name] != want {
					t.Errorf("%s: got %+v, want %+v", name, got[name], want)
				}
			}
		})
	}
}

func vrrpConf(mod func(*config.VRRP)) config.VRRP {
	yes, late, refresh := true, 1100*time.Millisecond, time.Second
	v := config.VRRP{Name: "v", VRID: 42, Interface: "nosuch0", Priority: 150, AdvertInterval: 100 * time.Millisecond, Preempt: &yes,
		VIPs:     []netip.Addr{netip.MustParseAddr("192.0.2.10")},
		Announce: config.Announce{Count: 3, Spacing: 10 * time.Millisecond, Late: &late, Refresh: &refresh},
		Track:    config.Track{Commands: []config.TrackCommand{{Command: "true", Interval: time.Hour, Timeout: time.Second, Weight: 10}}},
		Notify:   config.Notify{Command: "/usr/local/bin/old-hook", Timeout: time.Second}}
	if mod != nil {
		mod(&v)
	}
	return v
}

func TestRestartReason(t *testing.T) {
	no, short := false, 2*time.Second
	cases := []struct {
		name string
		mod  func(*config.VRRP)
		want string
	}{
		{"notify hook", func(v *config.VRRP) { v.Notify.Command = "/usr/local/bin/new-hook" }, ""},
		{"priority", func(v *config.VRRP) { v.Priority = 200 }, ""},
		{"advert interval", func(v *config.VRRP) { v.AdvertInterval = time.Second }, ""},
		{"preempt", func(v *config.VRRP) { v.Preempt, v.PreemptDelay = &no, time.Minute }, ""},
		{"announce", func(v *config.VRRP) { v.Announce.Count, v.Announce.Refresh = 1, &short }, ""},
		{"tracking", func(v *config.VRRP) { v.Track.Commands = nil; v.SyncGroup = "g" }, ""},
		{"vips of the same family", func(v *config.VRRP) { v.VIPs = append(v.VIPs, netip.MustParseAddr("192.0.2.11")) }, ""},
		{"interface", func(v *config.VRRP) { v.Interface = "eth1" }, "interface"},
		{"vrid", func(v *config.VRRP) { v.VRID = 43 }, "vrid"},
		{"family", func(v *config.VRRP) { v.VIPs = []netip.Addr{netip.MustParseAddr("2001:db8::10")} }, "address family"},
		{"multicast to unicast", func(v *config.VRRP) { v.Peers = []netip.Addr{netip.MustParseAddr("192.0.2.2")} }, "multicast or unicast peers"},
		{"owner", func(v *config.VRRP) { v.Priority = 255 }, "address owner (priority 255)"},
	}
	for _, c := range cases {
		if got := restartReason(vrrpConf(nil), vrrpConf(c.mod)); got != c.want {
			t.Errorf("%s: restart reason %q, want %q", c.name, got, c.want)
		}
	}
}

// fakeInstance records the updates a reload gives it.
type fakeInstance struct {
	mu      sync.Mutex
	updates []vrrp.InstanceConfig
	err     error
	tracked []trackVerdict // Track calls
}

func (f *fakeInstance) State() (vrrp.State, uint8, netip.Addr) { return vrrp.Master, 150, netip.Addr{} }
func (f *fakeInstance) Counters() vrrp.Counters                { return vrrp.Counters{} }
func (f *fakeInstance) Track(fault bool, reason string, prio uint8) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tracked = append(f.tracked, trackVerdict{fault: fault, prio: prio, reason: reason})
}
func (f *fakeInstance) Update(_ context.Context, cfg vrrp.InstanceConfig) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updates = append(f.updates, cfg)
	return f.err
}

// TestReloadVRRPInPlace: a reload that changes only what applies in place
// (a notify hook, the priority, track commands) keeps the running
// instance, so a master stays master: no stop, whose resignation sends
// priority 0 and hands the VIPs to a backup. Before, any difference
// stopped the instance and started a new one. A change the instance
// cannot take (interface; or Update refusing) still replaces it.
func TestReloadVRRPInPlace(t *testing.T) {
	cases := []struct {
		name        string
		mod         func(*config.VRRP)
		updateErr   error
		wantKept    bool
		wantUpdates int
		wantCmds    int
	}{
		{"notify hook", func(v *config.VRRP) { v.Notify.Command = "/usr/local/bin/new-hook" }, nil, true, 1, 1},
		{"priority and announce", func(v *config.VRRP) { v.Priority, v.Announce.Count = 200, 1 }, nil, true, 1, 1},
		{"track commands", func(v *config.VRRP) {
			v.Track.Commands = append(v.Track.Commands, config.TrackCommand{Command: "true", Interval: time.Hour, Timeout: time.Second})
		}, nil, true, 1, 2},
		{"unchanged", nil, nil, true, 0, 1},
		{"interface", func(v *config.VRRP) { v.Interface = "nosuch1" }, nil, false, 0, 0},
		{"update refused", func(v *config.VRRP) { v.Priority = 200 }, vrrp.ErrRestart, false, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			old := vrrpConf(nil)
			f := &fakeInstance{err: c.updateErr}
			r := &vrrpRun{cfg: old, inst: f, done: make(chan struct{})}
			r.ctx, r.cancel = context.WithCancel(ctx)
			go func() { <-r.ctx.Done(); close(r.done) }()
			r.startTracks(old.Track.Commands)
			c0 := testOwner(ctx, 64, map[string]*vrrpRun{"v": r})
			next := vrrpConf(c.mod)
			err := c0.Reload(ctx, &config.Config{VRRP: []config.VRRP{next}})
			kept := c0.runs["v"] == r && r.ctx.Err() == nil
			if kept != c.wantKept {
				t.Fatalf("instance kept: %v, want %v (reload error %v)", kept, c.wantKept, err)
			}
			if !kept && err == nil {
				t.Fatal("a replacement on an interface that does not exist started")
			}
			f.mu.Lock()
			updates := f.updates
			f.mu.Unlock()
			if len(updates) != c.wantUpdates {
				t.Fatalf("%d updates, want %d", len(updates), c.wantUpdates)
			}
			if !kept {
				return
			}
			if err != nil {
				t.Fatalf("reload: %v", err)
			}
			if c.wantUpdates > 0 && !reflect.DeepEqual(updates[0], instanceConfig(next)) {
				t.Fatalf("update %+v, want %+v", updates[0], instanceConfig(next))
			}
			r.mu.Lock()
			got, cmds := r.cfg, len(r.cmdOK)
			r.mu.Unlock()
			if !reflect.DeepEqual(got, next) || cmds != c.wantCmds {
				t.Fatalf("run's config %+v with %d command results; want %+v with %d", got, cmds, next, c.wantCmds)
			}
		})
	}
}

// TestReloadNotifyKeepsMaster runs a real instance through the
// controller: a reload that changes only its notify hook leaves the
// master master, with no priority-0 advertisement on the wire and the
// VIP held throughout. Before, the reload stopped the instance (resigning
// with priority 0, releasing the VIP) and started a new one.
func TestReloadNotifyKeepsMaster(t *testing.T) {
	privtest.Require(t)
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "kbt0"}, PeerName: "kbt1"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(v) })
	for i, name := range []string{"kbt0", "kbt1"} {
		// Both ends are in this namespace: accept the other's source.
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+name+"/accept_local", []byte("1"), 0); err != nil {
			t.Fatal(err)
		}
		l, _ := netlink.LinkByName(name)
		a, _ := netlink.ParseAddr([]string{"10.68.0.1/24", "10.68.0.2/24"}[i])
		if err := netlink.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	vipAddr := netip.MustParseAddr("10.68.0.100")
	dir := t.TempDir()
	conf := func(hook string) *config.Config {
		return &config.Config{VRRP: []config.VRRP{vrrpConf(func(v *config.VRRP) {
			v.Interface, v.Priority, v.AdvertInterval, v.VIPs = "kbt0", 200, 10*time.Millisecond, []netip.Addr{vipAddr}
			v.Track = config.Track{}
			v.Notify = config.Notify{Command: "sh", Args: []string{"-c", `echo "$KEEPBIT_STATE" >> "$0"`, filepath.Join(dir, hook)}, Timeout: time.Second}
		})}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := testOwner(ctx, 256, map[string]*vrrpRun{})
	t.Cleanup(c.Close)
	if err := c.Reload(ctx, conf("hook-a")); err != nil {
		t.Fatal(err)
	}
	r := c.vrrpRuns()["v"]
	deadline := time.Now().Add(2 * time.Second)
	for st, _, _ := r.inst.State(); st != vrrp.Master; st, _, _ = r.inst.State() {
		if time.Now().After(deadline) {
			t.Fatalf("no master within 2s: %s", st)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Listen on the other end to what the master advertises.
	pc, err := net.ListenPacket("ip4:112", "0.0.0.0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	p4 := ipv4.NewPacketConn(pc)
	ifc, _ := net.InterfaceByName("kbt1")
	if err := p4.JoinGroup(ifc, &net.IPAddr{IP: vrrp.MulticastV4.AsSlice()}); err != nil {
		t.Fatal(err)
	}
	prios := make(chan []int, 1)
	go func() {
		var seen []int
		buf := make([]byte, 1500)
		for {
			n, _, from, err := p4.ReadFrom(buf)
			if err != nil {
				prios <- seen
				return
			}
			if from.(*net.IPAddr).IP.String() == "10.68.0.1" && n >= 8 && buf[1] == 42 {
				seen = append(seen, int(buf[2]))
			}
		}
	}()

	if err := c.Reload(ctx, conf("hook-b")); err != nil {
		t.Fatalf("reload: %v", err)
	}
	for range 20 {
		if has, _ := vip.Has("kbt0", vipAddr); !has {
			t.Fatal("the master let go of its VIP during the reload")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pc.Close()
	seen := <-prios
	if len(seen) == 0 {
		t.Fatal("heard no advertisement")
	}
	if slices.Contains(seen, 0) {
		t.Fatalf("the master resigned (priority 0) on a notify change: priorities %v", seen)
	}
	if got := c.vrrpRuns()["v"]; got != r {
		t.Fatal("the instance was replaced")
	}
	if st, _, _ := r.inst.State(); st != vrrp.Master {
		t.Fatalf("%s after the reload, want master", st)
	}
	r.mu.Lock()
	hook := r.cfg.Notify.Args[2]
	r.mu.Unlock()
	if filepath.Base(hook) != "hook-b" {
		t.Fatalf("notify hook %s after the reload, want hook-b", hook)
	}
}
