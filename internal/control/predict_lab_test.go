package control

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/privtest"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
)

// TestPredictiveDrainsBeforeTheCheckFails (root: a real dataplane and
// real HTTP checks): three HTTP backends on loopback of the test's
// private namespace; b1 answers 5 ms slower every 100 ms. Its check
// (100 ms interval and timeout, fall 2) fails once it answers slower
// than the timeout; predictive detection (window 800 ms, min_samples 6,
// 3x its peers and >= 20 ms) must drain it (action drain), or cut its
// weight to 25% (action weight: the dataplane's weights become 1, 4, 4),
// before that; the peers never move. Back at full speed it is up again
// with its weight. The lead is logged.
func TestPredictiveDrainsBeforeTheCheckFails(t *testing.T) {
	for _, action := range []string{"drain", "weight"} {
		t.Run(action, func(t *testing.T) { testPredictiveLab(t, action) })
	}
}

// weights is what the dataplane holds for service web: backend -> weight.
func weights(t *testing.T, c *Controller) map[netip.Addr]uint32 {
	t.Helper()
	c.mu.Lock()
	s := c.svcs["web"]
	dp, key := s.dp, s.key
	c.mu.Unlock()
	out := map[netip.Addr]uint32{}
	for _, si := range dp.Services() {
		if si.Key == key {
			for _, b := range si.Backends {
				out[b.Addr] = b.Weight
			}
		}
	}
	return out
}

func testPredictiveLab(t *testing.T, action string) {
	l := newCtlLab(t)
	var delayMS atomic.Int64
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(time.Duration(delayMS.Load()) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "b1")
	})
	addrs := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	privtest.ServeHTTP(t, netns.None(), "tcp", addrs[0]+":8080", slow)
	for i, a := range addrs[1:] {
		privtest.ServeHTTP(t, netns.None(), "tcp", a+":8080", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintf(w, "b%d", i+2)
		}))
	}
	var backends []string
	for i, a := range addrs {
		backends = append(backends, fmt.Sprintf("{address: %s, mac: \"02:00:00:00:00:0%d\"}", a, i+1))
	}
	cfg := l.config(fmt.Sprintf(`  - name: web
    vip: 10.99.0.1
    port: 80
    check: {type: http, port: 8080, path: /, interval: 100ms, timeout: 100ms, rise: 1, fall: 2, jitter: 0}
    predictive: {action: %s, window: 800ms, min_samples: 6, latency_factor: 3, min_latency: 20ms}
    backends: [%s]
`, action, strings.Join(backends, ", ")))
	c := l.start(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // before the controller's Close (cleanups run last first)
	go func() { _ = c.Run(ctx) }()

	b1 := netip.MustParseAddr(addrs[0])
	waitFor := func(what string, within time.Duration, ok func(recorder.Event) bool) recorder.Event {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, within)
		defer wcancel()
		var after uint64
		for {
			evs, err := c.rec.Wait(wctx, after)
			if err != nil {
				t.Fatalf("no %s within %v:\n%s", what, within, events(c))
			}
			for _, e := range evs {
				after = e.Seq
				if ok(e) {
					return e
				}
			}
		}
	}
	isPeer := func(e recorder.Event) bool { return e.Backend != b1.String() }
	// All three up, and a window of healthy probes judged.
	for _, a := range addrs {
		waitFor("backend-up "+a, 5*time.Second, func(e recorder.Event) bool { return e.Kind == "backend-up" && e.Backend == a })
	}
	time.Sleep(time.Second)

	start := time.Now()
	stepper := time.NewTicker(100 * time.Millisecond)
	defer stepper.Stop()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-stepper.C:
				delayMS.Add(5)
			}
		}
	}()
	var acted time.Time // when the dataplane held the drain or the cut weight
	var drainedDelay int64
	var why string
	if action == "drain" {
		drained := waitFor("b1 drained by prediction", 10*time.Second, func(e recorder.Event) bool {
			if e.Kind == "predict-degraded" && isPeer(e) {
				t.Fatalf("a healthy peer was flagged: %s %s", e.Backend, e.Reason)
			}
			return e.Kind == "backend-draining" && e.Backend == b1.String()
		})
		acted, drainedDelay, why = drained.Apply, delayMS.Load(), drained.Reason
		if st := held(t, c)["web"][b1]; st != loader.Draining && st != loader.Down {
			t.Fatalf("after the draining event the dataplane holds %s for b1", st)
		}
		if !strings.HasPrefix(drained.Reason, "predictive: degraded") {
			t.Fatalf("b1 drained for another reason: %s", drained.Reason)
		}
	} else {
		flagged := waitFor("b1 de-weighted by prediction", 10*time.Second, func(e recorder.Event) bool {
			if e.Kind == "predict-degraded" && isPeer(e) {
				t.Fatalf("a healthy peer was flagged: %s %s", e.Backend, e.Reason)
			}
			return e.Kind == "predict-degraded" && e.Backend == b1.String()
		})
		why = flagged.Reason
		if !strings.HasPrefix(why, "de-weighted to 25%") {
			t.Fatalf("b1 flagged but: %s", why)
		}
		deadline := time.Now().Add(5 * time.Second)
		for w := weights(t, c); w[b1] != 1 || w[netip.MustParseAddr(addrs[1])] != 4 || w[netip.MustParseAddr(addrs[2])] != 4; w = weights(t, c) {
			if time.Now().After(deadline) {
				t.Fatalf("weights %v, want b1 1 and its peers 4", w)
			}
			time.Sleep(2 * time.Millisecond)
		}
		acted, drainedDelay = time.Now(), delayMS.Load()
	}
	down := waitFor("b1's check failing", 10*time.Second, func(e recorder.Event) bool {
		return e.Kind == "backend-down" && e.Backend == b1.String()
	})
	downDelay := delayMS.Load()
	lead := down.Apply.Sub(acted)
	t.Logf("action %s: b1 acted on %v after the slowdown began (answering in ~%d ms; %s); its check failed %v after (answering in ~%d ms): %v before the active check",
		action, acted.Sub(start).Round(time.Millisecond), drainedDelay, why, down.Apply.Sub(start).Round(time.Millisecond), downDelay, lead.Round(time.Millisecond))
	if lead <= 0 {
		t.Fatalf("acted on %v after its check failed", -lead)
	}
	// Back to full speed: its check passes again, prediction still holds
	// it drained until its window says it recovered, then it is up.
	stepper.Stop()
	delayMS.Store(0)
	waitFor("b1 recovered", 10*time.Second, func(e recorder.Event) bool {
		return e.Kind == "predict-recovered" && e.Backend == b1.String()
	})
	deadline := time.Now().Add(5 * time.Second)
	for held(t, c)["web"][b1] != loader.Up || weights(t, c)[b1] != weights(t, c)[netip.MustParseAddr(addrs[1])] {
		if time.Now().After(deadline) {
			t.Fatalf("b1 recovered but the dataplane holds %s, weights %v:\n%s", held(t, c)["web"][b1], weights(t, c), events(c))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, e := range c.rec.Since(0) {
		if isPeer(e) && (e.Kind == "predict-degraded" || e.Kind == "backend-draining" || e.Kind == "backend-down") {
			t.Fatalf("a healthy peer moved: %s %s %s", e.Kind, e.Backend, e.Reason)
		}
	}
}
