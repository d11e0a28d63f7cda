package control

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
)

// TestNotifyHook runs a real hook: it gets the event in its environment.
func TestNotifyHook(t *testing.T) {
	c := &Controller{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, tc := range []struct {
		e     recorder.Event
		state string
	}{
		{recorder.Event{Seq: 7, Kind: "backend-down", Service: "web", Backend: "10.0.0.1", Reason: "check failed: refused"}, "down"},
		{recorder.Event{Seq: 8, Kind: "vrrp-master", Service: "v4", Reason: "startup"}, "master"},
	} {
		out := filepath.Join(t.TempDir(), "event")
		c.runNotify(config.Notify{Command: "sh", Args: []string{"-c", `env | grep -E '^KEEPBIT_(EVENT|SERVICE|BACKEND|STATE|REASON|SEQ)=' | sort > "$0"`, out}, Timeout: 5 * time.Second}, tc.e)
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		want := strings.Join([]string{
			"KEEPBIT_BACKEND=" + tc.e.Backend, "KEEPBIT_EVENT=" + tc.e.Kind, "KEEPBIT_REASON=" + tc.e.Reason,
			"KEEPBIT_SEQ=" + strconv.Itoa(int(tc.e.Seq)), "KEEPBIT_SERVICE=" + tc.e.Service, "KEEPBIT_STATE=" + tc.state, ""}, "\n")
		if string(got) != want {
			t.Errorf("hook environment:\n%s\nwant:\n%s", got, want)
		}
	}
}

// forker is a command that records its pid (its process group's id when
// it leads one) and its child's in file, then waits on a second child.
func forker(file string) (string, []string) {
	return "sh", []string{"-c", `echo $$ > "$0"; sleep 30 & echo $! >> "$0"; sleep 30`, file}
}

// checkNoneLeft fails t if the processes recorded in file by forker, or
// any process of the group led by the first, still run after a grace
// second (SIGKILL is sent before kill returns; dying takes a moment).
func checkNoneLeft(t *testing.T, file string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("the command did not record its pids: %v", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		pids = append(pids, pid)
	}
	if len(pids) != 2 {
		t.Fatalf("pids %q, want the shell's and its child's", b)
	}
	live := func() []int {
		ents, _ := os.ReadDir("/proc")
		var out []int
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if err != nil {
				continue
			}
			// pid (comm) state ppid pgrp ...; zombies hold nothing.
			f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
			if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
				continue
			}
			if g, _ := strconv.Atoi(f[2]); g == pids[0] || slices.Contains(pids, pid) {
				out = append(out, pid)
			}
		}
		return out
	}
	deadline := time.Now().Add(time.Second)
	for len(live()) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if l := live(); len(l) > 0 {
		t.Errorf("processes %v of the command outlived its timeout", l)
	}
}

// TestNotifyHookTimeout: a hook whose shell forks is ended, children
// included, at its timeout. Before, only the shell was killed and the
// call waited on the children holding its output pipe (30 s here).
func TestNotifyHookTimeout(t *testing.T) {
	c := &Controller{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	pids := filepath.Join(t.TempDir(), "pids")
	cmd, args := forker(pids)
	done := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		c.runNotify(config.Notify{Command: cmd, Args: args, Timeout: 100 * time.Millisecond}, recorder.Event{Kind: "backend-down"})
		done <- time.Since(start)
	}()
	select {
	case took := <-done:
		t.Logf("hook with a 100ms timeout returned after %v", took.Round(time.Millisecond))
	case <-time.After(2 * time.Second):
		t.Fatal("a hanging hook held the caller for 2s, its timeout is 100ms")
	}
	checkNoneLeft(t, pids)
}

// TestTrackCommandTimeout: a track command that hangs fails at its
// timeout and leaves none of its processes behind.
func TestTrackCommandTimeout(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	cmd, args := forker(pids)
	r := &vrrpRun{cmdOK: []bool{true}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.runTrackCommand(ctx, r.cmdOK, 0, config.TrackCommand{Command: cmd, Args: args, Interval: time.Hour, Timeout: 100 * time.Millisecond})
	}()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(2 * time.Second)
	for {
		r.mu.Lock()
		ok := r.cmdOK[0]
		r.mu.Unlock()
		if !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the hanging track command was not failed within 2s, its timeout is 100ms")
		}
		time.Sleep(10 * time.Millisecond)
	}
	checkNoneLeft(t, pids)
}
