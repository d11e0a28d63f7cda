// Package sdnotify tells systemd how keepbitd is doing (the sd_notify
// protocol of a Type=notify unit): READY=1 once the dataplane forwards,
// STATUS= lines, and WATCHDOG=1 keep-alives while the event loop turns.
// Outside systemd (no $NOTIFY_SOCKET) every call does nothing.
package sdnotify

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Notifier sends to one notify socket.
type Notifier struct {
	addr     string        // "" outside systemd
	watchdog time.Duration // 0: the unit has no WatchdogSec
}

// FromEnv reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID as
// systemd sets them for the service's main process (getenv is
// os.Getenv; pid is os.Getpid()).
func FromEnv(getenv func(string) string, pid int) (*Notifier, error) {
	n := &Notifier{addr: getenv("NOTIFY_SOCKET")}
	if n.addr != "" && !strings.HasPrefix(n.addr, "/") && !strings.HasPrefix(n.addr, "@") {
		return nil, fmt.Errorf("NOTIFY_SOCKET %q: neither a path nor an abstract socket", n.addr)
	}
	usec := getenv("WATCHDOG_USEC")
	if usec == "" {
		return n, nil
	}
	// WATCHDOG_PID names the process the watchdog is meant for: a child
	// that inherited the environment must not answer for its parent.
	if p := getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(pid) {
		return n, nil
	}
	us, err := strconv.ParseUint(usec, 10, 63)
	if err != nil || us == 0 {
		return nil, fmt.Errorf("WATCHDOG_USEC %q: not a positive number of microseconds", usec)
	}
	n.watchdog = time.Duration(us) * time.Microsecond
	return n, nil
}

// Enabled: running under a notify-aware supervisor.
func (n *Notifier) Enabled() bool { return n.addr != "" }

// WatchdogInterval is how often Watchdog must be called to keep the unit
// alive (half of WatchdogSec, as sd_watchdog_enabled advises); 0 when no
// watchdog is configured.
func (n *Notifier) WatchdogInterval() time.Duration { return n.watchdog / 2 }

// Send sends one or more KEY=VALUE lines, e.g. "READY=1\nSTATUS=...".
func (n *Notifier) Send(state string) error {
	if n.addr == "" {
		return nil
	}
	addr := n.addr
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify socket %s: %w", n.addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify socket %s: %w", n.addr, err)
	}
	return nil
}

// Watchdog sends WATCHDOG=1 every WatchdogInterval for as long as alive
// answers within that interval; a loop that stops answering stops the
// keep-alives and lets systemd act (WatchdogSec). It returns when ctx
// ends, at once when no watchdog is configured.
func (n *Notifier) Watchdog(ctx context.Context, alive func(context.Context) error) error {
	every := n.WatchdogInterval()
	if n.addr == "" || every <= 0 {
		return nil
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, every)
		err := alive(pctx)
		cancel()
		if err != nil {
			continue // no keep-alive: systemd decides at WatchdogSec
		}
		if err := n.Send("WATCHDOG=1"); err != nil {
			return err
		}
	}
}
