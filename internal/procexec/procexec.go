// Package procexec runs the short-lived commands of Keepbit (exec health
// checks, VRRP track commands, notify hooks) so that a timeout ends all of
// a command, not just the process it started.
package procexec

import (
	"context"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// MaxOutput is how much of a command's output Run keeps; the rest is read
// and dropped, so a chatty command neither blocks on a full pipe nor
// grows the daemon's memory.
const MaxOutput = 4096

// WaitDelay is how long Run waits, once the command has exited or been
// killed, for whatever still holds its output pipes (a child that left
// the process group, or one still running after the leader exited) before
// closing them and returning.
const WaitDelay = 250 * time.Millisecond

// Command is one command to run.
type Command struct {
	Path string
	Args []string
	// Env is added to the daemon's environment.
	Env []string
	// Stdout captures standard output along with standard error; without
	// it standard output goes to /dev/null (a check's verdict is its exit
	// status, its complaint its standard error).
	Stdout bool
}

// Run runs c until it exits or ctx ends, and returns the first MaxOutput
// bytes of its output. The command leads a process group of its own: when
// ctx ends the whole group is killed, so a shell's children die with it
// (killing only the shell leaves them running, holding our pipes). If the
// command exits but processes of its group keep its output open, they are
// leftovers of a finished command and are killed too once WaitDelay has
// passed.
func Run(ctx context.Context, c Command) ([]byte, error) {
	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Cancel runs only before the leader is reaped, so its pid still
	// names our group.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = WaitDelay
	// Our own pipe, not exec's: exec reports a WaitDelay overrun only
	// when the leader exited with status 0, so a failing leader's
	// leftovers went unnoticed and kept running. Reading the pipe here
	// tells whether anything still holds it, whatever the exit status.
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = w
	if c.Stdout {
		cmd.Stdout = w
	}
	err = cmd.Start()
	w.Close() // the command holds its own copies
	if err != nil {
		r.Close()
		return nil, err
	}
	out := &capped{max: MaxOutput}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(out, r)
	}()
	pgid := cmd.Process.Pid
	err = cmd.Wait()
	t := time.NewTimer(WaitDelay)
	defer t.Stop()
	select {
	case <-copied:
	case <-t.C:
		// Something still holds the output: the group has live members
		// (or a child left it), so its id cannot have been reused yet.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		r.Close() // ends the copy even if an escaped child holds the pipe
		<-copied
		if err == nil {
			err = exec.ErrWaitDelay
		}
	}
	r.Close()
	return out.bytes(), err
}

// capped keeps the first max bytes written to it and drops the rest.
type capped struct {
	mu  sync.Mutex // stdout and stderr are copied by two goroutines
	buf []byte
	max int
}

func (w *capped) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if room := w.max - len(w.buf); room > 0 {
		w.buf = append(w.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (w *capped) bytes() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf
}
