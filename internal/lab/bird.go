package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
)

// BIRD is a BIRD 2 routing daemon running in a lab namespace: the upstream
// router of the BGP lab and the peer of the BGP/BFD interoperability tests.
type BIRD struct {
	dir  string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed when the process has been reaped

	closeOnce sync.Once
	closeErr  error
}

// logStatement finds a top-level `log ...;` statement in a BIRD config.
var logStatement = regexp.MustCompile(`(?m)^\s*log\s`)

// StartBIRD writes config to dir/bird.conf and runs
// `bird -f -c dir/bird.conf -s dir/bird.ctl` inside ns. It returns once
// the daemon answers on its control socket (ctx bounds that wait only; the
// daemon runs until Close). A config without a log statement gets
// `log stderr all;` so that Log has bird's messages: by default BIRD logs
// to syslog, where a failing test cannot show them.
func StartBIRD(ctx context.Context, ns netns.NsHandle, dir, config string) (*BIRD, error) {
	bin, err := exec.LookPath("bird")
	if err != nil {
		return nil, fmt.Errorf("bird: %w (make test-deps installs bird2)", err)
	}
	if !logStatement.MatchString(config) {
		config = "log stderr all;\n" + config
	}
	conf := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(config), 0o600); err != nil {
		return nil, fmt.Errorf("bird config: %w", err)
	}
	ctl := filepath.Join(dir, "bird.ctl")
	_ = os.Remove(ctl) // a socket left by a killed predecessor (router restart)
	b := &BIRD{dir: dir, out: &syncBuffer{}, done: make(chan struct{})}
	b.cmd = exec.Command(bin, "-f", "-c", conf, "-s", ctl)
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.out
	// bird must not outlive the test process that started it.
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := InNS(ns, b.cmd.Start); err != nil {
		return nil, fmt.Errorf("start bird: %w", err)
	}
	go func() {
		_ = b.cmd.Wait()
		close(b.done)
	}()
	for {
		if _, err := b.Cmd(ctx, "show", "status"); err == nil {
			return b, nil
		}
		select {
		case <-b.done:
			return nil, fmt.Errorf("bird exited at start (%v); output:\n%s", b.cmd.ProcessState, b.Log())
		case <-ctx.Done():
			b.Close()
			return nil, fmt.Errorf("bird did not answer on %s: %w; output:\n%s", ctl, ctx.Err(), b.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Close kills bird and waits for it to end. The routes it installed in the
// namespace's kernel tables stay, as after a router crash. Idempotent.
func (b *BIRD) Close() error {
	b.closeOnce.Do(func() {
		select {
		case <-b.done:
			return // it had already ended on its own
		default:
		}
		if err := b.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			b.closeErr = fmt.Errorf("kill bird: %w", err)
			return
		}
		<-b.done
	})
	return b.closeErr
}

// Pid is bird's process ID, to freeze it (SIGSTOP) in a test.
func (b *BIRD) Pid() int { return b.cmd.Process.Pid }

// Cmd runs `birdc -s dir/bird.ctl args...` and returns its output without
// the "BIRD x ready." greeting. A command BIRD refuses (birdc exits non-zero
// on 8xxx/9xxx replies) is an error carrying that output. The control
// socket is a path name, so birdc needs no namespace of its own.
func (b *BIRD) Cmd(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "birdc", append([]string{"-s", filepath.Join(b.dir, "bird.ctl")}, args...)...)
	raw, err := cmd.CombinedOutput()
	out := string(raw)
	if first, rest, ok := strings.Cut(out, "\n"); ok && strings.HasPrefix(first, "BIRD ") && strings.HasSuffix(first, "ready.") {
		out = rest
	}
	if err != nil {
		return out, fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out))
	}
	return out, nil
}

// WaitProtocol polls `show protocols` until the protocol called name shows
// state in its State or Info column ("up", "Established", "Active"...;
// case does not matter). The error names the last line seen and bird's log.
func (b *BIRD) WaitProtocol(ctx context.Context, name, state string) error {
	last := "(not listed)"
	for {
		out, err := b.Cmd(ctx, "show", "protocols")
		if err == nil {
			if line, ok := protocolLine(out, name); ok {
				last = line
				if protocolHas(line, state) {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bird protocol %s not %q: %w; last: %s; bird log:\n%s", name, state, ctx.Err(), last, b.Log())
		case <-b.done:
			return fmt.Errorf("bird protocol %s not %q: bird exited (%v); log:\n%s", name, state, b.cmd.ProcessState, b.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// protocolLine finds the `show protocols` row of protocol name.
func protocolLine(out, name string) (string, bool) {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == name {
			return strings.TrimSpace(line), true
		}
	}
	return "", false
}

// protocolHas reports whether a `show protocols` row (Name Proto Table
// State Since Info) has state among its State and Info words.
func protocolHas(line, state string) bool {
	f := strings.Fields(line)
	if len(f) < 4 {
		return false
	}
	for _, w := range f[3:] {
		if strings.EqualFold(w, state) {
			return true
		}
	}
	return false
}

// Log is what bird has written to stdout/stderr so far.
func (b *BIRD) Log() string { return b.out.String() }

// syncBuffer is a bytes.Buffer the process's output copier and Log share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}
