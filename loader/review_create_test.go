package loader

import (
	"errors"
	"sync"
	"testing"
)

// TestReviewFailedCreateLeaksNothing: when ApplyService fails while
// creating a service (a kernel write refused after the service ID was
// reserved, its buffers installed and some backends added), the service is
// not kept, so nothing may stay reserved for it: before the fix the service
// ID, both table buffers and the added backends' IDs stayed taken, and
// every retry of a create that cannot succeed (say, out of backend IDs)
// took more of them until the dataplane was full.
func TestReviewFailedCreateLeaksNothing(t *testing.T) {
	cases := []struct {
		name    string
		failOp  string
		nth     int  // fail the nth write of failOp (1-based)
		noBatch bool // one write per element, as on kernels without batches
	}{
		{"second backend's state write, one at a time", "backend_state", 2, true},
		{"second backend's record write, one at a time", "backends", 2, true},
		{"a table buffer's install, one at a time", "tables_install", 2, true},
		{"table write through a mapping", "table_write", 1, true},
		{"backends' state write", "backend_state", 1, false}, // one batch for all of them
		{"backends' record write", "backends", 1, false},
		{"egress port write", "tx_ports", 1, false},
		{"table write", "table_write", 1, false},
		{"table switch", "service_active", 1, false},
		{"table buffers' install", "tables_install", 1, false},
		{"service counters' reset", "service_stats", 1, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := newLab(t)
			key := svc("198.51.100.63", 80, TCP)
			spec := ServiceSpec{Backends: []BackendSpec{
				backend("10.6.3.1", "02:63:00:00:00:01"),
				backend("10.6.3.2", "02:63:00:00:00:02").port(l.port2),
			}}
			l.dp.mu.Lock()
			freeSvc, members, quarantine := len(l.dp.freeSvc), len(l.dp.members), len(l.dp.quarantine)
			l.dp.mu.Unlock()

			crash := errors.New("injected")
			seen := 0
			var mu sync.Mutex // the buffers may be installed in parallel
			l.dp.noBatch = c.noBatch
			l.dp.beforeWrite = func(op string) error {
				mu.Lock()
				defer mu.Unlock()
				if op == c.failOp {
					seen++
					if seen == c.nth {
						return crash
					}
				}
				return nil
			}
			_, err := l.dp.ApplyService(key, spec)
			l.dp.beforeWrite = nil
			if !errors.Is(err, crash) {
				t.Fatalf("apply returned %v, want the injected error", err)
			}

			l.dp.mu.Lock()
			_, kept := l.dp.services[key]
			gotFreeSvc, gotMembers, gotQuarantine := len(l.dp.freeSvc), len(l.dp.members), len(l.dp.quarantine)
			l.dp.mu.Unlock()
			if kept {
				t.Fatalf("service %s kept after its creation failed", key)
			}
			if gotFreeSvc != freeSvc {
				t.Errorf("free service IDs %d, want %d as before the failed create", gotFreeSvc, freeSvc)
			}
			if gotMembers != members {
				t.Errorf("backend IDs owned %d, want %d as before the failed create", gotMembers, members)
			}
			if added := gotQuarantine - quarantine; added > len(spec.Backends) {
				t.Errorf("%d IDs quarantined, at most %d backends were added", added, len(spec.Backends))
			}
			var n int
			it := l.dp.objs.Tables.Iterate()
			var k uint32
			var m uint32
			for it.Next(&k, &m) {
				n++
			}
			if n != 0 {
				t.Errorf("%d table buffers installed with no service configured, want 0", n)
			}

			// A retry that can succeed serves the service.
			l.apply(key, spec)
			// (the second backend is behind the other port: REDIRECT)
			if got := l.chosen("198.51.100.63", "203.0.113.63", 4100); got != "02:63:00:00:00:01" && got != "REDIRECT" {
				t.Errorf("flow after a successful retry: %s, want one of the service's backends", got)
			}
		})
	}
}
