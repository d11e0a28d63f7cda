package control

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
)

// TestNotifyHook runs a real hook: it gets the event in its environment,
// and one that hangs is killed at its timeout.
func TestNotifyHook(t *testing.T) {
	out := filepath.Join(t.TempDir(), "event")
	c := &Controller{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	e := recorder.Event{Seq: 7, Kind: "backend-down", Service: "web", Backend: "10.0.0.1", Reason: "check failed: refused"}
	c.runNotify(config.Notify{Command: "sh", Args: []string{"-c", `env | grep ^KEEPBIT_ | sort > "$0"`, out}, Timeout: 5 * time.Second}, e)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"KEEPBIT_BACKEND=10.0.0.1", "KEEPBIT_EVENT=backend-down", "KEEPBIT_REASON=check failed: refused",
		"KEEPBIT_SEQ=7", "KEEPBIT_SERVICE=web", "KEEPBIT_STATE=down", ""}, "\n")
	if string(got) != want {
		t.Fatalf("hook environment:\n%s\nwant:\n%s", got, want)
	}

	start := time.Now()
	c.runNotify(config.Notify{Command: "sleep", Args: []string{"10"}, Timeout: 100 * time.Millisecond}, e)
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("a hanging hook held the caller for %v, its timeout is 100ms", took)
	}
}
