package loader

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
)

// chosen sends one TCP packet of flow client:sport -> vip:80 and returns the
// MAC the frame was rewritten to, "" when it was not forwarded.
func (l *lab) chosen(vip, client string, sport uint16) string {
	l.t.Helper()
	p := pkt{src: client, dst: vip, l4: l4{layers.IPProtocolTCP, sport, 80}}
	var in []byte
	if netip.MustParseAddr(vip).Is4() {
		in = v4(l.t, p, 0)
	} else {
		in = v6(l.t, p)
	}
	verdict, out := l.run(in)
	if verdict != xdpTX {
		return verdictName(verdict)
	}
	return net.HardwareAddr(out[:6]).String()
}

// TestStateChanges walks one service through the state changes the
// dataplane must honour with a single write, checking after each step
// where an established flow and a new flow go. Steps with sync=false check
// the moment right after the state write, before any table rebuild.
func TestStateChanges(t *testing.T) {
	l := newLab(t)
	vip := svc("198.51.100.20", 80, TCP)
	p1 := backend("10.2.0.1", "02:bb:00:00:00:01")
	p2 := backend("10.2.0.2", "02:bb:00:00:00:02")
	q := backend("10.2.0.9", "02:bb:00:00:00:09").group(1)
	macOf := map[string]string{"p1": p1.MAC.String(), "p2": p2.MAC.String(), "q": q.MAC.String()}
	addrOf := map[string]netip.Addr{"p1": p1.Addr, "p2": p2.Addr, "q": q.Addr}
	l.apply(vip, ServiceSpec{Backends: []BackendSpec{p1, p2, q}})

	// Find an established flow that starts on p1, so the steps can be exact.
	var est uint16
	for sport := uint16(1000); sport < 2000; sport++ {
		if l.chosen("198.51.100.20", "203.0.113.50", sport) == macOf["p1"] {
			est = sport
			break
		}
	}
	if est == 0 {
		t.Fatal("no flow landed on p1 in 1000 tries")
	}
	newFlow := uint16(30000)
	steps := []struct {
		name        string
		backend     string
		state       State
		sync        bool
		established string // backend the established flow must be on after
		fresh       string // backend a brand-new flow must go to ("" = don't check)
	}{
		{"p1 down: established flow re-selects within group 0", "p1", Down, false, "p2", "p2"},
		{"p2 down too: priority group 1 takes over at once", "p2", Down, false, "q", "q"},
		{"after the rebuild nothing changes", "", 0, true, "q", "q"},
		{"p1 back up: new flows return to group 0, established stays", "p1", Up, true, "q", "p1"},
		{"q draining: established flow stays on q", "q", Draining, false, "q", "p1"},
		{"q down: established flow leaves q", "q", Down, false, "p1", "p1"},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if !s.sync {
				// Hold off the background table rebuild: what is checked
				// below is the effect of the state write alone.
				l.dp.applyMu.Lock()
				defer l.dp.applyMu.Unlock()
			}
			if s.backend != "" {
				ch, err := l.dp.SetBackendState(vip, addrOf[s.backend], s.state)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("state write returned after %v", ch.Took())
			}
			if s.sync {
				if err := l.dp.Sync(); err != nil {
					t.Fatal(err)
				}
			}
			if got := l.chosen("198.51.100.20", "203.0.113.50", est); got != macOf[s.established] {
				t.Errorf("established flow went to %s, want %s (%s)", got, s.established, macOf[s.established])
			}
			newFlow++
			if got := l.chosen("198.51.100.20", "203.0.113.51", newFlow); s.fresh != "" && got != macOf[s.fresh] {
				t.Errorf("new flow went to %s, want %s (%s)", got, s.fresh, macOf[s.fresh])
			}
		})
	}
}

