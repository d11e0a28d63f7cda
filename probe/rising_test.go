package probe

import (
	"errors"
	"testing"
)

// TestRising: a check is rising while it is not up and its latest probes
// passed, short of rise; a failure or reaching rise ends it.
func TestRising(t *testing.T) {
	fail := errors.New("refused")
	for _, tc := range []struct {
		name    string
		from    State
		results []error // nil: a passing probe
		want    bool
	}{
		{"unknown, no probe yet", Unknown, nil, false},
		{"down, one pass of three", Down, []error{nil}, true},
		{"down, two passes of three", Down, []error{fail, nil, nil}, true},
		{"down, passes then a failure", Down, []error{nil, nil, fail}, false},
		{"down, rise reached: up", Down, []error{nil, nil, nil}, false},
		{"up, passing", Up, []error{nil, nil}, false},
		{"up, one failure", Up, []error{fail}, false},
		{"unknown, one pass", Unknown, []error{nil}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewScheduler(nil)
			c := &check{id: "web|10.0.0.1", spec: Spec{Rise: 3, Fall: 2}, state: tc.from}
			s.checks[c.id] = c
			for _, err := range tc.results {
				c.record(Result{Err: err})
			}
			if got := s.Rising(c.id); got != tc.want {
				t.Errorf("Rising = %v, want %v (state %v, okRun %d)", got, tc.want, c.state, c.okRun)
			}
			if s.Rising("nope") {
				t.Error("an unknown check is rising")
			}
		})
	}
}
