package procexec

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// liveOf lists the running processes that are in group pgid or in pids
// (zombies waiting for a reaper do not count: they hold nothing).
func liveOf(t *testing.T, pgid int, pids []int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var live []int
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
			live = append(live, pid)
		}
	}
	return live
}

func TestRun(t *testing.T) {
	long := strings.Repeat("x", 3*MaxOutput)
	cases := []struct {
		name    string
		cmd     Command
		timeout time.Duration
		wantOut string
		wantErr string // substring; "" = no error
		within  time.Duration
	}{
		{"ok with stdout", Command{Path: "sh", Args: []string{"-c", "echo $K; echo err >&2"}, Env: []string{"K=v"}, Stdout: true},
			5 * time.Second, "v\nerr\n", "", 2 * time.Second},
		{"stderr only", Command{Path: "sh", Args: []string{"-c", "echo out; echo err >&2; exit 3"}},
			5 * time.Second, "err\n", "exit status 3", 2 * time.Second},
		{"output capped", Command{Path: "sh", Args: []string{"-c", "printf " + long}, Stdout: true},
			5 * time.Second, long[:MaxOutput], "", 2 * time.Second},
		// The shell and both children die at the timeout; before, only
		// the shell was killed and its children held the pipe for 30 s.
		{"timeout kills the group", Command{Path: "sh", Args: []string{"-c", "echo $$ > $0; sleep 30 & echo $! >> $0; sleep 30", "PGID"}, Stdout: true},
			100 * time.Millisecond, "", "killed", 2 * time.Second},
		// The leader exits at once, a child keeps the pipe: returned
		// after WaitDelay, the child killed.
		{"leftover child holding the pipe", Command{Path: "sh", Args: []string{"-c", "echo $$ > $0; sleep 30 & echo $! >> $0", "PGID"}},
			5 * time.Second, "", "WaitDelay", 2 * time.Second},
		// The same with a failing leader: exec.Cmd.Wait then reports the
		// exit status, not ErrWaitDelay, and before the fix the child
		// was left running.
		{"leftover child after a failure", Command{Path: "sh", Args: []string{"-c", "echo $$ > $0; sleep 30 & echo $! >> $0; exit 3", "PGID"}},
			5 * time.Second, "", "exit status 3", 2 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pgidFile, group := filepath.Join(t.TempDir(), "pgid"), false
			for i, a := range c.cmd.Args {
				if a == "PGID" {
					c.cmd.Args[i], group = pgidFile, true
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
			defer cancel()
			start := time.Now()
			out, err := Run(ctx, c.cmd)
			took := time.Since(start)
			if took > c.within {
				t.Errorf("took %v, want under %v", took, c.within)
			}
			if string(out) != c.wantOut {
				t.Errorf("output %q, want %q", out, c.wantOut)
			}
			if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Errorf("error %v, want %q", err, c.wantErr)
			}
			if group {
				b, err := os.ReadFile(pgidFile)
				if err != nil {
					t.Fatalf("the command did not record its group: %v", err)
				}
				// The shell's pid (the group's id) and its child's.
				var pids []int
				for _, f := range strings.Fields(string(b)) {
					pid, _ := strconv.Atoi(f)
					pids = append(pids, pid)
				}
				if len(pids) != 2 {
					t.Fatalf("pids %q, want the shell's and its child's", b)
				}
				// SIGKILL is delivered before kill returns, but the
				// exit itself takes a moment.
				deadline := time.Now().Add(time.Second)
				for len(liveOf(t, pids[0], pids)) > 0 && time.Now().Before(deadline) {
					time.Sleep(10 * time.Millisecond)
				}
				if live := liveOf(t, pids[0], pids); len(live) > 0 {
					t.Errorf("processes %v of the command still running", live)
				}
			}
		})
	}
}
