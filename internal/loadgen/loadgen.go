// Package loadgen sends line-rate test traffic without a NIC or a packet
// generator: its sender program runs under BPF_PROG_RUN in live-frame mode,
// which transmits every frame the program returns XDP_TX for out of a real
// device, and its sink program counts what comes back per destination MAC.
// One Go thread reaches several million frames per second into a veth.
package loadgen

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/lab"
)

// Template describes the frame a stream starts from. The stream rotates the
// low 16 bits of the destination address (over VIPs), the source port and
// then the low 16 bits of the source address (over the rest of the flows).
type Template struct {
	SrcMAC, DstMAC net.HardwareAddr
	VLAN           uint16 // 0: untagged
	Src, Dst       netip.Addr
	UDP            bool // false: TCP (ACK set, as on an established flow)
	DstPort        uint16
	// Size is the frame length without FCS; 0 or less than the headers
	// need means the smallest Ethernet frame that holds them (60 bytes at
	// least).
	Size int
}

// Stream is a frame and what to rotate in it.
type Stream struct {
	Frame []byte
	// Flows is how many distinct flows the stream cycles through (at most
	// 65,536 x 64,512 x VIPs); VIPs how many consecutive destination
	// addresses, from the template's, they are spread over.
	Flows, VIPs uint32
	cfg         senderGenConfig
}

// maxField is the sender's limit on where a rotated field may sit
// (FIELD_MAX in loadgen_tx.c).
const maxField = 128

// Build serializes the template into a stream of flows flows over vips
// destinations.
func (t Template) Build(flows, vips uint32) (Stream, error) {
	if !t.Src.IsValid() || !t.Dst.IsValid() || t.Src.Is4() != t.Dst.Is4() {
		return Stream{}, fmt.Errorf("template: source %v and destination %v must be addresses of one family", t.Src, t.Dst)
	}
	if len(t.SrcMAC) != 6 || len(t.DstMAC) != 6 {
		return Stream{}, errors.New("template: source and destination MAC are required")
	}
	if t.VLAN > 4094 {
		return Stream{}, fmt.Errorf("template: vlan %d: not in 0..4094", t.VLAN)
	}
	if flows == 0 || vips == 0 {
		return Stream{}, errors.New("template: flows and vips must be at least 1")
	}
	if vips > 65536 || uint64(flows) > uint64(vips)*64512*65536 {
		return Stream{}, fmt.Errorf("template: %d flows over %d vips: more than the rotated fields can tell apart", flows, vips)
	}
	eth := &layers.Ethernet{SrcMAC: t.SrcMAC, DstMAC: t.DstMAC}
	ls := []gopacket.SerializableLayer{eth}
	l2 := 14
	ipType := layers.EthernetTypeIPv4
	if t.Src.Is6() {
		ipType = layers.EthernetTypeIPv6
	}
	if t.VLAN != 0 {
		eth.EthernetType = layers.EthernetTypeDot1Q
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: t.VLAN, Type: ipType})
		l2 += 4
	} else {
		eth.EthernetType = ipType
	}
	proto := layers.IPProtocolTCP
	if t.UDP {
		proto = layers.IPProtocolUDP
	}
	var net gopacket.NetworkLayer
	var srcOff, dstOff, l4Off int
	if t.Src.Is4() {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: t.Src.AsSlice(), DstIP: t.Dst.AsSlice()}
		ls, net = append(ls, ip), ip
		srcOff, dstOff, l4Off = l2+14, l2+18, l2+20
	} else {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: t.Src.AsSlice(), DstIP: t.Dst.AsSlice()}
		ls, net = append(ls, ip), ip
		srcOff, dstOff, l4Off = l2+22, l2+38, l2+40
	}
	if t.UDP {
		u := &layers.UDP{SrcPort: 1024, DstPort: layers.UDPPort(t.DstPort)}
		_ = u.SetNetworkLayerForChecksum(net)
		ls = append(ls, u)
	} else {
		tc := &layers.TCP{SrcPort: 1024, DstPort: layers.TCPPort(t.DstPort), ACK: true, Window: 512, DataOffset: 5}
		_ = tc.SetNetworkLayerForChecksum(net)
		ls = append(ls, tc)
	}
	hdr := l4Off + 20
	if t.UDP {
		hdr = l4Off + 8
	}
	size := max(t.Size, hdr, 60)
	ls = append(ls, gopacket.Payload(make([]byte, size-hdr)))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		return Stream{}, fmt.Errorf("template: %w", err)
	}
	frame := buf.Bytes()
	if dstOff+2 > maxField || l4Off+2 > maxField {
		return Stream{}, fmt.Errorf("template: rotated fields past byte %d", maxField)
	}
	s := Stream{Frame: frame, Flows: flows, VIPs: vips}
	s.cfg = senderGenConfig{
		Flows: flows, Vips: vips,
		SrcOff: uint16(srcOff), SportOff: uint16(l4Off), DstOff: uint16(dstOff),
		SrcBase: binary.BigEndian.Uint16(frame[srcOff:]), DstBase: binary.BigEndian.Uint16(frame[dstOff:]),
	}
	s.cfg.Head[0] = binary.LittleEndian.Uint64(frame[0:8])
	s.cfg.Head[1] = binary.LittleEndian.Uint64(frame[8:16])
	return s, nil
}

// Sender transmits streams out of one device.
type Sender struct {
	ns      netns.NsHandle
	ifindex int
	objs    senderObjects
	// stream is the configuration the sender's maps hold: sending the
	// same stream again continues its rotation where the last Send left
	// it, so a stream of more flows than one Send reaches stays new.
	stream     senderGenConfig
	configured bool
}

