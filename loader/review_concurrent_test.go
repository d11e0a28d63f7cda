package loader

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestReviewApplyRacingDelete: ApplyService looks the service up, then
// waits for applyMu; a DeleteService of the same key that gets applyMu
// first (both queued behind the rebuild loop, say, while it waits for a
// grace period) deletes the service in between. Before the fix
// ApplyService then took the service as new without having created it and
// dereferenced nil: the daemon panicked. It must create the service anew.
func TestReviewApplyRacingDelete(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.64", 80, TCP)
	spec := ServiceSpec{Backends: []BackendSpec{backend("10.6.4.1", "02:64:00:00:00:01")}}
	l.apply(key, spec)

	// Stand in for the rebuild loop holding applyMu.
	l.dp.applyMu.Lock()
	delErr := make(chan error, 1)
	go func() { _, err := l.dp.DeleteService(key); delErr <- err }()
	time.Sleep(200 * time.Millisecond) // DeleteService queued on applyMu first
	applyErr := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				// The panic left mu locked: free it so cleanup can close.
				l.dp.mu.TryLock()
				l.dp.mu.Unlock()
				applyErr <- fmt.Errorf("panic: %v", r)
			}
		}()
		_, err := l.dp.ApplyService(key, spec)
		applyErr <- err
	}()
	time.Sleep(200 * time.Millisecond) // ApplyService found the service and queued
	l.dp.applyMu.Unlock()

	if err := <-delErr; err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := <-applyErr; err != nil {
		t.Fatalf("apply racing a delete of the same service: %v", err)
	}
	if got := l.chosen("198.51.100.64", "203.0.113.64", 4200); got != "02:64:00:00:00:01" {
		t.Errorf("flow after the apply went to %s, want 02:64:00:00:00:01", got)
	}
}

// TestApplyRacingCreate: a new service is built (buffers, backends, first
// table) before ApplyService takes applyMu, so two callers creating the
// same key both build one. The second to take applyMu must give its build
// back (service ID, buffers, backend IDs) and apply its spec to the
// service the first added, and a state change for the service before
// either added it finds nothing to change.
func TestApplyRacingCreate(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.65", 80, TCP)
	specs := []ServiceSpec{
		{Backends: []BackendSpec{backend("10.6.5.1", "02:65:00:00:00:01")}},
		{Backends: []BackendSpec{backend("10.6.5.2", "02:65:00:00:00:02"), backend("10.6.5.3", "02:65:00:00:00:03")}},
	}
	l.dp.mu.Lock()
	freeSvc := len(l.dp.freeSvc)
	l.dp.mu.Unlock()

	// Both builds finish while applyMu is held, as when the rebuild loop
	// holds it; neither caller can add its service before the other built.
	l.dp.applyMu.Lock()
	errs := make(chan error, len(specs))
	for _, spec := range specs {
		go func() { _, err := l.dp.ApplyService(key, spec); errs <- err }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.dp.mu.Lock()
		built := freeSvc - len(l.dp.freeSvc)
		l.dp.mu.Unlock()
		if built == len(specs) {
			break
		}
		if time.Now().After(deadline) {
			l.dp.applyMu.Unlock()
			t.Fatalf("%d of %d builds reserved a service ID while applyMu was held", built, len(specs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := l.dp.SetBackendState(key, specs[0].Backends[0].Addr, Down); err == nil {
		t.Errorf("a state change found a service that is still being built")
	}
	l.dp.applyMu.Unlock()
	for range specs {
		if err := <-errs; err != nil {
			t.Fatalf("apply: %v", err)
		}
	}

	l.dp.mu.Lock()
	gotFreeSvc, members := len(l.dp.freeSvc), len(l.dp.members)
	s := l.dp.services[key]
	var addrs []string
	for a := range s.members {
		addrs = append(addrs, a.String())
	}
	l.dp.mu.Unlock()
	if gotFreeSvc != freeSvc-1 {
		t.Errorf("free service IDs %d, want %d: the losing build kept its ID", gotFreeSvc, freeSvc-1)
	}
	// The service ends with one of the specs, whichever applied last; the
	// other's backend IDs are released.
	want := map[int][]string{1: {"10.6.5.1"}, 2: {"10.6.5.2", "10.6.5.3"}}[len(addrs)]
	slices.Sort(addrs)
	if !slices.Equal(addrs, want) || members != len(addrs) {
		t.Fatalf("service has members %v (%d backend IDs owned), want those of one spec", addrs, members)
	}
	macs := map[string]string{"10.6.5.1": "02:65:00:00:00:01", "10.6.5.2": "02:65:00:00:00:02", "10.6.5.3": "02:65:00:00:00:03"}
	got := l.chosen("198.51.100.65", "203.0.113.65", 4300)
	if ok := slices.ContainsFunc(addrs, func(a string) bool { return macs[a] == got }); !ok {
		t.Errorf("flow went to %s, want a backend of %v", got, addrs)
	}
}

// TestLiveSlotsSkipBuildingService: a new service's members are indexed
// while it is still being built outside applyMu, so a stale flow entry
// naming a reused backend ID resolves to it. Flow sharing's liveSlots must
// not read its buffers: a failed build closes them without applyMu. Found
// by review: under -race the read raced the close (and could have mapped
// another file under a reused descriptor).
func TestLiveSlotsSkipBuildingService(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.66", 80, TCP)
	spec := ServiceSpec{Backends: []BackendSpec{backend("10.6.6.1", "02:66:00:00:00:01")}}
	crash := errors.New("injected")
	blocked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	l.dp.beforeWrite = func(op string) error {
		if op != "service_active" {
			return nil
		}
		once.Do(func() { close(blocked) })
		<-release
		return crash
	}
	t.Cleanup(func() { l.dp.beforeWrite = nil })
	applyErr := make(chan error, 1)
	go func() { _, err := l.dp.ApplyService(key, spec); applyErr <- err }()
	<-blocked // built but for the switch: buffers installed, table written

	l.dp.mu.Lock()
	var id uint32
	for mid, m := range l.dp.members {
		if m.spec.Addr == spec.Backends[0].Addr {
			id = mid
		}
	}
	l.dp.mu.Unlock()
	owners := l.dp.resolveOwners([]rawFlow{{v: keepbitFlowValue{Backend: id}}})
	if len(owners) != 1 {
		close(release)
		t.Fatalf("backend ID %d of the service being built resolves to %d owners, want 1", id, len(owners))
	}
	slots, err := l.dp.liveSlots(owners)
	if err != nil {
		close(release)
		t.Fatalf("liveSlots: %v", err)
	}
	for s, sl := range slots {
		if sl != nil {
			t.Errorf("liveSlots read %d slots of service %s, which is still being built", len(sl), s.key)
		}
	}
	// The build fails while flow sharing keeps reading: abandon closes
	// the buffers meanwhile.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			if _, err := l.dp.liveSlots(owners); err != nil {
				t.Errorf("liveSlots during the failed build's cleanup: %v", err)
				return
			}
		}
	}()
	close(release)
	if err := <-applyErr; !errors.Is(err, crash) {
		t.Fatalf("apply returned %v, want the injected error", err)
	}
	<-done
}
