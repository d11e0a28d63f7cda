package bfd

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }

// node is one namespace with a Manager in it.
type node struct {
	name   string
	ns     netns.NsHandle
	mgr    *Manager
	mu     sync.Mutex
	events []Event
	kick   chan struct{}
}

func newNode(t *testing.T, name string, ns netns.NsHandle) *node {
	t.Helper()
	n := &node{name: name, ns: ns, kick: make(chan struct{}, 1)}
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	n.mgr = NewManager(log.With("node", name), func(ev Event) {
		n.mu.Lock()
		n.events = append(n.events, ev)
		n.mu.Unlock()
		select {
		case n.kick <- struct{}{}:
		default:
		}
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := n.mgr.Close(ctx); err != nil {
			t.Errorf("%s: close: %v", name, err)
		}
	})
	return n
}

func (n *node) add(t *testing.T, cfg SessionConfig) *Session {
	t.Helper()
	var s *Session
	err := lab.InNS(n.ns, func() error {
		var err error
		s, err = n.mgr.Add(context.Background(), cfg)
		return err
	})
	if err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
	return s
}

// waitEvent returns the first event since index from that matches, or fails.
func (n *node) waitEvent(t *testing.T, from int, timeout time.Duration, match func(Event) bool) (Event, int) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		n.mu.Lock()
		evs := slices.Clone(n.events)
		n.mu.Unlock()
		for i := from; i < len(evs); i++ {
			if match(evs[i]) {
				return evs[i], i + 1
			}
		}
		select {
		case <-n.kick:
		case <-deadline:
			t.Fatalf("%s: no matching event within %v; events: %+v", n.name, timeout, evs)
		}
	}
}

func (n *node) eventCount() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.events)
}

func waitState(t *testing.T, s *Session, want State, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for s.State() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%v: state %s after %v, want %s; status %+v", s, s.State(), timeout, want, s.Status())
		}
		time.Sleep(time.Millisecond)
	}
}

// twoNodes is a veth pair between two namespaces, a (.1) and b (.2), with
// IPv4, IPv6 global and link-local addresses usable at once.
func twoNodes(t *testing.T) (a, b *node, v *lab.Veth) {
	t.Helper()
	privtest.Require(t)
	nsA, nsB := privtest.NewNS(t), privtest.NewNS(t)
	v = privtest.Veth(t,
		lab.VethEnd{NS: nsA, Name: "eth0", Addrs: []string{"10.9.0.1/24", "fd09::1/64"}, NoDAD: true, MAC: net.HardwareAddr{2, 0, 0, 0, 9, 1}},
		lab.VethEnd{NS: nsB, Name: "eth0", Addrs: []string{"10.9.0.2/24", "10.9.0.3/24", "fd09::2/64"}, NoDAD: true, MAC: net.HardwareAddr{2, 0, 0, 0, 9, 2}})
	for _, ns := range []netns.NsHandle{nsA, nsB} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := lab.WaitNonTentative(ctx, ns, "eth0"); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	return newNode(t, "a", nsA), newNode(t, "b", nsB), v
}

var (
	a4, b4, b4x = netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("10.9.0.2"), netip.MustParseAddr("10.9.0.3")
	a6, b6      = netip.MustParseAddr("fd09::1"), netip.MustParseAddr("fd09::2")
	// Link-local addresses from the MACs above (EUI-64).
	a6ll, b6ll = netip.MustParseAddr("fe80::ff:fe00:901"), netip.MustParseAddr("fe80::ff:fe00:902")
)

// stallProbe records when a CPU did not run this process for a while. On
// the shared 2-core test machine a loop of 1 ms sleeps sees gaps of 30-200
// ms now and then (any process, real-time priority or not; one CPU or
// both), as long as a whole detection time at 10 ms x 3 or longer: no BFD
// implementation can tell such a stall from a dead neighbour. One probe
// runs pinned to each CPU. A Down during the tests is excused only when a
// stall covers it; any other fails the test.
type stallProbe struct {
	mu     sync.Mutex
	stalls []stall
}

