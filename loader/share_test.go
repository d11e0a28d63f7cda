package loader

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/keepbit/keepbit/internal/privtest"
)

// segment builds an IPv4 frame client -> vip of proto TCP (with flags:
// syn or ack) or UDP.
func segment(t testing.TB, client, vip netip.AddrPort, proto Proto, syn bool) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: lbMAC, EthernetType: layers.EthernetTypeIPv4}
	ipl := &layers.IPv4{Version: 4, TTL: 64, SrcIP: client.Addr().AsSlice(), DstIP: vip.Addr().AsSlice(), Id: 1}
	var l4l gopacket.SerializableLayer
	if proto == TCP {
		ipl.Protocol = layers.IPProtocolTCP
		tcp := &layers.TCP{SrcPort: layers.TCPPort(client.Port()), DstPort: layers.TCPPort(vip.Port()), SYN: syn, ACK: !syn, Window: 512, Seq: 1}
		_ = tcp.SetNetworkLayerForChecksum(ipl)
		l4l = tcp
	} else {
		ipl.Protocol = layers.IPProtocolUDP
		udp := &layers.UDP{SrcPort: layers.UDPPort(client.Port()), DstPort: layers.UDPPort(vip.Port())}
		_ = udp.SetNetworkLayerForChecksum(ipl)
		l4l = udp
	}
	return serialize(t, eth, ipl, l4l, gopacket.Payload("data"))
}

// runN runs in n times in one BPF_PROG_RUN (one CPU, no migration): the
// first run fills this CPU's cache entry if needed, 64 more flush it.
func (l *lab) runN(in []byte, n int) uint32 {
	l.t.Helper()
	out := make([]byte, len(in)+256)
	ctx := xdpMD{DataEnd: uint32(len(in)), IngressIfindex: uint32(l.ifindex)}
	opts := ebpf.RunOptions{Data: in, DataOut: out, Context: ctx, Repeat: uint32(n)}
	verdict, err := l.dp.objs.KeepbitXdp.Run(&opts)
	if err != nil {
		l.t.Fatalf("BPF_PROG_RUN: %v", err)
	}
	return verdict
}

// maglevPick is the backend the live table's slot names for a new flow.
func (l *lab) maglevPick(key ServiceKey, client netip.AddrPort, dport uint16) netip.Addr {
	l.t.Helper()
	owners := map[uint32]flowOwner{}
	l.dp.mu.Lock()
	svc := l.dp.services[key]
	addrs := map[uint32]netip.Addr{}
	for a, m := range svc.members {
		owners[m.id] = flowOwner{addr: a, inc: m.inc, svc: svc}
		addrs[m.id] = a
	}
	l.dp.mu.Unlock()
	slots, err := l.dp.liveSlots(owners)
	must(l.t, err, "live slots")
	t := slots[svc]
	return addrs[t[FlowSlot(client, netip.AddrPortFrom(key.VIP, dport), key.Proto, uint32(len(t)), l.dp.opts.HashSeed)]]
}

func (l *lab) shareStats() FlowShareCounters {
	l.t.Helper()
	s, err := l.dp.FlowShareStats()
	must(l.t, err, "flow share stats")
	return s
}

