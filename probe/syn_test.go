package probe

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// TestSynPacketBytes: the SYN the IPv4 half-open check sends, byte for
// byte, against gopacket's serialisation (its checksum is computed
// independently). Loopback and veth do not verify TCP checksums, so the
// live tests below could not catch a wrong one.
func TestSynPacketBytes(t *testing.T) {
	cases := []struct {
		src, dst     string
		sport, dport uint16
		seq          uint32
	}{
		{"10.0.0.1", "10.0.0.2", 40000, 80, 1},
		{"192.168.1.254", "172.16.0.9", 65535, 443, 0xffffffff},
		{"127.0.0.1", "127.0.0.1", 1024, 8443, 0x80000001},
		{"0.0.0.1", "255.255.255.254", 33333, 1, 0xdeadbeef},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s:%d->%s:%d", c.src, c.sport, c.dst, c.dport), func(t *testing.T) {
			src, dst := netip.MustParseAddr(c.src), netip.MustParseAddr(c.dst)
			ip := &layers.IPv4{Version: 4, IHL: 5, Length: 44, Flags: layers.IPv4DontFragment, TTL: 64, Protocol: layers.IPProtocolTCP,
				SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
			tcp := &layers.TCP{SrcPort: layers.TCPPort(c.sport), DstPort: layers.TCPPort(c.dport), Seq: c.seq, SYN: true, Window: 64240,
				Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}}}
			if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
				t.Fatal(err)
			}
			buf := gopacket.NewSerializeBuffer()
			if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ip, tcp); err != nil {
				t.Fatal(err)
			}
			want := buf.Bytes()
			got := synPacket4(src, dst, c.sport, c.dport, c.seq)
			// The kernel fills in the IP header checksum (IP_HDRINCL).
			want[10], want[11] = 0, 0
			if !bytes.Equal(got, want) {
				t.Fatalf("packet\n got %x\nwant %x", got, want)
			}
		})
	}
}

// TestParseAnswer: what the receive socket hands over, and which probe it
// answers.
func TestParseAnswer(t *testing.T) {
	ipv4 := func(flags byte, ihl int) []byte {
		b := make([]byte, ihl+20)
		b[0] = 0x40 | byte(ihl/4)
		copy(b[12:], []byte{10, 0, 0, 2})
		tcp := b[ihl:]
		copy(tcp, []byte{0x1f, 0x90, 0x9c, 0x40}) // 8080 -> 40000
		copy(tcp[8:], []byte{0x12, 0x34, 0x56, 0x79})
		tcp[13] = flags
		return b
	}
	tcp6 := ipv4(tcpSYN|tcpACK, 20)[20:]
	from6 := &unix.SockaddrInet6{Addr: netip.MustParseAddr("2001:db8::2").As16()}
	key4 := synKey{synTuple{netip.MustParseAddrPort("10.0.0.2:8080"), 40000}, 0x12345678}
	key6 := synKey{synTuple{netip.MustParseAddrPort("[2001:db8::2]:8080"), 40000}, 0x12345678}
	cases := []struct {
		name     string
		b        []byte
		from     unix.Sockaddr
		ipHeader bool
		ok       bool
		key      synKey
		flags    uint8
	}{
		{"ipv4 syn-ack", ipv4(tcpSYN|tcpACK, 20), nil, true, true, key4, tcpSYN | tcpACK},
		{"ipv4 rst with options in the ip header", ipv4(tcpRST|tcpACK, 24), nil, true, true, key4, tcpRST | tcpACK},
		{"ipv4 truncated", ipv4(tcpSYN|tcpACK, 20)[:30], nil, true, false, synKey{}, 0},
		{"ipv4 bad header length", append([]byte{0x41}, ipv4(tcpSYN, 20)[1:]...), nil, true, false, synKey{}, 0},
		{"not ipv4", append([]byte{0x65}, ipv4(tcpSYN, 20)[1:]...), nil, true, false, synKey{}, 0},
		{"ipv6 syn-ack", tcp6, from6, false, true, key6, tcpSYN | tcpACK},
		{"ipv6 short", tcp6[:19], from6, false, false, synKey{}, 0},
		{"ipv6 without its source", tcp6, nil, false, false, synKey{}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key, flags, ok := parseAnswer(c.b, c.from, c.ipHeader)
			if ok != c.ok || key != c.key || flags != c.flags {
				t.Fatalf("got %v %+v %#x, want %v %+v %#x", ok, key, flags, c.ok, c.key, c.flags)
			}
		})
	}
}

// countingListener accepts and counts: a half-open check must never
// produce a connection.
func countingListener(t *testing.T, addr string) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String()), &n
}

// halfOpenOn counts the listener's connections in SYN-RECV (state 03 in
// /proc/net/tcp*): what is left when nobody answers the SYN-ACK.
func halfOpenOn(t *testing.T, port uint16) int {
	n := 0
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) > 3 && strings.HasSuffix(fields[1], fmt.Sprintf(":%04X", port)) && fields[3] == "03" {
				n++
			}
		}
	}
	return n
}

