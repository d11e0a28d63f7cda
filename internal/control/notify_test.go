package control

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/procexec/proctest"
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
		c.RunNotify(config.Notify{Command: "sh", Args: []string{"-c", `env | grep -E '^KEEPBIT_(EVENT|SERVICE|BACKEND|STATE|REASON|SEQ)=' | sort > "$0"`, out}, Timeout: 5 * time.Second}, tc.e)
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

// TestNotifyHookTimeout: a hook whose shell forks is ended, children
// included, at its timeout. Before, only the shell was killed and the
// call waited on the children holding its output pipe (30 s here).
func TestNotifyHookTimeout(t *testing.T) {
	c := &Controller{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	pids := filepath.Join(t.TempDir(), "pids")
	cmd, args := proctest.Forker(pids)
	done := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		c.RunNotify(config.Notify{Command: cmd, Args: args, Timeout: 500 * time.Millisecond}, recorder.Event{Kind: "backend-down"})
		done <- time.Since(start)
	}()
	select {
	case took := <-done:
		t.Logf("hook with a 500ms timeout returned after %v", took.Round(time.Millisecond))
	case <-time.After(5 * time.Second): // it hangs 30 s if not killed
		t.Fatal("a hanging hook held the caller for 5s, its timeout is 500ms")
	}
	proctest.CheckNoneLeft(t, pids)
}
