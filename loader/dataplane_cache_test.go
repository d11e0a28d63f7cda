package loader

import (
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
)

// dpOnCPU runs f with the calling goroutine's thread pinned to cpu, so
// that BPF_PROG_RUN (which runs on the calling CPU) uses that CPU's flow
// cache.
func dpOnCPU(t testing.TB, cpu int, f func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatalf("get affinity: %v", err)
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Fatalf("pin to cpu %d: %v", cpu, err)
	}
	defer func() { _ = unix.SchedSetaffinity(0, &old) }()
	f()
}

func needCPUs(t testing.TB, n int) {
	t.Helper()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil || set.Count() < n || !set.IsSet(0) || !set.IsSet(1) {
		t.Skipf("needs CPUs 0 and 1 (affinity %v)", err)
	}
}

// flowEntry reads the flow table entry of client:sport -> vip:80/tcp.
func (l *lab) flowEntry(client, vip string, sport uint16) (keepbitFlowValue, bool) {
	l.t.Helper()
	k := flowKeyOf(client, vip, sport)
	var v keepbitFlowValue
	if err := l.dp.objs.Flows.Lookup(&k, &v); err != nil {
		return v, false
	}
	return v, true
}

// TestFlapDoesNotReviveStaleCache (issue 7 defect 2): a down -> up flap of
// a flow's backend while the flow re-selects on another CPU must not let a
// CPU that saw no packet meanwhile revive its cache entry; and a cache
// entry whose flow the flow table moved elsewhere follows the flow table
// at its next flush.
func TestFlapDoesNotReviveStaleCache(t *testing.T) {
	needCPUs(t, 2)
	l := newLab(t)
	key := svc("198.51.100.46", 80, TCP)
	a := backend("10.6.3.1", "02:63:00:00:00:01")
	b := backend("10.6.3.2", "02:63:00:00:00:02")
	l.apply(key, ServiceSpec{Backends: []BackendSpec{a, b}})
	macs := map[string]BackendSpec{a.MAC.String(): a, b.MAC.String(): b}
	const vip, client = "198.51.100.46", "203.0.113.83"
	setState := func(addr BackendSpec, st State) {
		if _, err := l.dp.SetBackendState(key, addr.Addr, st); err != nil {
			t.Fatal(err)
		}
		if err := l.dp.Sync(); err != nil {
			t.Fatal(err)
		}
	}

	// learn sends the flow from sport on cpu 0 until it is in the flow
	// table and cpu 0's cache, and returns the MAC it went to, that
	// backend and the other one.
	learn := func(t *testing.T, sport uint16) (first string, x, other BackendSpec) {
		t.Helper()
		dpOnCPU(t, 0, func() {
			for range 3 { // learn, then cache hits
				first = l.chosen(vip, client, sport)
			}
		})
		x, ok := macs[first]
		if !ok {
			t.Fatalf("flow went to %s, want a backend", first)
		}
		other = a
		if x.Addr == a.Addr {
			other = b
		}
		return first, x, other
	}

	t.Run("flap", func(t *testing.T) {
		const sport = 7000
		_, x, other := learn(t, sport)
		dpOnCPU(t, 1, func() {
			setState(x, Down)
			if got := l.chosen(vip, client, sport); got != other.MAC.String() {
				t.Fatalf("cpu 1 with %s down: flow went to %s, want %s", x.Addr, got, other.MAC)
			}
			setState(x, Up)
			if got := l.chosen(vip, client, sport); got != other.MAC.String() {
				t.Fatalf("cpu 1 after the flap: flow went to %s, want it to stay on %s", got, other.MAC)
			}
		})
		dpOnCPU(t, 0, func() {
			if got := l.chosen(vip, client, sport); got != other.MAC.String() {
				t.Errorf("cpu 0 after the flap: flow went to %s (stale cache entry), want %s like the flow table and cpu 1", got, other.MAC)
			}
		})
	})

	t.Run("flow table moved", func(t *testing.T) {
		const sport = 7001
		first, _, other := learn(t, sport)
		// Another CPU re-selected the flow (as after an eviction and a
		// table change): the flow table names the other backend.
		fv, ok := l.flowEntry(client, vip, sport)
		if !ok {
			t.Fatal("flow not in the flow table")
		}
		l.dp.mu.Lock()
		om := l.dp.services[key].members[other.Addr]
		fv.Backend, fv.Incarnation = om.id, om.inc
		l.dp.mu.Unlock()
		var k keepbitFlowKey
		k.Src, k.Dst, k.Sport, k.Dport, k.Proto = addr16(netip.MustParseAddr(client)), addr16(netip.MustParseAddr(vip)), hostToNet16(sport), hostToNet16(80), uint8(TCP)
		if err := l.dp.objs.Flows.Put(&k, &fv); err != nil {
			t.Fatal(err)
		}
		stale := 0
		dpOnCPU(t, 0, func() {
			for range flowCacheFlushPackets + 1 {
				if l.chosen(vip, client, sport) == first {
					stale++
				}
			}
			if got := l.chosen(vip, client, sport); got != other.MAC.String() {
				t.Errorf("cpu 0 kept sending the flow to %s, want %s as the flow table says", got, other.MAC)
			}
		})
		if stale >= flowCacheFlushPackets {
			t.Errorf("%d packets went to the cached backend after the flow table moved, want fewer than %d", stale, flowCacheFlushPackets)
		}
	})
}

// flowCacheFlushPackets mirrors FLOW_CACHE_FLUSH in bpf/maps.h.
const flowCacheFlushPackets = 64

// flowCacheFlushBound mirrors FLOW_CACHE_FLUSH_NS in bpf/maps.h.
const flowCacheFlushBound = 250 * time.Millisecond

