package control

import (
	"testing"

	"github.com/keepbit/keepbit/internal/config"
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
