package lab_test

import (
	"bytes"
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// tc verdicts (linux/pkt_cls.h).
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
)

// frame serializes eth/ip/l4 with correct checksums.
func frame(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	type checksummed interface {
		SetNetworkLayerForChecksum(gopacket.NetworkLayer) error
	}
	for _, l := range ls {
		if l4, ok := l.(checksummed); ok {
			for _, n := range ls {
				if ip, ok := n.(gopacket.NetworkLayer); ok {
					_ = l4.SetNetworkLayerForChecksum(ip)
				}
			}
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestSynResponder: table of frames in, verdict and frame out. A SYN gets
// the SYN-ACK a backend would send (addresses, ports and MACs swapped,
// ack = seq+1, the MSS option kept, both checksums right) and is
// redirected; RSTs are dropped; everything else passes untouched.
func TestSynResponder(t *testing.T) {
	privtest.Require(t)
	prog, err := lab.SynResponder()
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	client, server := net.HardwareAddr{2, 0, 0, 0, 0, 1}, net.HardwareAddr{2, 0, 0, 0, 0, 2}
	cIP, sIP := net.IP{10, 90, 0, 1}, net.IP{10, 91, 3, 4}
	eth := func(src, dst net.HardwareAddr, typ layers.EthernetType) *layers.Ethernet {
		return &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: typ}
	}
	ip4 := func(src, dst net.IP, proto layers.IPProtocol) *layers.IPv4 {
		return &layers.IPv4{Version: 4, TTL: 64, Id: 7, SrcIP: src, DstIP: dst, Protocol: proto}
	}
	mss := []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}}
	syn := &layers.TCP{SrcPort: 40001, DstPort: 80, Seq: 0xfffffffe, SYN: true, Window: 1024, Options: mss}
	synAck := &layers.TCP{SrcPort: 80, DstPort: 40001, Seq: 0x4b420001, Ack: 0xffffffff, SYN: true, ACK: true, Window: 1024, Options: mss}
	udp := &layers.UDP{SrcPort: 40001, DstPort: 80}
	cases := []struct {
		name    string
		in, out []byte // out nil: the frame comes back as it went in
		verdict uint32
	}{
		{"syn answered", frame(t, eth(client, server, layers.EthernetTypeIPv4), ip4(cIP, sIP, layers.IPProtocolTCP), syn),
			frame(t, eth(server, client, layers.EthernetTypeIPv4), ip4(sIP, cIP, layers.IPProtocolTCP), synAck), tcActRedirect},
		{"rst dropped", frame(t, eth(client, server, layers.EthernetTypeIPv4), ip4(cIP, sIP, layers.IPProtocolTCP),
			&layers.TCP{SrcPort: 40001, DstPort: 80, Seq: 1, RST: true, Window: 0}), nil, tcActShot},
		{"ack passed", frame(t, eth(client, server, layers.EthernetTypeIPv4), ip4(cIP, sIP, layers.IPProtocolTCP),
			&layers.TCP{SrcPort: 40001, DstPort: 80, Seq: 1, Ack: 2, ACK: true, Window: 1024}), nil, tcActOK},
		{"syn-ack passed", frame(t, eth(client, server, layers.EthernetTypeIPv4), ip4(cIP, sIP, layers.IPProtocolTCP), synAck), nil, tcActOK},
		{"udp passed", frame(t, eth(client, server, layers.EthernetTypeIPv4), ip4(cIP, sIP, layers.IPProtocolUDP), udp), nil, tcActOK},
		{"ipv6 passed", frame(t, eth(client, server, layers.EthernetTypeIPv6),
			&layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2")}, syn), nil, tcActOK},
		{"truncated tcp header passed", frame(t, eth(client, server, layers.EthernetTypeIPv4), ip4(cIP, sIP, layers.IPProtocolTCP),
			gopacket.Payload{0x9c, 0x41, 0, 80, 0, 0, 0, 1, 0, 0}), nil, tcActOK},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := make([]byte, len(c.in)+64)
			opts := ebpf.RunOptions{Data: c.in, DataOut: out}
			verdict, err := prog.Run(&opts)
			if err != nil {
				t.Fatal(err)
			}
			want := c.out
			if want == nil {
				want = c.in
			}
			if verdict != c.verdict || !bytes.Equal(opts.DataOut, want) {
				t.Fatalf("verdict %d, frame\n% x\nwant %d,\n% x", verdict, opts.DataOut, c.verdict, want)
			}
		})
	}
}
