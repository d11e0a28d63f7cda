package drill

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
)

type fakeNotifier struct {
	mu     sync.Mutex
	events []recorder.Event
}

func (n *fakeNotifier) RunNotify(_ config.Notify, e recorder.Event) {
	n.mu.Lock()
	n.events = append(n.events, e)
	n.mu.Unlock()
}

func (n *fakeNotifier) kinds() map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[string]int{}
	for _, e := range n.events {
		out[e.Kind]++
	}
	return out
}

// TestSchedule: entries run every period with source "schedule" and their
// results (and refusals) reach the notify hook; a reload keeps an
// unchanged entry, and removing the entries stops them.
func TestSchedule(t *testing.T) {
	f := newFakeCtl(recorder.New(1024), map[netip.Addr]loader.State{b1: loader.Up, b2: loader.Up})
	defer close(f.quit)
	// A window the fake's traffic samples fill even on a loaded CI
	// machine under -race (20 ms once saw no sample after the restore).
	d := newDrills(f, NodeOwners{}, Options{Window: 60 * time.Millisecond})
	n := &fakeNotifier{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := NewSchedule(ctx, d, n, d.log)
	hook := config.Notify{Command: "/bin/true", Timeout: time.Second}
	cfg := &config.Config{Drills: []config.Drill{
		{Kind: "backend", Service: "web", Backend: b1, Every: 400 * time.Millisecond, For: 100 * time.Millisecond, Notify: hook},
		// Node drills have nothing to hand off here: refused, notified.
		{Kind: "node", Every: 250 * time.Millisecond, For: 100 * time.Millisecond, Notify: hook},
	}}
	if err := s.Reload(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	first := s.entries[0]
	if err := s.Reload(ctx, cfg); err != nil || s.entries[0] != first {
		t.Fatal("an unchanged entry was restarted by a reload")
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && (n.kinds()["drill-ok"] < 2 || n.kinds()["drill-refused"] < 1) {
		time.Sleep(20 * time.Millisecond)
	}
	if k := n.kinds(); k["drill-ok"] < 2 || k["drill-refused"] < 1 {
		t.Fatalf("notified %v, want 2 drill-ok and a drill-refused", k)
	}
	for _, r := range d.History() {
		if r.Source != "schedule" || r.Kind != Backend || r.Result != ResultOK {
			t.Fatalf("scheduled result %+v", r)
		}
	}
	s.mu.Lock()
	var stopped []*scheduled
	for _, e := range s.entries {
		stopped = append(stopped, e)
	}
	s.mu.Unlock()
	if err := s.Reload(ctx, &config.Config{}); err != nil {
		t.Fatal(err)
	}
	for _, e := range stopped { // a drill running at the reload is aborted and ends
		<-e.done
	}
	s.Close()
	before := len(d.History())
	time.Sleep(700 * time.Millisecond)
	if after := len(d.History()); after != before {
		t.Fatalf("%d drills ran after the entries were removed", after-before)
	}
}