func coarseNow(t testing.TB) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// TestSlowFlowLastSeen (issue 7 defect 5): a cached flow at 10 packets/s
// keeps its flow table last_seen within the flush bound of its latest
// packet, so drain -wait and the LRU see it live.
func TestSlowFlowLastSeen(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.47", 80, TCP)
	l.apply(key, ServiceSpec{Backends: []BackendSpec{backend("10.6.4.1", "02:64:00:00:00:01")}})
	const vip, client, sport = "198.51.100.47", "203.0.113.84", 7100
	// A jiffy of coarse-clock granularity, generously.
	const slack = 20 * time.Millisecond
	dpOnCPU(t, 0, func() {
		for i := range 20 {
			before := coarseNow(t) // <= the packet's own coarse time
			if got := l.chosen(vip, client, sport); got != "02:64:00:00:00:01" {
				t.Fatalf("packet %d went to %s", i, got)
			}
			fv, ok := l.flowEntry(client, vip, sport)
			if !ok {
				t.Fatalf("packet %d: flow not in the flow table", i)
			}
			if lag := time.Duration(int64(before) - int64(fv.LastSeenNs)); lag > flowCacheFlushBound+slack {
				t.Fatalf("packet %d: last_seen lags the packet by %v, want at most %v", i, lag, flowCacheFlushBound)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

// TestFlowTableSharedLRU (issue 7 defect 6): 150k flows arriving on one CPU
// fit in the default 262144-entry flow table; a per-CPU LRU would evict
// at max_entries / possible CPUs.
func TestFlowTableSharedLRU(t *testing.T) {
	l := newLab(t)
	key := svc("198.51.100.48", 80, TCP)
	l.apply(key, ServiceSpec{Backends: []BackendSpec{backend("10.6.5.1", "02:65:00:00:00:01")}})
	const flows = 150000
	frame := v4(t, pkt{src: "203.0.0.1", dst: "198.51.100.48", l4: l4{layers.IPProtocolTCP, 1, 80}}, 0)
	const srcOff, sportOff = 14 + 12, 14 + 20
	out := make([]byte, len(frame)+256)
	dpOnCPU(t, 0, func() {
		for i := range flows {
			in := append([]byte(nil), frame...)
			binary.BigEndian.PutUint16(in[srcOff+2:], uint16(i>>16)+1)
			binary.BigEndian.PutUint16(in[sportOff:], uint16(i))
			opts := ebpf.RunOptions{Data: in, DataOut: out, Context: xdpMD{DataEnd: uint32(len(in)), IngressIfindex: uint32(l.ifindex)}}
			verdict, err := l.dp.objs.KeepbitXdp.Run(&opts)
			if err != nil {
				t.Fatal(err)
			}
			got := opts.DataOut
			if verdict != xdpTX || net.HardwareAddr(got[:6]).String() != "02:65:00:00:00:01" {
				t.Fatalf("flow %d: verdict %s", i, verdictName(verdict))
			}
		}
	})
	n := 0
	var k keepbitFlowKey
	var v keepbitFlowValue
	it := l.dp.objs.Flows.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	if n != flows {
		t.Errorf("flow table holds %d of %d flows created on one CPU (capacity %d)", n, flows, l.dp.objs.Flows.MaxEntries())
	}
}

// TestPortServiceKeepsEstablishedFlows: when a port service appears next
// to its VIP's catch-all, flows established on a catch-all backend stay
// there (flow entries are per 5-tuple; moving them would break the
// connections) on every CPU, cached or not, while new flows to that port go
// to the port service. The churn model holds the dataplane to the same.
func TestPortServiceKeepsEstablishedFlows(t *testing.T) {
	needCPUs(t, 2)
	l := newLab(t)
	const vip, client = "198.51.100.49", "203.0.113.85"
	a := backend("10.6.6.1", "02:66:00:00:00:01")
	b := backend("10.6.6.2", "02:66:00:00:00:02")
	l.apply(svc(vip, 0, TCP), ServiceSpec{Backends: []BackendSpec{a}})
	for cpu := range 2 {
		dpOnCPU(t, cpu, func() {
			for sport := range uint16(8) {
				if got := l.chosen(vip, client, 7200+sport+uint16(cpu)*100); got != a.MAC.String() {
					t.Fatalf("catch-all flow went to %s", got)
				}
			}
		})
	}
	l.apply(svc(vip, 80, TCP), ServiceSpec{Backends: []BackendSpec{b}})
	for cpu := range 2 {
		dpOnCPU(t, cpu, func() {
			for sport := range uint16(8) {
				// Established on this CPU (cached) and on the other one
				// (flow table only).
				for _, base := range []uint16{7200, 7300} {
					if got := l.chosen(vip, client, base+sport); got != a.MAC.String() {
						t.Errorf("cpu %d: established flow %d went to %s, want it kept on %s", cpu, base+sport, got, a.MAC)
					}
				}
				if got := l.chosen(vip, client, 7400+sport+uint16(cpu)*100); got != b.MAC.String() {
					t.Errorf("cpu %d: new flow to port 80 went to %s, want the port service's %s", cpu, got, b.MAC)
				}
			}
		})
	}
	p := pkt{src: client, dst: vip, l4: l4{layers.IPProtocolTCP, 7600, 443}}
	if verdict, out := l.run(v4(t, p, 0)); verdict != xdpTX || net.HardwareAddr(out[:6]).String() != a.MAC.String() {
		t.Errorf("port 443 flow: %s to %s, want TX to the catch-all's %s", verdictName(verdict), net.HardwareAddr(out[:6]), a.MAC)
	}
}
