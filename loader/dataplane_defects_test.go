package loader

import (
	"testing"
)

// TestApplyKeepsDataplaneState (issue 7 defect 3): a reload whose spec was
// built before a SetBackendState must not undo it. An existing member keeps
// the state the dataplane holds; BackendSpec.State sets only new members.
func TestApplyKeepsDataplaneState(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.40", 80, TCP)
	a := backend("10.5.0.1", "02:50:00:00:00:01")
	b := backend("10.5.0.2", "02:50:00:00:00:02").state(Down)
	l.apply(key, ServiceSpec{Backends: []BackendSpec{a}})
	if _, err := l.dp.SetBackendState(key, a.Addr, Down); err != nil {
		t.Fatal(err)
	}
	// The stale spec still says a is up; b is new and says down.
	l.apply(key, ServiceSpec{Backends: []BackendSpec{a.weight(2), b}})
	if err := l.dp.Sync(); err != nil {
		t.Fatal(err)
	}
	want := map[string]State{a.Addr.String(): Down, b.Addr.String(): Down}
	for _, s := range l.dp.Services() {
		if s.Key != key {
			continue
		}
		for _, be := range s.Backends {
			if be.State != want[be.Addr.String()] {
				t.Errorf("backend %s: state %s after the reload, want %s", be.Addr, be.State, want[be.Addr.String()])
			}
		}
	}
	for sport := range uint16(20) {
		if got := l.chosen("198.51.100.40", "203.0.113.80", 3000+sport); got != "DROP" {
			t.Fatalf("flow %d went to %s with every backend down, want DROP", sport, got)
		}
	}
	// A new member still starts in the state its spec gives.
	c := backend("10.5.0.3", "02:50:00:00:00:03")
	l.apply(key, ServiceSpec{Backends: []BackendSpec{a, b, c}})
	if got := l.chosen("198.51.100.40", "203.0.113.80", 4000); got != c.MAC.String() {
		t.Errorf("new flow went to %s, want the new up member %s", got, c.MAC)
	}
}
