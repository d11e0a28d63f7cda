package procexec

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/procexec/proctest"
)

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
				proctest.CheckNoneLeft(t, pgidFile)
			}
		})
	}
}
