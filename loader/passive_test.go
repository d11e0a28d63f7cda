package loader

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
)

// TestSynRetransmits: a TCP SYN (no ACK) that finds its flow young and
// SYN-only counts against the backend the flow is on and keeps the flow
// there; everything else counts nothing.
func TestSynRetransmits(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.90", 80, TCP)
	a := backend("10.9.0.1", "02:cc:00:00:00:01")
	b := backend("10.9.0.2", "02:cc:00:00:00:02")
	l.apply(key, ServiceSpec{Backends: []BackendSpec{a, b}})
	macOf := map[string]string{a.MAC.String(): "a", b.MAC.String(): "b"}

	const vip, client = "198.51.100.90", "203.0.113.9"
	send := func(sport uint16, syn, synAck bool) string {
		t.Helper()
		p := pkt{src: client, dst: vip, l4: l4{layers.IPProtocolTCP, sport, 80}, syn: syn}
		in := v4(t, p, 0)
		if synAck {
			in[14+20+13] |= 0x10 // ACK on top of SYN (checksums are not checked)
		}
		verdict, out := l.run(in)
		if verdict != xdpTX {
			t.Fatalf("port %d: verdict %s", sport, verdictName(verdict))
		}
		return macOf[net.HardwareAddr(out[:6]).String()]
	}
	total := func() uint64 {
		t.Helper()
		got, err := l.dp.SynRetransmits(key)
		must(t, err, "read SYN retransmissions")
		var n uint64
		for _, c := range got {
			n += c.Count
		}
		return n
	}
	count := func(name string) uint64 {
		t.Helper()
		got, err := l.dp.SynRetransmits(key)
		must(t, err, "read SYN retransmissions")
		addr := map[string]netip.Addr{"a": a.Addr, "b": b.Addr}[name]
		return got[addr].Count
	}
	// age makes the flow of sport look first seen long ago.
	age := func(sport uint16, by time.Duration) {
		k := flowKeyOf(client, vip, sport)
		var v keepbitFlowValue
		must(t, l.dp.objs.Flows.Lookup(&k, &v), "flow entry")
		v.FirstSeenNs -= uint64(by)
		must(t, l.dp.objs.Flows.Put(&k, &v), "age flow entry")
	}

	first := send(1000, true, false)
	for _, c := range []struct {
		name   string
		do     func() string
		same   bool   // the packet went to the flow's backend
		counts uint64 // total count after the step
	}{
		{"first SYN of a flow: nothing to retransmit", func() string { return first }, true, 0},
		{"SYN again on the young flow", func() string { return send(1000, true, false) }, true, 1},
		{"and again", func() string { return send(1000, true, false) }, true, 2},
		{"SYN-ACK is not a connection request", func() string { return send(1000, true, true) }, true, 2},
		{"ACK counts nothing", func() string { return send(1000, false, false) }, true, 2},
		{"SYN of a new flow counts nothing", func() string { send(2000, true, false); return first }, true, 2},
		{"SYN on a flow older than the window", func() string { age(1000, 3*time.Second); return send(1000, true, false) }, true, 2},
	} {
		got := c.do()
		if c.same && got != first {
			t.Errorf("%s: went to %s, the flow is on %s", c.name, got, first)
		}
		if n := total(); n != c.counts {
			t.Errorf("%s: %d retransmitted SYNs counted, want %d", c.name, n, c.counts)
		}
	}
	if n := count(first); n != 2 {
		t.Errorf("backend %s (the flow's) has %d, want 2", first, n)
	}

	// A flow that sent data is established: a SYN on it is not a retry.
	// (The ACKs run on one CPU, past a cache flush, so the flow table
	// has their count.)
	send(3000, true, false)
	ack := v4(t, pkt{src: client, dst: vip, l4: l4{layers.IPProtocolTCP, 3000, 80}}, 0)
	l.runN(ack, int(keepbitLimitsFLOW_CACHE_FLUSH)+int(keepbitLimitsSYN_RETRANS_MAX_PACKETS))
	before := total()
	send(3000, true, false)
	if n := total(); n != before {
		t.Errorf("SYN on an established flow counted (%d -> %d)", before, n)
	}
}

// TestSynReusedTuple: a SYN on a flow entry that is not its own young
// SYN (an established or old flow: the client reuses the 5-tuple for a
// new connection) is placed by the Maglev table, whatever backend the
// entry names; a young SYN retry keeps the entry's backend.
func TestSynReusedTuple(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.91", 80, TCP)
	bs := []BackendSpec{backend("10.9.1.1", "02:cd:00:00:00:01"), backend("10.9.1.2", "02:cd:00:00:00:02"), backend("10.9.1.3", "02:cd:00:00:00:03")}
	l.apply(key, ServiceSpec{Backends: bs})
	macOf := map[string]netip.Addr{}
	for _, b := range bs {
		macOf[b.MAC.String()] = b.Addr
	}
	const vip, client = "198.51.100.91", "203.0.113.10"
	for _, c := range []struct {
		name    string
		packets uint64        // the entry's packets so far
		age     time.Duration // since the entry's first packet
		want    string        // "entry": the backend the entry names; "table": Maglev's pick
	}{
		{"young SYN retry keeps the entry", 1, 0, "entry"},
		{"established flow: a SYN is a new connection", 20, 0, "table"},
		{"old flow: a SYN is a new connection", 1, 5 * time.Second, "table"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sport := uint16(4000 + c.packets + uint64(c.age/time.Second))
			cp := netip.AddrPortFrom(netip.MustParseAddr(client), sport)
			pick := l.maglevPick(key, cp, 80)
			var other netip.Addr
			for _, b := range bs {
				if b.Addr != pick {
					other = b.Addr
					break
				}
			}
			// An entry naming another backend than the table's pick.
			now, err := monotonicNow()
			must(t, err, "clock")
			l.dp.mu.Lock()
			m := l.dp.services[key].members[other]
			id, inc := m.id, m.inc
			l.dp.mu.Unlock()
			k := flowKeyOf(client, vip, sport)
			must(t, l.dp.objs.Flows.Put(&k, &keepbitFlowValue{Backend: id, Incarnation: inc, Packets: c.packets,
				FirstSeenNs: now - uint64(c.age) - uint64(50*time.Millisecond), LastSeenNs: now}), "put entry") // the program's coarse clock lags a little
			verdict, out := l.run(v4(t, pkt{src: client, dst: vip, l4: l4{layers.IPProtocolTCP, sport, 80}, syn: true}, 0))
			if verdict != xdpTX {
				t.Fatalf("verdict %s", verdictName(verdict))
			}
			got := macOf[net.HardwareAddr(out[:6]).String()]
			want := map[string]netip.Addr{"entry": other, "table": pick}[c.want]
			if got != want {
				t.Fatalf("SYN went to %s, want %s (%s; table's pick %s, entry %s)", got, want, c.want, pick, other)
			}
			var v keepbitFlowValue
			must(t, l.dp.objs.Flows.Lookup(&k, &v), "entry after")
			if c.want == "table" && (v.Backend == id || v.Packets != 1) {
				t.Fatalf("entry after a new connection: %+v, want the table's pick with 1 packet", v)
			}
		})
	}
}
