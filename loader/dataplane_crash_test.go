package loader

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/keepbit/keepbit/internal/privtest"
)

// pinnedLab is a lab whose dataplane is attached and pinned, so that it can
// be closed (as by a crash) and adopted by a new Open.
func pinnedLab(t *testing.T) (*lab, func() *lab) {
	t.Helper()
	privtest.Require(t)
	root := pinRoot(t)
	suffix := rand.Uint32() & 0xffffff
	name := fmt.Sprintf("kbp%06x", suffix)
	port2 := fmt.Sprintf("kbr%06x", suffix)
	l := &lab{t: t, ifindex: addPort(t, name, lbMAC), port2: port2}
	addPort(t, port2, port2MAC)
	open := func() *lab {
		t.Helper()
		dp, err := Open(context.Background(), Options{Interface: name, PinRoot: root, HashSeed: 7})
		if err != nil {
			t.Fatalf("open dataplane: %v", err)
		}
		return &lab{t: t, dp: dp, ifindex: l.ifindex, port2: port2}
	}
	first := open()
	t.Cleanup(func() { _ = RemovePinned(root, name) })
	return first, open
}

// crashAt makes the k-th kernel write (0-based) and every later one fail,
// as if the process died right before it; it counts writes in *n.
func crashAt(d *Dataplane, k int, n *int) error {
	crash := errors.New("crash injected")
	var mu sync.Mutex
	d.beforeWrite = func(op string) error {
		mu.Lock()
		defer mu.Unlock()
		*n++
		if k >= 0 && *n > k {
			return crash
		}
		return nil
	}
	return crash
}

// TestDeleteCrashForwardsNothing (issue 7 defect 11): whichever kernel
// write of DeleteService the process dies before, once a new process has
// adopted the pinned state (and deleted the service again if it is still
// published, as the controller would), no packet of the deleted service is
// forwarded, from the flow cache of any CPU or not; other services go on.
func TestDeleteCrashForwardsNothing(t *testing.T) {
	needCPUs(t, 2)
	privtest.Require(t)
	needXDPContext(t)
	gone := svc("198.51.100.60", 80, TCP)
	kept := svc("198.51.100.61", 80, TCP)
	spec := ServiceSpec{Backends: []BackendSpec{backend("10.7.0.1", "02:70:00:00:00:01"), backend("10.7.0.2", "02:70:00:00:00:02")}}
	keptSpec := ServiceSpec{Backends: []BackendSpec{backend("10.7.0.3", "02:70:00:00:00:03")}}
	const clients = 16

	warm := func(l *lab) {
		for cpu := range 2 {
			dpOnCPU(t, cpu, func() {
				for sport := range uint16(clients) {
					for range 3 {
						if got := l.chosen("198.51.100.60", "203.0.113.90", 8000+sport); got == "DROP" || got == "PASS" {
							t.Fatalf("warm-up: flow %d on cpu %d: %s", sport, cpu, got)
						}
					}
				}
			})
		}
	}
	// Count the writes of one DeleteService.
	var writes int
	{
		l, _ := pinnedLab(t)
		l.apply(gone, spec)
		l.apply(kept, keptSpec)
		crashAt(l.dp, -1, &writes)
		if _, err := l.dp.DeleteService(gone); err != nil {
			t.Fatal(err)
		}
		_ = l.dp.Detach()
	}
	if writes == 0 {
		t.Fatal("DeleteService made no kernel write")
	}
	for k := range writes {
		t.Run(fmt.Sprintf("crash before write %d of %d", k+1, writes), func(t *testing.T) {
			l, reopen := pinnedLab(t)
			l.apply(gone, spec)
			l.apply(kept, keptSpec)
			warm(l)
			var n int
			crash := crashAt(l.dp, k, &n)
			if _, err := l.dp.DeleteService(gone); !errors.Is(err, crash) && k < writes-2 {
				// The last writes (buffer removal) are best effort.
				t.Fatalf("delete returned %v, want the injected crash", err)
			}
			_ = l.dp.Close()

			a := reopen()
			t.Cleanup(func() { _ = a.dp.Detach() })
			published := false
			for _, s := range a.dp.Services() {
				published = published || s.Key == gone
			}
			if published {
				if _, err := a.dp.DeleteService(gone); err != nil {
					t.Fatalf("delete after adoption: %v", err)
				}
			}
			for cpu := range 2 {
				dpOnCPU(t, cpu, func() {
					for sport := range uint16(clients) {
						if got := a.chosen("198.51.100.60", "203.0.113.90", 8000+sport); got != "PASS" {
							t.Errorf("cpu %d: flow %d of the deleted service: %s, want PASS (published after adoption: %v)", cpu, sport, got, published)
						}
					}
					if got := a.chosen("198.51.100.61", "203.0.113.91", 9000); got != "02:70:00:00:00:03" {
						t.Errorf("cpu %d: the other service's flow went to %s", cpu, got)
					}
				})
			}
		})
	}
}

// TestAdoptIgnoresForeignMember (issue 7 defect 1, adoption side): a live
// table that lists an ID whose backend record belongs to another service
// (an earlier loader released the ID too early) must not make that
// backend a member on adoption, and the table is rebuilt without it.
func TestAdoptIgnoresForeignMember(t *testing.T) {
	privtest.Require(t)
	needXDPContext(t)
	l, reopen := pinnedLab(t)
	s1 := svc("198.51.100.62", 80, TCP)
	s2 := svc("198.51.100.63", 80, TCP)
	a := backend("10.7.1.1", "02:71:00:00:00:01")
	b := backend("10.7.1.2", "02:71:00:00:00:02")
	l.apply(s1, ServiceSpec{Backends: []BackendSpec{a}})
	l.apply(s2, ServiceSpec{Backends: []BackendSpec{b}})
	bID := l.memberID(s2, b.Addr)
	// Make s1's live member list name b's ID instead of a's.
	s := l.dp.services[s1]
	at := tblHdr + s.tableSize
	var c tableChunk
	if err := s.buffers[s.active].Lookup(at/tblChunk, &c); err != nil {
		t.Fatal(err)
	}
	c[at%tblChunk] = bID
	if err := s.buffers[s.active].Put(at/tblChunk, &c); err != nil {
		t.Fatal(err)
	}
	_ = l.dp.Close()

	n := reopen()
	t.Cleanup(func() { _ = n.dp.Detach() })
	if err := n.dp.Sync(); err != nil {
		t.Fatal(err)
	}
	for _, si := range n.dp.Services() {
		if si.Key != s1 {
			continue
		}
		for _, be := range si.Backends {
			if be.Addr == b.Addr {
				t.Errorf("adopted %s as a member of %s; its record belongs to %s", b.Addr, s1, s2)
			}
		}
	}
	for sport := range uint16(20) {
		if got := n.chosen("198.51.100.62", "203.0.113.92", 9100+sport); got == b.MAC.String() {
			t.Fatalf("flow %d of %s went to %s's backend %s", sport, s1, s2, b.MAC)
		}
	}
	if got := n.chosen("198.51.100.63", "203.0.113.92", 9200); got != b.MAC.String() {
		t.Errorf("%s's own flow went to %s, want %s", s2, got, b.MAC)
	}
}
