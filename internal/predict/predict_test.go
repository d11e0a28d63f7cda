package predict

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// peerNoise is a healthy backend's latency in ms: 10 ms with a slow probe
// (30 ms) every fifth step, shifted per backend so spikes do not line up.
func peerNoise(b, step int) (float64, bool) {
	return [...]float64{8, 10, 12, 10, 30}[(step+b)%5], true
}

// TestJudgeSequences feeds four backends one probe each per second and
// judges each after its probe, as the controller does. want lists every
// change of verdict: "b1+15" flagged at step 15, "b1-44" unflagged at 44.
func TestJudgeSequences(t *testing.T) {
	set := Settings{LatencyFactor: 3, MinLatency: 20 * time.Millisecond, FailureRatio: 0.2,
		Window: 9500 * time.Millisecond, MinSamples: 5} // 10 probes in the window
	cases := []struct {
		name  string
		set   Settings
		steps int
		lat   func(b, step int) (ms float64, ok bool) // b1 is backend 1
		want  string
	}{
		{"healthy noisy peers are never flagged", set, 60, peerNoise, ""},
		{"a step up to 4x flags once the window's median reaches 3x (its own 30 ms spike counts)", set, 40, func(b, s int) (float64, bool) {
			if b == 1 && s >= 10 {
				return 40, true
			}
			return peerNoise(b, s)
		}, "b1+14"},
		{"degrading step by step (+4 ms a probe) flags when the median crosses 3x", set, 40, func(b, s int) (float64, bool) {
			if b == 1 {
				return 10 + 4*float64(max(0, s-10)), true
			}
			return peerNoise(b, s)
		}, "b1+20"},
		{"recovery with hysteresis: 2.5x keeps the flag, back to 1x clears it", set, 60, func(b, s int) (float64, bool) {
			if b == 1 {
				switch {
				case s >= 40:
					return 10, true
				case s >= 30:
					return 25, true
				case s >= 10:
					return 40, true
				}
			}
			return peerNoise(b, s)
		}, "b1+14 b1-44"},
		{"too few samples never flags", Settings{LatencyFactor: 3, MinLatency: 20 * time.Millisecond, FailureRatio: 0.2,
			Window: 9500 * time.Millisecond, MinSamples: 11}, 40, func(b, s int) (float64, bool) {
			if b == 1 {
				return 500, s%2 == 0
			}
			return peerNoise(b, s)
		}, ""},
		{"intermittent failures growing past 20% flag", set, 40, func(b, s int) (float64, bool) {
			if b == 1 && s >= 10 && s%4 == 0 {
				return 10, false
			}
			return peerNoise(b, s)
		}, "b1+16"},
		{"everyone slow together is no outlier", set, 40, func(b, s int) (float64, bool) {
			l, ok := peerNoise(b, s)
			if s >= 10 {
				l *= 10
			}
			return l, ok
		}, ""},
		{"everyone failing together is no outlier", set, 40, func(b, s int) (float64, bool) {
			l, _ := peerNoise(b, s)
			return l, (s+b)%3 != 0
		}, ""},
		{"5x its peers but under min_latency", set, 40, func(b, s int) (float64, bool) {
			if b == 1 {
				return 5, true
			}
			return 1, true
		}, ""},
		{"two of four degrading are both flagged (peers' median is still healthy)", set, 40, func(b, s int) (float64, bool) {
			if (b == 1 || b == 2) && s >= 10 {
				return 50, true
			}
			return peerNoise(b, s)
		}, "b1+14 b2+14"},
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			const n = 4
			hist := make([]*History, n)
			stats := make([]Stats, n)
			flagged := make([]bool, n)
			for i := range hist {
				hist[i] = NewHistory(64)
			}
			var got []string
			for s := range c.steps {
				now := t0.Add(time.Duration(s) * time.Second)
				for b := range n {
					ms, ok := c.lat(b, s)
					hist[b].Add(Sample{At: now, Latency: time.Duration(ms * float64(time.Millisecond)), OK: ok})
					stats[b] = hist[b].Stats(now, c.set.Window)
					var peers []Stats
					for o := range n {
						if o != b {
							peers = append(peers, stats[o])
						}
					}
					v := Judge(c.set, flagged[b], stats[b], peers)
					if v.Degraded != flagged[b] {
						sign := "-"
						if v.Degraded {
							sign = "+"
						}
						got = append(got, fmt.Sprintf("b%d%s%d", b, sign, s))
						t.Logf("step %d b%d: %v: %s", s, b, v.Degraded, v.Reason)
						flagged[b] = v.Degraded
					}
				}
			}
			if g := strings.Join(got, " "); g != c.want {
				t.Fatalf("changes %q, want %q", g, c.want)
			}
		})
	}
}

// TestHistoryResized: a smaller ring keeps the newest results, a larger
// one all of them, and both keep adding in order.
func TestHistoryResized(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := NewHistory(8)
	for i := range 13 { // wrapped: 5..12 kept
		h.Add(Sample{At: t0.Add(time.Duration(i) * time.Second), Latency: time.Duration(i) * time.Millisecond, OK: true})
	}
	now := t0.Add(12 * time.Second)
	for _, c := range []struct {
		capacity int
		samples  int
		p50      time.Duration
	}{{4, 4, 10 * time.Millisecond}, {8, 8, 8 * time.Millisecond}, {100, 8, 8 * time.Millisecond}} {
		r := h.Resized(c.capacity)
		if st := r.Stats(now, time.Hour); st.Samples != c.samples || st.P50 != c.p50 {
			t.Errorf("resized to %d: %+v, want %d samples, p50 %v", c.capacity, st, c.samples, c.p50)
		}
		r.Add(Sample{At: now, Latency: time.Second, OK: false})
		if st := r.Stats(now, time.Hour); st.Failures != 1 || st.Samples != min(c.samples+1, c.capacity) {
			t.Errorf("resized to %d, one more: %+v", c.capacity, st)
		}
	}
}

// TestHistoryBounded: the ring keeps its capacity's newest results, and
// Stats sees only the window's.
func TestHistoryBounded(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := NewHistory(8)
	for i := range 100 {
		h.Add(Sample{At: t0.Add(time.Duration(i) * time.Second), Latency: time.Duration(i) * time.Millisecond, OK: i%10 != 0})
	}
	if len(h.ring) != 8 {
		t.Fatalf("ring grew to %d", len(h.ring))
	}
	now := t0.Add(99 * time.Second)
	for _, c := range []struct {
		window            time.Duration
		samples, failures int
		p50, p90          time.Duration
	}{
		{time.Hour, 8, 0, 95 * time.Millisecond, 98 * time.Millisecond}, // 92..99: 90 (failed) has left the ring
		{3500 * time.Millisecond, 4, 0, 97 * time.Millisecond, 99 * time.Millisecond},
		{0, 1, 0, 99 * time.Millisecond, 99 * time.Millisecond},
	} {
		st := h.Stats(now, c.window)
		if st.Samples != c.samples || st.Failures != c.failures || st.P50 != c.p50 || st.P90 != c.p90 {
			t.Errorf("window %v: got %+v, want samples %d failures %d p50 %v p90 %v", c.window, st, c.samples, c.failures, c.p50, c.p90)
		}
	}
}
