package loader

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/privtest"
)

// The packet benchmarks time the program with BPF_PROG_RUN and report
// ns/pkt next to the same figure for baseline_xdp (swap MACs, XDP_TX),
// measured interleaved in the same iterations so machine noise hits both.

const benchRepeat = 20000

func baselineProgram(b *testing.B) *ebpf.Program {
	prog, err := LoadBaseline()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { prog.Close() })
	return prog
}

func benchLab(b *testing.B) *lab {
	l := newLab(b)
	var bs []BackendSpec
	for i := range 16 {
		bs = append(bs, backend(fmt.Sprintf("10.9.0.%d", i+1), fmt.Sprintf("02:ee:00:00:00:%02x", i+1)))
	}
	l.apply(svc("198.51.100.50", 80, TCP), ServiceSpec{Backends: bs})
	l.apply(svc("2001:db8::50", 80, TCP), ServiceSpec{Backends: bs})
	tagged := slices.Clone(bs)
	for i := range tagged {
		tagged[i].VLAN = 20
	}
	l.apply(svc("198.51.100.51", 80, TCP), ServiceSpec{Backends: tagged})
	return l
}

func runOnce(b *testing.B, prog *ebpf.Program, in []byte, repeat int) time.Duration {
	_, per, err := prog.Benchmark(in, repeat, nil)
	if err != nil {
		b.Fatalf("BPF_PROG_RUN: %v", err)
	}
	return per
}

func BenchmarkPacket(b *testing.B) {
	privtest.Require(b)
	l := benchLab(b)
	base := baselineProgram(b)
	p4 := func(dst string, tags ...tag) []byte {
		return v4(b, pkt{tags: tags, src: "203.0.113.9", dst: dst, l4: l4{layers.IPProtocolTCP, 5555, 80}, payload: make([]byte, 18)}, 0)
	}
	cases := []struct {
		name string
		in   []byte
	}{
		{"non_vip_pass", p4("198.51.100.99")},
		{"established", p4("198.51.100.50")},
		{"ipv6_established", v6(b, pkt{src: "2001:db8:ffff::9", dst: "2001:db8::50", l4: l4{layers.IPProtocolTCP, 5555, 80}})},
		{"vlan_retag_established", p4("198.51.100.51", tag{vid: 10})},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var kb, bl time.Duration
			n := 0
			for b.Loop() {
				bl += runOnce(b, base, c.in, benchRepeat)
				kb += runOnce(b, l.dp.objs.KeepbitXdp, c.in, benchRepeat)
				n++
			}
			b.ReportMetric(float64(kb.Nanoseconds())/float64(n), "ns/pkt")
			b.ReportMetric(float64(bl.Nanoseconds())/float64(n), "baseline-ns/pkt")
			b.ReportMetric(float64(kb)/float64(bl), "x-baseline")
		})
	}
	// Flow sharing on: every flush (64 packets) also asks whether the
	// flow is worth reporting (the table's slot, its age).
	b.Run("established_sharing", func(b *testing.B) {
		if err := l.dp.SetFlowSharing(FlowSharing{Enabled: true, LongLived: time.Hour}); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = l.dp.SetFlowSharing(FlowSharing{}) }()
		in := p4("198.51.100.50")
		var kb, bl time.Duration
		n := 0
		for b.Loop() {
			bl += runOnce(b, base, in, benchRepeat)
			kb += runOnce(b, l.dp.objs.KeepbitXdp, in, benchRepeat)
			n++
		}
		b.ReportMetric(float64(kb.Nanoseconds())/float64(n), "ns/pkt")
		b.ReportMetric(float64(bl.Nanoseconds())/float64(n), "baseline-ns/pkt")
		b.ReportMetric(float64(kb)/float64(bl), "x-baseline")
	})
	// Two established flows on one flow cache slot, one packet of each in
	// turn (one run per packet, as they alternate; baseline timed the
	// same way): a slot taken at every collision served neither.
	b.Run("established_colliding", func(b *testing.B) {
		vip := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.50"), 80)
		a := netip.MustParseAddrPort("203.0.113.77:42000")
		c := sameSlotClient(b, a, vip)
		ins := [][]byte{segment(b, a, vip, TCP, false), segment(b, c, vip, TCP, false)}
		var kb, bl time.Duration
		n := 0
		dpOnCPU(b, 0, func() {
			for b.Loop() {
				for i := range 1000 {
					in := ins[i%2]
					bl += runOnce(b, base, in, 1)
					kb += runOnce(b, l.dp.objs.KeepbitXdp, in, 1)
					n++
				}
			}
		})
		b.ReportMetric(float64(kb.Nanoseconds())/float64(n), "ns/pkt")
		b.ReportMetric(float64(bl.Nanoseconds())/float64(n), "baseline-ns/pkt")
		b.ReportMetric(float64(kb)/float64(bl), "x-baseline")
	})
	// A new flow misses the flow table, so every run needs a packet not
	// seen before: one run per packet, baseline timed the same way.
	b.Run("new_flow", func(b *testing.B) {
		var kb, bl time.Duration
		n := 0
		sport := uint16(1)
		client := 0
		for b.Loop() {
			for range 1000 {
				sport++
				if sport == 0 {
					client++
				}
				in := v4(b, pkt{src: fmt.Sprintf("203.0.%d.%d", 100+client/250, client%250+1), dst: "198.51.100.50",
					l4: l4{layers.IPProtocolTCP, sport, 80}}, 0)
				bl += runOnce(b, base, in, 1)
				kb += runOnce(b, l.dp.objs.KeepbitXdp, in, 1)
				n++
			}
		}
		b.ReportMetric(float64(kb.Nanoseconds())/float64(n), "ns/pkt")
		b.ReportMetric(float64(bl.Nanoseconds())/float64(n), "baseline-ns/pkt")
		b.ReportMetric(float64(kb)/float64(bl), "x-baseline")
	})
}

