package loader

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Test packets are built with gopacket; the expected output of a forwarded
// packet is the input's bytes from L3 on behind a new Ethernet header,
// because L2 direct server return must never touch L3.

var (
	clientMAC = mac("02:cc:00:00:00:01")
	lbMAC     = mac("02:1b:00:00:00:01")
	port2MAC  = mac("02:1b:00:00:00:02")
)

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func ip(s string) net.IP { return net.IP(netip.MustParseAddr(s).AsSlice()) }

// tag is one 802.1Q (or 802.1ad, outer) tag on the wire.
type tag struct {
	vid, pcp uint16
	ad       bool // 0x88a8 S-tag
}

type l4 struct {
	proto        layers.IPProtocol
	sport, dport uint16
}

type pkt struct {
	tags     []tag
	src, dst string
	l4       l4
	payload  []byte
	// syn: a TCP connection request (SYN). Otherwise a TCP segment is an
	// ACK, as an established flow's packets are: a SYN always takes the
	// program's slow path (passive detection counts retransmitted ones).
	syn bool
}

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// l2 returns the Ethernet (+ tags) layers in front of an L3 of type et.
func l2(tags []tag, et layers.EthernetType) []gopacket.SerializableLayer {
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: lbMAC, EthernetType: et}
	out := []gopacket.SerializableLayer{eth}
	prev := &eth.EthernetType
	for _, tg := range tags {
		*prev = layers.EthernetTypeDot1Q
		if tg.ad {
			*prev = layers.EthernetTypeQinQ
		}
		q := &layers.Dot1Q{VLANIdentifier: tg.vid, Priority: uint8(tg.pcp), Type: et}
		out = append(out, q)
		prev = &q.Type
	}
	return out
}

func transport(t testing.TB, p pkt, nl gopacket.NetworkLayer) []gopacket.SerializableLayer {
	payload := gopacket.Payload(p.payload)
	switch p.l4.proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(p.l4.sport), DstPort: layers.TCPPort(p.l4.dport), SYN: p.syn, ACK: !p.syn, Window: 64240, Seq: 1}
		_ = tcp.SetNetworkLayerForChecksum(nl)
		return []gopacket.SerializableLayer{tcp, payload}
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(p.l4.sport), DstPort: layers.UDPPort(p.l4.dport)}
		_ = udp.SetNetworkLayerForChecksum(nl)
		return []gopacket.SerializableLayer{udp, payload}
	case layers.IPProtocolICMPv4:
		return []gopacket.SerializableLayer{&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: p.l4.sport, Seq: 1}, payload}
	}
	// Anything else: an opaque 8-byte header, as for ESP.
	return []gopacket.SerializableLayer{gopacket.Payload(append(make([]byte, 8), p.payload...))}
}

// v4 builds an IPv4 packet; opts (a multiple of 4 bytes of options) grows IHL.
func v4(t testing.TB, p pkt, opts int) []byte {
	t.Helper()
	ipl := &layers.IPv4{Version: 4, TTL: 64, Protocol: p.l4.proto, SrcIP: ip(p.src), DstIP: ip(p.dst), Id: 1}
	for range opts {
		ipl.Options = append(ipl.Options, layers.IPv4Option{OptionType: 1}) // NOP
	}
	ls := append(l2(p.tags, layers.EthernetTypeIPv4), ipl)
	return serialize(t, append(ls, transport(t, p, ipl)...)...)
}

// v6 builds an IPv6 packet with the given extension headers in front of L4.
func v6(t testing.TB, p pkt, ext ...uint8) []byte {
	t.Helper()
	ipl := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: p.l4.proto, SrcIP: ip(p.src), DstIP: ip(p.dst)}
	l4b := serialize(t, append([]gopacket.SerializableLayer{}, transport(t, p, ipl)...)...)
	if len(ext) > 0 {
		ipl.NextHeader = layers.IPProtocol(ext[0])
		var chain []byte
		for i, h := range ext {
			next := uint8(p.l4.proto)
			if i+1 < len(ext) {
				next = ext[i+1]
			}
			chain = append(chain, extHeader(h, next)...)
		}
		l4b = append(chain, l4b...)
	}
	ls := append(l2(p.tags, layers.EthernetTypeIPv6), ipl, gopacket.Payload(l4b))
	return serialize(t, ls...)
}