type stall struct {
	end time.Time
	gap time.Duration
}

func startStallProbe(t *testing.T) *stallProbe {
	p := &stallProbe{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		t.Fatal(err)
	}
	for cpu := range 1024 {
		if !cpus.IsSet(cpu) {
			continue
		}
		wg.Go(func() { p.run(cpu, done) })
	}
	t.Cleanup(func() { close(done); wg.Wait() })
	return p
}

func (p *stallProbe) run(cpu int, done <-chan struct{}) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var one unix.CPUSet
	one.Set(cpu)
	_ = unix.SchedSetaffinity(0, &one)
	defer func() {
		// Give the thread back able to run anywhere.
		var all unix.CPUSet
		for i := range runtime.NumCPU() {
			all.Set(i)
		}
		_ = unix.SchedSetaffinity(0, &all)
	}()
	{
		last := time.Now()
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
			now := time.Now()
			if gap := now.Sub(last); gap > 10*time.Millisecond {
				p.mu.Lock()
				p.stalls = append(p.stalls, stall{now, gap})
				p.mu.Unlock()
			}
			last = now
		}
	}
}

func (p *stallProbe) all() []stall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.stalls)
}

// excuse returns a stall of at least min that ended within 50 ms of at.
func (p *stallProbe) excuse(at time.Time, min time.Duration) (stall, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.stalls {
		if s.gap >= min && s.end.After(at.Add(-50*time.Millisecond)) && s.end.Before(at.Add(50*time.Millisecond)) {
			return s, true
		}
	}
	return stall{}, false
}

// falseDowns checks the Up->Down events of n from index from: each must be
// excused by a stall of at least min. It returns how many were excused.
func (n *node) falseDowns(t *testing.T, from int, probe *stallProbe, min time.Duration) int {
	t.Helper()
	n.mu.Lock()
	evs := slices.Clone(n.events[from:])
	n.mu.Unlock()
	excused := 0
	for _, e := range evs {
		if e.From != Up || e.To != Down {
			continue
		}
		st, ok := probe.excuse(e.At, min)
		if !ok {
			t.Errorf("%s: false down %+v with no stall of %v or more around it (stalls seen: %+v)", n.name, e, min, probe.all())
			continue
		}
		excused++
		t.Logf("%s: down at %s excused: the process stalled %v (until %s)", n.name, e.At.Format("15:04:05.000"), st.gap, st.end.Format("15:04:05.000"))
	}
	return excused
}

func sessionCfg(local, peer netip.Addr, iface string, iv time.Duration, mult uint8) SessionConfig {
	return SessionConfig{Local: local, Peer: peer, Interface: iface, DesiredMinTx: iv, RequiredMinRx: iv, Multiplier: mult}
}

