package loader

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestPinnedFlows: the post-mortem reads a client's flows and
// shared_flows entries from the pins, with the backend they name
// resolved, and says when there is none.
func TestPinnedFlows(t *testing.T) {
	privtest.Require(t)
	root := tempPinRoot(t)
	port := attachedPort(t, root)
	d, err := Open(context.Background(), Options{Interface: port, PinRoot: root, HashSeed: 7})
	must(t, err, "open")
	defer d.Close()
	key := svc("198.51.100.70", 80, TCP)
	be := backend("10.9.1.1", "02:ee:00:00:01:01")
	if _, err := d.ApplyService(key, ServiceSpec{Backends: []BackendSpec{be}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SetBackendState(key, be.Addr, Up); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	m := d.services[key].members[be.Addr]
	id, inc := m.id, m.inc
	d.mu.Unlock()

	k := flowKeyOf("203.0.113.5", "198.51.100.70", 4242)
	must(t, d.objs.Flows.Put(&k, &keepbitFlowValue{Backend: id, Incarnation: inc, Packets: 7, FirstSeenNs: 1, LastSeenNs: 2, ReportedNs: 3}), "put flow")
	must(t, d.objs.SharedFlows.Put(&k, &keepbitSharedFlowValue{Backend: id, Incarnation: inc}), "put shared flow")

	named := fmt.Sprintf("10.9.1.1 state 1 inc %d", inc)
	for _, c := range []struct {
		client string
		want   string
	}{
		{"203.0.113.5:4242", fmt.Sprintf("flow id %d (%s) inc %d packets 7 first_seen 1 last_seen 2 reported 3; shared id %d (%s) inc %d",
			id, named, inc, id, named, inc)},
		{"203.0.113.5:4243", "no flows entry; no shared_flows entry"},
		{"203.0.113.6:4242", "no flows entry; no shared_flows entry"},
	} {
		if got := PinnedFlows(PinDir(root, port), netip.MustParseAddrPort(c.client)); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.client, got, c.want)
		}
	}
}
