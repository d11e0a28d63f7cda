// Package predict tells, from the health checks' own results, which
// backend of a service is degrading before its check fails: its probe
// latency has risen well above its peers', or its probes fail
// intermittently (short of the check's fall count) more often than its
// peers'. It owns the per-backend history (a bounded ring of recent
// results) and the judgement; the controller (internal/control) decides
// what to do with a flagged backend.
//
// The statistic, and why:
//
//   - Latency: the median (p50) of the backend's successful probes in the
//     window, against the median of its peers' medians. Medians, because a
//     probe that lands on a GC pause or a busy core must not flag a backend
//     (one slow probe in twenty moves the p50 of twenty by nothing), and
//     because comparing with peers rather than with the backend's own past
//     keeps a slow service (all backends slow together: a shared database)
//     from draining itself. A backend is flagged when its p50 is at least
//     LatencyFactor times the peers' and at least MinLatency (so 0.3 ms
//     against 0.1 ms on a quiet LAN is not an outlier).
//   - Failures: the share of failed probes in the window, minus the
//     median share of its peers. A backend is flagged when the excess
//     reaches FailureRatio: failures the check's fall count forgives one at
//     a time, but that grow.
//   - Nothing is judged before the backend has MinSamples results in the
//     window, and there are no peers to compare with until at least one
//     peer has too.
//   - Hysteresis: a flagged backend stays flagged until its p50 is below
//     half way between the peers' and the flagging line (factor 3: 2x
//     the peers'), or below half of MinLatency, and its failure excess is
//     below half of FailureRatio. A backend hovering on the line does not
//     flap in and out.
package predict

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Settings are one service's thresholds (config: a service's
// `predictive:` section).
type Settings struct {
	LatencyFactor float64       // p50 / peers' p50 that flags (> 1)
	MinLatency    time.Duration // a p50 below this is never an outlier
	FailureRatio  float64       // failure share above the peers' that flags (0-1]
	Window        time.Duration // results older than this are forgotten
	MinSamples    int           // results in the window before judging
}

// Sample is one probe result.
type Sample struct {
	At      time.Time
	Latency time.Duration
	OK      bool
}

// History is a backend's recent probe results: a ring of at most its
// capacity, so memory is bounded whatever the check interval.
type History struct {
	ring []Sample
	next int
	n    int
}

// NewHistory keeps at most capacity results (at least 1).
func NewHistory(capacity int) *History {
	return &History{ring: make([]Sample, max(capacity, 1))}
}

// Add records one result, replacing the oldest when full.
func (h *History) Add(s Sample) {
	h.ring[h.next] = s
	h.next = (h.next + 1) % len(h.ring)
	h.n = min(h.n+1, len(h.ring))
}

// Resized is a history of capacity holding h's newest results, so a
// reload that changes the window or the interval keeps what is known.
func (h *History) Resized(capacity int) *History {
	out := NewHistory(capacity)
	start := (h.next - h.n + len(h.ring)) % len(h.ring) // the oldest
	for i := max(h.n-len(out.ring), 0); i < h.n; i++ {
		out.Add(h.ring[(start+i)%len(h.ring)])
	}
	return out
}

// Stats summarises a backend's results in a window.
type Stats struct {
	Samples  int // results in the window
	Failures int
	P50, P90 time.Duration // of the successful probes; 0 with none
}

// FailureRatio is the failed share of the window's results.
func (s Stats) FailureRatio() float64 {
	if s.Samples == 0 {
		return 0
	}
	return float64(s.Failures) / float64(s.Samples)
}

// Stats summarises the results no older than window before now.
func (h *History) Stats(now time.Time, window time.Duration) Stats {
	var st Stats
	lat := make([]time.Duration, 0, h.n)
	for i := range h.n {
		s := h.ring[i]
		if now.Sub(s.At) > window {
			continue
		}
		st.Samples++
		if !s.OK {
			st.Failures++
			continue
		}
		lat = append(lat, s.Latency)
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		st.P50 = quantile(lat, 0.5)
		st.P90 = quantile(lat, 0.9)
	}
	return st
}

// quantile of sorted values, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted)) + 0.5)
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

// Verdict is a judgement of one backend.
type Verdict struct {
	Degraded bool
	// Reason gives the numbers either way ("p50 84ms is 8.4x its peers'
	// 10ms (flag at 3x, >= 20ms); failures 0% (peers 0%)"), or why it
	// was not judged.
	Reason string
}

// Judge decides whether a backend is degraded, given whether it was
// (hysteresis), its stats and its peers' (the service's other backends).
func Judge(set Settings, was bool, self Stats, peers []Stats) Verdict {
	if self.Samples < set.MinSamples {
		return Verdict{Reason: fmt.Sprintf("%d of %d samples", self.Samples, set.MinSamples)}
	}
	var lats, fails []float64
	for _, p := range peers {
		if p.Samples < set.MinSamples {
			continue
		}
		fails = append(fails, p.FailureRatio())
		if p.P50 > 0 {
			lats = append(lats, float64(p.P50))
		}
	}
	if len(fails) == 0 {
		return Verdict{Reason: "no peer with enough samples"}
	}
	peerFail := median(fails)
	excess := self.FailureRatio() - peerFail

	// The lines to cross: flagging, or (already flagged) recovering.
	factor, minLat, failLine := set.LatencyFactor, set.MinLatency, set.FailureRatio
	if was {
		factor, minLat, failLine = 1+(factor-1)/2, minLat/2, failLine/2
	}
	var why []string
	slow := false
	if len(lats) > 0 && self.P50 > 0 {
		peerLat := time.Duration(median(lats))
		ratio := float64(self.P50) / float64(max(peerLat, time.Microsecond))
		slow = ratio >= factor && self.P50 >= minLat
		why = append(why, fmt.Sprintf("p50 %v (p90 %v) is %.1fx its peers' %v (line %.1fx, >= %v)",
			round(self.P50), round(self.P90), ratio, round(peerLat), factor, minLat))
	}
	failing := excess >= failLine
	why = append(why, fmt.Sprintf("failures %.0f%% of %d (peers %.0f%%, line +%.0f%%)",
		100*self.FailureRatio(), self.Samples, 100*peerFail, 100*failLine))
	return Verdict{Degraded: slow || failing, Reason: strings.Join(why, "; ")}
}

func median(v []float64) float64 {
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// round keeps durations readable in reasons (84.123456ms -> 84.1ms).
func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
