package loader

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/gopacket/layers"
)

// TestFlowCacheSize: the cache gets the size asked for and the program
// indexes it with the matching mask, so an established flow is served
// from the slot its hash names (with the default mask in a smaller cache
// most slots would lie past the end and never hit).
func TestFlowCacheSize(t *testing.T) {
	cases := []struct {
		size, want uint32
		err        string
	}{
		{size: 0, want: DefaultFlowCacheSize},
		{size: MinFlowCacheSize, want: MinFlowCacheSize},
		{size: 1 << 15, want: 1 << 15},
		{size: 1000, err: "flow cache size 1000: want a power of two"},
		{size: 128, err: "flow cache size 128"},
		{size: 1 << 21, err: "flow cache size 2097152"},
	}
	for _, c := range cases {
		t.Run(fmt.Sprint(c.size), func(t *testing.T) {
			if c.err != "" {
				if err := ValidFlowCacheSize(c.size); err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("ValidFlowCacheSize: %v, want %q", err, c.err)
				}
				spec, err := loadKeepbit()
				if err != nil {
					t.Fatal(err)
				}
				if err := sizeFlowCache(spec, c.size); err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("sizeFlowCache: %v, want %q", err, c.err)
				}
				return
			}
			pinOneCPU(t)
			l := newLabWith(t, Options{FlowCacheSize: c.size})
			if got := l.dp.objs.FlowCache.MaxEntries(); got != c.want {
				t.Fatalf("cache has %d entries, want %d", got, c.want)
			}
			key := svc("198.51.100.61", 80, TCP)
			b := backend("10.4.6.1", "02:ab:00:00:06:01")
			l.apply(key, ServiceSpec{Backends: []BackendSpec{b}})
			// Find a client whose slot differs under the default mask, so
			// the test fails if the program kept it.
			vip := netip.AddrPortFrom(key.VIP, 80)
			var client netip.AddrPort
			var fk *keepbitFlowKey
			for p := uint16(1024); p != 0; p++ {
				cl := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.61"), p)
				k := &keepbitFlowKey{Src: addr16(cl.Addr()), Dst: addr16(vip.Addr()), Sport: hostToNet16(p), Dport: hostToNet16(80), Proto: uint8(TCP)}
				if h := flowCacheHash(k); c.want == DefaultFlowCacheSize || h&(c.want-1) != h&(DefaultFlowCacheSize-1) {
					client, fk = cl, k
					break
				}
			}
			for range 3 {
				if got := l.chosen("198.51.100.61", client.Addr().String(), client.Port()); got != b.MAC.String() {
					t.Fatalf("flow went to %s, want %s", got, b.MAC)
				}
			}
			var per []keepbitFlowCacheEntry
			idx := flowCacheHash(fk) & (c.want - 1)
			if err := l.dp.objs.FlowCache.Lookup(idx, &per); err != nil {
				t.Fatal(err)
			}
			found := false
			for _, e := range per {
				found = found || (e.Key == *fk && e.PendingPackets > 0)
			}
			if !found {
				t.Fatalf("no CPU's cache slot %d holds the flow with packets counted: %+v", idx, per)
			}
		})
	}
}

// TestFlowCacheForget: ForgetFlows walks a resized cache to its end.
func TestFlowCacheForget(t *testing.T) {
	l := newLabWith(t, Options{FlowCacheSize: MinFlowCacheSize})
	key := svc("198.51.100.62", 80, TCP)
	l.apply(key, ServiceSpec{Backends: []BackendSpec{backend("10.4.6.2", "02:ab:00:00:06:02")}})
	for p := range uint16(64) {
		l.chosen("198.51.100.62", "203.0.113.62", 2000+p)
		l.chosen("198.51.100.62", "203.0.113.62", 2000+p)
	}
	flows, cached, err := l.dp.ForgetFlows([]netip.Addr{key.VIP})
	if err != nil {
		t.Fatal(err)
	}
	if flows != 64 || cached == 0 {
		t.Fatalf("forgot %d flows and %d cache entries, want 64 and some", flows, cached)
	}
}

