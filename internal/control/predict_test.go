package control

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// TestPredictiveAction: a service of n backends, all up, whose probes
// answer in about 10 ms; the backends in slow answer in 60 ms from then
// on (6x, predictive drain with min_samples 5): what the dataplane holds
// once they are flagged, what the flag did, and what it holds once they
// answer in 10 ms again. Steps as in TestResettleService: "pN+" / "pN-" a
// check verdict, "dN" the operator disables N; setup runs before the
// slow probes, then after them.
func TestPredictiveAction(t *testing.T) {
	drain := &config.Predictive{Action: "drain", LatencyFactor: 3, MinLatency: 20 * time.Millisecond, FailureRatio: 0.2,
		Window: 10 * time.Second, MinSamples: 5, MaxDrained: 1}
	flag := *drain
	flag.Action = "flag"
	two := *drain
	two.MaxDrained = 2
	cases := []struct {
		name      string
		cfg       config.Service
		n         int
		setup     string
		slow      string // backends, "1 2"
		then      string
		want      string // states once flagged (and then)
		wantActed string // in b1's predict-degraded event
		recovered string // states once it answers in 10 ms again
	}{
		{"drained, then back up", config.Service{Predictive: drain}, 4, "", "1", "",
			"draining up up up", "drained: p50 60ms", "up up up up"},
		{"action flag only reports", config.Service{Predictive: &flag}, 4, "", "1", "",
			"up up up up", "flagged: p50 60ms", "up up up up"},
		{"panic threshold: with one failed, a second out would be 50% of 4 (threshold 25)", config.Service{PanicThreshold: 25, Predictive: drain}, 4, "p4-", "1", "",
			"up up up down", "not drained: 2 of 4 backends would be out, beyond the panic threshold of 25%", "up up up down"},
		{"max_drained 1: the second degraded one stays", config.Service{Predictive: drain}, 4, "", "1 2", "",
			"draining up up up", "drained", "up up up up"},
		{"max_drained 2: both go", config.Service{Predictive: &two}, 4, "", "1 2", "",
			"draining draining up up", "drained", "up up up up"},
		{"never the last usable backend", config.Service{Predictive: drain}, 3, "d2 p3-", "1", "",
			"up down down", "not drained: the last usable backend", "up down down"},
		{"real failures take the drained one's capacity back (panic 50)", config.Service{PanicThreshold: 50, Predictive: drain}, 4, "", "1", "p2- p3-",
			"up down down up", "drained", "up down down up"},
		{"no predictive section: nothing happens", config.Service{}, 4, "", "1", "",
			"up up up up", "", "up up up up"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctl, s, held := fakeService(t, c.cfg, c.n)
			for _, addr := range s.order {
				ctl.onProbe(probe.Event{Check: "web|" + addr.String(), To: probe.Up, Decide: time.Now()})
			}
			steps := func(list string) {
				for _, st := range strings.Fields(list) {
					addr := netip.MustParseAddr("10.0.0." + st[1:2])
					switch st[0] {
					case 'p':
						to := probe.Up
						if st[2] == '-' {
							to = probe.Down
						}
						ctl.onProbe(probe.Event{Check: "web|" + addr.String(), To: to, Decide: time.Now()})
					case 'd':
						if err := ctl.SetAdmin("web", addr, Disabled); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			states := func() string {
				var got []string
				for _, addr := range s.order {
					if held[addr] != s.backends[addr].state {
						t.Errorf("%s: dataplane holds %s, controller thinks %s", addr, held[addr], s.backends[addr].state)
					}
					got = append(got, held[addr].String())
				}
				return strings.Join(got, " ")
			}
			t0 := time.Now().Add(-time.Hour)
			step := 0
			rounds := func(k int, slow string) {
				for range k {
					at := t0.Add(time.Duration(step) * time.Second)
					for i, addr := range s.order {
						lat := time.Duration(8+2*((step+i)%3)) * time.Millisecond
						if strings.Contains(" "+slow+" ", " "+addr.String()[7:]+" ") {
							lat = 60 * time.Millisecond
						}
						ctl.onResult(context.Background(), probe.Result{Check: "web|" + addr.String(), Start: at, Latency: lat})
					}
					step++
				}
			}
			steps(c.setup)
			rounds(10, "")
			if got := states(); strings.Contains(got, "draining") {
				t.Fatalf("healthy probes drained a backend: %s", got)
			}
			rounds(10, c.slow)
			steps(c.then)
			if got := states(); got != c.want {
				t.Fatalf("flagged: %s, want %s\n%s", got, c.want, events(ctl))
			}
			var acted string
			for _, e := range ctl.rec.Since(0) {
				if e.Kind == "predict-degraded" && e.Backend == "10.0.0.1" {
					acted = e.Reason
				}
			}
			if !strings.HasPrefix(acted, c.wantActed) || (c.wantActed == "") != (acted == "") {
				t.Fatalf("b1's predict-degraded event says %q, want %q...", acted, c.wantActed)
			}
			if c.cfg.Predictive != nil {
				ctl.mu.Lock()
				p := ctl.predictionLocked(s.backends[s.order[0]])
				ctl.mu.Unlock()
				if p == nil || !p.Degraded || p.Flagged != 1 || p.P50 != 60*time.Millisecond {
					t.Fatalf("status of b1: %+v", p)
				}
			}
			rounds(10, "")
			if got := states(); got != c.recovered {
				t.Fatalf("recovered: %s, want %s\n%s", got, c.recovered, events(ctl))
			}
			if c.cfg.Predictive != nil && !strings.Contains(events(ctl), "predict-recovered 10.0.0.1") {
				t.Fatalf("no predict-recovered event for b1:\n%s", events(ctl))
			}
		})
	}
}

func events(c *Controller) string {
	var b strings.Builder
	for _, e := range c.rec.Since(0) {
		b.WriteString(e.Kind + " " + e.Backend + ": " + e.Reason + "\n")
	}
	return b.String()
}

// TestPredictiveWeights: the weights action weight gives a service's
// backends (b1.. in order) with some of them degraded, and what b1's
// flag did.
func TestPredictiveWeights(t *testing.T) {
	pr := func(percent, maxCut int) *config.Predictive {
		return &config.Predictive{Action: "weight", WeightPercent: percent, MaxDrained: maxCut}
	}
	cases := []struct {
		name      string
		pr        *config.Predictive
		n         int
		weight    uint32 // every backend's configured weight
		degraded  string // backends, "1 2"
		down      string // backends whose check failed
		want      string
		wantActed string
	}{
		{"none degraded: as configured", pr(25, 1), 4, 1, "", "", "1 1 1 1", ""},
		{"b1 keeps 25%: the others x4", pr(25, 1), 4, 1, "1", "", "1 4 4 4", "de-weighted to 25%"},
		{"30% of weight 2", pr(30, 1), 3, 2, "1", "", "6 20 20", "de-weighted to 30%"},
		{"max_drained 1: the second keeps its share", pr(25, 1), 4, 1, "1 2", "", "1 4 4 4", "de-weighted to 25%"},
		{"max_drained 2: both cut", pr(25, 2), 4, 1, "1 2", "", "1 1 4 4", "de-weighted to 25%"},
		{"never the only usable backend", pr(25, 1), 2, 1, "1", "2", "1 1", "not de-weighted: no other usable backend"},
		{"action drain: weights as configured", &config.Predictive{Action: "drain", WeightPercent: 25, MaxDrained: 1}, 3, 1, "1", "", "1 1 1", "flagged"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctl, s, _ := fakeService(t, config.Service{Predictive: c.pr}, c.n)
			for i, addr := range s.order {
				b := s.backends[addr]
				b.cfg.Weight = c.weight
				n := " " + string(rune('1'+i)) + " "
				b.health, b.state = probe.Up, loader.Up
				if strings.Contains(" "+c.down+" ", n) {
					b.health, b.state = probe.Down, loader.Down
				}
				b.pred = &predictState{degraded: strings.Contains(" "+c.degraded+" ", n), acted: "flagged"}
			}
			ctl.mu.Lock()
			weight := ctl.predictWeightsLocked(s)
			var got []string
			for _, addr := range s.order {
				got = append(got, fmt.Sprint(weight(s.backends[addr])))
			}
			ctl.mu.Unlock()
			if g := strings.Join(got, " "); g != c.want {
				t.Fatalf("weights %s, want %s", g, c.want)
			}
			if c.wantActed != "" {
				if a := s.backends[s.order[0]].pred.acted; a != c.wantActed {
					t.Fatalf("b1: %q, want %q", a, c.wantActed)
				}
			}
		})
	}
}

// TestPredictiveFailedPeerIsNoBaseline: b3's check has failed and all its
// probes fail; b1 fails one probe in two. Held against b2 alone (b3 is
// no baseline) b1 is 50 points above its peers and is drained; with b3
// counted, the peers' median would be 50% and b1 would pass.
func TestPredictiveFailedPeerIsNoBaseline(t *testing.T) {
	pr := &config.Predictive{Action: "drain", LatencyFactor: 3, MinLatency: 20 * time.Millisecond, FailureRatio: 0.2,
		Window: 10 * time.Second, MinSamples: 5, MaxDrained: 1}
	ctl, s, held := fakeService(t, config.Service{Predictive: pr}, 3)
	for i, addr := range s.order {
		to := probe.Up
		if i == 2 {
			to = probe.Down
		}
		ctl.onProbe(probe.Event{Check: "web|" + addr.String(), To: to, Decide: time.Now()})
	}
	t0 := time.Now().Add(-time.Hour)
	for step := range 10 {
		for i, addr := range s.order {
			var err error
			if i == 2 || (i == 0 && step%2 == 0) {
				err = errors.New("refused")
			}
			ctl.onResult(context.Background(), probe.Result{Check: "web|" + addr.String(), Start: t0.Add(time.Duration(step) * time.Second),
				Latency: 5 * time.Millisecond, Err: err})
		}
	}
	var got []string
	for _, addr := range s.order {
		got = append(got, held[addr].String())
	}
	if g := strings.Join(got, " "); g != "draining up down" {
		t.Fatalf("held %s, want draining up down\n%s", g, events(ctl))
	}
}
