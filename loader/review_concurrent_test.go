package loader

import (
	"fmt"
	"slices"
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
