package failover

import "github.com/keepbit/keepbit/internal/connload"

// RunFromLoad turns one connload run into the report's figures. failed is
// the backend the scenario took out ("" for a node failure, where every
// broken connection counts against the healthy target): a connection
// first answered by it may break, one on any other backend must not.
func RunFromLoad(r connload.Report, failed string) Run {
	run := Run{Gap: r.GapMax, FailedNew: r.NewFailed()}
	for _, c := range r.Conns {
		if c.Broken == "" {
			continue
		}
		if failed != "" && c.Backend() == failed {
			run.BrokenFailed++
		} else {
			run.BrokenHealthy++
		}
	}
	return run
}