// extHeader is an 8-byte IPv6 extension header of type h (options padded
// with PadN; AH-shaped for 51).
func extHeader(h, next uint8) []byte {
	switch h {
	case 44: // fragment: offset 0, M=0 (atomic fragment)
		return []byte{next, 0, 0, 0, 0, 0, 0, 1}
	case 51: // AH: length in 4-byte units minus 2 => 1 means 12 bytes
		return []byte{next, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}
	}
	return []byte{next, 0, 1, 4, 0, 0, 0, 0}
}

// v4frag builds one IPv4 fragment carrying raw bytes at offset (8-byte units).
func v4frag(t testing.TB, src, dst string, proto layers.IPProtocol, id, offset uint16, more bool, raw []byte) []byte {
	t.Helper()
	ipl := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: ip(src), DstIP: ip(dst), Id: id, FragOffset: offset}
	if more {
		ipl.Flags = layers.IPv4MoreFragments
	}
	return serialize(t, append(l2(nil, layers.EthernetTypeIPv4), ipl, gopacket.Payload(raw))...)
}

// v6frag builds one IPv6 fragment.
func v6frag(t testing.TB, src, dst string, proto layers.IPProtocol, id uint32, offset uint16, more bool, raw []byte) []byte {
	t.Helper()
	fh := make([]byte, 8)
	fh[0] = uint8(proto)
	fo := offset << 3
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(fh[2:], fo)
	binary.BigEndian.PutUint32(fh[4:], id)
	ipl := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: 44, SrcIP: ip(src), DstIP: ip(dst)}
	return serialize(t, append(l2(nil, layers.EthernetTypeIPv6), ipl, gopacket.Payload(append(fh, raw...)))...)
}

// udpBytes is a UDP header plus payload as it sits in a first fragment.
func udpBytes(t testing.TB, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, udp, gopacket.Payload(payload)); err != nil {
		t.Fatalf("serialize udp: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// icmpFragNeeded is a router's "fragmentation needed" to vip quoting a TCP
// segment vip:vport -> client:cport.
func icmpFragNeeded(t testing.TB, router, vip, client string, vport, cport uint16) []byte {
	t.Helper()
	orig := &layers.IPv4{Version: 4, TTL: 63, Protocol: layers.IPProtocolTCP, SrcIP: ip(vip), DstIP: ip(client), Flags: layers.IPv4DontFragment}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(vport), DstPort: layers.TCPPort(cport), ACK: true}
	_ = tcp.SetNetworkLayerForChecksum(orig)
	quote := serialize(t, orig, tcp, gopacket.Payload(make([]byte, 1400)))[:28]
	outer := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: ip(router), DstIP: ip(vip)}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 4), Seq: 1300} // Seq carries next-hop MTU
	return serialize(t, append(l2(nil, layers.EthernetTypeIPv4), outer, icmp, gopacket.Payload(quote))...)
}

// icmp6TooBig is "packet too big" to vip quoting a TCP segment vip -> client.
func icmp6TooBig(t testing.TB, router, vip, client string, vport, cport uint16) []byte {
	t.Helper()
	orig := &layers.IPv6{Version: 6, HopLimit: 63, NextHeader: layers.IPProtocolTCP, SrcIP: ip(vip), DstIP: ip(client)}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(vport), DstPort: layers.TCPPort(cport), ACK: true}
	_ = tcp.SetNetworkLayerForChecksum(orig)
	quote := serialize(t, orig, tcp, gopacket.Payload(make([]byte, 1400)))[:1232]
	outer := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: ip(router), DstIP: ip(vip)}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(2, 0)}
	_ = icmp.SetNetworkLayerForChecksum(outer)
	mtu := []byte{0, 0, 0x05, 0x00}
	return serialize(t, append(l2(nil, layers.EthernetTypeIPv6), outer, icmp, gopacket.Payload(append(mtu, quote...)))...)
}

func arpRequest(t testing.TB) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: mac("ff:ff:ff:ff:ff:ff"), EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: clientMAC, SourceProtAddress: ip("203.0.113.7").To4(),
		DstHwAddress: make([]byte, 6), DstProtAddress: ip("198.51.100.1").To4()}
	return serialize(t, eth, arp)
}

