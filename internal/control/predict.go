package control

import (
	"context"
	"fmt"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/predict"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// Predictive detection (a service's `predictive:` section): every probe
// result goes into its backend's history (internal/predict), the backend
// is judged against the service's other backends, and a flagged one is
// drained (action drain) before its check fails: new flows go elsewhere,
// established ones stay. Draining goes through desiredLocked like every
// other state, bounded so that prediction never costs more than a real
// failure could: never the last usable backend, never beyond the panic
// threshold, never more than max_drained of the service at once, and a
// real failure elsewhere takes precedence (a drained backend comes back
// when the others' failures need its capacity). With action weight the
// backend stays up with a smaller share of new flows instead: the
// service is re-applied (a Maglev table rebuild, off the event loop)
// with the degraded backend's weight cut to weight_percent, at most
// max_drained backends at once, never the only usable one.

// predictState is one backend's history and verdict; nil while its
// service has no predictive section.
type predictState struct {
	hist     *predict.History
	ring     int // the capacity hist was made with
	stats    predict.Stats
	last     time.Time // of the latest result
	degraded bool
	reason   string    // the numbers of the latest judgement
	since    time.Time // of the latest change of degraded
	flagged  uint64    // times flagged
	// acted says what the flag did: "drained", "de-weighted to 25%",
	// "flagged" (action flag), or why not; "" while not degraded.
	acted string
}

// Prediction is a backend's predictive detection as Status reports it.
type Prediction struct {
	Degraded bool
	Reason   string    // the numbers of the latest judgement
	Since    time.Time // of the latest change
	Acted    string    // drained, flagged, or why not drained
	Samples  int       // results in the window
	Failures int
	P50, P90 time.Duration
	Flagged  uint64 // times flagged since the backend was configured
}

// predictionLocked is b's Prediction, nil when its service has none.
func (c *Controller) predictionLocked(b *backend) *Prediction {
	if b.svc.cfg.Predictive == nil || b.pred == nil {
		return nil
	}
	p := b.pred
	return &Prediction{Degraded: p.degraded, Reason: p.reason, Since: p.since, Acted: p.acted,
		Samples: p.stats.Samples, Failures: p.stats.Failures, P50: p.stats.P50, P90: p.stats.P90, Flagged: p.flagged}
}

func predictSettings(pr *config.Predictive) predict.Settings {
	return predict.Settings{LatencyFactor: pr.LatencyFactor, MinLatency: pr.MinLatency, FailureRatio: pr.FailureRatio,
		Window: pr.Window, MinSamples: pr.MinSamples}
}

// onResult records one probe result and judges its backend; a change of
// verdict is recorded (predict-degraded, predict-recovered) and, with
// action drain, settles the service.
func (c *Controller) onResult(ctx context.Context, r probe.Result) {
	c.mu.Lock()
	b := c.byCheck[r.Check]
	if b == nil {
		c.mu.Unlock()
		return
	}
	pr := b.svc.cfg.Predictive
	if pr == nil {
		b.pred = nil
		c.mu.Unlock()
		return
	}
	if n := config.PredictRing(b.svc.cfg, *b.cfg); b.pred == nil || b.pred.ring != n {
		// A new ring (first result, or a reload changed the window or the
		// interval): the verdict and the newest results carry over.
		p := &predictState{hist: predict.NewHistory(n), ring: n}
		if o := b.pred; o != nil {
			p.hist = o.hist.Resized(n)
			p.degraded, p.reason, p.since, p.flagged, p.acted = o.degraded, o.reason, o.since, o.flagged, o.acted
		}
		b.pred = p
	}
	now := r.Start.Add(r.Latency)
	p := b.pred
	p.hist.Add(predict.Sample{At: now, Latency: r.Latency, OK: r.Err == nil})
	p.stats, p.last = p.hist.Stats(now, pr.Window), now
	var peers []predict.Stats
	for _, o := range b.svc.backends {
		// A peer whose check stopped (removed, drilled) has nothing to say
		// about now, and one whose check failed is no baseline (its
		// failures would raise the line the others are held to).
		if o != b && o.pred != nil && o.health != probe.Down && now.Sub(o.pred.last) <= pr.Window {
			peers = append(peers, o.pred.stats)
		}
	}
	v := predict.Judge(predictSettings(pr), p.degraded, p.stats, peers)
	p.reason = v.Reason
	if v.Degraded == p.degraded {
		c.mu.Unlock()
		return
	}
	p.degraded, p.since = v.Degraded, now
	var moves []move
	if v.Degraded {
		p.flagged++
		p.acted = "flagged"
	} else {
		p.acted = ""
	}
	switch pr.Action {
	case "drain":
		moves = c.settleLocked(b.svc, b, r.Start, time.Now())
	case "weight":
		c.predictWeightsLocked(b.svc) // says what it will do, in acted
		go c.reapply(ctx, b.svc.cfg.Name, "predictive weights applied")
	}
	ev := recorder.Event{Kind: "predict-recovered", Service: b.svc.cfg.Name, Backend: b.cfg.Address.String(), Reason: v.Reason,
		Detect: r.Start, Decide: now}
	if v.Degraded {
		ev.Kind, ev.Reason = "predict-degraded", p.acted+": "+v.Reason
	}
	c.mu.Unlock()
	c.rec.Add(ev)
	c.log.Info("backend "+ev.Kind, "service", ev.Service, "backend", ev.Backend, "reason", ev.Reason)
	c.report(moves)
}

// predictDesiredLocked is the drain a degraded backend gets (action
// drain), if its service can spare it; ok false leaves b to its health.
func (c *Controller) predictDesiredLocked(b *backend) (st loader.State, reason string, ok bool) {
	s, p := b.svc, b.pred
	pr := s.cfg.Predictive
	if pr == nil || pr.Action != "drain" || p == nil || !p.degraded || b.health != probe.Up {
		return 0, "", false
	}
	acted, ok := spareLocked(b, "drained", "by prediction", "max_drained", pr.MaxDrained, func(o *backend) bool {
		return o.state == loader.Draining && o.admin == Enabled && o.pred != nil && o.pred.degraded
	})
	p.acted = acted
	if !ok {
		return 0, "", false
	}
	return loader.Draining, "predictive: degraded: " + p.reason, true
}

// predictDrainedLocked reports whether prediction has drained a backend
// of s: settleLocked then re-settles s after any verdict, even one that
// wrote nothing (a failure the panic threshold kept up), so the drained
// backend can give its capacity back.
func (c *Controller) predictDrainedLocked(s *service) bool {
	if s.cfg.Predictive == nil {
		return false
	}
	for _, b := range s.backends {
		if b.state == loader.Draining && b.admin == Enabled && b.pred != nil && b.pred.degraded {
			return true
		}
	}
	return false
}

// predictWeightsLocked decides, for action weight, which degraded
// backends of s get a cut weight (in order, at most max_drained, never
// one whose peers take no new flows) and returns the weight each backend
// of s takes in the dataplane's spec: its configured weight, unless some
// backend is cut; then the cut ones' are multiplied by weight_percent's
// down and the others' by its up (config.PredictWeightScale).
func (c *Controller) predictWeightsLocked(s *service) func(*backend) uint32 {
	configured := func(b *backend) uint32 { return b.cfg.Weight }
	pr := s.cfg.Predictive
	if pr == nil || pr.Action != "weight" {
		return configured
	}
	cut := map[*backend]bool{}
	for _, addr := range s.order {
		b := s.backends[addr]
		p := b.pred
		if p == nil || !p.degraded {
			continue
		}
		usable := 0
		for _, o := range s.backends {
			if o != b && o.state == loader.Up && o.health != probe.Down && !cut[o] {
				usable++
			}
		}
		switch {
		case usable == 0:
			p.acted = "not de-weighted: no other usable backend"
		case len(cut) >= pr.MaxDrained:
			p.acted = fmt.Sprintf("not de-weighted: %d de-weighted by prediction already (max_drained %d)", len(cut), pr.MaxDrained)
		default:
			cut[b] = true
			p.acted = fmt.Sprintf("de-weighted to %d%%", pr.WeightPercent)
		}
	}
	if len(cut) == 0 {
		return configured
	}
	up, down := config.PredictWeightScale(pr.WeightPercent)
	return func(b *backend) uint32 {
		if cut[b] {
			return b.cfg.Weight * down
		}
		return b.cfg.Weight * up
	}
}