func percentiles(b *testing.B, ds []time.Duration, prefix string) {
	slices.Sort(ds)
	at := func(q float64) float64 {
		return float64(ds[int(q*float64(len(ds)-1))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(at(0.50), prefix+"p50-us")
	b.ReportMetric(at(0.99), prefix+"p99-us")
	b.ReportMetric(at(1), prefix+"max-us")
	b.ReportMetric(float64(len(ds)), prefix+"samples")
}

// BenchmarkStateChange: a backend going down or up is one map write; the
// latency is from the call to the returned write, 1000 changes per round.
func BenchmarkStateChange(b *testing.B) {
	privtest.Require(b)
	l := benchLab(b)
	key := svc("198.51.100.50", 80, TCP)
	target := netip.MustParseAddr("10.9.0.3")
	var took []time.Duration
	for b.Loop() {
		for i := range 1000 {
			took = append(took, flipState(b, l.dp, key, target, i))
		}
	}
	percentiles(b, took, "")
}

// flipState makes the i-th of a series of state changes of target (down
// for even i, up for odd) and returns how long its write took.
func flipState(b *testing.B, dp *Dataplane, key ServiceKey, target netip.Addr, i int) time.Duration {
	st := Down
	if i%2 == 1 {
		st = Up
	}
	ch, err := dp.SetBackendState(key, target, st)
	if err != nil {
		b.Fatal(err)
	}
	return ch.Took()
}

// BenchmarkTableSwitch: a new 65537-slot table for a 16-backend service
// (a weight change): prepare = Maglev build + write of the idle buffer,
// switch = the one write that makes it live.
func BenchmarkTableSwitch(b *testing.B) {
	privtest.Require(b)
	l := benchLab(b)
	key := svc("198.51.100.50", 80, TCP)
	spec := l.dp.Services()[0]
	var total, sw []time.Duration
	for b.Loop() {
		for i := range 1000 {
			bs := slices.Clone(spec.Backends)
			bs[i%16].Weight = uint32(2 + i%3)
			chs, err := l.dp.ApplyService(key, ServiceSpec{TableSize: spec.TableSize, Backends: bs})
			if err != nil {
				b.Fatal(err)
			}
			total = append(total, chs[0].Took())
			sw = append(sw, chs[0].Switch())
		}
	}
	percentiles(b, total, "prepare+switch-")
	percentiles(b, sw, "switch-")
}

// BenchmarkStateChangeWithReaders: SetBackendState latency on a full flow
// table (262144 entries) while every reader runs back to back in its own
// goroutine: Flows (the API's top 20), Stats, a metrics scrape (Services
// then one Stats) and a drain -wait count (LiveFlows). The same number of
// changes without readers, measured in the same run, is the baseline; the
// ratio of the p99s shows what readers cost failover. Readers at full
// speed are a worst case: a real scrape or drain poll comes once a second.
func BenchmarkStateChangeWithReaders(b *testing.B) {
	l, key := fullTableLab(b)
	for i := range 20 { // services for Stats and the scrape to read
		var bs []BackendSpec
		for j := range 8 {
			bs = append(bs, backend(fmt.Sprintf("10.9.%d.%d", 10+i, j+1), fmt.Sprintf("02:ee:00:00:%02x:%02x", 10+i, j+1)))
		}
		l.apply(svc(fmt.Sprintf("198.51.100.%d", 100+i), 80, TCP), ServiceSpec{Backends: bs})
	}
	target := netip.MustParseAddr("10.9.1.3")
	readers := map[string]func() error{
		"flows": func() error { _, err := l.dp.Flows(20); return err },
		"stats": func() error { _, err := l.dp.Stats(); return err },
		"scrape": func() error {
			_ = l.dp.Services()
			_, err := l.dp.Stats()
			return err
		},
		"drain": func() error { _, _, err := l.dp.LiveFlows(key, target, 10*time.Second); return err },
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	reads := make(map[string]int, len(readers))
	var mu sync.Mutex
	for name, read := range readers {
		wg.Go(func() {
			n := 0
			for ctx.Err() == nil {
				if err := read(); err != nil {
					b.Error(err)
					return
				}
				n++
			}
			mu.Lock()
			reads[name] = n
			mu.Unlock()
		})
	}
	var with []time.Duration
	for b.Loop() {
		for i := range 1000 {
			with = append(with, flipState(b, l.dp, key, target, i))
		}
	}
	cancel()
	wg.Wait()
	without := make([]time.Duration, 0, len(with))
	for i := range len(with) {
		without = append(without, flipState(b, l.dp, key, target, i))
	}
	percentiles(b, with, "readers-")
	percentiles(b, without, "alone-")
	p99 := func(ds []time.Duration) float64 { return float64(ds[int(0.99*float64(len(ds)-1))]) }
	b.ReportMetric(p99(with)/p99(without), "x-p99-alone")
	for name, n := range reads {
		b.ReportMetric(float64(n), name+"-reads")
	}
}

// BenchmarkScrape: what a metrics scrape costs at 200 services of 8
// backends: one Stats per dataplane now, against one Stats per service as
// the collector did before (reported as old-collector-ms, measured in the
// same run).
func BenchmarkScrape(b *testing.B) {
	l := newLab(b)
	var wg sync.WaitGroup
	errs := make([]error, 200)
	for i := range 200 { // creations overlap their RCU waits
		wg.Go(func() {
			var bs []BackendSpec
			for j := range 8 {
				bs = append(bs, backend(fmt.Sprintf("10.%d.%d.%d", 20+i/250, i%250, j+1), fmt.Sprintf("02:ee:00:%02x:%02x:%02x", i/250, i%250, j+1)))
			}
			_, errs[i] = l.dp.ApplyService(svc(fmt.Sprintf("198.18.%d.%d", i/250, i%250+1), 80, TCP), ServiceSpec{Backends: bs})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	var scrape, old time.Duration
	n := 0
	for b.Loop() {
		t0 := time.Now()
		if _, err := l.dp.Stats(); err != nil {
			b.Fatal(err)
		}
		scrape += time.Since(t0)
		t0 = time.Now()
		for range 200 {
			if _, err := l.dp.Stats(); err != nil {
				b.Fatal(err)
			}
		}
		old += time.Since(t0)
		n++
	}
	b.ReportMetric(float64(scrape.Microseconds())/1e3/float64(n), "scrape-ms")
	b.ReportMetric(float64(old.Microseconds())/1e3/float64(n), "old-collector-ms")
}

// BenchmarkApplyServices: the dataplane's share of a daemon start with
// 1,000 services x 16 backends (table size 2053), applied 32 at a time as
// the controller does. Reports the wall time per 1,000 services and the
// machine's CPU per service (both cores: the applies overlap).
func BenchmarkApplyServices(b *testing.B) {
	privtest.Require(b)
	const services, perService = 1000, 16
	var walls []time.Duration
	for b.Loop() {
		b.StopTimer()
		l := newLab(b)
		b.StartTimer()
		cpu0 := cpuTime(b)
		start := time.Now()
		sem := make(chan struct{}, 32)
		var wg sync.WaitGroup
		for i := range services {
			var bs []BackendSpec
			for j := range perService {
				n := i*perService + j
				bs = append(bs, backend(fmt.Sprintf("10.80.%d.%d", n/250, n%250+1), "02:ee:00:00:00:01"))
			}
			key := ServiceKey{VIP: netip.AddrFrom4([4]byte{10, 90, byte(i / 250), byte(i%250 + 1)}), Port: 80, Proto: TCP}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if _, err := l.dp.ApplyService(key, ServiceSpec{TableSize: 2053, Backends: bs}); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		walls = append(walls, time.Since(start))
		b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/services, "cpu-us/service")
		b.StopTimer()
		_ = l.dp.Close()
		b.StartTimer()
	}
	slices.Sort(walls)
	b.ReportMetric(walls[len(walls)/2].Seconds(), "s/1000-services")
}

// cpuTime is this process's CPU time so far, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
