package failover

import (
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/connload"
)

func TestRunFromLoad(t *testing.T) {
	r := connload.Report{
		GapMax: 25 * time.Millisecond,
		Conns: []connload.Conn{
			{Backends: []string{"b1"}, Broken: connload.Reset},
			{Backends: []string{"b2"}, Broken: connload.Reset},
			{Backends: []string{"b2"}},
			{Backends: []string{"b1"}},
		},
		New: connload.NewConns{Attempts: 10, OK: 7},
	}
	cases := []struct {
		name   string
		failed []string
		want   Run
	}{
		{"backend b1 failed", []string{"b1"}, Run{Gap: 25 * time.Millisecond, FailedNew: 3, BrokenFailed: 1, BrokenHealthy: 1}},
		{"group b1 and b2 lost", []string{"b1", "b2"}, Run{Gap: 25 * time.Millisecond, FailedNew: 3, BrokenFailed: 2}},
		{"node failure: all count as healthy", nil, Run{Gap: 25 * time.Millisecond, FailedNew: 3, BrokenHealthy: 2}},
	}
	for _, c := range cases {
		if got := RunFromLoad(r, c.failed...); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
}
