package recorder

import (
	"context"
	"testing"
	"time"
)

func TestRingKeepsNewest(t *testing.T) {
	r := New(3)
	for i := range 5 {
		r.Add(Event{Kind: "k", Backend: string(rune('a' + i))})
	}
	got := r.Since(0)
	if len(got) != 3 || got[0].Seq != 3 || got[2].Seq != 5 || got[2].Backend != "e" {
		t.Fatalf("kept %+v, want seq 3..5", got)
	}
	if got := r.Since(4); len(got) != 1 || got[0].Seq != 5 {
		t.Fatalf("since 4: %+v", got)
	}
}

func TestDurations(t *testing.T) {
	t0 := time.Unix(100, 0)
	e := New(1).Add(Event{Detect: t0, Decide: t0.Add(30 * time.Millisecond), Apply: t0.Add(30*time.Millisecond + 2*time.Microsecond)})
	if e.DetectToDecide != 30*time.Millisecond || e.DecideToApply != 2*time.Microsecond || e.DetectToApply != 30*time.Millisecond+2*time.Microsecond {
		t.Fatalf("durations %+v", e)
	}
}

func TestWaitFollows(t *testing.T) {
	r := New(10)
	r.Add(Event{Kind: "old"})
	got := make(chan []Event, 1)
	go func() {
		ev, _ := r.Wait(context.Background(), 1)
		got <- ev
	}()
	time.Sleep(10 * time.Millisecond)
	r.Add(Event{Kind: "new"})
	select {
	case ev := <-got:
		if len(ev) != 1 || ev[0].Kind != "new" {
			t.Fatalf("woke with %+v", ev)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Wait did not wake on a new event")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Wait(ctx, 2); err == nil {
		t.Fatal("Wait ignored a cancelled context")
	}
}

// TestAddTime: an event that says when it happened keeps that time (a
// VRRP transition recorded after its announcement is stamped with its
// decide); one that does not is stamped when recorded.
func TestAddTime(t *testing.T) {
	happened := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		in   Event
		want func(got, before, after time.Time) bool
	}{
		{name: "time given", in: Event{Kind: "vrrp-backup", Time: happened, Detect: happened.Add(-time.Millisecond), Decide: happened},
			want: func(got, _, _ time.Time) bool { return got.Equal(happened) }},
		{name: "time missing", in: Event{Kind: "reload"},
			want: func(got, before, after time.Time) bool { return !got.Before(before) && !got.After(after) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now()
			e := New(4).Add(tc.in)
			after := time.Now()
			if !tc.want(e.Time, before, after) {
				t.Fatalf("time %s (recorded between %s and %s)", e.Time, before, after)
			}
		})
	}
}