// TestSharedFlows: on a local miss, a shared entry decides for a non-SYN
// TCP or a UDP packet when its backend is usable with the incarnation the
// entry names; a SYN, a stale entry, a local entry or sharing turned off
// leave the choice to the flow table and Maglev.
func TestSharedFlows(t *testing.T) {
	l := newLab(t)
	must(t, l.dp.SetFlowSharing(FlowSharing{Enabled: true}), "enable sharing")
	web := svc("198.51.100.80", 80, TCP)
	dns := svc("198.51.100.81", 53, UDP)
	var bs []BackendSpec
	macOf := map[netip.Addr]string{}
	for i := range 4 {
		b := backend(fmt.Sprintf("10.8.0.%d", i+1), fmt.Sprintf("02:ab:00:00:08:%02x", i+1))
		bs = append(bs, b)
		macOf[b.Addr] = b.MAC.String()
	}
	l.apply(web, ServiceSpec{Backends: bs})
	l.apply(dns, ServiceSpec{Backends: bs})

	// other is a backend that is not Maglev's pick for the flow.
	other := func(pick netip.Addr) netip.Addr {
		for _, b := range bs {
			if b.Addr != pick {
				return b.Addr
			}
		}
		panic("one backend")
	}
	setState := func(a netip.Addr, s State) {
		for _, key := range []ServiceKey{web, dns} {
			if _, err := l.dp.SetBackendState(key, a, s); err != nil {
				t.Fatal(err)
			}
		}
	}
	type tc struct {
		name      string
		key       ServiceKey
		syn       bool
		before    func(client netip.AddrPort, shared netip.Addr) // nil: none
		shareWith func(shared netip.Addr) netip.Addr             // what the entry names; nil: the shared backend
		wantShare bool                                           // the packet goes to the shared backend (else Maglev's)
		hit       uint64
		stale     uint64
		after     func(shared netip.Addr)
	}
	cases := []tc{
		{name: "tcp ack takes the shared backend", key: web, wantShare: true, hit: 1},
		{name: "tcp syn ignores it", key: web, syn: true},
		{name: "udp takes the shared backend", key: dns, wantShare: true, hit: 1},
		{name: "shared backend down: maglev", key: web, stale: 1,
			before: func(_ netip.AddrPort, s netip.Addr) { setState(s, Down) },
			after:  func(s netip.Addr) { setState(s, Up) }},
		{name: "shared backend draining keeps the flow", key: web, wantShare: true, hit: 1,
			before: func(_ netip.AddrPort, s netip.Addr) { setState(s, Draining) },
			after:  func(s netip.Addr) { setState(s, Up) }},
		{name: "a local entry wins", key: web,
			before: func(c netip.AddrPort, _ netip.Addr) {
				l.runN(segment(t, c, netip.AddrPortFrom(web.VIP, 80), TCP, true), 1)
			}},
		{name: "sharing off: maglev", key: web,
			before: func(netip.AddrPort, netip.Addr) { must(t, l.dp.SetFlowSharing(FlowSharing{}), "disable") },
			after:  func(netip.Addr) { must(t, l.dp.SetFlowSharing(FlowSharing{Enabled: true}), "enable") }},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			client := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.80"), uint16(20000+i))
			vip := netip.AddrPortFrom(c.key.VIP, c.key.Port)
			pick := l.maglevPick(c.key, client, c.key.Port)
			shared := other(pick)
			n, err := l.dp.ShareFlows([]SharedFlow{{Service: c.key, Client: client, Backend: shared}})
			if err != nil || n != 1 {
				t.Fatalf("ShareFlows = %d, %v; want 1 applied", n, err)
			}
			if c.before != nil {
				c.before(client, shared)
			}
			s0 := l.shareStats()
			verdict, out := l.run(segment(t, client, vip, c.key.Proto, c.syn))
			want := pick
			if c.wantShare {
				want = shared
			}
			if verdict != xdpTX || net.HardwareAddr(out[:6]).String() != macOf[want] {
				t.Fatalf("verdict %s to %s, want TX to %s (%s); maglev %s, shared %s",
					verdictName(verdict), net.HardwareAddr(out[:6]), want, macOf[want], pick, shared)
			}
			s1 := l.shareStats()
			if s1.SharedHit-s0.SharedHit != c.hit || s1.SharedStale-s0.SharedStale != c.stale {
				t.Errorf("shared hits +%d stale +%d, want +%d +%d", s1.SharedHit-s0.SharedHit, s1.SharedStale-s0.SharedStale, c.hit, c.stale)
			}
			// The choice is now the flow's own entry.
			k := keepbitFlowKey{Src: addr16(client.Addr()), Dst: addr16(c.key.VIP), Sport: hostToNet16(client.Port()),
				Dport: hostToNet16(c.key.Port), Proto: uint8(c.key.Proto)}
			var v keepbitFlowValue
			if err := l.dp.objs.Flows.Lookup(&k, &v); err != nil {
				t.Error("no flow entry learned")
			} else if got := l.dp.members[v.Backend].spec.Addr; got != want {
				t.Errorf("flow entry names %s, want %s", got, want)
			}
			if c.after != nil {
				c.after(shared)
			}
		})
	}

	t.Run("reused incarnation: maglev", func(t *testing.T) {
		client := netip.MustParseAddrPort("203.0.113.81:30000")
		pick := l.maglevPick(web, client, 80)
		shared := other(pick)
		l.dp.mu.Lock()
		m := l.dp.services[web].members[shared]
		k := keepbitFlowKey{Src: addr16(client.Addr()), Dst: addr16(web.VIP), Sport: hostToNet16(client.Port()), Dport: hostToNet16(80), Proto: uint8(TCP)}
		v := keepbitSharedFlowValue{Backend: m.id, Incarnation: m.inc + 1}
		l.dp.mu.Unlock()
		must(t, l.dp.objs.SharedFlows.Put(&k, &v), "write stale entry")
		s0 := l.shareStats()
		verdict, out := l.run(segment(t, client, netip.AddrPortFrom(web.VIP, 80), TCP, false))
		if verdict != xdpTX || net.HardwareAddr(out[:6]).String() != macOf[pick] {
			t.Fatalf("verdict %s to %s, want TX to maglev's %s", verdictName(verdict), net.HardwareAddr(out[:6]), pick)
		}
		if s1 := l.shareStats(); s1.SharedStale-s0.SharedStale != 1 {
			t.Errorf("stale +%d, want +1", s1.SharedStale-s0.SharedStale)
		}
	})

	t.Run("unknown service or backend skipped", func(t *testing.T) {
		client := netip.MustParseAddrPort("203.0.113.82:1000")
		n, err := l.dp.ShareFlows([]SharedFlow{
			{Service: web, Client: client, Backend: bs[0].Addr},
			{Service: svc("198.51.100.99", 80, TCP), Client: client, Backend: bs[0].Addr},
			{Service: web, Client: client, Backend: netip.MustParseAddr("10.8.9.9")},
			{Service: ServiceKey{VIP: web.VIP, Port: 81, Proto: TCP}, Client: client, Backend: bs[0].Addr},
		})
		if err != nil || n != 1 {
			t.Errorf("ShareFlows = %d, %v; want 1 applied of 4", n, err)
		}
	})
}

