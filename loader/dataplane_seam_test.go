package loader

import (
	"errors"
	"slices"
	"sync"
	"testing"
)

// TestKernelWriteSeam: every kernel write of ApplyService goes through
// kernelWrite, and a beforeWrite error stops the write it precedes and is
// returned to the caller.
func TestKernelWriteSeam(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.90", 80, TCP)
	var mu sync.Mutex
	var ops []string
	l.dp.countersZero = nil // as adopted maps: the new backend's counters are reset too
	l.dp.beforeWrite = func(op string) error { mu.Lock(); defer mu.Unlock(); ops = append(ops, op); return nil }
	l.apply(key, ServiceSpec{Backends: []BackendSpec{backend("10.9.0.1", "02:90:00:00:00:01").port(l.port2)}})
	l.dp.beforeWrite = nil
	for _, want := range []string{"tables_install", "service_stats", "tx_ports", "backends", "backend_stats", "backend_state", "table_write", "service_active", "vip_filter", "services", "vips"} {
		if !slices.Contains(ops, want) {
			t.Errorf("op %q not seen; ops: %v", want, ops)
		}
	}

	// Fail the table switch: the error comes back, the switch is not made.
	var active uint32
	if err := l.dp.objs.ServiceActive.Lookup(l.dp.services[key].id, &active); err != nil {
		t.Fatal(err)
	}
	crash := errors.New("crashed")
	l.dp.beforeWrite = func(op string) error {
		if op == "service_active" {
			return crash
		}
		return nil
	}
	_, err := l.dp.ApplyService(key, ServiceSpec{Backends: []BackendSpec{backend("10.9.0.2", "02:90:00:00:00:02")}})
	l.dp.beforeWrite = nil
	if !errors.Is(err, crash) {
		t.Fatalf("apply returned %v, want the injected error", err)
	}
	var after uint32
	if err := l.dp.objs.ServiceActive.Lookup(l.dp.services[key].id, &after); err != nil {
		t.Fatal(err)
	}
	if after != active {
		t.Errorf("service_active changed from %d to %d although its write was refused", active, after)
	}
}
