package ownership

import (
	"context"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/vip/vrrp"
)

// TestVRRPEventTime: a VRRP transition is recorded at the moment the
// machine changed state (the event's Decide), not when the event reached
// the recorder (after the VIPs were taken or released and the first
// announcement went out, which can be much later on a busy or thawed
// node). Both the flight recorder and the notify hook see that time, and
// the phase durations come from the transition's own timestamps.
func TestVRRPEventTime(t *testing.T) {
	// The transition happened a while ago: a recorder that stamped the
	// time of recording would be 300 ms off.
	decide := time.Now().Add(-300 * time.Millisecond)
	cases := []struct {
		name          string
		ev            vrrp.Event
		kind          string
		wantDecide    time.Duration // DetectToDecide
		wantAnnounced time.Duration // DetectToAnnounce, 0 = not announced
	}{
		{name: "backup on a better advertisement",
			ev:   vrrp.Event{Instance: "v", From: vrrp.Master, To: vrrp.Backup, Reason: "advertisement beats ours", Detect: decide.Add(-2 * time.Millisecond), Decide: decide},
			kind: "vrrp-backup", wantDecide: 2 * time.Millisecond},
		{name: "master when the master is silent",
			ev: vrrp.Event{Instance: "v", From: vrrp.Backup, To: vrrp.Master, Reason: "no advertisement", Detect: decide.Add(-time.Millisecond), Decide: decide,
				Announce: decide.Add(800 * time.Microsecond)},
			kind: "vrrp-master", wantDecide: time.Millisecond, wantAnnounced: 1800 * time.Microsecond},
		{name: "fault from tracking",
			ev:   vrrp.Event{Instance: "v", From: vrrp.Master, To: vrrp.Fault, Reason: "interface down", Detect: decide, Decide: decide},
			kind: "vrrp-fault"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			o := testOwner(ctx, 16, nil)
			n := &fakeNotifier{}
			o.notify = n
			r := &vrrpRun{cfg: config.VRRP{Notify: config.Notify{Command: "true"}}}
			o.onVRRP(r, tc.ev)

			got := o.rec.Since(0)
			if len(got) != 1 {
				t.Fatalf("recorded %d events, want 1: %+v", len(got), got)
			}
			e := got[0]
			if e.Kind != tc.kind || e.Service != "v" {
				t.Errorf("kind %q service %q, want %q v", e.Kind, e.Service, tc.kind)
			}
			if !e.Time.Equal(tc.ev.Decide) {
				t.Errorf("event time %s, want the transition's %s (off by %v)",
					e.Time.Format("15:04:05.000000"), tc.ev.Decide.Format("15:04:05.000000"), e.Time.Sub(tc.ev.Decide))
			}
			if e.DetectToDecide != tc.wantDecide || e.DetectToAnnounce != tc.wantAnnounced {
				t.Errorf("detect->decide %v detect->announce %v, want %v %v", e.DetectToDecide, e.DetectToAnnounce, tc.wantDecide, tc.wantAnnounced)
			}
			// The notify hook runs in its own goroutine.
			deadline := time.Now().Add(2 * time.Second)
			for {
				n.mu.Lock()
				ran := append([]recorder.Event(nil), n.ran...)
				n.mu.Unlock()
				if len(ran) == 1 {
					if !ran[0].Time.Equal(tc.ev.Decide) {
						t.Errorf("notify hook got time %s, want the transition's %s", ran[0].Time, tc.ev.Decide)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("notify hook ran %d times, want 1", len(ran))
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}
