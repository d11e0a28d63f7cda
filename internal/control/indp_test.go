package control

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// TestBackendLeavingDataplaneIsNotUp: a backend whose MAC becomes unknown
// (its configured MAC removed, no neighbour entry) leaves the dataplane;
// the controller must stop counting it as up. It kept the state it had,
// so Status showed it up and keep-last / the panic threshold counted it:
// when the only backend left in the dataplane failed, keep-last let it go
// because the absent one was "still up", and the service dropped all
// traffic.
func TestBackendLeavingDataplaneIsNotUp(t *testing.T) {
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	svc := func(bMAC string) string {
		return `  - name: web
    vip: 10.99.0.1
    port: 80
    when_all_down: keep-last
    backends:
      - {address: 10.0.0.1, mac: "02:00:00:00:00:01"}
      - {address: 10.0.0.2` + bMAC + `}
`
	}
	l := newCtlLab(t)
	c := l.start(l.config(svc(`, mac: "02:00:00:00:00:02"`)))
	verdict(c, "web", a, true)
	verdict(c, "web", b, true)
	if err := c.Reload(t.Context(), l.config(svc(""))); err != nil {
		t.Fatal(err)
	}
	if got := held(t, c)["web"]; statesString(got) != "10.0.0.1=up" {
		t.Fatalf("after b's MAC went away the dataplane holds %s, want 10.0.0.1=up alone", statesString(got))
	}
	for _, bs := range c.Status()[0].Backends {
		if bs.Address == b && bs.State == loader.Up {
			t.Errorf("status shows %s up while it is not in the dataplane", b)
		}
	}
	verdict(c, "web", a, false)
	if got := held(t, c)["web"]; statesString(got) != "10.0.0.1=up" {
		t.Fatalf("the last backend in the dataplane failed: it holds %s, want 10.0.0.1=up (keep-last)", statesString(got))
	}
}

// TestSetAdminMappedAddress: the config takes ::ffff:a.b.c.d as a.b.c.d
// (issue 7 defect 12), so an operator naming a backend the way the config
// wrote it must reach the same backend, not "not configured".
func TestSetAdminMappedAddress(t *testing.T) {
	cases := []struct {
		addr string
		want loader.State
	}{
		{"10.0.0.1", loader.Down},
		{"::ffff:10.0.0.2", loader.Down},
	}
	c, s, held := fakeService(t, config.Service{}, 2)
	for _, bk := range s.backends {
		bk.health, bk.state = probe.Up, loader.Up
		held[bk.cfg.Address] = loader.Up
	}
	for _, tc := range cases {
		addr := netip.MustParseAddr(tc.addr)
		if err := c.SetAdmin("web", addr, Disabled); err != nil {
			t.Fatalf("disable %s: %v", tc.addr, err)
		}
		if got := held[addr.Unmap()]; got != tc.want {
			t.Errorf("disable %s: dataplane holds %s, want %s", tc.addr, got, tc.want)
		}
		if got := c.overrides["web"][addr.Unmap()]; got != Disabled {
			t.Errorf("disable %s: override %q recorded under the unmapped address, want disabled", tc.addr, got)
		}
	}
}

// TestLiveMappedAddress: drain -wait polls Live with the backend as the
// operator wrote it; a mapped address is the same backend.
func TestLiveMappedAddress(t *testing.T) {
	l := newCtlLab(t)
	c := l.start(l.config(fourBackends([4]int{1, 1, 1, 1})))
	for _, a := range []string{"10.0.0.1", "::ffff:10.0.0.1"} {
		if _, _, err := c.Live("web", netip.MustParseAddr(a), time.Second); err != nil {
			t.Errorf("live %s: %v", a, err)
		}
	}
}

// TestResolvedAfterReload: the resolver re-applies a service when a MAC
// answers, waiting for applyMu behind a reload; a reload that meanwhile
// moved the service to another VIP, or removed it, must win. The resolver
// used to take the service before waiting and re-apply its old config:
// the old VIP came back in the dataplane and the controller lost track of
// the new one (its states frozen until the next reload).
func TestResolvedAfterReload(t *testing.T) {
	svc := func(vip string) string {
		return `  - name: web
    vip: ` + vip + `
    port: 80
    backends:
      - {address: 10.0.0.1, mac: "02:00:00:00:00:01"}
      - {address: 10.0.0.2}
`
	}
	cases := []struct {
		name     string
		next     string // services of the reload
		wantVIPs string
	}{
		{"moved to another VIP", svc("10.99.0.9"), "[10.99.0.9]"},
		{"removed", "  []\n", "[]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := newCtlLab(t)
			c := l.start(l.config(svc("10.99.0.1")))
			// A reload holds applyMu; the resolver, having found
			// 10.0.0.2's MAC, waits for it.
			c.applyMu.Lock()
			done := make(chan struct{})
			go func() {
				defer close(done)
				c.reapplyResolved(t.Context(), "web")
			}()
			time.Sleep(100 * time.Millisecond) // the resolver is waiting
			err := c.reloadLocked(t.Context(), l.config(tc.next))
			c.applyMu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			<-done
			var vips []string
			for _, dp := range c.dataplanes() {
				for _, si := range dp.Services() {
					vips = append(vips, si.Key.VIP.String())
				}
			}
			if got := fmt.Sprint(vips); got != tc.wantVIPs {
				t.Fatalf("dataplane serves VIPs %s, want %s", got, tc.wantVIPs)
			}
		})
	}
}

