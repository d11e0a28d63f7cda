package failover

import (
	"fmt"
	"strings"
	"time"
)

// Kind says which target a scenario is held to: a backend failure is
// handled by one node's checks, a node failure adds a VRRP takeover.
type Kind string

const (
	BackendFailure Kind = "backend"
	NodeFailure    Kind = "node"
)

// Target returns the client-gap p99 target for a kind of failure (with
// 10 ms checks, fall 2, fast interval 5 ms, and 10 ms VRRP adverts).
func (k Kind) Target() time.Duration {
	if k == NodeFailure {
		return 40 * time.Millisecond
	}
	return 30 * time.Millisecond
}

// Run is what one run of a scenario measured on the client side.
type Run struct {
	Gap           time.Duration // longest time without an answer
	FailedNew     int           // new connections that got no answer
	BrokenFailed  int           // long-lived connections lost on the failed backend
	BrokenHealthy int           // long-lived connections lost on healthy backends (target 0)
	// FalseDown: of BrokenHealthy, those on a backend a node marked down
	// although the scenario left it alone (a check that failed on a
	// working backend: a detection error, not a failover one).
	FalseDown int
	// AfterMove: of BrokenHealthy and not FalseDown, those lost after the
	// VIP moved between nodes in a scenario that fails no node (a backup
	// that missed the master's adverts on a loaded machine took over).
	// The new owner maps flows with its own table: one that changed since
	// a flow began (a backend or group returned) moves that flow.
	AfterMove int
}

// Summary is one scenario's figures over all its runs.
type Summary struct {
	Name                   string
	Kind                   Kind
	Runs                   int
	GapP50, GapP99, GapMax time.Duration
	FailedNew              int
	BrokenFailed           int
	BrokenHealthy          int
	FalseDown              int // of BrokenHealthy: after a false check failure
	AfterMove              int // of BrokenHealthy: after an unplanned VIP move
}

// Summarize folds a scenario's runs into its figures.
func Summarize(name string, kind Kind, runs []Run) (Summary, error) {
	if len(runs) == 0 {
		return Summary{}, fmt.Errorf("scenario %q: no runs", name)
	}
	s := Summary{Name: name, Kind: kind, Runs: len(runs)}
	gaps := make([]time.Duration, len(runs))
	for i, r := range runs {
		gaps[i] = r.Gap
		s.GapMax = max(s.GapMax, r.Gap)
		s.FailedNew += r.FailedNew
		s.BrokenFailed += r.BrokenFailed
		s.BrokenHealthy += r.BrokenHealthy
		s.FalseDown += r.FalseDown
		s.AfterMove += r.AfterMove
	}
	s.GapP50, _ = Percentile(gaps, 50)
	s.GapP99, _ = Percentile(gaps, 99)
	return s, nil
}

// Markdown renders the summaries as a table, each figure beside its target.
func Markdown(sums []Summary) string {
	var b strings.Builder
	b.WriteString("| scenario | kind | runs | gap p50 | gap p99 (target) | gap max | failed new | broken on failed | broken on healthy (target 0) |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range sums {
		healthy := fmt.Sprintf("%d: met", s.BrokenHealthy)
		if s.BrokenHealthy > 0 {
			healthy = fmt.Sprintf("%d: MISSED", s.BrokenHealthy)
		}
		var why []string
		if s.FalseDown > 0 {
			why = append(why, fmt.Sprintf("%d after a false check failure", s.FalseDown))
		}
		if s.AfterMove > 0 {
			why = append(why, fmt.Sprintf("%d after an unplanned VIP move", s.AfterMove))
		}
		if len(why) > 0 {
			healthy = fmt.Sprintf("%d (%s): MISSED", s.BrokenHealthy, strings.Join(why, ", "))
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %v | %s | %v | %d | %d | %s |\n",
			s.Name, s.Kind, s.Runs, s.GapP50, Verdict(s.GapP99, s.Kind.Target()), s.GapMax,
			s.FailedNew, s.BrokenFailed, healthy)
	}
	return b.String()
}
