// Package failover owns the failover report's figures: per-scenario
// statistics over repeated runs and the comparison of each figure with
// its target. It does not run scenarios itself (no root needed), so the
// arithmetic and the report text can be tested with plain tables.
package failover

import (
	"fmt"
	"time"

	"github.com/keepbit/keepbit/internal/connload"
)

// Percentile returns the p-th percentile (0..100) of ds by the
// nearest-rank method (connload.Percentile): the smallest sample with at
// least p% of the samples at or below it. Nearest-rank never invents a
// value that was not measured, which matters when N is 20 and a p99 is
// the worst run.
func Percentile(ds []time.Duration, p float64) (time.Duration, error) {
	if len(ds) == 0 {
		return 0, fmt.Errorf("percentile of no samples")
	}
	if p < 0 || p > 100 {
		return 0, fmt.Errorf("percentile %v: outside 0..100", p)
	}
	return connload.Percentile(ds, p/100), nil
}

// Verdict compares a measured figure with its target; the report prints
// both so a reader sees the margin, not only pass or fail.
func Verdict(got, target time.Duration) string {
	if got <= target {
		return fmt.Sprintf("%v <= %v: met", got, target)
	}
	return fmt.Sprintf("%v > %v: MISSED", got, target)
}
