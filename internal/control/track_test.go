package control

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
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
			map[string]trackVerdict{"v": {fault: true, prio: 150, reason: "dataplane not attached on eth0"}}},
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
				linkUp:      func(n string) bool { return !down[n] },
				xdpAttached: func(string) bool { return !c.noXDP },
				serviceUp:   map[string]bool{"web": true, "dns": true},
				commandOK: func(name string, i int) bool {
					f, ok := c.cmdFails[name]
					return !ok || f != i
				},
			}
			for _, s := range c.svcDown {
				w.serviceUp[s] = false
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
}

func (f *fakeInstance) State() (vrrp.State, uint8, netip.Addr) { return vrrp.Master, 150, netip.Addr{} }
func (f *fakeInstance) Counters() vrrp.Counters                { return vrrp.Counters{} }
func (f *fakeInstance) Track(bool, string, uint8)              {}
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
			c0 := &Controller{log: slog.New(slog.NewTextHandler(io.Discard, nil)), rec: recorder.New(64), base: ctx, vrrp: map[string]*vrrpRun{"v": r}}
			next := vrrpConf(c.mod)
			err := c0.reloadVRRP(&config.Config{VRRP: []config.VRRP{next}})
			kept := c0.vrrp["v"] == r && r.ctx.Err() == nil
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
