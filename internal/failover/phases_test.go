package failover

import (
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/recorder"
)

func TestPhasesFrom(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 13, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	events := []recorder.Event{
		{Kind: "backend-down", Time: at(-50), Detect: at(-52), Decide: at(-50), Apply: at(-49)}, // before the failure
		{Kind: "backend-up", Time: at(5)},
		{Kind: "backend-down", Time: at(21), Detect: at(20), Decide: at(21), Apply: at(22)},
		{Kind: "vrrp-master", Time: at(30), Decide: at(30), Apply: at(31), Announce: at(32)},
	}
	cases := []struct {
		kind string
		want Phases
		err  bool
	}{
		{"backend-down", Phases{Detect: 20 * time.Millisecond, Decide: 21 * time.Millisecond, Apply: 22 * time.Millisecond}, false},
		{"vrrp-master", Phases{Decide: 30 * time.Millisecond, Apply: 31 * time.Millisecond, Announce: 32 * time.Millisecond}, false},
		{"panic", Phases{}, true},
	}
	for _, c := range cases {
		got, err := PhasesFrom(events, c.kind, t0)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("%s: got %+v, %v; want %+v, err=%v", c.kind, got, err, c.want, c.err)
		}
	}
}
