package loader

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// TestForgetFlows: the flows to the forgotten VIP lose their flow-table
// and flow-cache entries and are placed by the table again; the flows to
// another VIP keep theirs.
func TestForgetFlows(t *testing.T) {
	l := newLab(t)
	bs := []BackendSpec{backend("10.9.2.1", "02:ce:00:00:00:01"), backend("10.9.2.2", "02:ce:00:00:00:02"), backend("10.9.2.3", "02:ce:00:00:00:03")}
	gone, kept := svc("198.51.100.92", 80, TCP), svc("198.51.100.93", 80, TCP)
	l.apply(gone, ServiceSpec{Backends: bs})
	l.apply(kept, ServiceSpec{Backends: bs})
	macOf := map[string]netip.Addr{}
	for _, b := range bs {
		macOf[b.MAC.String()] = b.Addr
	}
	const client = "203.0.113.11"
	// Each flow on a backend the table would not pick (as after a
	// re-pick), cached by runs on one CPU.
	moved := map[ServiceKey]netip.Addr{}
	for _, key := range []ServiceKey{gone, kept} {
		cp := netip.AddrPortFrom(netip.MustParseAddr(client), 5000)
		pick := l.maglevPick(key, cp, 80)
		for _, b := range bs {
			if b.Addr != pick {
				moved[key] = b.Addr
				break
			}
		}
		l.dp.mu.Lock()
		m := l.dp.services[key].members[moved[key]]
		id, inc := m.id, m.inc
		l.dp.mu.Unlock()
		now, err := monotonicNow()
		must(t, err, "clock")
		k := flowKeyOf(client, key.VIP.String(), 5000)
		must(t, l.dp.objs.Flows.Put(&k, &keepbitFlowValue{Backend: id, Incarnation: inc, Packets: 100, FirstSeenNs: now - 1e9, LastSeenNs: now}), "put")
		l.runN(v4(t, pkt{src: client, dst: key.VIP.String(), l4: l4{layers.IPProtocolTCP, 5000, 80}}, 0), 3)
	}
	where := func(key ServiceKey) netip.Addr {
		_, out := l.run(v4(t, pkt{src: client, dst: key.VIP.String(), l4: l4{layers.IPProtocolTCP, 5000, 80}}, 0))
		return macOf[net.HardwareAddr(out[:6]).String()]
	}
	for _, key := range []ServiceKey{gone, kept} {
		if got := where(key); got != moved[key] {
			t.Fatalf("%s before: on %s, want the entry's %s", key, got, moved[key])
		}
	}
	flows, cached, err := l.dp.ForgetFlows([]netip.Addr{gone.VIP})
	must(t, err, "forget")
	if flows != 1 || cached < 1 {
		t.Errorf("forgot %d flows and %d cache entries, want 1 and at least 1", flows, cached)
	}
	cp := netip.AddrPortFrom(netip.MustParseAddr(client), 5000)
	if got, want := where(gone), l.maglevPick(gone, cp, 80); got != want {
		t.Errorf("forgotten flow on %s, want the table's %s", got, want)
	}
	if got := where(kept); got != moved[kept] {
		t.Errorf("the other VIP's flow on %s, want its entry's %s", got, moved[kept])
	}
}
