package control

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/keepbit/keepbit/loader"
)

// fourBackends is a service web (VIP 10.99.0.1:80) of four backends with
// the given weights.
func fourBackends(weights [4]int) string {
	var b strings.Builder
	b.WriteString("  - name: web\n    vip: 10.99.0.1\n    port: 80\n    backends:\n")
	for i, w := range weights {
		fmt.Fprintf(&b, "      - {address: 10.0.0.%d, mac: \"02:00:00:00:00:%02x\", weight: %d}\n", i+1, i+1, w)
	}
	return b.String()
}

func addrN(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", i+1)) }

// TestReloadKeepsVerdicts: reloads that re-apply a service (weights
// change) race with probe verdicts; afterwards the dataplane holds what
// the last verdicts demand, and the controller agrees. Issue 7 defect 3:
// applyService built the spec (with each backend's state) under c.mu,
// let go, and ApplyService wrote those states back, undoing a verdict
// written in between, while the controller believed the verdict and never
// rewrote it.
func TestReloadKeepsVerdicts(t *testing.T) {
	l := newCtlLab(t)
	cfgs := [2]string{fourBackends([4]int{1, 1, 1, 1}), fourBackends([4]int{2, 1, 3, 1})}
	c := l.start(l.config(cfgs[0]))
	for i := range 4 {
		verdict(c, "web", addrN(i), true)
	}
	want := map[netip.Addr]bool{addrN(0): true, addrN(1): true, addrN(2): true, addrN(3): true}
	for iter := range 20 {
		done := make(chan struct{})
		go func() {
			defer close(done)
			for r := range 4 {
				if err := c.Reload(t.Context(), l.config(cfgs[(iter+r+1)%2])); err != nil {
					t.Errorf("reload: %v", err)
				}
			}
		}()
		// Verdicts flip the backends for as long as the reloads run;
		// this goroutine is the event loop, so its last call is the last
		// verdict.
		for k := 0; ; k++ {
			select {
			case <-done:
			default:
				i := (k*7 + iter) % 4
				up := (k/4+iter+i)%3 == 0
				verdict(c, "web", addrN(i), up)
				want[addrN(i)] = up
				runtime.Gosched()
				continue
			}
			break
		}
		got := held(t, c)["web"]
		for i := range 4 {
			a := addrN(i)
			exp := loader.Down
			if want[a] {
				exp = loader.Up
			}
			if got[a] != exp {
				t.Fatalf("iteration %d: dataplane holds %s for %s, the last verdict demands %s (all: %s)", iter, got[a], a, exp, statesString(got))
			}
		}
		for _, ss := range c.Status() {
			for _, bs := range ss.Backends {
				if a := bs.Address; bs.State != got[a] {
					t.Fatalf("iteration %d: controller thinks %s is %s, the dataplane holds %s", iter, a, bs.State, got[a])
				}
			}
		}
	}
}

// TestStatusDuringApply runs Status (the API's reader) while reloads
// rewrite backends' config and MACs; -race proves every field Status
// reads is written under c.mu (issue 7 defect 10: applyService wrote
// b.cfg, b.mac and b.svc without it).
func TestStatusDuringApply(t *testing.T) {
	l := newCtlLab(t)
	cfgs := [2]string{fourBackends([4]int{1, 1, 1, 1}), strings.ReplaceAll(fourBackends([4]int{2, 2, 1, 1}), "02:00:00:00:00", "02:00:00:00:01")}
	c := l.start(l.config(cfgs[0]))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, ss := range c.Status() {
				for _, b := range ss.Backends {
					_ = b.MAC.String() + b.Address.String()
				}
			}
		}
	})
	for i := range 30 {
		if err := c.Reload(t.Context(), l.config(cfgs[i%2])); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

// TestMappedVIPSurvivesReload: a service written with an IPv4-mapped VIP
// is applied once and left alone by later reloads. Issue 7 defect 12: the
// controller keyed it ::ffff:a.b.c.d while the dataplane reports a.b.c.d,
// so every reload deleted it as stale ("removed a service the config no
// longer has") and its flows with it.
func TestMappedVIPSurvivesReload(t *testing.T) {
	l := newCtlLab(t)
	svc := `  - name: web
    vip: "::ffff:10.99.0.1"
    port: 80
    backends: [{address: "::ffff:10.0.0.1", mac: "02:00:00:00:00:01"}]
`
	c := l.start(l.config(svc))
	verdict(c, "web", netip.MustParseAddr("10.0.0.1"), true)
	gen := func() uint32 {
		for _, dp := range c.dataplanes() {
			for _, si := range dp.Services() {
				if si.Key.VIP == netip.MustParseAddr("10.99.0.1") {
					return si.Generation
				}
			}
		}
		return 0
	}
	for _, dp := range c.dataplanes() {
		if err := dp.Sync(); err != nil { // the verdict's table rebuild
			t.Fatal(err)
		}
	}
	before := gen()
	for range 2 {
		if err := c.Reload(t.Context(), l.config(svc)); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Contains(l.logs.String(), "removed a service the config no longer has") {
		t.Fatalf("a reload removed the service as stale:\n%s", l.logs)
	}
	got := held(t, c)["web"]
	if after := gen(); after == 0 || after != before || got[netip.MustParseAddr("10.0.0.1")] != loader.Up {
		t.Fatalf("after two reloads: table generation %d (was %d), backends %s; want the service untouched, its backend up", after, before, statesString(got))
	}
}

// TestOverridesSurviveRestart: operator overrides are saved in the state
// dir and applied by the next controller before any verdict, so a good
// probe after the restart does not bring a disabled or draining backend
// back (issue 7 defect 9: overrides lived in memory only). An override of
// a backend the config no longer has is dropped.
func TestOverridesSurviveRestart(t *testing.T) {
	l := newCtlLab(t)
	cfg := l.config(fourBackends([4]int{1, 1, 1, 1}))
	c := l.start(cfg)
	for i := range 4 {
		verdict(c, "web", addrN(i), true)
	}
	for _, op := range []struct {
		i int
		a Admin
	}{{0, Disabled}, {1, Draining}, {2, Disabled}, {2, Enabled}, {3, Draining}} {
		if err := c.SetAdmin("web", addrN(op.i), op.a); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()

	want := map[netip.Addr]loader.State{addrN(0): loader.Down, addrN(1): loader.Draining, addrN(2): loader.Up, addrN(3): loader.Draining}
	c = l.start(cfg)
	for i := range 4 {
		verdict(c, "web", addrN(i), true)
	}
	if got := held(t, c)["web"]; statesString(got) != statesString(want) {
		t.Fatalf("after a restart and good probes: %s, want %s", statesString(got), statesString(want))
	}
	admins := map[string]string{}
	for _, b := range c.Status()[0].Backends {
		admins[b.Address.String()] = string(b.Admin)
	}
	if fmt.Sprint(admins) != "map[10.0.0.1:disabled 10.0.0.2:draining 10.0.0.3: 10.0.0.4:draining]" {
		t.Fatalf("admin after restart: %v", admins)
	}

	// 10.0.0.4 leaves the config: its override goes with it.
	three := strings.Replace(fourBackends([4]int{1, 1, 1, 1}), "      - {address: 10.0.0.4, mac: \"02:00:00:00:00:04\", weight: 1}\n", "", 1)
	if err := c.Reload(t.Context(), l.config(three)); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(l.stateDir(), overridesFile))
	if err != nil {
		t.Fatal(err)
	}
	var f stateFile
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("state file: %v\n%s", err, data)
	}
	if got := fmt.Sprint(f.Overrides); got != "[{web 10.0.0.1 disabled} {web 10.0.0.2 draining}]" {
		t.Fatalf("saved overrides %s", got)
	}
	if !strings.Contains(l.logs.String(), "operator override dropped") {
		t.Error("dropping the override of a removed backend was not logged")
	}
	if ents, _ := os.ReadDir(l.stateDir()); len(ents) != 1 {
		t.Errorf("state dir holds %d files, want the state file alone (no temporary files left)", len(ents))
	}
}
