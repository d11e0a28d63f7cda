package control

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// TestHealthChanged: ServiceUp follows the backends' dataplane states, and
// Changed fires for a write that moves a backend to or from up, not for
// one between down and draining, nor for a verdict that writes nothing.
func TestHealthChanged(t *testing.T) {
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	s := &service{cfg: config.Service{Name: "web"}, backends: map[netip.Addr]*backend{}}
	for i := 1; i <= 2; i++ {
		b := &backend{svc: s, checkID: "web|" + addr(i).String(), cfg: &config.Backend{Address: addr(i)}, state: loader.Down, inDP: true}
		s.backends[addr(i)], s.order = b, append(s.order, addr(i))
	}
	c := &Controller{log: slog.New(slog.NewTextHandler(io.Discard, nil)), rec: recorder.New(64),
		svcs: map[string]*service{"web": s}, byCheck: map[string]*backend{}, overrides: map[string]map[netip.Addr]Admin{}}
	for _, b := range s.backends {
		c.byCheck[b.checkID] = b
	}
	c.writeState = func(*service, netip.Addr, loader.State) (loader.Change, error) {
		return loader.Change{Returned: time.Now()}, nil
	}
	steps := []struct {
		name    string
		do      func()
		changed bool
		up      bool
	}{
		{"backend 1 up", func() { c.onProbe(probe.Event{Check: "web|10.0.0.1", To: probe.Up}) }, true, true},
		{"backend 1 up again: nothing written", func() { c.onProbe(probe.Event{Check: "web|10.0.0.1", To: probe.Up}) }, false, true},
		{"backend 2 drained while down", func() {
			if err := c.SetAdmin("web", addr(2), Draining); err != nil {
				t.Fatal(err)
			}
		}, false, true},
		{"backend 1 down", func() { c.onProbe(probe.Event{Check: "web|10.0.0.1", To: probe.Down}) }, true, false},
		{"backend 2 enabled and up", func() {
			c.onProbe(probe.Event{Check: "web|10.0.0.2", To: probe.Up})
			if err := c.SetAdmin("web", addr(2), Enabled); err != nil {
				t.Fatal(err)
			}
		}, true, true},
	}
	for _, st := range steps {
		ch := c.Changed()
		st.do()
		fired := false
		select {
		case <-ch:
			fired = true
		default:
		}
		if fired != st.changed {
			t.Errorf("%s: Changed fired %v, want %v", st.name, fired, st.changed)
		}
		if got := c.ServiceUp("web"); got != st.up {
			t.Errorf("%s: ServiceUp %v, want %v", st.name, got, st.up)
		}
	}
	if c.ServiceUp("nosuch") {
		t.Error("a service that does not exist is up")
	}
	if err := c.DataplaneUp("nosuch0"); err == nil {
		t.Error("an interface without a dataplane is up")
	}
}

// TestSettledWaitsForTheWrite: a check verdict lands in two steps (health
// under the lock, then the dataplane write after re-taking it). A node
// asking Settled in between was told yes while the backend was still down
// in its table, announced, and the flows ECMP brought it for that backend
// went to others and were reset (TestBGPNodeAdded, CI). Settled holds
// until the dataplane holds what the verdicts ask for.
func TestSettledWaitsForTheWrite(t *testing.T) {
	addr := netip.MustParseAddr("10.0.0.1")
	s := &service{cfg: config.Service{Name: "web"}, backends: map[netip.Addr]*backend{}}
	b := &backend{svc: s, checkID: "web|10.0.0.1", cfg: &config.Backend{Address: addr}, state: loader.Down, health: probe.Unknown, inDP: true}
	s.backends[addr], s.order = b, []netip.Addr{addr}
	c := &Controller{log: slog.New(slog.NewTextHandler(io.Discard, nil)), rec: recorder.New(64),
		svcs: map[string]*service{"web": s}, byCheck: map[string]*backend{b.checkID: b}, overrides: map[string]map[netip.Addr]Admin{}}
	c.writeState = func(*service, netip.Addr, loader.State) (loader.Change, error) {
		return loader.Change{Returned: time.Now()}, nil
	}
	for _, st := range []struct {
		name    string
		do      func()
		settled bool
	}{
		{"no verdict yet", func() {}, false},
		{"verdict up, not yet written", func() { b.health = probe.Up }, false},
		{"written", func() { c.settle(b, time.Time{}, time.Now()) }, true},
		{"verdict down, not yet written", func() { b.health = probe.Down }, false},
		{"written down", func() { c.settle(b, time.Time{}, time.Now()) }, true},
		{"disabled by the operator while its check says up", func() {
			b.health = probe.Up
			if err := c.SetAdmin("web", addr, Disabled); err != nil {
				t.Fatal(err)
			}
		}, true},
	} {
		st.do()
		if got := c.Settled(); got != st.settled {
			t.Errorf("%s: Settled %v, want %v (health %v, state %v)", st.name, got, st.settled, b.health, b.state)
		}
	}
}
