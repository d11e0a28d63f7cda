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
