package loadgen

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
	"github.com/keepbit/keepbit/loader"
)

func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }

var (
	macA = net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 0x01}
	macB = net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 0x02}
)

func v4(src, dst string) Template {
	return Template{SrcMAC: macA, DstMAC: macB, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), DstPort: 80}
}

func TestTemplateBuild(t *testing.T) {
	tagged6 := Template{SrcMAC: macA, DstMAC: macB, VLAN: 10, UDP: true, DstPort: 53,
		Src: netip.MustParseAddr("2001:db8:ffff::9"), Dst: netip.MustParseAddr("2001:db8::10")}
	big := v4("203.0.113.9", "198.51.100.10")
	big.Size = 1500
	cases := []struct {
		name        string
		tmpl        Template
		flows, vips uint32
		wantLen     int
		// expected bytes at offsets of the frame
		want             map[int][]byte
		src, sport, dst  uint16 // rotated field offsets
		srcBase, dstBase uint16
		err              string
	}{
		{name: "ipv4 tcp", tmpl: v4("203.0.113.9", "198.51.100.10"), flows: 16, vips: 1, wantLen: 60,
			want: map[int][]byte{0: macB, 6: macA, 12: {0x08, 0x00}, 23: {6}, 26: {203, 0, 113, 9}, 30: {198, 51, 100, 10},
				34: {0x04, 0x00, 0, 80}, 47: {0x10}},
			src: 28, sport: 34, dst: 32, srcBase: 113<<8 | 9, dstBase: 100<<8 | 10},
		{name: "ipv6 udp tagged", tmpl: tagged6, flows: 4, vips: 2, wantLen: 18 + 40 + 8,
			want: map[int][]byte{12: {0x81, 0x00, 0x00, 0x0a, 0x86, 0xdd}, 18 + 6: {17}, 18 + 40: {0x04, 0x00, 0, 53}},
			src:  18 + 22, sport: 18 + 40, dst: 18 + 38, srcBase: 9, dstBase: 0x10},
		{name: "frame size", tmpl: big, flows: 1, vips: 1, wantLen: 1500,
			want: map[int][]byte{16: {0x05, 0xdc - 14}}, src: 28, sport: 34, dst: 32, srcBase: 113<<8 | 9, dstBase: 100<<8 | 10},
		{name: "families differ", tmpl: v4("203.0.113.9", "2001:db8::10"), flows: 1, vips: 1, err: "one family"},
		{name: "no MAC", tmpl: Template{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2")}, flows: 1, vips: 1, err: "MAC"},
		{name: "bad vlan", tmpl: func() Template { x := v4("10.0.0.1", "10.0.0.2"); x.VLAN = 4095; return x }(), flows: 1, vips: 1, err: "vlan 4095"},
		{name: "no flows", tmpl: v4("10.0.0.1", "10.0.0.2"), flows: 0, vips: 1, err: "at least 1"},
		{name: "too many flows", tmpl: v4("10.0.0.1", "10.0.0.2"), flows: 4294967295, vips: 1, err: "tell apart"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, err := c.tmpl.Build(c.flows, c.vips)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("Build: err %v, want one saying %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if len(st.Frame) != c.wantLen {
				t.Fatalf("frame is %d bytes, want %d", len(st.Frame), c.wantLen)
			}
			for off, b := range c.want {
				if got := st.Frame[off : off+len(b)]; !bytes.Equal(got, b) {
					t.Errorf("bytes at %d: % x, want % x", off, got, b)
				}
			}
			cfg := st.cfg
			if cfg.SrcOff != c.src || cfg.SportOff != c.sport || cfg.DstOff != c.dst {
				t.Errorf("offsets src %d sport %d dst %d, want %d %d %d", cfg.SrcOff, cfg.SportOff, cfg.DstOff, c.src, c.sport, c.dst)
			}
			if cfg.SrcBase != c.srcBase || cfg.DstBase != c.dstBase {
				t.Errorf("bases src %#x dst %#x, want %#x %#x", cfg.SrcBase, cfg.DstBase, c.srcBase, c.dstBase)
			}
			if cfg.Flows != c.flows || cfg.Vips != c.vips {
				t.Errorf("flows %d vips %d, want %d %d", cfg.Flows, cfg.Vips, c.flows, c.vips)
			}
			if binary.LittleEndian.Uint64(st.Frame[0:]) != cfg.Head[0] || binary.LittleEndian.Uint64(st.Frame[8:]) != cfg.Head[1] {
				t.Error("head is not the frame's first 16 bytes")
			}
		})
	}
}

// run runs the sender once (not live) on in and returns the verdict and
// the frame it produced.
func run(t *testing.T, s *Sender, in []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(in)+256)
	opts := &ebpf.RunOptions{Data: in, DataOut: out}
	ret, err := s.objs.LoadgenTx.Run(opts)
	if err != nil {
		t.Fatalf("BPF_PROG_RUN: %v", err)
	}
	return ret, opts.DataOut
}