// TestFlowCacheAdmission: two flows on one cache slot of one CPU. A flow
// takes a slot that another flow's live entry holds only when that entry
// was passed over once already with no hit since (its strike); an empty
// slot, the flow's own entry and an entry whose backend changed are taken
// at once. Every packet still goes to its flow's backend.
func TestFlowCacheAdmission(t *testing.T) {
	needCPUs(t, 1)
	l := newLab(t)
	key := svc("198.51.100.63", 80, TCP)
	b1, b2 := backend("10.4.6.3", "02:ab:00:00:06:03"), backend("10.4.6.4", "02:ab:00:00:06:04")
	l.apply(key, ServiceSpec{Backends: []BackendSpec{b1, b2}})
	vip := netip.AddrPortFrom(key.VIP, 80)
	a := netip.MustParseAddrPort("203.0.113.63:41000")
	c := sameSlotClient(t, a, vip)
	ka := tcpFlowKey(a, vip)
	name := map[keepbitFlowKey]string{ka: "a", tcpFlowKey(c, vip): "c", {}: "none"}
	backendOf := map[string]netip.Addr{}
	steps := []struct {
		what   string
		send   netip.AddrPort // invalid: change the state of c's backend instead
		holder string
		strike uint8
	}{
		{"a fills the empty slot", a, "a", 0},
		{"a hits its entry", a, "a", 0},
		{"c is passed over: a's entry gets a strike", c, "a", 1},
		{"a's hit clears the strike", a, "a", 0},
		{"c strikes a again", c, "a", 1},
		{"c takes the slot from the struck entry", c, "c", 0},
		{"a strikes c", a, "c", 1},
		{"c's hit clears it", c, "c", 0},
		{"c's backend drains: its entry no longer matches", netip.AddrPort{}, "c", 0},
		{"a takes the slot of the changed entry at once", a, "a", 0},
	}
	dpOnCPU(t, 0, func() {
		for i, s := range steps {
			if !s.send.IsValid() {
				if _, err := l.dp.SetBackendState(key, backendOf["c"], Draining); err != nil {
					t.Fatal(err)
				}
			} else {
				mac := l.chosen(vip.Addr().String(), s.send.Addr().String(), s.send.Port())
				who := map[netip.AddrPort]string{a: "a", c: "c"}[s.send]
				var addr netip.Addr
				for _, b := range []BackendSpec{b1, b2} {
					if b.MAC.String() == mac {
						addr = b.Addr
					}
				}
				if !addr.IsValid() {
					t.Fatalf("step %d (%s): %s went to %s, no backend's MAC", i, s.what, who, mac)
				}
				if was, ok := backendOf[who]; ok && was != addr {
					t.Fatalf("step %d (%s): %s moved from %s to %s", i, s.what, who, was, addr)
				}
				backendOf[who] = addr
			}
			var per []keepbitFlowCacheEntry
			if err := l.dp.objs.FlowCache.Lookup(flowCacheIndex(&ka), &per); err != nil {
				t.Fatal(err)
			}
			e := per[0]
			if got := name[e.Key]; got != s.holder || e.Strike != s.strike {
				t.Fatalf("step %d (%s): slot holds %s with strike %d, want %s with strike %d", i, s.what, got, e.Strike, s.holder, s.strike)
			}
		}
	})
}

// TestFlowCacheSkipsICMP: echo requests to an ICMP service are forwarded
// without a flow cache entry. The fast path never looks ICMP up, so an
// entry would never hit, and each ping's refill would keep its slot from
// a TCP or UDP flow that could.
func TestFlowCacheSkipsICMP(t *testing.T) {
	needCPUs(t, 1)
	l := newLab(t)
	b := backend("10.4.6.5", "02:ab:00:00:06:05")
	l.apply(svc("198.51.100.64", 0, ICMP), ServiceSpec{Backends: []BackendSpec{b}})
	l.apply(svc("2001:db8::64", 0, ICMPv6), ServiceSpec{Backends: []BackendSpec{backend("2001:db8:1::64", "02:ab:00:00:06:06")}})
	pings := [][]byte{
		v4(t, pkt{src: "203.0.113.64", dst: "198.51.100.64", l4: l4{layers.IPProtocolICMPv4, 9, 0}}, 0),
		icmp6Msg(t, "2001:db8:ffff::64", "2001:db8::64", 128, []byte{0, 9, 0, 1, 'h', 'i'}),
	}
	dpOnCPU(t, 0, func() {
		for _, in := range pings {
			for range 3 {
				if v := l.runN(in, 1); v != xdpTX {
					t.Fatalf("ping: verdict %s, want TX", verdictName(v))
				}
			}
		}
	})
	var per []keepbitFlowCacheEntry
	for idx := range l.dp.objs.FlowCache.MaxEntries() {
		if err := l.dp.objs.FlowCache.Lookup(idx, &per); err != nil {
			t.Fatal(err)
		}
		if p := per[0].Key.Proto; p == uint8(ICMP) || p == uint8(ICMPv6) {
			t.Fatalf("cache slot %d holds an ICMP flow: %+v", idx, per[0])
		}
	}
}