// TestProbeHalfOpen needs raw sockets: root, in the test's own namespace.
func TestProbeHalfOpen(t *testing.T) {
	privtest.Require(t)
	open4, accepted4 := countingListener(t, "127.0.0.1:0")
	open6, accepted6 := countingListener(t, "[::1]:0")
	closed4, closed6 := closedPort(t, "127.0.0.1:0"), closedPort(t, "[::1]:0")

	// A silent backend: a neighbour on a veth that does not exist, so the
	// SYN is never answered.
	privtest.Veth(t, lab.VethEnd{Name: "hoa", NS: netns.None()}, lab.VethEnd{Name: "hob", NS: netns.None()})
	privtest.SetUp(t, netns.None(), "hoa", "hob")
	privtest.AddAddrs(t, netns.None(), "hoa", "10.98.0.1/24")
	silent := netip.MustParseAddrPort("10.98.0.2:80")

	// A link-local backend in another namespace: the target names its
	// zone (the interface it is reached through).
	peer := privtest.NewNS(t)
	privtest.Veth(t, lab.VethEnd{Name: "holl", NS: netns.None(), Addrs: []string{"fe80::1/64"}, NoDAD: true},
		lab.VethEnd{Name: "hollp", NS: peer, Addrs: []string{"fe80::2/64"}, NoDAD: true})
	privtest.ServeAcceptClose(t, peer, "tcp6", "[fe80::2%hollp]:8088")
	linkLocal := netip.MustParseAddrPort("[fe80::2%holl]:8088")

	var engines synEngines
	t.Cleanup(engines.close)
	cases := []struct {
		name    string
		target  netip.AddrPort
		spec    func(*Spec)
		wantErr string
		within  time.Duration
	}{
		{"ipv4 open", open4, nil, "", time.Second},
		{"ipv4 closed port answers RST", closed4, nil, "refused: RST", time.Second},
		{"ipv6 open", open6, nil, "", time.Second},
		{"ipv6 closed port answers RST", closed6, nil, "refused: RST", time.Second},
		{"ipv6 link-local with its zone", linkLocal, nil, "", time.Second},
		{"ipv4-mapped target", netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), open4.Port()), nil, "", time.Second},
		{"source address", open4, func(s *Spec) { s.Source = netip.MustParseAddr("127.0.0.1") }, "", time.Second},
		{"ipv6 source address", open6, func(s *Spec) { s.Source = netip.MustParseAddr("::1") }, "", time.Second},
		{"interface", open4, func(s *Spec) { s.Interface = "lo" }, "", time.Second},
		{"silent backend times out", silent, func(s *Spec) { s.Timeout = 300 * time.Millisecond }, "no SYN-ACK or RST", 2 * time.Second},
		{"no route", netip.MustParseAddrPort("192.0.2.1:80"), nil, "unreachable", time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sp := base(TCPHalfOpen, c.target)
			if c.spec != nil {
				c.spec(&sp)
			}
			if err := sp.Validate(); err != nil {
				t.Fatalf("spec: %v", err)
			}
			p, err := newProber(sp, &engines)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), sp.Timeout)
			defer cancel()
			start := time.Now()
			err = p.probe(ctx)
			if took := time.Since(start); took > c.within {
				t.Errorf("probe took %v, want at most %v", took, c.within)
			}
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("want success, got %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("want error containing %q, got %v", c.wantErr, err)
			}
		})
	}

	// Many probes at once, several on one target: each answer finds its
	// own probe.
	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		var failed atomic.Int64
		targets := []netip.AddrPort{open4, open6, closed4}
		for i := range 600 {
			wg.Go(func() {
				target := targets[i%len(targets)]
				p, err := newProber(base(TCPHalfOpen, target), &engines)
				if err != nil {
					t.Error(err)
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				err = p.probe(ctx)
				if (target == closed4) != (err != nil) {
					failed.Add(1)
					t.Logf("%v: %v", target, err)
				}
			})
		}
		wg.Wait()
		if failed.Load() > 0 {
			t.Fatalf("%d of 600 probes got the wrong verdict", failed.Load())
		}
	})

	// The backend's application never saw a connection, and its kernel
	// holds no half-open one: ours answered every SYN-ACK with an RST.
	time.Sleep(100 * time.Millisecond)
	if n := accepted4.Load() + accepted6.Load(); n != 0 {
		t.Errorf("the listeners accepted %d connections", n)
	}
	if n := halfOpenOn(t, open4.Port()) + halfOpenOn(t, open6.Port()); n != 0 {
		t.Errorf("%d connections left in SYN-RECV", n)
	}
}

func closedPort(t *testing.T, addr string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return ap
}