// NewSender loads the sender program for the device with index ifindex in
// ns (netns.None(): this namespace).
func NewSender(ns netns.NsHandle, ifindex int) (*Sender, error) {
	s := &Sender{ns: ns, ifindex: ifindex}
	if err := loadSenderObjects(&s.objs, nil); err != nil {
		return nil, fmt.Errorf("load sender: %w", err)
	}
	return s, nil
}

// Close releases the program and its maps.
func (s *Sender) Close() error { return s.objs.Close() }

// Sent is what one Send put on the wire.
type Sent struct {
	Frames  uint64
	Elapsed time.Duration
}

// Mpps is the sending rate in millions of frames per second.
func (r Sent) Mpps() float64 { return mpps(r.Frames, r.Elapsed) }

func mpps(frames uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(frames) / d.Seconds() / 1e6
}

// xdpMD is struct xdp_md, the context a live-frame run takes.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// Send transmits st for about d (or until ctx ends), perRun frames per
// BPF_PROG_RUN: a run has a fixed cost, so thousands of frames per run keep
// it out of the figure. The count is the program's own, exact.
func (s *Sender) Send(ctx context.Context, st Stream, d time.Duration, perRun uint32) (Sent, error) {
	if len(st.Frame) == 0 {
		return Sent{}, errors.New("send: empty stream")
	}
	if perRun == 0 {
		perRun = 1 << 16
	}
	if err := s.configure(st); err != nil {
		return Sent{}, err
	}
	before, err := s.state()
	if err != nil {
		return Sent{}, err
	}
	opts := &ebpf.RunOptions{
		Data:    st.Frame,
		Context: xdpMD{DataEnd: uint32(len(st.Frame)), IngressIfindex: uint32(s.ifindex)},
		Repeat:  perRun,
		Flags:   unix.BPF_F_TEST_XDP_LIVE_FRAMES,
	}
	var res Sent
	// The run resolves the device in the calling thread's namespace.
	err = lab.InNS(s.ns, func() error {
		start := time.Now()
		deadline := start.Add(d)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			if _, err := s.objs.LoadgenTx.Run(opts); err != nil {
				return fmt.Errorf("send: BPF_PROG_RUN live frames on ifindex %d: %w", s.ifindex, err)
			}
		}
		res.Elapsed = time.Since(start)
		return nil
	})
	if err != nil {
		return Sent{}, err
	}
	after, err := s.state()
	if err != nil {
		return Sent{}, err
	}
	if n := after.Aborted - before.Aborted; n != 0 {
		return Sent{}, fmt.Errorf("send: %d frames too short for the rotated fields", n)
	}
	res.Frames = after.Seq - before.Seq
	return res, ctx.Err()
}

// configure loads st into the sender's maps unless they hold it already.
func (s *Sender) configure(st Stream) error {
	if s.configured && s.stream == st.cfg {
		return nil
	}
	s.configured = false
	if err := s.objs.Config.Put(uint32(0), st.cfg); err != nil {
		return fmt.Errorf("send: configure: %w", err)
	}
	if err := s.objs.State.Put(uint32(0), senderGenState{}); err != nil {
		return fmt.Errorf("send: reset count: %w", err)
	}
	s.stream, s.configured = st.cfg, true
	return nil
}

func (s *Sender) state() (senderGenState, error) {
	var st senderGenState
	if err := s.objs.State.Lookup(uint32(0), &st); err != nil {
		return st, fmt.Errorf("send: read count: %w", err)
	}
	return st, nil
}

// SinkRunt is the Counts slot for frames too short to hold a MAC.
const SinkRunt = 256

// Counts is what a sink received, by the last byte of the destination MAC
// (SinkRunt: too short).
type Counts [SinkRunt + 1]uint64

// Total is every frame received.
func (c Counts) Total() uint64 {
	var n uint64
	for _, v := range c {
		n += v
	}
	return n
}

// Sub is c minus an earlier reading.
func (c Counts) Sub(before Counts) Counts {
	for i := range c {
		c[i] -= before[i]
	}
	return c
}

// Sink counts and drops every frame arriving on one device.
type Sink struct {
	objs sinkObjects
	link link.Link
}

// AttachSink attaches the sink to the device with index ifindex in ns.
// It also makes the device accept XDP_TX and redirected frames from its
// veth peer, which veth delivers only to a device running XDP.
func AttachSink(ns netns.NsHandle, ifindex int) (*Sink, error) {
	s := &Sink{}
	if err := loadSinkObjects(&s.objs, nil); err != nil {
		return nil, fmt.Errorf("load sink: %w", err)
	}
	err := lab.InNS(ns, func() error {
		var err error
		s.link, err = link.AttachXDP(link.XDPOptions{Program: s.objs.LoadgenSink, Interface: ifindex})
		return err
	})
	if err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("attach sink to ifindex %d: %w", ifindex, err)
	}
	return s, nil
}

// Counts reads the counters, summed over CPUs.
func (s *Sink) Counts() (Counts, error) {
	var c Counts
	var per []uint64
	for i := range uint32(SinkRunt + 1) {
		if err := s.objs.SinkCounts.Lookup(i, &per); err != nil {
			return c, fmt.Errorf("read sink slot %d: %w", i, err)
		}
		for _, v := range per {
			c[i] += v
		}
	}
	return c, nil
}

// Close detaches the sink.
func (s *Sink) Close() error {
	return errors.Join(s.link.Close(), s.objs.Close())
}
