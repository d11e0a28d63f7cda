package loader

import (
	"errors"
	"slices"
	"testing"
)

// TestReviewRemovedIDReleasedWhenPublishFails: once the table without a
// removed backend is live, its ID must be released (into quarantine) even
// when the publish step after the switch fails. Before the fix
// ApplyService returned the publish error before releasing: the removed
// member stayed in the ID index, owned by no service, and its ID was never
// reused by this process (each such failure leaked IDs).
func TestReviewRemovedIDReleasedWhenPublishFails(t *testing.T) {
	cases := []struct {
		name   string
		port   uint16
		failOp string // the publish write that fails
	}{
		{"port service, services entry write fails", 80, "services"},
		{"port service, vips entry write fails", 81, "vips"},
		{"catch-all service, vips entry write fails", 0, "vips"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := newLab(t)
			key := svc("198.51.100.62", c.port, TCP)
			a, b := backend("10.6.2.1", "02:62:00:00:00:01"), backend("10.6.2.2", "02:62:00:00:00:02")
			l.apply(key, ServiceSpec{Backends: []BackendSpec{a, b}})
			idB := l.memberID(key, b.Addr)

			crash := errors.New("injected")
			l.dp.beforeWrite = func(op string) error {
				if op == c.failOp {
					return crash
				}
				return nil
			}
			_, err := l.dp.ApplyService(key, ServiceSpec{Backends: []BackendSpec{a}})
			l.dp.beforeWrite = nil
			if !errors.Is(err, crash) {
				t.Fatalf("apply returned %v, want the injected publish error", err)
			}

			l.dp.mu.Lock()
			defer l.dp.mu.Unlock()
			if m := l.dp.members[idB]; m != nil {
				t.Errorf("removed backend %s keeps ID %d in the index after the table without it went live", b.Addr, idB)
			}
			quarantined := slices.ContainsFunc(l.dp.quarantine, func(q quarantined) bool { return q.id == idB })
			if !quarantined && !slices.Contains(l.dp.freeBe, idB) {
				t.Errorf("ID %d of removed backend %s is neither quarantined nor free: leaked", idB, b.Addr)
			}
		})
	}
}
