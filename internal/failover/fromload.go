package failover

import (
	"slices"

	"github.com/keepbit/keepbit/internal/connload"
)

// RunFromLoad turns one connload run into the report's figures. failed are
// the backends the scenario took out (none for a node failure, where every
// broken connection counts against the healthy target): a connection
// first answered by one of them may break, one on any other backend must
// not.
func RunFromLoad(r connload.Report, failed ...string) Run {
	run := Run{Gap: r.GapMax, FailedNew: r.NewFailed()}
	for _, c := range r.Conns {
		if c.Broken == "" {
			continue
		}
		if slices.Contains(failed, c.Backend()) {
			run.BrokenFailed++
		} else {
			run.BrokenHealthy++
		}
	}
	return run
}
