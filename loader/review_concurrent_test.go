package loader

import (
	"fmt"
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