// TestFlapCountsHealthChanges: flap dampening counts changes of a
// backend's health. A reload that changes a check re-adds it, and the new
// check's first verdict (unknown -> up) repeats the health the backend
// already has; it was counted as a transition, so a reload soon after
// start (or after one real flap) held every backend of the service down
// at once, a full outage no panic threshold could stop.
func TestFlapCountsHealthChanges(t *testing.T) {
	flap := config.Flap{Transitions: 2, Within: time.Minute, HoldDown: time.Minute}
	cases := []struct {
		name     string
		events   []probe.State // verdicts of backend 1, each from a check that may be new
		wantHeld bool
		want     loader.State
	}{
		{"first verdict, then a re-added check agrees", []probe.State{probe.Up, probe.Up}, false, loader.Up},
		{"up, re-added up, re-added up", []probe.State{probe.Up, probe.Up, probe.Up}, false, loader.Up},
		{"up then down: two changes", []probe.State{probe.Up, probe.Down}, true, loader.Down},
		{"down, re-added down, up: two changes", []probe.State{probe.Down, probe.Down, probe.Up}, true, loader.Down},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, s, held := fakeService(t, config.Service{Flap: flap}, 2)
			b := s.backends[netip.MustParseAddr("10.0.0.1")]
			for _, to := range tc.events {
				c.onProbe(probe.Event{Check: b.checkID, From: probe.Unknown, To: to, Decide: time.Now()})
			}
			if h := time.Now().Before(b.heldUntil); h != tc.wantHeld {
				t.Errorf("held down = %v (%s), want %v", h, b.reason, tc.wantHeld)
			}
			if got := held[b.cfg.Address]; got != tc.want {
				t.Errorf("dataplane holds %s, want %s", got, tc.want)
			}
		})
	}
}

// TestEnteringBackendNoWriteErrors: a backend entering the dataplane (its
// MAC became known) was marked in the dataplane when the spec was built,
// before ApplyService added it, so every verdict settled in between tried
// to write its state and logged "apply backend state ... not configured"
// at error level (thousands in this test). Reloads toggle its MAC while
// its verdicts flip; no state write may fail, and the end state holds.
func TestEnteringBackendNoWriteErrors(t *testing.T) {
	svc := func(mac string) string {
		return `  - name: web
    vip: 10.99.0.1
    port: 80
    backends:
      - {address: 10.0.0.1, mac: "02:00:00:00:00:01"}
      - {address: 10.0.0.2` + mac + `}
`
	}
	cfgs := []string{svc(""), svc(`, mac: "02:00:00:00:00:02"`)}
	l := newCtlLab(t)
	c := l.start(l.config(cfgs[0]))
	verdict(c, "web", addrN(0), true)
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			if err := c.Reload(context.Background(), l.config(cfgs[i%2])); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			verdict(c, "web", addrN(1), i%2 == 0)
		}
	})
	wg.Wait()
	if n := strings.Count(l.logs.String(), "apply backend state"); n > 0 {
		t.Fatalf("%d failed state writes logged", n)
	}
	if err := c.Reload(t.Context(), l.config(cfgs[1])); err != nil {
		t.Fatal(err)
	}
	verdict(c, "web", addrN(1), true)
	if got := statesString(held(t, c)["web"]); got != "10.0.0.1=up 10.0.0.2=up" {
		t.Fatalf("dataplane holds %s, want both up", got)
	}
}

// TestSetAdminReportsWriteFailure: when the dataplane write of an
// override fails, SetAdmin said nothing (the error went to the log only),
// and the operator believed a backend disabled that kept taking flows.
func TestSetAdminReportsWriteFailure(t *testing.T) {
	cases := []struct {
		name    string
		fail    bool
		wantErr string
	}{
		{"write succeeds", false, ""},
		{"write fails", true, `service "web": backend 10.0.0.1: disabled recorded but not applied: map full`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, s, held := fakeService(t, config.Service{}, 2)
			for _, bk := range s.backends {
				bk.health, bk.state = probe.Up, loader.Up
				held[bk.cfg.Address] = loader.Up
			}
			if tc.fail {
				c.writeState = func(*service, netip.Addr, loader.State) (loader.Change, error) {
					return loader.Change{}, errors.New("map full")
				}
			}
			err := c.SetAdmin("web", addrN(0), Disabled)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("SetAdmin: %v", err)
			case tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr):
				t.Fatalf("SetAdmin: %v, want %q", err, tc.wantErr)
			}
			if c.overrides["web"][addrN(0)] != Disabled {
				t.Errorf("override not recorded")
			}
		})
	}
}
