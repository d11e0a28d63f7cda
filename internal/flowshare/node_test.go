package flowshare

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// recSink keeps every flow it is given.
type recSink struct {
	mu    sync.Mutex
	flows []Flow
}

func (s *recSink) ShareFlows(fs []Flow) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flows = append(s.flows, fs...)
	return len(fs), nil
}

func (s *recSink) got() []Flow {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.flows)
}

// sliceSnapshot hands its flows out 100 at a time, as a map walk would.
type sliceSnapshot []Flow

func (s sliceSnapshot) Snapshot(fn func([]Flow)) error {
	for i := 0; i < len(s); i += 100 {
		fn(s[i:min(i+100, len(s))])
	}
	return nil
}

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

func newNode(t *testing.T, o Options) *Node {
	t.Helper()
	if !o.Listen.IsValid() {
		o.Listen = loopback
	}
	if o.Key == nil {
		o.Key = testKey
	}
	n, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// run starts n until the test ends.
func run(t *testing.T, n *Node) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// testFlows makes n distinct flows over two services and three backends,
// every fourth one IPv6.
func testFlows(n int, salt byte) []Flow {
	var fs []Flow
	for i := range n {
		f := Flow{VIP: netip.AddrFrom4([4]byte{192, 0, 2, 10 + byte(i%2)}), Port: 443, Proto: 6,
			Client:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, salt, byte(i >> 8), byte(i)}), uint16(1024+i)),
			Backend: netip.AddrFrom4([4]byte{10, 0, 0, 1 + byte(i%3)})}
		if i%4 == 3 {
			f.VIP = netip.MustParseAddr("2001:db8::10")
			f.Client = netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, salt, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}), 443)
			f.Backend = netip.MustParseAddr("2001:db8:2::1")
		}
		fs = append(fs, f)
	}
	return fs
}

// eventually polls cond for up to 10 s (a loaded 2-core machine).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sameFlows(a, b []Flow) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, compareForWire)
	slices.SortFunc(b, compareForWire)
	return slices.Equal(a, b)
}

// pair makes two nodes that name each other as peers.
func pair(t *testing.T, oa, ob Options) (*Node, *Node) {
	a, b := newNode(t, oa), newNode(t, ob)
	a.SetPeers([]netip.AddrPort{b.LocalAddr()})
	b.SetPeers([]netip.AddrPort{a.LocalAddr()})
	return a, b
}

func TestTwoNodesExchangeFlows(t *testing.T) {
	sa, sb := &recSink{}, &recSink{}
	a, b := pair(t, Options{Sink: sa}, Options{Sink: sb})
	run(t, a)
	run(t, b)
	fa, fb := testFlows(1000, 1), testFlows(300, 2)
	if got := a.Submit(fa); got != 1000 {
		t.Fatalf("a took %d of 1000", got)
	}
	b.Submit(fb)
	eventually(t, "both sets of flows", func() bool { return len(sb.got()) >= len(fa) && len(sa.got()) >= len(fb) })
	if !sameFlows(sb.got(), fa) || !sameFlows(sa.got(), fb) {
		t.Fatalf("b got %d flows (want a's 1000), a got %d (want b's 300), or not the same ones", len(sb.got()), len(sa.got()))
	}
	st := a.Stats()
	if st.Submitted != 1000 || st.SentFlows != 1000 || st.SentDatagrams == 0 || st.Dropped != (Drops{}) {
		t.Errorf("a sent: %+v", st)
	}
	// 1000 flows of 2 services and 3 backends, sorted: a handful of datagrams.
	if st.SentDatagrams > 10 {
		t.Errorf("1000 flows took %d datagrams", st.SentDatagrams)
	}
	rb := b.Stats()
	if rb.ReceivedFlows != 1000 || rb.AppliedFlows != 1000 || rb.Rejected != (Rejects{}) || rb.Received < st.SentDatagrams {
		t.Errorf("b received: %+v", rb)
	}
}

