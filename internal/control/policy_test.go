package control

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// TestDesiredState: what the dataplane should hold for backend 0 of a
// service of four, given its health, the others' states and the policies.
func TestDesiredState(t *testing.T) {
	cases := []struct {
		name     string
		cfg      config.Service
		admin    Admin
		held     bool
		health   probe.State
		state    loader.State // backend 0 now
		othersUp int          // of the other three
		want     loader.State
		wantKind string
	}{
		{"healthy goes up", config.Service{}, Enabled, false, probe.Up, loader.Down, 3, loader.Up, ""},
		{"failed goes down", config.Service{}, Enabled, false, probe.Down, loader.Up, 3, loader.Down, ""},
		{"unknown keeps what the dataplane has", config.Service{}, Enabled, false, probe.Unknown, loader.Up, 3, loader.Up, ""},
		{"operator disable wins over health", config.Service{}, Disabled, false, probe.Up, loader.Up, 3, loader.Down, ""},
		{"operator drain", config.Service{}, Draining, false, probe.Up, loader.Up, 3, loader.Draining, ""},
		{"held down ignores a healthy check", config.Service{}, Enabled, true, probe.Up, loader.Down, 3, loader.Down, ""},
		{"panic: 2 of 4 down is 50%, threshold 40", config.Service{PanicThreshold: 40}, Enabled, false, probe.Down, loader.Up, 2, loader.Up, "panic"},
		{"below panic: 1 of 4 down is 25%, threshold 40", config.Service{PanicThreshold: 40}, Enabled, false, probe.Down, loader.Up, 3, loader.Down, ""},
		{"keep-last keeps the last up backend", config.Service{WhenAllDown: "keep-last"}, Enabled, false, probe.Down, loader.Up, 0, loader.Up, "keep-last"},
		{"keep-last lets go when others are up", config.Service{WhenAllDown: "keep-last"}, Enabled, false, probe.Down, loader.Up, 1, loader.Down, ""},
		{"drop policy lets the last one go", config.Service{WhenAllDown: "drop"}, Enabled, false, probe.Down, loader.Up, 0, loader.Down, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &service{cfg: c.cfg, backends: map[netip.Addr]*backend{}}
			var b0 *backend
			for i := range 4 {
				b := &backend{svc: s, cfg: &config.Backend{Address: netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", i+1))}, state: loader.Down}
				if i == 0 {
					b.admin, b.health, b.state = c.admin, c.health, c.state
					if c.held {
						b.heldUntil = time.Now().Add(time.Minute)
					}
					b0 = b
				} else if i <= c.othersUp {
					b.state = loader.Up
				}
				s.backends[b.cfg.Address] = b
			}
			got, kind, reason := (&Controller{}).desiredLocked(b0)
			if got != c.want || kind != c.wantKind {
				t.Fatalf("got %s (%q: %s), want %s (%q)", got, kind, reason, c.want, c.wantKind)
			}
		})
	}
}

// TestFlapHoldDown: the third transition within the window holds the
// backend down; transitions spread wider than the window do not.
func TestFlapHoldDown(t *testing.T) {
	for _, c := range []struct {
		name     string
		gap      time.Duration
		wantHeld bool
	}{{"three quick transitions", 0, true}, {"spread beyond the window", 120 * time.Millisecond, false}} {
		t.Run(c.name, func(t *testing.T) {
			s := &service{cfg: config.Service{Name: "web", Flap: config.Flap{Transitions: 3, Within: 200 * time.Millisecond, HoldDown: time.Minute}},
				backends: map[netip.Addr]*backend{}}
			b := &backend{svc: s, checkID: "web|10.0.0.1", cfg: &config.Backend{Address: netip.MustParseAddr("10.0.0.1")}}
			s.backends[b.cfg.Address] = b
			ctl := &Controller{svcs: map[string]*service{"web": s}, byCheck: map[string]*backend{b.checkID: b}}
			for i, to := range []probe.State{probe.Up, probe.Down, probe.Up} {
				if i > 0 {
					time.Sleep(c.gap)
				}
				ctl.onProbe(probe.Event{Check: b.checkID, To: to, Decide: time.Now()})
			}
			if held := time.Now().Before(b.heldUntil); held != c.wantHeld {
				t.Fatalf("held down = %v (%s), want %v", held, b.reason, c.wantHeld)
			}
		})
	}
}
