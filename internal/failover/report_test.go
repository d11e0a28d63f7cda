package failover

import (
	"strings"
	"testing"
	"time"
)

func TestSummarizeAndMarkdown(t *testing.T) {
	runs := []Run{
		{Gap: 20 * time.Millisecond, FailedNew: 1, BrokenFailed: 2},
		{Gap: 10 * time.Millisecond},
		{Gap: 35 * time.Millisecond, BrokenHealthy: 1},
	}
	falseDown := []Run{{Gap: 5 * time.Millisecond, BrokenHealthy: 3, FalseDown: 2}}
	s, err := Summarize("backend killed", BackendFailure, runs)
	if err != nil {
		t.Fatal(err)
	}
	want := Summary{Name: "backend killed", Kind: BackendFailure, Runs: 3,
		GapP50: 20 * time.Millisecond, GapP99: 35 * time.Millisecond, GapMax: 35 * time.Millisecond,
		FailedNew: 1, BrokenFailed: 2, BrokenHealthy: 1}
	if s != want {
		t.Fatalf("Summarize = %+v, want %+v", s, want)
	}
	got := Markdown([]Summary{s})
	wantMD := "| scenario | kind | runs | gap p50 | gap p99 (target) | gap max | failed new | broken on failed | broken on healthy (target 0) |\n" +
		"|---|---|---|---|---|---|---|---|---|\n" +
		"| backend killed | backend | 3 | 20ms | 35ms > 30ms: MISSED | 35ms | 1 | 2 | 1: MISSED |\n"
	if got != wantMD {
		t.Errorf("Markdown =\n%s\nwant\n%s", got, wantMD)
	}
	fd, err := Summarize("master frozen", NodeFailure, falseDown)
	if err != nil {
		t.Fatal(err)
	}
	if fd.BrokenHealthy != 3 || fd.FalseDown != 2 {
		t.Errorf("Summarize with false check failures = %+v, want 3 broken on healthy, 2 of them after a false down", fd)
	}
	wantRow := "| master frozen | node | 1 | 5ms | 5ms <= 40ms: met | 5ms | 0 | 0 | 3 (2 after a false check failure): MISSED |\n"
	if got := Markdown([]Summary{fd}); !strings.HasSuffix(got, wantRow) {
		t.Errorf("Markdown =\n%s\nwant the row\n%s", got, wantRow)
	}
	moved, err := Summarize("primary group returns", BackendFailure, []Run{
		{Gap: 5 * time.Millisecond, BrokenHealthy: 4, FalseDown: 1, AfterMove: 2},
		{Gap: 5 * time.Millisecond, BrokenHealthy: 3, AfterMove: 3},
	})
	if err != nil {
		t.Fatal(err)
	}
	if moved.BrokenHealthy != 7 || moved.FalseDown != 1 || moved.AfterMove != 5 {
		t.Errorf("Summarize with unplanned VIP moves = %+v, want 7 broken on healthy, 1 after a false down, 5 after a move", moved)
	}
	wantRow = "| primary group returns | backend | 2 | 5ms | 5ms <= 30ms: met | 5ms | 0 | 0 | 7 (1 after a false check failure, 5 after an unplanned VIP move): MISSED |\n"
	if got := Markdown([]Summary{moved}); !strings.HasSuffix(got, wantRow) {
		t.Errorf("Markdown =\n%s\nwant the row\n%s", got, wantRow)
	}
	if _, err := Summarize("x", NodeFailure, nil); err == nil {
		t.Error("Summarize with no runs: want an error")
	}
}