// TestWeightsAndRemoval checks that a weight change re-spreads new flows
// by the new weights, and that removing a backend moves only its flows.
func TestWeightsAndRemoval(t *testing.T) {
	l := newLab(t)
	vip := svc("198.51.100.21", 80, TCP)
	a := backend("10.3.0.1", "02:cc:00:00:00:01")
	b := backend("10.3.0.2", "02:cc:00:00:00:02")
	c := backend("10.3.0.3", "02:cc:00:00:00:03")
	l.apply(vip, ServiceSpec{Backends: []BackendSpec{a, b, c}})

	count := func(client string) map[string]int {
		n := map[string]int{}
		for sport := range uint16(3000) {
			n[l.chosen("198.51.100.21", client, 10000+sport)]++
		}
		return n
	}
	even := count("203.0.113.60")
	for _, be := range []BackendSpec{a, b, c} {
		if got := even[be.MAC.String()]; got < 850 || got > 1150 {
			t.Errorf("equal weights: %s got %d of 3000 flows, want ~1000", be.Addr, got)
		}
	}

	l.apply(vip, ServiceSpec{Backends: []BackendSpec{a.weight(4), b, c}})
	weighted := count("203.0.113.61") // new client: new flows only
	if got := weighted[a.MAC.String()]; got < 1800 || got > 2200 {
		t.Errorf("weights 4:1:1: %s got %d of 3000 new flows, want ~2000", a.Addr, got)
	}

	// Established flows from the first round: those on b and c keep their
	// backend when a leaves; a's flows move.
	before := map[uint16]string{}
	for sport := range uint16(300) {
		before[sport] = l.chosen("198.51.100.21", "203.0.113.60", 10000+sport)
	}
	l.apply(vip, ServiceSpec{Backends: []BackendSpec{b, c}})
	moved := 0
	for sport, was := range before {
		now := l.chosen("198.51.100.21", "203.0.113.60", 10000+sport)
		switch {
		case was == a.MAC.String() && now == a.MAC.String():
			t.Fatalf("flow %d still goes to removed backend", sport)
		case was != a.MAC.String() && now != was:
			moved++
		}
	}
	if moved != 0 {
		t.Errorf("%d flows not on the removed backend moved", moved)
	}
}

// TestFlowHashMatchesBPF checks the Go twin of the flow hash against the
// program: for many new flows, the backend the Go side predicts from the
// live table is the one the program picks.
func TestFlowHashMatchesBPF(t *testing.T) {
	l := newLab(t)
	key := svc("2001:db8::21", 80, TCP)
	var bs []BackendSpec
	for i := range 5 {
		bs = append(bs, backend(fmt.Sprintf("2001:db8:2::%d", i+1), fmt.Sprintf("02:dd:00:00:00:%02x", i+1)))
	}
	l.apply(key, ServiceSpec{TableSize: 251, Backends: bs})
	words, err := l.dp.layout(l.dp.services[key])
	if err != nil {
		t.Fatal(err)
	}
	macByID := map[uint32]string{}
	for _, m := range l.dp.services[key].members {
		macByID[m.id] = m.spec.MAC.String()
	}
	for sport := range uint16(500) {
		client := netip.MustParseAddrPort(fmt.Sprintf("[2001:db8:ffff::9]:%d", 20000+sport))
		slot := FlowSlot(client, netip.AddrPortFrom(key.VIP, 80), TCP, 251, 7)
		want := macByID[words[tblHdr+slot]]
		if got := l.chosen("2001:db8::21", "2001:db8:ffff::9", 20000+sport); got != want {
			t.Fatalf("flow from port %d: program chose %s, Go predicts %s (slot %d)", 20000+sport, got, want, slot)
		}
	}
}

// TestCachedFlowFollowsRecordChange: a backend's MAC (or VLAN, or port)
// changes while a flow is established and cached; the next packet uses the
// new record, because the record swap flips the backend's state word.
func TestCachedFlowFollowsRecordChange(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.30", 80, TCP)
	b := backend("10.4.0.1", "02:ab:00:00:00:01")
	l.apply(key, ServiceSpec{Backends: []BackendSpec{b}})
	for range 3 {
		if got := l.chosen("198.51.100.30", "203.0.113.70", 4242); got != b.MAC.String() {
			t.Fatalf("flow went to %s, want %s", got, b.MAC)
		}
	}
	moved := b
	moved.MAC = mac("02:ab:00:00:00:99")
	l.apply(key, ServiceSpec{Backends: []BackendSpec{moved}})
	if got := l.chosen("198.51.100.30", "203.0.113.70", 4242); got != moved.MAC.String() {
		t.Fatalf("after the MAC change the flow went to %s, want %s", got, moved.MAC)
	}
}