// TestSessionsComeUp: two Managers over a veth pair come Up (IPv4, IPv6
// global, IPv6 link-local), negotiate 10 ms x 3, stay Up for 2 s with no
// false Down, and a clean shutdown reaches the neighbour as AdminDown.
func TestSessionsComeUp(t *testing.T) {
	cases := []struct {
		name      string
		la, lb    netip.Addr
		iface     string
		stayFor   time.Duration
		checkDown bool
	}{
		{"ipv4", a4, b4, "", 2 * time.Second, true},
		{"ipv6", a6, b6, "eth0", 500 * time.Millisecond, false},
		{"ipv6 link-local", a6ll, b6ll, "eth0", 500 * time.Millisecond, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b, _ := twoNodes(t)
			sa := a.add(t, sessionCfg(c.la, c.lb, c.iface, 10*time.Millisecond, 3))
			sb := b.add(t, sessionCfg(c.lb, c.la, c.iface, 10*time.Millisecond, 3))
			start := time.Now()
			waitState(t, sa, Up, 5*time.Second)
			waitState(t, sb, Up, 5*time.Second)
			t.Logf("up after %v", time.Since(start))
			// The poll for the 10 ms timers completes.
			deadline := time.Now().Add(2 * time.Second)
			for sa.Status().Polling || sb.Status().Polling {
				if time.Now().After(deadline) {
					t.Fatalf("poll never finished: %+v / %+v", sa.Status(), sb.Status())
				}
				time.Sleep(time.Millisecond)
			}
			for _, s := range []*Session{sa, sb} {
				st := s.Status()
				if st.TxInterval != 10*time.Millisecond || st.DetectTime != 30*time.Millisecond || st.RemoteDiscr == 0 || st.UpSince.IsZero() {
					t.Fatalf("%v: negotiated %+v", s, st)
				}
			}
			inA, outA := sa.Status().Counters.PacketsIn, sa.Status().Counters.PacketsOut
			fromA, fromB := a.eventCount(), b.eventCount()
			probe := startStallProbe(t)
			time.Sleep(c.stayFor)
			for _, n := range []*node{a, b} {
				if cnt := n.mgr.Counters(); cnt.BadTTL != 0 || cnt.Malformed != 0 || cnt.NoSession != 0 {
					t.Errorf("%s: receive drops %+v", n.name, cnt)
				}
			}
			// A false Down is one no stall explains: a sender stalled for
			// 15 ms or more can leave 30 ms without a packet.
			excused := a.falseDowns(t, fromA, probe, 15*time.Millisecond) + b.falseDowns(t, fromB, probe, 15*time.Millisecond)
			waitState(t, sa, Up, 2*time.Second)
			waitState(t, sb, Up, 2*time.Second)
			stA := sa.Status().Counters
			t.Logf("%v at 10 ms x 3: %d packets in, %d out (%.0f/s each way); downs excused by process stalls: %d; stalls of 10 ms+: %d",
				c.stayFor, stA.PacketsIn-inA, stA.PacketsOut-outA, float64(stA.PacketsOut-outA)/c.stayFor.Seconds(), excused, len(probe.all()))
			// Expected ~ one packet per 8.75 ms on average (jitter).
			if sent := stA.PacketsOut - outA; sent < uint64(c.stayFor/(20*time.Millisecond)) || sent > uint64(c.stayFor/(7*time.Millisecond)) {
				t.Errorf("sent %d packets in %v at 10 ms", sent, c.stayFor)
			}
			if !c.checkDown {
				return
			}
			// Clean shutdown: AdminDown, diag 7; the neighbour goes Down
			// with diag 3, and it is not a path failure.
			from := b.eventCount()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if err := a.mgr.Close(ctx); err != nil {
				t.Fatal(err)
			}
			ev, _ := b.waitEvent(t, from, 2*time.Second, func(e Event) bool { return e.To == Down })
			if ev.Diag != DiagNeighborDown || ev.RemoteState != AdminDown || ev.RemoteDiag != DiagAdminDown || ev.PathDown() {
				if excused > 0 && ev.Diag == DiagDetectionTimeExpired {
					// This run stalled the process (see the excused
					// downs): our AdminDown packets can be late past the
					// neighbour's 30 ms detection time.
					t.Logf("neighbour's event on our shutdown, in a stalling run: %+v", ev)
					return
				}
				t.Fatalf("neighbour's event on our shutdown: %+v (PathDown %v)", ev, ev.PathDown())
			}
		})
	}
}

