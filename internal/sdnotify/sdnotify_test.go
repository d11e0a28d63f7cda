package sdnotify

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func env(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }

func TestFromEnv(t *testing.T) {
	for _, c := range []struct {
		name     string
		env      map[string]string
		enabled  bool
		interval time.Duration
		err      string
	}{
		{"outside systemd", nil, false, 0, ""},
		{"path socket", map[string]string{"NOTIFY_SOCKET": "/run/systemd/notify"}, true, 0, ""},
		{"abstract socket", map[string]string{"NOTIFY_SOCKET": "@sd"}, true, 0, ""},
		{"relative socket", map[string]string{"NOTIFY_SOCKET": "notify"}, false, 0, `NOTIFY_SOCKET "notify"`},
		{"watchdog for us", map[string]string{"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, true, time.Second, ""},
		{"watchdog without pid", map[string]string{"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "500000"}, true, 250 * time.Millisecond, ""},
		{"watchdog for another process", map[string]string{"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, true, 0, ""},
		{"bad watchdog", map[string]string{"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "soon"}, false, 0, `WATCHDOG_USEC "soon"`},
		{"zero watchdog", map[string]string{"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "0"}, false, 0, `WATCHDOG_USEC "0"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			n, err := FromEnv(env(c.env), 42)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want it to name %s", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n.Enabled() != c.enabled || n.WatchdogInterval() != c.interval {
				t.Fatalf("enabled %v interval %v, want %v %v", n.Enabled(), n.WatchdogInterval(), c.enabled, c.interval)
			}
		})
	}
}

// listen is a stand-in for systemd's notify socket.
func listen(t *testing.T) (string, *net.UnixConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return path, c
}

func recv(t *testing.T, c *net.UnixConn, within time.Duration) string {
	t.Helper()
	buf := make([]byte, 512)
	_ = c.SetReadDeadline(time.Now().Add(within))
	n, err := c.Read(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

func TestSend(t *testing.T) {
	path, c := listen(t)
	n, err := FromEnv(env(map[string]string{"NOTIFY_SOCKET": path}), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Send("READY=1\nSTATUS=generation 3"); err != nil {
		t.Fatal(err)
	}
	if got := recv(t, c, 5*time.Second); got != "READY=1\nSTATUS=generation 3" {
		t.Fatalf("received %q", got)
	}
	off, _ := FromEnv(env(nil), 1)
	if err := off.Send("READY=1"); err != nil {
		t.Fatalf("outside systemd Send must do nothing, got %v", err)
	}
}

// TestWatchdog: keep-alives flow while the loop answers and stop while it
// does not.
func TestWatchdog(t *testing.T) {
	path, c := listen(t)
	n, err := FromEnv(env(map[string]string{"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"}), 1)
	if err != nil {
		t.Fatal(err)
	}
	var stuck atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- n.Watchdog(ctx, func(ctx context.Context) error {
			if stuck.Load() {
				<-ctx.Done()
				return errors.New("event loop did not answer")
			}
			return nil
		})
	}()
	if got := recv(t, c, 5*time.Second); got != "WATCHDOG=1" {
		t.Fatalf("received %q, want WATCHDOG=1", got)
	}
	stuck.Store(true)
	// Drain what was sent before the loop got stuck, then expect silence.
	for i := 0; recv(t, c, 100*time.Millisecond) != ""; i++ {
		if i > 10 {
			t.Fatal("keep-alives go on while the loop is stuck")
		}
	}
	if got := recv(t, c, 300*time.Millisecond); got != "" {
		t.Fatalf("keep-alive %q sent while the loop was stuck", got)
	}
	stuck.Store(false)
	if got := recv(t, c, 5*time.Second); got != "WATCHDOG=1" {
		t.Fatalf("received %q after the loop recovered, want WATCHDOG=1", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