// l3Offset is where L3 starts in a frame built by l2 with n tags.
func l3Offset(n int) int { return 14 + 4*n }

// rewritten is in with its L2 header replaced as L2 DSR must: dst = backend,
// src = egress port, and exactly the backend's VLAN tag (keeping the PCP of
// the first ingress tag).
func rewritten(in []byte, inTags int, dst, src net.HardwareAddr, vlan, pcp uint16) []byte {
	l3 := in[l3Offset(inTags):]
	et := in[l3Offset(inTags)-2 : l3Offset(inTags)]
	out := append([]byte{}, dst...)
	out = append(out, src...)
	if vlan != 0 {
		out = append(out, 0x81, 0x00)
		out = binary.BigEndian.AppendUint16(out, pcp<<13|vlan)
	}
	out = append(out, et...)
	return append(out, l3...)
}

// icmp6Msg is an ICMPv6 message of type typ (code 0) from src to dst; body
// follows the 4-byte ICMPv6 header.
func icmp6Msg(t testing.TB, src, dst string, typ uint8, body []byte) []byte {
	t.Helper()
	outer := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: ip(src), DstIP: ip(dst)}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	_ = icmp.SetNetworkLayerForChecksum(outer)
	return serialize(t, append(l2(nil, layers.EthernetTypeIPv6), outer, icmp, gopacket.Payload(body))...)
}

// neighbourSolicitation asks for target's link-layer address.
func neighbourSolicitation(t testing.TB, src, target string) []byte {
	t.Helper()
	return icmp6Msg(t, src, target, 135, append(make([]byte, 4), ip(target).To16()...))
}

// quoteV4 is the start of an IPv4 TCP packet vip:vport -> client:cport as an
// ICMP error quotes it; a nonzero fragOffset makes it a later fragment whose
// first payload bytes merely look like those ports.
func quoteV4(t testing.TB, vip, client string, vport, cport, fragOffset uint16) []byte {
	t.Helper()
	orig := &layers.IPv4{Version: 4, TTL: 63, Protocol: layers.IPProtocolTCP, SrcIP: ip(vip), DstIP: ip(client), FragOffset: fragOffset}
	ports := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, vport), cport)
	return serialize(t, orig, gopacket.Payload(append(ports, make([]byte, 24)...)))[:28]
}

// quoteV6 is the IPv6 twin of quoteV4 (a fragment header when fragOffset
// is nonzero).
func quoteV6(t testing.TB, vip, client string, vport, cport, fragOffset uint16) []byte {
	t.Helper()
	ports := binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, vport), cport)
	body := append(ports, make([]byte, 24)...)
	orig := &layers.IPv6{Version: 6, HopLimit: 63, NextHeader: layers.IPProtocolTCP, SrcIP: ip(vip), DstIP: ip(client)}
	if fragOffset != 0 {
		orig.NextHeader = 44
		fh := []byte{uint8(layers.IPProtocolTCP), 0, 0, 0, 0, 0, 0, 9}
		binary.BigEndian.PutUint16(fh[2:], fragOffset<<3|1)
		body = append(fh, body...)
	}
	return serialize(t, orig, gopacket.Payload(body))
}

// icmpErrRaw is an IP packet (version by outer6) from router to dst with
// protocol proto carrying an ICMP-style error header (type, code, 4 bytes
// of MTU) and quote: it can pair an ICMP version with the wrong IP version.
func icmpErrRaw(t testing.TB, outer6 bool, router, dst string, proto layers.IPProtocol, typ, code uint8, quote []byte) []byte {
	t.Helper()
	body := append([]byte{typ, code, 0, 0, 0, 0, 0x05, 0x00}, quote...)
	if outer6 {
		o := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: ip(router), DstIP: ip(dst)}
		return serialize(t, append(l2(nil, layers.EthernetTypeIPv6), o, gopacket.Payload(body))...)
	}
	o := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: ip(router), DstIP: ip(dst)}
	return serialize(t, append(l2(nil, layers.EthernetTypeIPv4), o, gopacket.Payload(body))...)
}