// reportSink collects what ReadFlowReports delivers.
type reportSink struct {
	mu  sync.Mutex
	got []FlowReport
}

func startReports(t *testing.T, d *Dataplane) *reportSink {
	s := &reportSink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- d.ReadFlowReports(ctx, func(rs []FlowReport) {
			s.mu.Lock()
			s.got = append(s.got, rs...)
			s.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ReadFlowReports: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("ReadFlowReports did not return after its context ended")
		}
	})
	return s
}

// wait returns the reports once n arrived (or after a generous timeout,
// with what arrived).
func (s *reportSink) wait(n int) []FlowReport {
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		got := slices.Clone(s.got)
		s.mu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFlowReportMoved: established flows are not reported while the table
// still picks their backend; after a backend is added, exactly the flows
// whose slot moved to another backend are reported as Moved, with the
// backend they stay on, at their next cache flush; ShareableFlows lists
// the same flows.
func TestFlowReportMoved(t *testing.T) {
	l := newLab(t)
	must(t, l.dp.SetFlowSharing(FlowSharing{Enabled: true, LongLived: time.Hour}), "enable sharing")
	sink := startReports(t, l.dp)
	key := svc("198.51.100.82", 80, TCP)
	var bs []BackendSpec
	for i := range 4 {
		bs = append(bs, backend(fmt.Sprintf("10.8.1.%d", i+1), fmt.Sprintf("02:ab:00:00:09:%02x", i+1)))
	}
	l.apply(key, ServiceSpec{Backends: bs[:3]})
	vip := netip.AddrPortFrom(key.VIP, 80)
	var clients []netip.AddrPort
	for i := range 200 {
		c := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.90"), uint16(10000+i))
		clients = append(clients, c)
		l.runN(segment(t, c, vip, TCP, true), 1)
	}
	flushAll := func() {
		for _, c := range clients {
			if v := l.runN(segment(t, c, vip, TCP, false), 65); v != xdpTX {
				t.Fatalf("flow %s: verdict %s", c, verdictName(v))
			}
		}
	}
	flushAll()
	time.Sleep(50 * time.Millisecond)
	if got := sink.wait(0); len(got) != 0 {
		t.Fatalf("%d reports before the table changed, want none: %v", len(got), got[0])
	}

	l.apply(key, ServiceSpec{Backends: bs})
	want := map[netip.AddrPort]netip.Addr{}
	for _, c := range clients {
		v, ok := l.flowEntry(c.Addr().String(), key.VIP.String(), c.Port())
		if !ok {
			t.Fatalf("flow %s lost", c)
		}
		on := l.dp.members[v.Backend].spec.Addr
		if l.maglevPick(key, c, 80) != on {
			want[c] = on
		}
	}
	if len(want) == 0 || len(want) == len(clients) {
		t.Fatalf("%d of %d flows moved in the table; the test needs some", len(want), len(clients))
	}
	flushAll()
	got := sink.wait(len(want))
	check := func(what string, got []FlowReport) {
		t.Helper()
		seen := map[netip.AddrPort]bool{}
		for _, r := range got {
			if r.Reason != Moved || r.Service != key || want[r.Client] != r.Backend || seen[r.Client] {
				t.Errorf("%s: unexpected report %+v (want Moved on %s)", what, r, want[r.Client])
			}
			seen[r.Client] = true
		}
		if len(seen) != len(want) {
			t.Errorf("%s: %d flows reported, want the %d that moved", what, len(seen), len(want))
		}
	}
	check("reports", got)
	if s := l.shareStats(); s.Reported != uint64(len(want)) || s.ReportDropped != 0 {
		t.Errorf("counters %+v, want %d reported, none dropped", s, len(want))
	}
	// Reported once per refresh: more flushes report nothing new.
	flushAll()
	time.Sleep(50 * time.Millisecond)
	if again := sink.wait(0); len(again) != len(got) {
		t.Errorf("%d reports after another flush, want still %d", len(again), len(got))
	}

	var listed []FlowReport
	must(t, l.dp.ShareableFlows(func(rs []FlowReport) { listed = append(listed, rs...) }), "shareable flows")
	check("ShareableFlows", listed)
}

// TestFlowReportLongLived: a flow is reported as long-lived once older
// than the setting, and again only after the refresh interval.
func TestFlowReportLongLived(t *testing.T) {
	l := newLab(t)
	const age, refresh = 300 * time.Millisecond, 1200 * time.Millisecond
	must(t, l.dp.SetFlowSharing(FlowSharing{Enabled: true, LongLived: age, Refresh: refresh}), "enable sharing")
	key := svc("198.51.100.83", 80, TCP)
	b := backend("10.8.2.1", "02:ab:00:00:0a:01")
	l.apply(key, ServiceSpec{Backends: []BackendSpec{b}})
	client := netip.MustParseAddrPort("203.0.113.91:4000")
	vip := netip.AddrPortFrom(key.VIP, 80)
	learned := time.Now()
	l.runN(segment(t, client, vip, TCP, true), 1)
	flush := func() uint64 {
		if v := l.runN(segment(t, client, vip, TCP, false), 65); v != xdpTX {
			t.Fatalf("verdict %s", verdictName(v))
		}
		return l.shareStats().Reported
	}
	// Timing is asserted only one way where the machine may stall: a
	// report must not come early, so "none yet" is checked only when the
	// flush surely ran before the age.
	if n := flush(); time.Since(learned) < age-50*time.Millisecond && n != 0 {
		t.Fatalf("reported %d times before the age", n)
	}
	time.Sleep(time.Until(learned.Add(age + 100*time.Millisecond)))
	if n := flush(); n != 1 {
		t.Fatalf("reported %d times after the age, want 1", n)
	}
	reported := time.Now()
	if n := flush(); time.Since(reported) < refresh-100*time.Millisecond && n != 1 {
		t.Fatalf("reported %d times within the refresh interval, want 1", n)
	}
	time.Sleep(time.Until(reported.Add(refresh + 100*time.Millisecond)))
	if n := flush(); n != 2 {
		t.Fatalf("reported %d times after the refresh interval, want 2", n)
	}
	sink := startReports(t, l.dp)
	got := sink.wait(2)
	if len(got) != 2 || got[0].Reason != LongLived || got[0].Client != client || got[0].Backend != b.Addr || got[0].Service != key {
		t.Errorf("reports %+v, want 2 long-lived reports of %s on %s", got, client, b.Addr)
	}
}

// TestFlowReportRingFull: with nobody reading, the ring buffer fills; the
// packets whose reports do not fit are forwarded all the same, and the
// lost reports are counted.
func TestFlowReportRingFull(t *testing.T) {
	l := newLab(t)
	must(t, l.dp.SetFlowSharing(FlowSharing{Enabled: true, LongLived: time.Nanosecond}), "enable sharing")
	key := svc("198.51.100.84", 80, TCP)
	l.apply(key, ServiceSpec{Backends: []BackendSpec{backend("10.8.3.1", "02:ab:00:00:0b:01")}})
	vip := netip.AddrPortFrom(key.VIP, 80)
	capacity := int(keepbitShareLimitsFLOW_REPORTS_BYTES) / 64 // 56-byte record + 8-byte header
	// One frame, its client port and address patched per flow (the
	// program checks no checksum): serializing 16k frames is slow under -race.
	frame := segment(t, netip.MustParseAddrPort("203.0.113.1:1"), vip, TCP, false)
	flow := func(i int) []byte {
		frame[14+12+2] = byte(113 + i/60000)
		binary.BigEndian.PutUint16(frame[14+20:], uint16(1+i%60000))
		return frame
	}
	n := capacity + 200
	for i := range n {
		l.runN(flow(i), 1)
	}
	// A flow must be older than the age on the coarse clock to be reported.
	time.Sleep(20 * time.Millisecond)
	// 66 packets: a flow whose cache slot holds another live flow's entry
	// takes it at its second packet (flow_cache_admit), and must still
	// reach the 64 cached packets of a flush; with 65 its report attempt
	// hung on the slow path's period, and the drops varied (141-342).
	for i := range n {
		if v := l.runN(flow(i), 66); v != xdpTX {
			t.Fatalf("flow %d: verdict %s with the ring buffer filling", i, verdictName(v))
		}
	}
	s := l.shareStats()
	t.Logf("%+v", s)
	// The ring holds capacity records but for the one a reader could be
	// reading; a flow whose report was dropped tries again at its next
	// flush, so drops exceed the 200 flows beyond the capacity.
	if s.Reported < uint64(capacity-16) || s.Reported > uint64(capacity) || s.ReportDropped < 200 {
		t.Errorf("counters %+v, want about %d reported (the ring's capacity) and >= 200 dropped", s, capacity)
	}
	if st, _ := l.dp.Stats(); st.Sharing != s {
		t.Errorf("Stats().Sharing %+v, want %+v", st.Sharing, s)
	}
}

// TestAdoptEarlierLayout: a pin directory written by the version before
// flow sharing (testdata/keepbit_v1_bpfel.o, the committed object of that
// version) is adopted: the flow table is migrated with its entries, the
// maps this version added are created and pinned, and the program under
// the link uses exactly the pinned maps.
func TestAdoptEarlierLayout(t *testing.T) {
	privtest.Require(t)
	// The earlier version's object is its current build, which kernels
	// before 5.17 refuse (they load the compatible build).
	if p, err := ChooseProgram(ProgramAuto); err != nil || p != ProgramCurrent {
		t.Skipf("kernel %s does not load the current build (chose %q, %v), and the earlier version's object is one", kernelRelease(), p, err)
	}
	root := tempPinRoot(t)
	port := attachedPort(t, root)
	dir := PinDir(root, port)
	must(t, ensureBPFFS(root, dir), "bpffs")

	old, err := ebpf.LoadCollectionSpec(filepath.Join("testdata", "keepbit_v1_bpfel.o"))
	must(t, err, "earlier spec")
	coll, err := ebpf.NewCollection(old)
	must(t, err, "load earlier version")
	defer coll.Close()
	for name, m := range coll.Maps {
		if name[0] != '.' {
			must(t, m.Pin(filepath.Join(dir, name)), "pin "+name)
		}
	}
	k := keepbitFlowKey{Src: addr16(netip.MustParseAddr("203.0.113.99")), Dst: addr16(netip.MustParseAddr("198.51.100.85")),
		Sport: hostToNet16(5555), Dport: hostToNet16(80), Proto: uint8(TCP)}
	v1 := flowValueV1{Backend: 7, Incarnation: 3, LastSeenNs: 12345, Packets: 99, Bytes: 9900}
	must(t, coll.Maps[keepbitMapFlows].Put(&k, &v1), "write flow in the earlier layout")
	ifc, err := net.InterfaceByName(port)
	must(t, err, "port")
	l, err := link.AttachXDP(link.XDPOptions{Program: coll.Programs[keepbitProgKeepbitXdp], Interface: ifc.Index})
	must(t, err, "attach earlier version")
	must(t, l.Pin(filepath.Join(dir, "link")), "pin link")
	l.Close()

	d, err := Open(context.Background(), Options{Interface: port, PinRoot: root, HashSeed: 7})
	must(t, err, "adopt the earlier layout")
	if !d.Adopted() {
		t.Fatal("not adopted")
	}
	checkPins(t, d)
	var v keepbitFlowValue
	must(t, d.objs.Flows.Lookup(&k, &v), "migrated flow")
	if v.Backend != v1.Backend || v.Incarnation != v1.Incarnation || v.LastSeenNs != v1.LastSeenNs ||
		v.Packets != v1.Packets || v.Bytes != v1.Bytes || v.FirstSeenNs == 0 || v.ReportedNs != 0 {
		t.Errorf("migrated flow %+v, want %+v with a first-seen time", v, v1)
	}
	must(t, d.Close(), "close")

	// And the migrated directory is adopted as this version's own.
	d, err = Open(context.Background(), Options{Interface: port, PinRoot: root, HashSeed: 7})
	must(t, err, "adopt again")
	defer d.Close()
	checkPins(t, d)
	must(t, d.objs.Flows.Lookup(&k, &v), "flow after the second adoption")
}
