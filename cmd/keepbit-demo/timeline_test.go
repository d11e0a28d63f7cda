package main

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/recorder"
)

// TestTimelineLines: the failover timeline lists both nodes' events in
// the order they happened, whatever order their two event streams
// delivered them in, and says each event's own time.
func TestTimelineLines(t *testing.T) {
	start := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return start.Add(d) }
	backendDown := func(node string, seq uint64, when time.Duration, backend string, toDecide, toApply time.Duration) nodeEvent {
		decide := at(when)
		return nodeEvent{node: node, Event: recorder.Event{Seq: seq, Time: decide.Add(toApply), Kind: "backend-down", Backend: backend,
			Detect: decide.Add(-toDecide), Decide: decide, Apply: decide.Add(toApply), DetectToDecide: toDecide, DecideToApply: toApply}}
	}
	vrrpEv := func(node string, seq uint64, when time.Duration, kind string, toAnnounce time.Duration) nodeEvent {
		e := nodeEvent{node: node, Event: recorder.Event{Seq: seq, Time: at(when), Kind: kind, Service: "vip", Detect: at(when - time.Millisecond), Decide: at(when)}}
		if toAnnounce > 0 {
			e.Announce, e.DetectToAnnounce = e.Detect.Add(toAnnounce), toAnnounce
		}
		return e
	}
	midnight := time.Date(2026, 11, 22, 23, 59, 59, 0, time.UTC)
	cases := []struct {
		name  string
		start time.Time
		in    []nodeEvent // in arrival order
		want  []string
	}{
		{name: "two streams deliver out of time order",
			start: start,
			in: []nodeEvent{
				backendDown("lb1", 5, 3100*time.Millisecond, "10.77.1.11", 4702*time.Microsecond, 171*time.Microsecond),
				vrrpEv("lb1", 6, 7004*time.Millisecond, "vrrp-backup", 0),
				backendDown("lb2", 7, 3090*time.Millisecond, "10.77.1.11", 5548*time.Microsecond, 162*time.Microsecond),
				vrrpEv("lb2", 8, 5020*time.Millisecond, "vrrp-master", 882*time.Microsecond),
			},
			want: []string{
				"[  3.090s] 12:00:03.090 lb2  backend-down  10.77.1.11  detect->decide   5.548ms  decide->apply     162µs",
				"[  3.100s] 12:00:03.100 lb1  backend-down  10.77.1.11  detect->decide   4.702ms  decide->apply     171µs",
				"[  5.020s] 12:00:05.020 lb2  vrrp-master               detect->announce     882µs",
				"[  7.004s] 12:00:07.004 lb1  vrrp-backup",
			}},
		{name: "within one millisecond the earlier comes first",
			start: start,
			in: []nodeEvent{
				vrrpEv("lb1", 9, 7004900*time.Microsecond, "vrrp-backup", 0),
				vrrpEv("lb2", 3, 7004100*time.Microsecond, "vrrp-master", 700*time.Microsecond),
			},
			want: []string{
				"[  7.004s] 12:00:07.004 lb2  vrrp-master               detect->announce     700µs",
				"[  7.004s] 12:00:07.004 lb1  vrrp-backup",
			}},
		{name: "the same instant: by node, then sequence",
			start: start,
			in: []nodeEvent{
				vrrpEv("lb2", 2, time.Second, "vrrp-backup", 0),
				vrrpEv("lb1", 4, time.Second, "vrrp-master", time.Millisecond),
				vrrpEv("lb1", 3, time.Second, "vrrp-backup", 0),
			},
			want: []string{
				"[  1.000s] 12:00:01.000 lb1  vrrp-backup",
				"[  1.000s] 12:00:01.000 lb1  vrrp-master               detect->announce       1ms",
				"[  1.000s] 12:00:01.000 lb2  vrrp-backup",
			}},
		{name: "across midnight",
			start: midnight,
			in: []nodeEvent{
				vrrpEv("lb1", 1, 990*time.Millisecond, "vrrp-backup", 0),
				vrrpEv("lb2", 1, 1010*time.Millisecond, "vrrp-master", 2*time.Millisecond),
			},
			want: []string{
				"[  0.990s] 23:59:59.990 lb1  vrrp-backup",
				"[  1.010s] 00:00:00.010 lb2  vrrp-master               detect->announce       2ms",
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := make([]nodeEvent, len(tc.in))
			for i, e := range tc.in {
				// Events are built relative to the package start; move them
				// to this case's.
				d := tc.start.Sub(start)
				e.Time, e.Detect, e.Decide = e.Time.Add(d), e.Detect.Add(d), e.Decide.Add(d)
				if !e.Apply.IsZero() {
					e.Apply = e.Apply.Add(d)
				}
				if !e.Announce.IsZero() {
					e.Announce = e.Announce.Add(d)
				}
				in[i] = e
			}
			arrived := slices.Clone(in)
			got := timelineLines(in, tc.start)
			if !slices.Equal(got, tc.want) {
				t.Errorf("timeline:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if !slices.EqualFunc(in, arrived, func(a, b nodeEvent) bool { return a.node == b.node && a.Seq == b.Seq }) {
				t.Error("timelineLines reordered its caller's slice")
			}
		})
	}
}
