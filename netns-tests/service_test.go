package netnstests

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServiceManager: keepbitd as a systemd Type=notify service. It says
// READY=1 once it forwards, feeds the watchdog, reports its generation
// after a reload and STOPPING=1 at a stop; a second keepbitd on the same
// pin directory refuses to start and leaves the first one serving.
func TestServiceManager(t *testing.T) {
	l := newLab(t)
	cfg := l.writeConfig("")
	sock := filepath.Join(l.dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	must(t, err, "notify socket")
	defer notify.Close()
	msgs := make(chan string, 1024)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	// What systemd sets for the main process (the child inherits them).
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")
	expect := func(what string, within time.Duration) string {
		t.Helper()
		deadline := time.After(within)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed waiting for %q", what)
				}
				if strings.Contains(m, what) {
					return m
				}
			case <-deadline:
				t.Fatalf("no %q on the notify socket within %v", what, within)
			}
		}
	}

	out, err := exec.Command(keepbitd(t), "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "keepbit ") {
		t.Fatalf("keepbitd --version: %v: %q", err, out)
	}

	d := l.startDaemonUp(cfg)
	ready := expect("READY=1", 10*time.Second)
	if !strings.Contains(ready, "STATUS=forwarding, config generation 1") {
		t.Errorf("READY message %q does not say the generation", ready)
	}
	expect("WATCHDOG=1", 5*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err = exec.CommandContext(ctx, keepbitd(t), "--config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use by another keepbitd") {
		t.Fatalf("second keepbitd on the same pin directory: err %v, output %q; want a refusal naming the running daemon", err, out)
	}
	select {
	case <-d.done:
		t.Fatalf("the first keepbitd exited after the second start: %s", d.dump())
	default:
	}
	if body, err := l.get(80); err != nil || !strings.HasPrefix(body, "b") {
		t.Fatalf("VIP after the refused start: %q, %v", body, err)
	}
	// The refused daemon must not have taken the first one's API socket.
	if out, err := l.ctl("status"); err != nil {
		t.Fatalf("keepbitctl status after the refused start: %v: %s", err, out)
	}

	d.signal(syscall.SIGHUP)
	expect("STATUS=forwarding, config generation 2", 10*time.Second)
	expect("WATCHDOG=1", 5*time.Second)
	d.signal(syscall.SIGTERM)
	expect("STOPPING=1", 10*time.Second)
}
