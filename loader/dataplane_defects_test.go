package loader

import (
	"net/netip"
	"sync"
	"testing"
	"time"
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

// onlyFreeID leaves id as the only free backend ID, if it is free at all,
// so that the next new backend must take it (or wait for it).
func (l *lab) onlyFreeID(id uint32) {
	l.dp.mu.Lock()
	defer l.dp.mu.Unlock()
	var keep []uint32
	for _, f := range l.dp.freeBe {
		if f == id {
			keep = append(keep, f)
		}
	}
	l.dp.freeBe = keep
}

func (l *lab) memberID(key ServiceKey, addr netip.Addr) uint32 {
	l.t.Helper()
	l.dp.mu.Lock()
	defer l.dp.mu.Unlock()
	m := l.dp.services[key].members[addr]
	if m == nil {
		l.t.Fatalf("service %s has no member %s", key, addr)
	}
	return m.id
}

// TestRemovedBackendLeavesTable (issue 7 defect 1): a backend removed from
// a service whose backends are all down must leave the live table before
// its ID names another service's backend; reused, it would take the first
// service's flows.
func TestRemovedBackendLeavesTable(t *testing.T) {
	l := newLab(t)
	s1 := svc("198.51.100.41", 80, TCP)
	s2 := svc("198.51.100.42", 80, TCP)
	a := backend("10.6.0.1", "02:60:00:00:00:01").state(Down)
	b := backend("10.6.0.2", "02:60:00:00:00:02")
	c := backend("10.6.0.3", "02:60:00:00:00:03")
	l.apply(s1, ServiceSpec{Backends: []BackendSpec{a}})
	l.apply(s2, ServiceSpec{Backends: []BackendSpec{c}})
	aID := l.memberID(s1, a.Addr)

	l.apply(s1, ServiceSpec{})
	l.onlyFreeID(aID)
	l.apply(s2, ServiceSpec{Backends: []BackendSpec{c, b}})
	if got := l.memberID(s2, b.Addr); got != aID {
		t.Fatalf("new backend got ID %d, want the removed one %d: the test does not reuse", got, aID)
	}
	forwarded := 0
	for sport := range uint16(100) {
		if got := l.chosen("198.51.100.41", "203.0.113.81", 5000+sport); got != "DROP" {
			forwarded++
		}
	}
	if forwarded != 0 {
		t.Errorf("%d of 100 flows of a service with no backend were forwarded (to the reused ID's backend)", forwarded)
	}
}

// blockRCU makes every grace period wait until the returned release is
// called (at the latest at cleanup), after completing the ones pending.
func (l *lab) blockRCU() (release func()) {
	l.dp.grace()
	ch := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	hook := func() { <-ch }
	l.dp.waitRCUHook.Store(&hook)
	l.t.Cleanup(release)
	return release
}

// returnsWithin runs f and reports whether it returned within d; it waits
// for f either way.
func returnsWithin(d time.Duration, f func()) (bool, <-chan struct{}) {
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
		return true, done
	case <-time.After(d):
		return false, done
	}
}

// TestReleasedIDQuarantined (issue 7 defect 1): a released backend ID is
// not reused before a grace period has passed after the table without it
// went live (a packet on another CPU may still hold it).
func TestReleasedIDQuarantined(t *testing.T) {
	l := newLab(t)
	s1 := svc("198.51.100.43", 80, TCP)
	s2 := svc("198.51.100.44", 80, TCP)
	a := backend("10.6.1.1", "02:61:00:00:00:01")
	b := backend("10.6.1.2", "02:61:00:00:00:02")
	c := backend("10.6.1.3", "02:61:00:00:00:03")
	l.apply(s1, ServiceSpec{Backends: []BackendSpec{a}})
	l.apply(s2, ServiceSpec{Backends: []BackendSpec{c}})
	aID := l.memberID(s1, a.Addr)
	release := l.blockRCU()

	l.apply(s1, ServiceSpec{})
	l.onlyFreeID(aID)
	var err error
	returned, done := returnsWithin(300*time.Millisecond, func() {
		_, err = l.dp.ApplyService(s2, ServiceSpec{Backends: []BackendSpec{c, b}})
	})
	if returned {
		t.Errorf("the removed backend's ID was reused before a grace period (apply returned %v)", err)
	}
	release()
	<-done
	if err != nil {
		t.Fatalf("apply after the grace period: %v", err)
	}
	if got := l.memberID(s2, b.Addr); got != aID {
		t.Errorf("new backend got ID %d, want the quarantined %d after the grace period", got, aID)
	}
}

// TestIdleBufferWaitsForGrace (issue 7, table buffer reuse): the buffer
// that was live until the last switch is rewritten only after a grace
// period, while a state change never waits for one.
func TestIdleBufferWaitsForGrace(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.45", 80, TCP)
	a := backend("10.6.2.1", "02:62:00:00:00:01")
	b := backend("10.6.2.2", "02:62:00:00:00:02")
	l.apply(key, ServiceSpec{Backends: []BackendSpec{a, b}})
	release := l.blockRCU()

	l.apply(key, ServiceSpec{Backends: []BackendSpec{a, b.weight(2)}}) // writes the buffer never live since the grace
	var err error
	returned, done := returnsWithin(300*time.Millisecond, func() {
		_, err = l.dp.ApplyService(key, ServiceSpec{Backends: []BackendSpec{a, b.weight(3)}})
	})
	if returned {
		t.Errorf("the previously live buffer was rewritten with no grace period (apply returned %v)", err)
	}
	stateReturned, _ := returnsWithin(time.Second, func() {
		if _, err := l.dp.SetBackendState(key, a.Addr, Down); err != nil {
			t.Error(err)
		}
	})
	if !stateReturned {
		t.Error("a state change waited for a grace period")
	}
	release()
	<-done
	if err != nil {
		t.Fatalf("apply after the grace period: %v", err)
	}
	if got := l.chosen("198.51.100.45", "203.0.113.82", 6000); got != b.MAC.String() {
		t.Errorf("flow went to %s, want %s (a is down)", got, b.MAC)
	}
}