// TestFlowTableCounts: packets forwarded from the per-CPU cache reach the
// flow table's counters in batches of 64 (bpf/maps.h FLOW_CACHE_FLUSH).
func TestFlowTableCounts(t *testing.T) {
	pinOneCPU(t) // the counts below are one CPU cache's flushes
	l := newLab(t)
	key := svc("198.51.100.31", 80, TCP)
	b := backend("10.4.0.2", "02:ab:00:00:00:02")
	l.apply(key, ServiceSpec{Backends: []BackendSpec{b}})
	const sent = 200
	for range sent {
		l.chosen("198.51.100.31", "203.0.113.71", 5151)
	}
	flows, err := l.dp.Flows(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != 1 {
		t.Fatalf("%d flows, want 1: %+v", len(flows), flows)
	}
	f := flows[0]
	want := Flow{Client: netip.MustParseAddrPort("203.0.113.71:5151"), VIP: netip.MustParseAddrPort("198.51.100.31:80"), Proto: TCP, Backend: b.Addr}
	if f.Client != want.Client || f.VIP != want.VIP || f.Proto != TCP || f.Backend != b.Addr {
		t.Fatalf("flow %+v, want %+v", f, want)
	}
	// 1 counted when learned, then 3 flushes of 64.
	if f.Packets != 1+3*64 {
		t.Errorf("flow table counts %d packets of %d sent, want %d", f.Packets, sent, 1+3*64)
	}
	st, err := l.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Backends[key][b.Addr].Packets != sent || st.Services[key].Packets != sent {
		t.Errorf("backend counter %d, service counter %d, want %d each (counters are exact)",
			st.Backends[key][b.Addr].Packets, st.Services[key].Packets, sent)
	}
}

// TestTablesCurrent: a backend that comes up takes new flows only once its
// service's table is rebuilt, after SetBackendState returned; until then
// TablesCurrent says the tables are stale (a node joining BGP waits for it,
// or it sends the flows its peers give that backend elsewhere).
func TestTablesCurrent(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.22", 80, TCP)
	a := backend("10.2.1.1", "02:bd:00:00:00:01")
	b := backend("10.2.1.2", "02:bd:00:00:00:02").state(Down)
	l.apply(key, ServiceSpec{Backends: []BackendSpec{a, b}})
	if err := l.dp.Sync(); err != nil {
		t.Fatal(err)
	}
	if !l.dp.TablesCurrent() {
		t.Fatal("TablesCurrent false after Sync")
	}
	// newFlows sends n new flows from a fresh client and counts them by MAC.
	client := 0
	newFlows := func(n int) map[string]int {
		client++
		got := map[string]int{}
		for sport := range uint16(n) {
			got[l.chosen("198.51.100.22", fmt.Sprintf("203.0.113.%d", 100+client), 20000+sport)]++
		}
		return got
	}

	l.dp.applyMu.Lock() // holds off the background rebuild
	held := true
	defer func() {
		if held {
			l.dp.applyMu.Unlock()
		}
	}()
	if _, err := l.dp.SetBackendState(key, b.Addr, Up); err != nil {
		t.Fatal(err)
	}
	if l.dp.TablesCurrent() {
		t.Error("TablesCurrent true with b up and its table not rebuilt")
	}
	if got := newFlows(200); got[b.MAC.String()] != 0 || got[a.MAC.String()] != 200 {
		t.Errorf("before the rebuild: new flows went %v, want all 200 to a (%s): b is in no table yet", got, a.MAC)
	}
	l.dp.applyMu.Unlock()
	held = false

	deadline := time.Now().Add(10 * time.Second)
	for !l.dp.TablesCurrent() {
		if time.Now().After(deadline) {
			t.Fatal("TablesCurrent still false 10s after the rebuild was let go")
		}
		time.Sleep(time.Millisecond)
	}
	if got := newFlows(200); got[b.MAC.String()] < 60 || got[a.MAC.String()] < 60 {
		t.Errorf("after the rebuild: new flows went %v, want them spread over a and b", got)
	}
}
