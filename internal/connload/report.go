package connload

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Report sums up a load run.
type Report struct {
	Elapsed time.Duration
	Conns   []Conn // the long-lived connections
	// Broken counts broken long-lived connections by cause; BrokenTotal
	// is their sum.
	Broken      map[Cause]int
	BrokenTotal int
	// ByBackend counts long-lived connections by the backend that
	// answered first: how the load balancer spread them.
	ByBackend map[string]int
	// GapP50, GapP99, GapMax: percentiles of the longest gap of each
	// long-lived connection (broken ones included: their gap is the time
	// from their last answer to the break). This is what a client sees
	// of a failover.
	GapP50, GapP99, GapMax time.Duration
	New                    NewConns
}

func (r *Report) summarize() {
	gaps := make([]time.Duration, 0, len(r.Conns))
	for _, c := range r.Conns {
		if c.Broken != "" {
			r.Broken[c.Broken]++
			r.BrokenTotal++
		}
		if b := c.Backend(); b != "" {
			r.ByBackend[b]++
		}
		gaps = append(gaps, c.MaxGap)
	}
	r.GapP50, r.GapP99, r.GapMax = Percentile(gaps, 0.50), Percentile(gaps, 0.99), Percentile(gaps, 1)
}

// Percentile is the nearest-rank q-quantile (0 < q <= 1) of ds; 0 for none.
func Percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// NewFailed is the number of failed new connections.
func (r Report) NewFailed() int { return r.New.Attempts - r.New.OK }

// BrokenConns lists the broken long-lived connections.
func (r Report) BrokenConns() []Conn {
	var out []Conn
	for _, c := range r.Conns {
		if c.Broken != "" {
			out = append(out, c)
		}
	}
	return out
}

// String is a one-paragraph summary for logs and reports.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d long-lived connections over %v: %d broken%s; by backend %s; gap p50 %v p99 %v max %v",
		len(r.Conns), r.Elapsed.Round(time.Millisecond), r.BrokenTotal, causes(r.Broken), counts(r.ByBackend),
		r.GapP50.Round(100*time.Microsecond), r.GapP99.Round(100*time.Microsecond), r.GapMax.Round(100*time.Microsecond))
	if r.New.Attempts > 0 {
		fmt.Fprintf(&b, "; new connections: %d of %d answered%s, by backend %s",
			r.New.OK, r.New.Attempts, causes(r.New.Failed), counts(r.New.ByBackend))
		for _, k := range slices.Sorted(maps.Keys(r.New.Errors)) {
			fmt.Fprintf(&b, "; first %s: %s", k, r.New.Errors[k])
		}
	}
	return b.String()
}

func causes(m map[Cause]int) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func counts(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}
