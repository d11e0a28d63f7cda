package probe

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// TestRemovedCheckUnreported: "Remove stops check id; a probe in flight
// finishes unreported". A verdict decided just before Remove was still
// delivered after it (the delivery happened outside the lock, after the
// verdict), so a controller that had removed and re-added a backend under
// the same check ID applied the old check's verdict to the new one. Cases:
// Remove between the verdict and its delivery, and Remove while the
// delivery waits on a full events channel.
func TestRemovedCheckUnreported(t *testing.T) {
	cases := []struct {
		name string
		full bool // the events channel is full when the verdict is delivered
	}{
		{"removed before delivery", false},
		{"removed while the channel is full", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := NewScheduler(nil)
			s.events = make(chan Event, 1)
			if tc.full {
				s.events <- Event{Check: "filler"}
			}
			decided := make(chan struct{})
			s.beforeDeliver = func(ev Event) {
				if !tc.full {
					s.Remove(ev.Check)
				}
				close(decided)
			}
			spec := Spec{Kind: TCP, Target: netip.MustParseAddrPort("127.0.0.1:1"), Interval: time.Hour, Timeout: time.Second, Rise: 1, Fall: 1}
			c := &check{id: "x", spec: spec, prober: &alternating{}, next: time.Now(), gone: make(chan struct{})}
			s.mu.Lock()
			s.checks[c.id] = c
			s.scheduleLocked(c)
			s.mu.Unlock()
			go s.Run(t.Context())
			<-decided
			if tc.full {
				time.Sleep(20 * time.Millisecond) // the delivery waits on the channel
				s.Remove("x")
				<-s.events // the filler
			}
			select {
			case ev := <-s.events:
				t.Fatalf("event %s %s -> %s delivered after its check was removed", ev.Check, ev.From, ev.To)
			case <-time.After(200 * time.Millisecond):
			}
		})
	}
}

// TestRemovedChecksLeaveTheTimetable: a removed check's entry waits in the
// timetable until it comes up (an hour here), so checks replaced over and
// over must not pile up there: past half, the removed ones are dropped.
func TestRemovedChecksLeaveTheTimetable(t *testing.T) {
	s := NewScheduler(nil)
	spec := Spec{Kind: TCP, Target: netip.MustParseAddrPort("127.0.0.1:1"), Interval: time.Hour, Timeout: time.Second, Rise: 1, Fall: 1}
	for i := range 10000 {
		if err := s.Add(fmt.Sprint("c", i%10), spec); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	n, stale := s.due.len(), s.stale
	s.mu.Unlock()
	if n > 2*1024+10 || n-stale != 10 {
		t.Fatalf("timetable holds %d entries (%d of removed checks) for 10 checks", n, stale)
	}
}
