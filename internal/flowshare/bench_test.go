package flowshare

import (
	"context"
	"net/netip"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// benchFlows: 10,000 flows as the sender sorts them (2 services, 3
// backends, a quarter IPv6).
func benchFlows() []Flow {
	fs := testFlows(10000, 1)
	slices.SortFunc(fs, compareForWire)
	return fs
}

// BenchmarkEncode: encode and MAC 10,000 flows into datagrams.
func BenchmarkEncode(b *testing.B) {
	c := testCodec(b)
	fs := benchFlows()
	buf := make([]byte, 0, MaxDatagram)
	var datagrams int
	for b.Loop() {
		datagrams = 0
		for rest := fs; len(rest) > 0; {
			out, n, err := c.Encode(buf[:0], &Message{Type: TypeFlows, Node: 1, Seq: 1, Flows: rest})
			if err != nil {
				b.Fatal(err)
			}
			buf = out
			rest = rest[n:]
			datagrams++
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(fs)), "ns/flow")
	b.ReportMetric(float64(datagrams), "datagrams/10k-flows")
}

// BenchmarkDecode: verify and decode the datagrams of 10,000 flows.
func BenchmarkDecode(b *testing.B) {
	c := testCodec(b)
	fs := benchFlows()
	var dgs [][]byte
	for rest := fs; len(rest) > 0; {
		out, n, _ := c.Encode(nil, &Message{Type: TypeFlows, Node: 1, Seq: 1, Flows: rest})
		dgs = append(dgs, out)
		rest = rest[n:]
	}
	var m Message
	for b.Loop() {
		for _, d := range dgs {
			if err := c.Decode(d, &m); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(fs)), "ns/flow")
}

// countSink signals when it has seen want flows.
type countSink struct {
	n, want atomic.Int64
	done    chan struct{}
}

func (s *countSink) ShareFlows(fs []Flow) (int, error) {
	if s.n.Add(int64(len(fs))) >= s.want.Load() {
		select {
		case s.done <- struct{}{}:
		default:
		}
	}
	return len(fs), nil
}

// BenchmarkLoopback: 10,000 flows submitted on one node until the other's
// sink has them all: batching, encode, MAC, sendto, recvfrom, verify,
// decode, over loopback. ns/flow is wall time on this machine (both nodes
// share its cores); cpu-ns/flow is the process's CPU time (user and
// system, both nodes) per flow.
func BenchmarkLoopback(b *testing.B) {
	sink := &countSink{done: make(chan struct{}, 1)}
	mk := func(o Options) *Node {
		o.Listen, o.Key, o.MaxRate, o.QueueLen = loopback, testKey, 10_000_000, 1<<20
		n, err := New(o)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	a, r := mk(Options{}), mk(Options{Sink: sink})
	a.SetPeers([]netip.AddrPort{r.LocalAddr()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { a.Run(ctx); done <- struct{}{} }()
	go func() { r.Run(ctx); done <- struct{}{} }()
	defer func() { cancel(); <-done; <-done }()
	fs := testFlows(10000, 1)
	var want int64
	cpu0 := cpuTime()
	for b.Loop() {
		want += int64(len(fs))
		sink.want.Store(want)
		a.Submit(fs)
		select {
		case <-sink.done:
		case <-time.After(5 * time.Second):
			b.Fatalf("%d of %d flows arrived", sink.n.Load(), want)
		}
	}
	cpu := cpuTime() - cpu0
	// The sender counts a datagram once written, maybe after the receiver
	// counted it: let the last one settle before comparing.
	time.Sleep(20 * time.Millisecond)
	st, rs := a.Stats(), r.Stats()
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*len(fs)), "cpu-ns/flow")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(fs)), "ns/flow")
	b.ReportMetric(float64(st.SentDatagrams)/float64(b.N), "datagrams/10k-flows")
	b.ReportMetric(float64(int64(st.SentFlows)-int64(rs.ReceivedFlows)), "lost-flows")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
