package ownership

import (
	"context"
	"strings"
	"testing"
)

// TestHandoff: the named instance gets a fault with the drill's reason at
// the next tracking pass, the others keep their own verdict, and release
// gives the instance tracking's verdict back (re-applied even where the
// fault itself did not change).
func TestHandoff(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runs := map[string]*vrrpRun{}
	fakes := map[string]*fakeInstance{}
	for _, name := range []string{"m", "b"} {
		f := &fakeInstance{}
		cfg := vrrpConf(nil)
		cfg.Name, cfg.Track.Commands = name, nil
		runs[name], fakes[name] = &vrrpRun{cfg: cfg, inst: f}, f
	}
	o := testOwner(ctx, 64, runs)
	last := func(name string) trackVerdict {
		f := fakes[name]
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.tracked) == 0 {
			return trackVerdict{}
		}
		return f.tracked[len(f.tracked)-1]
	}
	o.track()
	release := o.Handoff("drill: planned handoff", []string{"m"})
	o.track() // Run's pass, which reapply wakes
	if v := last("m"); !v.fault || v.reason != "drill: planned handoff" {
		t.Fatalf("m during the handoff: %+v", v)
	}
	if v := last("b"); strings.Contains(v.reason, "drill") {
		t.Fatalf("b was handed off too: %+v", v)
	}
	release()
	o.track()
	if v := last("m"); strings.Contains(v.reason, "drill") {
		t.Fatalf("m after the release: %+v", v)
	}
	if len(o.handoffs()) != 0 {
		t.Fatal("handoff left behind")
	}
}