// TestDetectFrozenNeighbor: a neighbour that stops (no packets in or out)
// is detected within the detection time; measured over rounds.
func TestDetectFrozenNeighbor(t *testing.T) {
	a, b, _ := twoNodes(t)
	const iv, mult = 10 * time.Millisecond, 3
	sa := a.add(t, sessionCfg(a4, b4, "eth0", iv, mult))
	sb := b.add(t, sessionCfg(b4, a4, "eth0", iv, mult))
	detect := time.Duration(mult) * iv
	probe := startStallProbe(t)
	var took []time.Duration
	for round := range 5 {
		waitState(t, sa, Up, 5*time.Second)
		waitState(t, sb, Up, 5*time.Second)
		for sa.Status().Polling || sb.Status().Polling {
			time.Sleep(time.Millisecond)
		}
		from := b.eventCount()
		frozen := time.Now()
		thaw, err := sa.freeze(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		ev, _ := b.waitEvent(t, from, 5*time.Second, func(e Event) bool { return e.To == Down })
		d := ev.At.Sub(frozen)
		took = append(took, d)
		thaw()
		if ev.Diag != DiagDetectionTimeExpired || !ev.PathDown() {
			t.Fatalf("round %d: event %+v, want a path failure by detection time", round, ev)
		}
		if d > 3*detect {
			if st, ok := probe.excuse(ev.At, d-3*detect); ok {
				t.Logf("round %d: detected after %v; the process stalled %v meanwhile", round, d, st.gap)
			} else {
				t.Errorf("round %d: detected after %v, more than 3 x the detection time (%v)", round, d, detect)
			}
		}
	}
	slices.Sort(took)
	t.Logf("frozen neighbour detected after %v (sorted, 5 rounds; detection time %v x %d = %v)", took, iv, mult, detect)
}

// TestDemuxByDiscriminator: one listener (a's 10.9.0.1) carries two
// sessions; freezing one neighbour takes only its session down.
func TestDemuxByDiscriminator(t *testing.T) {
	a, b, _ := twoNodes(t)
	// The session that must stay up detects in 450 ms, not 60: a loaded
	// test machine's scheduling delay must not take it down, which would
	// fail the test for a reason other than demultiplexing.
	sa1 := a.add(t, sessionCfg(a4, b4, "", 20*time.Millisecond, 3))
	sa2 := a.add(t, sessionCfg(a4, b4x, "", 150*time.Millisecond, 3))
	sb1 := b.add(t, sessionCfg(b4, a4, "", 20*time.Millisecond, 3))
	b.add(t, sessionCfg(b4x, a4, "", 150*time.Millisecond, 3))
	waitState(t, sa1, Up, 5*time.Second)
	waitState(t, sa2, Up, 5*time.Second)
	thaw, err := sb1.freeze(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer thaw()
	waitState(t, sa1, Down, 2*time.Second)
	// Longer than sa2's detection time: had its packets stopped counting
	// with sb1's, it would be down by now.
	time.Sleep(time.Second)
	if st := sa2.Status(); st.State != Up || st.Counters.UpDown != 0 {
		t.Fatalf("the other session: %+v", st)
	}
	if _, err := a.mgr.Add(context.Background(), sessionCfg(a4, b4x, "", 20*time.Millisecond, 3)); err == nil {
		t.Fatal("a second session to the same peer was accepted")
	}
}

// TestTTL: what we send (TTL 255, source port 49152-65535, 1 s while not
// Up) and that packets with TTL / hop limit 254 are dropped and counted
// while the same packet with 255 reaches the session.
func TestTTL(t *testing.T) {
	cases := []struct {
		name        string
		local, peer netip.Addr
	}{
		{"ipv4", a4, b4},
		{"ipv6", a6, b6},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b, _ := twoNodes(t)
			// b is a bare socket on 3784, not a Manager.
			var conn *net.UDPConn
			if err := lab.InNS(b.ns, func() error {
				var err error
				conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.peer, Port)))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var setTTL func(int) error
			var readTTL func([]byte) (int, int, netip.AddrPort, error)
			if c.peer.Is4() {
				p := ipv4.NewPacketConn(conn)
				if err := p.SetControlMessage(ipv4.FlagTTL, true); err != nil {
					t.Fatal(err)
				}
				setTTL = p.SetTTL
				readTTL = func(buf []byte) (int, int, netip.AddrPort, error) {
					n, cm, from, err := p.ReadFrom(buf)
					if err != nil || cm == nil {
						return 0, 0, netip.AddrPort{}, err
					}
					return n, cm.TTL, from.(*net.UDPAddr).AddrPort(), nil
				}
			} else {
				p := ipv6.NewPacketConn(conn)
				if err := p.SetControlMessage(ipv6.FlagHopLimit, true); err != nil {
					t.Fatal(err)
				}
				setTTL = p.SetHopLimit
				readTTL = func(buf []byte) (int, int, netip.AddrPort, error) {
					n, cm, from, err := p.ReadFrom(buf)
					if err != nil || cm == nil {
						return 0, 0, netip.AddrPort{}, err
					}
					return n, cm.HopLimit, from.(*net.UDPAddr).AddrPort(), nil
				}
			}
			sa := a.add(t, sessionCfg(c.local, c.peer, "", 10*time.Millisecond, 3))

			// What a sends.
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 1500)
			n, hops, from, err := readTTL(buf)
			if err != nil {
				t.Fatal(err)
			}
			p, err := Unmarshal(buf[:n])
			if err != nil {
				t.Fatal(err)
			}
			if hops != TTL || from.Port() < minSrcPort || from.Addr().Unmap() != c.local || n != PacketLen {
				t.Fatalf("received %d bytes from %v with ttl %d", n, from, hops)
			}
			if p.State != Down || p.DesiredMinTx != time.Second || p.RequiredMinRx != 10*time.Millisecond || p.YourDiscr != 0 || p.Demand || p.RequiredMinEchoRx != 0 {
				t.Fatalf("first packet %v", p)
			}

			// A Down packet from "b" with TTL 254 is dropped before the
			// session; with 255 the session moves to Init.
			reply, _ := (&Packet{State: Down, DetectMult: 3, MyDiscr: 0xb0b, DesiredMinTx: time.Second, RequiredMinRx: 10 * time.Millisecond}).Marshal()
			to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.local, Port))
			send := func(ttl int) {
				if err := setTTL(ttl); err != nil {
					t.Fatal(err)
				}
				if _, err := conn.WriteToUDP(reply, to); err != nil {
					t.Fatal(err)
				}
			}
			for range 3 {
				send(254)
			}
			deadline := time.Now().Add(2 * time.Second)
			for a.mgr.Counters().BadTTL < 3 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if cnt := a.mgr.Counters(); cnt.BadTTL != 3 || sa.Status().Counters.PacketsIn != 0 || sa.State() != Down {
				t.Fatalf("after ttl 254: counters %+v, session %+v", cnt, sa.Status())
			}
			send(255)
			waitState(t, sa, Init, 2*time.Second)
			if st := sa.Status(); st.RemoteDiscr != 0xb0b || st.Counters.PacketsIn != 1 {
				t.Fatalf("after ttl 255: %+v", st)
			}
		})
	}
}

// TestAddRefuses: bad configurations name the field.
func TestAddRefuses(t *testing.T) {
	m := NewManager(nil, nil)
	defer m.Close(context.Background())
	for _, c := range []struct {
		cfg   SessionConfig
		field string
	}{
		{sessionCfg(a4, netip.Addr{}, "", time.Second, 3), "peer"},
		{sessionCfg(netip.Addr{}, b4, "", time.Second, 3), "local"},
		{sessionCfg(a4, b6, "", time.Second, 3), "families"},
		{sessionCfg(a6ll, b6ll, "", time.Second, 3), "interface"},
		{sessionCfg(a4, b4, "", time.Second, 0), "multiplier"},
		{sessionCfg(a4, b4, "", 0, 3), "desired min tx"},
	} {
		_, err := m.Add(context.Background(), c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%+v: %v, want an error naming %q", c.cfg, err, c.field)
		}
	}
}
