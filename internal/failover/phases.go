package failover

import (
	"fmt"
	"time"

	"github.com/keepbit/keepbit/internal/recorder"
)

// Phases are the flight recorder's phase moments of one failover,
// measured from the moment the scenario injected the failure; zero when
// the event had no such phase (only VIP moves announce).
type Phases struct {
	Detect, Decide, Apply, Announce time.Duration
}

// PhasesFrom finds the first event of kind at or after failAt (as
// `keepbitctl events -o json` lists them) and measures its phases from
// failAt. Measuring from the injection, not from Detect, is what makes
// detect mean "how long the failure went unnoticed".
func PhasesFrom(events []recorder.Event, kind string, failAt time.Time) (Phases, error) {
	var first *recorder.Event
	for i := range events {
		e := &events[i]
		if e.Kind != kind || e.Time.Before(failAt) {
			continue
		}
		if first == nil || e.Time.Before(first.Time) {
			first = e
		}
	}
	if first == nil {
		return Phases{}, fmt.Errorf("no %s event after %v", kind, failAt.Format(time.RFC3339Nano))
	}
	since := func(t time.Time) time.Duration {
		if t.IsZero() {
			return 0
		}
		return t.Sub(failAt)
	}
	return Phases{since(first.Detect), since(first.Decide), since(first.Apply), since(first.Announce)}, nil
}
