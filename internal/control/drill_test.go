package control

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// TestDrillDownRestore: a drill takes the backend down through onProbe
// (recorded with the drill's reason), no probe brings it back while it is
// out, and after DrillRestore it returns only through its check (exec
// /bin/true, rise 2); keep-last keeps the last backend; unknown targets
// are ErrNotConfigured.
func TestDrillDownRestore(t *testing.T) {
	c, s, held := fakeService(t, config.Service{}, 2)
	c.sched = probe.NewScheduler(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.sched.Run(ctx) }()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ev := <-c.sched.Events():
				c.onProbe(ev)
			}
		}
	}()
	a1 := netip.MustParseAddr("10.0.0.1")
	b := s.backends[a1]
	b.checked = &config.Backend{Address: a1, Check: config.Check{Type: "exec", Command: "/bin/true", Interval: 50 * time.Millisecond,
		Timeout: 50 * time.Millisecond, Rise: 2, Fall: 2}}
	b.checkedPort = 80
	spec, _ := b.checkSpec()
	if err := c.sched.Add(b.checkID, spec); err != nil {
		t.Fatal(err)
	}
	c.onProbe(probe.Event{Check: "web|10.0.0.2", To: probe.Up, Decide: time.Now()})
	state := func() loader.State {
		c.mu.Lock()
		defer c.mu.Unlock()
		return held[a1]
	}
	waitFor := func(want loader.State, within time.Duration) {
		t.Helper()
		for end := time.Now().Add(within); time.Now().Before(end) && state() != want; {
			time.Sleep(5 * time.Millisecond)
		}
		if got := state(); got != want {
			t.Fatalf("backend %s, want %s", got, want)
		}
	}
	waitFor(loader.Up, 10*time.Second)

	mark := c.rec.Since(0)
	st, err := c.DrillDown("web", a1)
	if err != nil || st != loader.Down || state() != loader.Down {
		t.Fatalf("DrillDown: %v, %s (dataplane %s)", err, st, state())
	}
	evs := c.rec.Since(mark[len(mark)-1].Seq)
	if len(evs) != 1 || evs[0].Kind != "backend-down" || !strings.Contains(evs[0].Reason, "drill") || evs[0].Apply.IsZero() {
		t.Fatalf("recorded %+v, want one backend-down naming the drill", evs)
	}
	if _, running := c.sched.State(b.checkID); running {
		t.Fatal("the check still runs during the drill")
	}
	time.Sleep(200 * time.Millisecond) // several intervals: nothing brings it back
	if state() != loader.Down {
		t.Fatal("the backend came back during the drill")
	}
	restored := time.Now()
	if err := c.DrillRestore("web", a1); err != nil {
		t.Fatal(err)
	}
	waitFor(loader.Up, 10*time.Second)
	if took := time.Since(restored); took < 50*time.Millisecond {
		t.Fatalf("back %v after the restore: sooner than rise 2 at 50 ms", took)
	}

	for _, x := range []struct{ svc, addr string }{{"nosuch", "10.0.0.1"}, {"web", "10.9.9.9"}} {
		if _, err := c.DrillDown(x.svc, netip.MustParseAddr(x.addr)); !errors.Is(err, ErrNotConfigured) {
			t.Fatalf("DrillDown(%s, %s): %v", x.svc, x.addr, err)
		}
		if err := c.DrillRestore(x.svc, netip.MustParseAddr(x.addr)); !errors.Is(err, ErrNotConfigured) {
			t.Fatalf("DrillRestore(%s, %s): %v", x.svc, x.addr, err)
		}
	}

	// keep-last: the last up backend stays; DrillDown says so.
	c2, s2, _ := fakeService(t, config.Service{WhenAllDown: "keep-last"}, 1)
	c2.sched = probe.NewScheduler(nil)
	c2.onProbe(probe.Event{Check: "web|10.0.0.1", To: probe.Up, Decide: time.Now()})
	if st, err := c2.DrillDown("web", a1); err != nil || st != loader.Up || s2.backends[a1].state != loader.Up {
		t.Fatalf("keep-last: %v, %s", err, st)
	}
}