// TestStrangerRejected: a node with another key reaches the port but
// nothing it sends is applied; garbage is counted as such.
func TestStrangerRejected(t *testing.T) {
	sink := &recSink{}
	a := newNode(t, Options{Sink: sink})
	stranger := newNode(t, Options{Key: bytes.Repeat([]byte("x"), 32), Peers: []netip.AddrPort{a.LocalAddr()}})
	run(t, a)
	run(t, stranger)
	stranger.Submit(testFlows(50, 3))
	eventually(t, "the stranger's datagrams rejected", func() bool { return a.Stats().Rejected.MAC >= 1 })
	raw, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(a.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write([]byte("hello"))
	eventually(t, "garbage rejected", func() bool { return a.Stats().Rejected.Truncated == 1 })
	st := a.Stats()
	// The stranger's sync request (it warms up too) and its flows: all MAC failures.
	if len(sink.got()) != 0 || st.Received != 0 || st.ReceivedFlows != 0 || st.SyncRequestsReceived != 0 {
		t.Errorf("a took something from the stranger: %+v, sink %d", st, len(sink.got()))
	}
	if st.Rejected.Replay != 0 || st.Rejected.Clock != 0 || st.Rejected.Version != 0 || st.Rejected.Malformed != 0 {
		t.Errorf("rejected for other reasons: %+v", st.Rejected)
	}
}

// TestReplayAndStale: a recorded datagram sent again is refused, so are
// datagrams from a skewed clock or of another version, each counted under
// its own reason.
func TestReplayAndStale(t *testing.T) {
	sink := &recSink{}
	b := newNode(t, Options{Sink: sink})
	// The recorder is a's only peer: it sees a's datagrams on the wire.
	rec, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	a := newNode(t, Options{Peers: []netip.AddrPort{rec.LocalAddr().(*net.UDPAddr).AddrPort()}, WarmupTimeout: time.Hour})
	run(t, a)
	run(t, b)
	a.Submit(testFlows(10, 4))
	buf := make([]byte, 2048)
	var flows []byte
	rec.SetReadDeadline(time.Now().Add(10 * time.Second))
	for flows == nil {
		n, err := rec.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if Type(buf[3]) == TypeFlows {
			flows = bytes.Clone(buf[:n])
		}
	}
	to := net.UDPAddrFromAddrPort(b.LocalAddr())
	send := func(p []byte) {
		if _, err := rec.WriteToUDP(p, to); err != nil {
			t.Fatal(err)
		}
	}
	send(flows)
	eventually(t, "the recorded datagram applied", func() bool { return b.Stats().AppliedFlows == 10 })
	send(flows)
	eventually(t, "the replay refused", func() bool { return b.Stats().Rejected.Replay == 1 })

	c := testCodec(t)
	stale, _, _ := c.Encode(nil, &Message{Type: TypeFlows, Node: 77, Seq: 1, Time: time.Now().Add(-time.Minute).UnixNano(), Flows: testFlows(1, 5)})
	send(stale)
	eventually(t, "the stale datagram refused", func() bool { return b.Stats().Rejected.Clock == 1 })
	future, _, _ := c.Encode(nil, &Message{Type: TypeFlows, Node: 77, Seq: 2, Time: time.Now().Add(time.Minute).UnixNano(), Flows: testFlows(1, 5)})
	send(future)
	eventually(t, "the future datagram refused", func() bool { return b.Stats().Rejected.Clock == 2 })
	v2 := bytes.Clone(flows)
	v2[2] = 2
	send(v2)
	eventually(t, "version 2 refused", func() bool { return b.Stats().Rejected.Version == 1 })
	// A fresh datagram from the same sender still passes: its window moved on.
	fresh, _, _ := c.Encode(nil, &Message{Type: TypeFlows, Node: 77, Seq: 3, Time: time.Now().UnixNano(), Flows: testFlows(1, 6)})
	send(fresh)
	eventually(t, "the fresh datagram applied", func() bool { return b.Stats().AppliedFlows == 11 })
	st := b.Stats()
	want := Rejects{Replay: 1, Clock: 2, Version: 1}
	if st.Rejected != want || st.Received != 2 || len(sink.got()) != 11 {
		t.Errorf("rejected %+v (want %+v), received %d datagrams (want 2), sink %d flows (want 11)", st.Rejected, want, st.Received, len(sink.got()))
	}
}

// TestRateLimit: a backlog goes out at max_rate (plus the burst), and a
// queue that is full drops what does not fit, counted.
func TestRateLimit(t *testing.T) {
	const rate = 2000
	sink := &recSink{}
	a, b := pair(t, Options{MaxRate: rate, QueueLen: 100000}, Options{Sink: sink})
	run(t, b)
	start := time.Now()
	run(t, a)
	a.Submit(testFlows(20000, 7))
	time.Sleep(time.Second)
	st := a.Stats()
	el := time.Since(start).Seconds()
	burst := float64(4 * flushAt) // max(rate/20, 4*flushAt)
	// At most the burst, the rate over the time elapsed and one datagram
	// of debt; at least a third of the rate (a loaded machine is slow,
	// never fast).
	upper := burst + rate*el + 191
	if f := float64(st.SentFlows); f > upper || f < rate*0.3 {
		t.Errorf("sent %d flows in %.2fs at max_rate %d: want %.0f-%.0f", st.SentFlows, el, rate, rate*0.3, upper)
	}
	t.Logf("sent %d flows in %.2fs at max_rate %d (burst %.0f)", st.SentFlows, el, rate, burst)

	// Queue overflow: 1000 fit, the rest are dropped at once.
	c := newNode(t, Options{MaxRate: 100, QueueLen: 1000})
	if got := c.Submit(testFlows(5000, 8)); got != 1000 {
		t.Errorf("took %d into a queue of 1000", got)
	}
	if d := c.Stats().Dropped; d.QueueFull != 4000 {
		t.Errorf("dropped %+v, want 4000 for a full queue", d)
	}
	if got := c.Submit([]Flow{{}}); got != 0 || c.Stats().Dropped.Invalid != 1 {
		t.Errorf("an empty flow: took %d, dropped %+v", got, c.Stats().Dropped)
	}
}

// TestSyncSnapshot: a joining node learns a peer's 10,000 flows before
// WaitWarm returns.
func TestSyncSnapshot(t *testing.T) {
	snap := sliceSnapshot(testFlows(10000, 9))
	sink := &recSink{}
	a, b := pair(t, Options{Snapshot: snap}, Options{Sink: sink, WarmupTimeout: 10 * time.Second})
	run(t, a)
	run(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rep, err := b.WaitWarm(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.TimedOut || len(rep.Missing) != 0 || len(rep.Peers) != 1 {
		t.Fatalf("report %+v", rep)
	}
	p := rep.Peers[0]
	if p.Peer != a.LocalAddr() || !p.Answered || p.Node != a.ID() || p.SentFlows != 10000 || p.Flows != 10000 || p.Datagrams != uint64(p.SentDatagrams) {
		t.Errorf("peer %+v", p)
	}
	if got := sink.got(); !sameFlows(got, snap) {
		t.Errorf("sink holds %d flows, want the snapshot's 10000", len(got))
	}
	if st := a.Stats(); st.SyncAnswers != 1 || st.SnapshotFlowsSent != 10000 || st.SyncRequestsReceived < 1 {
		t.Errorf("a: %+v", st)
	}
	t.Logf("warm-up of 10000 flows: %v, %d datagrams", rep.Took, p.Datagrams)
}

// TestWarmupTimeoutNamesSilentPeer: a peer that never answers holds the
// warm-up until the timeout, is asked again meanwhile, and is named.
func TestWarmupTimeoutNamesSilentPeer(t *testing.T) {
	silent, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silentAddr := silent.LocalAddr().(*net.UDPAddr).AddrPort()
	requests := make(chan int, 1)
	go func() {
		buf, n := make([]byte, 2048), 0
		for {
			k, err := silent.Read(buf)
			if err != nil {
				requests <- n
				return
			}
			if k > 3 && Type(buf[3]) == TypeSyncRequest {
				n++
			}
		}
	}()
	a := newNode(t, Options{Snapshot: sliceSnapshot(testFlows(10, 10))})
	const timeout = 600 * time.Millisecond
	b := newNode(t, Options{WarmupTimeout: timeout, Peers: []netip.AddrPort{a.LocalAddr(), silentAddr}})
	run(t, a)
	start := time.Now()
	run(t, b)
	rep, err := b.WaitWarm(context.Background())
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.TimedOut || !slices.Equal(rep.Missing, []netip.AddrPort{silentAddr}) {
		t.Errorf("timed out %v, missing %v: want %v", rep.TimedOut, rep.Missing, silentAddr)
	}
	if took < timeout || took > timeout+5*time.Second {
		t.Errorf("WaitWarm took %v, timeout %v", took, timeout)
	}
	for _, p := range rep.Peers {
		if p.Peer == a.LocalAddr() && (!p.Answered || p.Flows != 10) {
			t.Errorf("the live peer: %+v", p)
		}
	}
	silent.Close()
	// Asked at the start and again every timeout/8 (75 ms) while silent.
	if n := <-requests; n < 3 {
		t.Errorf("the silent peer was asked %d times", n)
	}
	// Once warm, waiting again returns the same at once.
	if again, _ := b.WaitWarm(context.Background()); !slices.Equal(again.Missing, rep.Missing) {
		t.Errorf("second WaitWarm: %+v", again)
	}
}

func TestWaitWarmWithoutPeersAndCancel(t *testing.T) {
	a := newNode(t, Options{})
	run(t, a)
	rep, err := a.WaitWarm(context.Background())
	if err != nil || rep.TimedOut || len(rep.Peers) != 0 {
		t.Errorf("no peers: %+v %v", rep, err)
	}
	b := newNode(t, Options{Peers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}, WarmupTimeout: time.Hour})
	run(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := b.WaitWarm(ctx); err != context.DeadlineExceeded {
		t.Errorf("cancelled wait: %v", err)
	}
}

func TestNewRefuses(t *testing.T) {
	cases := []struct {
		name string
		o    Options
	}{
		{"short key", Options{Key: testKey[:20], Listen: loopback}},
		{"peers and multicast", Options{Key: testKey, Listen: loopback, Peers: []netip.AddrPort{loopback}, Multicast: netip.MustParseAddrPort("239.1.1.1:7785"), Interface: "lo"}},
		{"no such interface", Options{Key: testKey, Multicast: netip.MustParseAddrPort("239.1.1.1:7785"), Interface: "nonexistent0"}},
		{"negative rate", Options{Key: testKey, Listen: loopback, MaxRate: -1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if n, err := New(tc.o); err == nil {
				n.Close()
				t.Error("accepted")
			}
		})
	}
}

// TestSyncLossAskedAgain: a snapshot datagram lost on the way is noticed
// at the sync end (it counts what it sent) and the snapshot asked again.
func TestSyncLossAskedAgain(t *testing.T) {
	snap := sliceSnapshot(testFlows(3000, 11))
	a := newNode(t, Options{Snapshot: snap})
	// The relay stands between b and a and drops a's first snapshot datagram.
	relay, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(loopback))
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	sink := &recSink{}
	b := newNode(t, Options{Sink: sink, WarmupTimeout: 10 * time.Second, Peers: []netip.AddrPort{relay.LocalAddr().(*net.UDPAddr).AddrPort()}})
	go func() {
		buf, dropped := make([]byte, 2048), false
		for {
			k, from, err := relay.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			to := a.LocalAddr()
			if from == a.LocalAddr() {
				to = b.LocalAddr()
				if !dropped && Type(buf[3]) == TypeFlows && buf[4]&FlagSnapshot != 0 {
					dropped = true
					continue
				}
			}
			relay.WriteToUDPAddrPort(buf[:k], to)
		}
	}()
	run(t, a)
	run(t, b)
	rep, err := b.WaitWarm(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rep.TimedOut || len(rep.Peers) != 1 {
		t.Fatalf("report %+v", rep)
	}
	if p := rep.Peers[0]; !p.Answered || p.Retries != 1 || p.Lost != 1 || p.Flows != 3000 || p.SentFlows != 3000 {
		t.Errorf("peer %+v: want answered after 1 retry, 1 datagram lost, 3000 flows", p)
	}
	if !sameFlows(dedup(sink.got()), snap) {
		t.Errorf("sink holds %d flows (with repeats), not the snapshot", len(sink.got()))
	}
}

func dedup(fs []Flow) []Flow {
	slices.SortFunc(fs, compareForWire)
	return slices.Compact(fs)
}