// TestHalfOpenScheduler: a half-open check through the scheduler decides
// up, then down when the listener goes, and the engine's sockets close
// with Run.
func TestHalfOpenScheduler(t *testing.T) {
	privtest.Require(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	target := netip.MustParseAddrPort(ln.Addr().String())
	s := NewScheduler(nil)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = s.Run(ctx); close(stopped) }()
	defer func() { cancel(); <-stopped }()
	sp := Spec{Kind: TCPHalfOpen, Target: target, Interval: 20 * time.Millisecond, Timeout: 15 * time.Millisecond, Rise: 2, Fall: 2}
	if err := s.Add("b1", sp); err != nil {
		t.Fatal(err)
	}
	next := func(want State) {
		t.Helper()
		select {
		case ev := <-s.Events():
			if ev.To != want {
				t.Fatalf("event %v -> %v (%v), want %v", ev.From, ev.To, ev.Err, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no event, want %v", want)
		}
	}
	next(Up)
	ln.Close()
	next(Down)
	cancel()
	<-stopped
	if err := s.Add("b2", sp); err == nil || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("add after Run ended: %v, want the scheduler stopped", err)
	}
}

// TestHalfOpenBatch: the SYNs of one batch go out in one sendmmsg per
// socket; a SYN the kernel refuses (no route) fails its own probe only,
// and the ones after it are still sent and answered.
func TestHalfOpenBatch(t *testing.T) {
	privtest.Require(t)
	open4, _ := countingListener(t, "127.0.0.1:0")
	open6, _ := countingListener(t, "[::1]:0")
	closed4 := closedPort(t, "127.0.0.1:0")
	noRoute := netip.MustParseAddrPort("192.0.2.1:80")
	var engines synEngines
	t.Cleanup(engines.close)
	cases := []struct {
		target  netip.AddrPort
		wantErr string
	}{
		{noRoute, "unreachable"},
		{open4, ""},
		{noRoute, "unreachable"},
		{closed4, "refused: RST"},
		{open6, ""},
		{open4, ""},
	}
	var starts []synStart
	var engine *synEngine
	got := make([]chan error, len(cases))
	for i, c := range cases {
		p, err := newProber(base(TCPHalfOpen, c.target), &engines)
		if err != nil {
			t.Fatal(err)
		}
		sp := p.(*synProber)
		engine = sp.engine
		got[i] = make(chan error, 1)
		starts = append(starts, synStart{sp, time.Now().Add(time.Second), func(err error) { got[i] <- err }})
	}
	engine.startBatch(starts)
	for i, c := range cases {
		select {
		case err := <-got[i]:
			if (c.wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("probe %d (%s): %v, want %q", i, c.target, err, c.wantErr)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("probe %d (%s): no verdict", i, c.target)
		}
	}
}

// TestHalfOpenZoneGone: a link-local target whose zone's interface goes
// away must fail, not be answered by the same link-local address on
// another link (found in review: x/net's batch send took the zone by name
// and, once the name was gone, sent with no scope).
func TestHalfOpenZoneGone(t *testing.T) {
	privtest.Require(t)
	peerA, peerB := privtest.NewNS(t), privtest.NewNS(t)
	va := privtest.Veth(t, lab.VethEnd{Name: "rza", NS: netns.None(), Addrs: []string{"fe80::1/64"}, NoDAD: true},
		lab.VethEnd{Name: "rzap", NS: peerA, Addrs: []string{"fe80::2/64"}, NoDAD: true})
	privtest.Veth(t, lab.VethEnd{Name: "rzb", NS: netns.None(), Addrs: []string{"fe80::3/64"}, NoDAD: true},
		lab.VethEnd{Name: "rzbp", NS: peerB, Addrs: []string{"fe80::2/64"}, NoDAD: true})
	privtest.ServeAcceptClose(t, peerA, "tcp6", "[fe80::2%rzap]:8088")
	privtest.ServeAcceptClose(t, peerB, "tcp6", "[fe80::2%rzbp]:8088")
	var engines synEngines
	t.Cleanup(engines.close)
	p, err := newProber(base(TCPHalfOpen, netip.MustParseAddrPort("[fe80::2%rza]:8088")), &engines)
	if err != nil {
		t.Fatal(err)
	}
	run := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return p.probe(ctx)
	}
	if err := run(); err != nil {
		t.Fatalf("before: %v", err)
	}
	if err := va.Close(); err != nil {
		t.Fatal(err)
	}
	// Any send to a zone the cache does not know refreshes x/net's zone
	// cache at once (else it happens within 60 s by itself).
	privtest.Veth(t, lab.VethEnd{Name: "rzc", NS: netns.None(), Addrs: []string{"fe80::5/64"}, NoDAD: true},
		lab.VethEnd{Name: "rzcp", NS: privtest.NewNS(t), Addrs: []string{"fe80::6/64"}, NoDAD: true})
	q, err := newProber(base(TCPHalfOpen, netip.MustParseAddrPort("[fe80::6%rzc]:9")), &engines)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	t.Logf("probe via rzc: %v", q.probe(ctx))
	cancel()
	for i := range 3 {
		start := time.Now()
		err := run()
		t.Logf("after rza removed, probe %d: %v (%v)", i, err, time.Since(start))
		if err == nil {
			t.Errorf("probe %d of a target whose interface is gone: up (answered through rzb)", i)
		}
	}
}