// TestSenderRotation checks the flow each sequence number gets, and that
// the first 16 bytes come from the template whatever the frame held.
func TestSenderRotation(t *testing.T) {
	privtest.Require(t)
	s, err := NewSender(netns.None(), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tmpl := v4("203.0.113.9", "198.51.100.10")
	type flow struct{ src, sport, dst uint16 }
	cases := []struct {
		name        string
		flows, vips uint32
		seq         uint64 // where the rotation starts
		want        []flow // offsets from the template's low 16 bits
	}{
		{"vips first, then ports", 5, 2, 0, []flow{{0, 1024, 0}, {0, 1024, 1}, {0, 1025, 0}, {0, 1025, 1}, {0, 1026, 0}, {0, 1024, 0}}},
		{"one flow", 1, 1, 0, []flow{{0, 1024, 0}, {0, 1024, 0}}},
		{"past the port range", 200000, 1, 130000, []flow{{2, 2000, 0}, {2, 2001, 0}}},
		{"many vips", 3000, 1000, 2998, []flow{{0, 1026, 998}, {0, 1026, 999}, {0, 1024, 0}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, err := tmpl.Build(c.flows, c.vips)
			if err != nil {
				t.Fatal(err)
			}
			s.configured = false
			if err := s.configure(st); err != nil {
				t.Fatal(err)
			}
			if err := s.objs.State.Put(uint32(0), senderGenState{Seq: c.seq}); err != nil {
				t.Fatal(err)
			}
			in := bytes.Clone(st.Frame)
			copy(in, bytes.Repeat([]byte{0xee}, 16)) // as a forwarder might leave it
			for i, w := range c.want {
				ret, out := run(t, s, in)
				if ret != 3 { // XDP_TX
					t.Fatalf("frame %d: verdict %d, want XDP_TX", i, ret)
				}
				if !bytes.Equal(out[:16], st.Frame[:16]) {
					t.Errorf("frame %d: head % x, want the template's % x", i, out[:16], st.Frame[:16])
				}
				got := flow{binary.BigEndian.Uint16(out[28:]) - st.cfg.SrcBase, binary.BigEndian.Uint16(out[34:]),
					binary.BigEndian.Uint16(out[32:]) - st.cfg.DstBase}
				if got != w {
					t.Errorf("frame %d (seq %d): flow %+v, want %+v", i, c.seq+uint64(i), got, w)
				}
				if !bytes.Equal(out[36:], st.Frame[36:]) {
					t.Errorf("frame %d: bytes past the rotated fields changed", i)
				}
			}
		})
	}
	t.Run("short frame", func(t *testing.T) {
		st, err := tmpl.Build(1, 1)
		if err != nil {
			t.Fatal(err)
		}
		s.configured = false
		if err := s.configure(st); err != nil {
			t.Fatal(err)
		}
		if ret, _ := run(t, s, st.Frame[:30]); ret != 1 { // XDP_DROP
			t.Fatalf("30-byte frame: verdict %d, want XDP_DROP", ret)
		}
		got, err := s.state()
		if err != nil {
			t.Fatal(err)
		}
		if got.Aborted != 1 {
			t.Fatalf("aborted %d, want 1", got.Aborted)
		}
	})
}

// TestLiveFrames sends real frames through a veth pair: the sender's end
// runs the sink, the far end bounces every frame back (the baseline), so
// the sink must count what was sent, at the sender's MAC.
func TestLiveFrames(t *testing.T) {
	privtest.Require(t)
	ns := privtest.NewNS(t)
	// No IPv6: the kernel's own router solicitations and MLD reports
	// would be bounced back and counted with the test's frames.
	privtest.Sysctl(t, ns, map[string]string{"net/ipv6/conf/default/disable_ipv6": "1"})
	v := privtest.Veth(t, lab.VethEnd{NS: ns, Name: "gen0", MAC: macA}, lab.VethEnd{NS: ns, Name: "fwd0", MAC: macB})
	sink, err := AttachSink(ns, v.A.Index)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	prog, err := loader.LoadBaseline()
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	var l link.Link
	if err := lab.InNS(ns, func() error {
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: v.B.Index})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	s, err := NewSender(ns, v.A.Index)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := v4("203.0.113.9", "198.51.100.10").Build(1000, 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var sent uint64
	for range 2 { // the second Send continues the rotation
		r, err := s.Send(ctx, st, 100*time.Millisecond, 4096)
		if err != nil {
			t.Fatal(err)
		}
		if r.Frames == 0 || r.Mpps() <= 0 {
			t.Fatalf("sent %d frames in %v", r.Frames, r.Elapsed)
		}
		sent += r.Frames
	}
	if got, err := s.state(); err != nil || got.Seq != sent {
		t.Fatalf("sequence %d (%v) after two sends of %d frames in all: the rotation restarted", got.Seq, err, sent)
	}
	// Frames still in flight arrive within a few milliseconds.
	var c Counts
	deadline := time.Now().Add(2 * time.Second)
	for {
		if c, err = sink.Counts(); err != nil {
			t.Fatal(err)
		}
		if c.Total() >= sent || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	total := c.Total()
	if total == 0 || total > sent {
		t.Fatalf("sink counted %d frames of %d sent", total, sent)
	}
	if at := c[macA[5]]; at != total {
		t.Fatalf("%d of %d frames at the sender's MAC: %v", at, total, c)
	}
	t.Logf("sent %d, received %d (%.1f%%)", sent, total, 100*float64(total)/float64(sent))
}
