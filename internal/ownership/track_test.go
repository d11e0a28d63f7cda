package ownership

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/procexec/proctest"
)

// TestTrackingReactsToChanged: with the poll an hour away, a service going
// down lowers the priority as soon as Health signals a change, and coming
// back restores it; a pass asks Health about the tracked service only.
// Before, tracking built the whole status every 100 ms and a service down
// waited for that tick.
func TestTrackingReactsToChanged(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeInstance{}
	cfg := vrrpConf(func(v *config.VRRP) {
		v.Interface = "lo" // up wherever the test runs
		v.Track = config.Track{Services: []config.TrackItem{{Name: "web", Weight: 50}}}
	})
	r := &vrrpRun{cfg: cfg, inst: f, done: make(chan struct{})}
	r.ctx, r.cancel = context.WithCancel(ctx)
	o := testOwner(ctx, 64, map[string]*vrrpRun{"v": r})
	o.poll = time.Hour
	h := o.health.(*fakeHealth)
	h.set("web", true)
	done := make(chan struct{})
	go func() { defer close(done); o.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	steps := []struct {
		up   bool
		want trackVerdict
	}{
		{true, trackVerdict{prio: 150}},
		{false, trackVerdict{prio: 100, reason: "all backends of service web down"}},
		{true, trackVerdict{prio: 150}},
	}
	for i, s := range steps {
		start := time.Now()
		if i > 0 {
			h.set("web", s.up)
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			f.mu.Lock()
			n, last := len(f.tracked), trackVerdict{}
			if n > 0 {
				last = f.tracked[n-1]
			}
			f.mu.Unlock()
			if n == i+1 && last == s.want {
				if i > 0 {
					t.Logf("web up %v: priority %d after %v (poll an hour away)", s.up, last.prio, time.Since(start).Round(time.Microsecond))
				}
				break
			}
			if time.Now().After(deadline) || n > i+1 {
				t.Fatalf("step %d (web up %v): Track calls %d, last %+v; want %d, last %+v", i, s.up, n, last, i+1, s.want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if n := h.askedOf("dns"); n != 0 {
		t.Errorf("untracked service asked %d times", n)
	}
	if n := h.askedOf("web"); n < len(steps) {
		t.Errorf("web asked %d times, want at least %d", n, len(steps))
	}
}

// TestTrackCommandTimeout: a track command that hangs fails at its
// timeout and leaves none of its processes behind.
func TestTrackCommandTimeout(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	cmd, args := proctest.Forker(pids)
	r := &vrrpRun{cmdOK: []bool{true}, kick: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.runTrackCommand(ctx, r.cmdOK, 0, config.TrackCommand{Command: cmd, Args: args, Interval: time.Hour, Timeout: 500 * time.Millisecond})
	}()
	t.Cleanup(func() { cancel(); <-done })
	// The timeout leaves the shell time to fork its child even on a busy
	// machine (the pid check wants both); the command hangs 30 s if not
	// killed.
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		ok := r.cmdOK[0]
		r.mu.Unlock()
		if !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the hanging track command was not failed within 5s, its timeout is 500ms")
		}
		time.Sleep(10 * time.Millisecond)
	}
	proctest.CheckNoneLeft(t, pids)
}
