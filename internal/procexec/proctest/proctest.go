// Package proctest is test support for code that runs commands through
// procexec: a command that forks and records its pids, and a check that
// none of its processes outlived the run. It is imported by tests only.
package proctest

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Forker is a command that records its pid (its process group's id when
// it leads one) and its child's in file, then waits on a second child: it
// hangs for 30 s unless it is killed, children included.
func Forker(file string) (string, []string) {
	return "sh", []string{"-c", `echo $$ > "$0"; sleep 30 & echo $! >> "$0"; sleep 30`, file}
}

// CheckNoneLeft fails tb if the processes recorded in file (the shell's
// pid, which is its group's id, then its child's, as Forker writes them),
// or any process of the group led by the first, still run after a grace
// second: SIGKILL is delivered before kill returns, but the exit itself
// takes a moment.
func CheckNoneLeft(tb testing.TB, file string) {
	tb.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		tb.Fatalf("the command did not record its pids: %v", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		pids = append(pids, pid)
	}
	if len(pids) != 2 {
		tb.Fatalf("pids %q, want the shell's and its child's", b)
	}
	deadline := time.Now().Add(time.Second)
	for len(live(tb, pids[0], pids)) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if l := live(tb, pids[0], pids); len(l) > 0 {
		tb.Errorf("processes %v of the command still running", l)
	}
}

// live lists the running processes that are in group pgid or in pids
// (zombies waiting for a reaper do not count: they hold nothing). An
// unreadable /proc fails tb: an empty answer would pass any check.
func live(tb testing.TB, pgid int, pids []int) []int {
	tb.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		tb.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp ...: comm may hold spaces, so
		// split after its closing parenthesis.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid || slices.Contains(pids, pid) {
			out = append(out, pid)
		}
	}
	return out
}
