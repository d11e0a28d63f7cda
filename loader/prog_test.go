package loader

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/gopacket/layers"
)

// MACs of the backends in the packet table; the output frame's destination
// says which backend was chosen.
var (
	macA  = mac("02:aa:00:00:00:0a")
	macA6 = mac("02:aa:00:00:00:6a")
	macB  = mac("02:aa:00:00:00:0b")
	macC  = mac("02:aa:00:00:00:0c")
	macF  = mac("02:aa:00:00:00:0f")
	macG  = mac("02:aa:00:00:00:06")
	macH  = mac("02:aa:00:00:00:08")
	macI  = mac("02:aa:00:00:00:09")
)

// packetLab configures the services the packet table and the fuzz target
// run against.
func packetLab(t testing.TB) *lab {
	l := newLab(t)
	l.apply(svc("198.51.100.1", 80, TCP), ServiceSpec{Backends: []BackendSpec{backend("10.1.0.10", macA.String())}})
	l.apply(svc("2001:db8::1", 80, TCP), ServiceSpec{Backends: []BackendSpec{backend("2001:db8:1::a", macA6.String())}})
	l.apply(svc("198.51.100.2", 0, TCP), ServiceSpec{Backends: []BackendSpec{backend("10.1.0.11", macB.String()).vlan(30)}})
	l.apply(svc("198.51.100.3", 53, UDP), ServiceSpec{Backends: []BackendSpec{backend("10.1.0.12", macC.String()).port(l.port2)}})
	l.apply(svc("198.51.100.4", 80, TCP), ServiceSpec{Backends: []BackendSpec{backend("10.1.0.13", "02:aa:00:00:00:0d").state(Down)}})
	l.apply(svc("198.51.100.5", 80, TCP), ServiceSpec{NoBackend: PassNoBackend, Backends: []BackendSpec{backend("10.1.0.14", "02:aa:00:00:00:0e").state(Down)}})
	l.apply(svc("2001:db8::2", 443, TCP), ServiceSpec{Backends: []BackendSpec{backend("2001:db8:1::f", macF.String()).vlan(40)}})
	l.apply(svc("2001:db8::3", 0, UDP), ServiceSpec{Backends: []BackendSpec{backend("2001:db8:1::6", macG.String())}})
	l.apply(svc("198.51.100.6", 0, ICMP), ServiceSpec{Backends: []BackendSpec{backend("10.1.0.16", macH.String())}})
	l.apply(svc("2001:db8::4", 0, ICMPv6), ServiceSpec{Backends: []BackendSpec{backend("2001:db8:1::9", macI.String())}})
	return l
}

var (
	tcpTo = func(port uint16) l4 { return l4{layers.IPProtocolTCP, 40000, port} }
	udpTo = func(port uint16) l4 { return l4{layers.IPProtocolUDP, 40001, port} }
)

// TestPacketVerdicts runs each case's frame through the program and checks
// verdict, output bytes and the reason counter. Cases run in order on one
// lab: the fragment cases rely on the first fragment seen before them.
func TestPacketVerdicts(t *testing.T) {
	l := packetLab(t)
	type tc struct {
		name    string
		in      []byte
		verdict uint32
		want    []byte // nil: must equal in
		reason  string
	}
	p4 := func(dst string, x l4, tags ...tag) pkt {
		return pkt{tags: tags, src: "203.0.113.7", dst: dst, l4: x, payload: []byte("hello")}
	}
	p6 := func(dst string, x l4, tags ...tag) pkt {
		return pkt{tags: tags, src: "2001:db8:ffff::7", dst: dst, l4: x, payload: []byte("hello")}
	}
	web := v4(t, p4("198.51.100.1", tcpTo(80)), 0)
	webOpts := v4(t, p4("198.51.100.1", tcpTo(80)), 4)
	webTagged := v4(t, p4("198.51.100.1", tcpTo(80), tag{vid: 10, pcp: 5}), 0)
	webQinQ := v4(t, p4("198.51.100.1", tcpTo(80), tag{vid: 100, ad: true}, tag{vid: 10, pcp: 2}), 0)
	all443 := v4(t, p4("198.51.100.2", tcpTo(443)), 0)
	all22Tagged := v4(t, p4("198.51.100.2", tcpTo(22), tag{vid: 10, pcp: 3}), 0)
	dns := v4(t, p4("198.51.100.3", udpTo(53)), 0)
	web6 := v6(t, p6("2001:db8::1", tcpTo(80)))
	web6Ext := v6(t, p6("2001:db8::1", tcpTo(80)), 0, 60, 51)
	web6TooMany := v6(t, p6("2001:db8::1", tcpTo(80)), 0, 60, 60, 60, 60, 60, 60)
	web6ESP := v6(t, p6("2001:db8::1", l4{layers.IPProtocolESP, 0, 0}))
	tls6Tagged := v6(t, p6("2001:db8::2", tcpTo(443), tag{vid: 10, pcp: 1}))
	truncTCP := web[:14+20+10]
	truncIP := web[:14+10]
	badIHL := append([]byte{}, web...)
	badIHL[14] = 0x44
	truncVLAN := webTagged[:16]
	icmpErr := icmpFragNeeded(t, "192.0.2.254", "198.51.100.1", "203.0.113.7", 80, 40000)
	icmpErrOther := icmpFragNeeded(t, "192.0.2.254", "198.51.100.1", "203.0.113.7", 22, 40000)
	icmpErrForged := icmpFragNeeded(t, "192.0.2.254", "198.51.100.99", "203.0.113.7", 80, 40000)
	icmp6Err := icmp6TooBig(t, "2001:db8:ffff::fe", "2001:db8::1", "2001:db8:ffff::7", 80, 40000)
	ping := v4(t, p4("198.51.100.6", l4{layers.IPProtocolICMPv4, 9, 0}), 0)
	frag1 := v4frag(t, "203.0.113.7", "198.51.100.3", layers.IPProtocolUDP, 77, 0, true, udpBytes(t, 40001, 53, make([]byte, 16)))
	frag2 := v4frag(t, "203.0.113.7", "198.51.100.3", layers.IPProtocolUDP, 77, 3, false, make([]byte, 40))
	fragLost := v4frag(t, "203.0.113.7", "198.51.100.3", layers.IPProtocolUDP, 78, 3, false, make([]byte, 40))
	frag61 := v6frag(t, "2001:db8:ffff::7", "2001:db8::3", layers.IPProtocolUDP, 99, 0, true, udpBytes(t, 40001, 5000, make([]byte, 16)))
	ndSolicit := neighbourSolicitation(t, "2001:db8:ffff::7", "2001:db8::4")
	ndAdvert := icmp6Msg(t, "2001:db8:ffff::7", "2001:db8::4", 136, append([]byte{0x60, 0, 0, 0}, ip("2001:db8:ffff::7").To16()...))
	routerSolicit := icmp6Msg(t, "2001:db8:ffff::7", "2001:db8::4", 133, make([]byte, 4))
	mldQuery := icmp6Msg(t, "2001:db8:ffff::7", "2001:db8::4", 130, make([]byte, 20))
	mld2Report := icmp6Msg(t, "2001:db8:ffff::7", "2001:db8::4", 143, make([]byte, 4))
	ping6 := icmp6Msg(t, "2001:db8:ffff::7", "2001:db8::4", 128, []byte{0, 9, 0, 1, 'h', 'i'})
	unreach6 := icmp6Msg(t, "2001:db8:ffff::7", "2001:db8::4", 1, make([]byte, 52))
	// ICMPv6 "packet too big" inside IPv4 (protocol 58), quoting an IPv6
	// packet from the VIP's IPv4-mapped address: the version mismatch is
	// a forgery, not an error about a VIP flow.
	v6ErrInV4 := icmpErrRaw(t, false, "192.0.2.254", "198.51.100.1", layers.IPProtocolICMPv6, 2, 0,
		quoteV6(t, "::ffff:198.51.100.1", "::ffff:203.0.113.7", 80, 40000, 0))
	// ICMP frag-needed inside IPv6 addressed to the VIP's mapped address.
	v4ErrInV6 := icmpErrRaw(t, true, "2001:db8:ffff::fe", "::ffff:198.51.100.1", layers.IPProtocolICMPv4, 3, 4,
		quoteV4(t, "198.51.100.1", "203.0.113.7", 80, 40000, 0))
	laterFragQuote := icmpErrRaw(t, false, "192.0.2.254", "198.51.100.1", layers.IPProtocolICMPv4, 3, 4,
		quoteV4(t, "198.51.100.1", "203.0.113.7", 80, 40000, 185))
	laterFragQuote6 := icmpErrRaw(t, true, "2001:db8:ffff::fe", "2001:db8::1", layers.IPProtocolICMPv6, 2, 0,
		quoteV6(t, "2001:db8::1", "2001:db8:ffff::7", 80, 40000, 185))
	firstFragQuote := icmpErrRaw(t, false, "192.0.2.254", "198.51.100.1", layers.IPProtocolICMPv4, 3, 4,
		quoteV4(t, "198.51.100.1", "203.0.113.7", 80, 40000, 0))
	frag62 := v6frag(t, "2001:db8:ffff::7", "2001:db8::3", layers.IPProtocolUDP, 99, 3, false, make([]byte, 40))

	cases := []tc{
		{"arp passes untouched", arpRequest(t), xdpPass, nil, "pass_not_ip"},
		{"ipv4 to another address passes", v4(t, p4("198.51.100.99", tcpTo(80)), 0), xdpPass, nil, "pass_no_service"},
		{"ipv4 to a VIP port with no service passes", v4(t, p4("198.51.100.1", tcpTo(22)), 0), xdpPass, nil, "pass_no_service"},
		{"ipv4 tcp to service goes out the same port", web, xdpTX, rewritten(web, 0, macA, lbMAC, 0, 0), "tx"},
		{"ipv4 with options (IHL 6)", webOpts, xdpTX, rewritten(webOpts, 0, macA, lbMAC, 0, 0), "tx"},
		{"802.1Q in, untagged backend: tag popped", webTagged, xdpTX, rewritten(webTagged, 1, macA, lbMAC, 0, 0), "tx"},
		{"QinQ in, untagged backend: both tags popped", webQinQ, xdpTX, rewritten(webQinQ, 2, macA, lbMAC, 0, 0), "tx"},
		{"port-0 service catches any port; VLAN pushed", all443, xdpTX, rewritten(all443, 0, macB, lbMAC, 30, 0), "tx"},
		{"VLAN 10 in, backend on VLAN 30: retag keeps PCP", all22Tagged, xdpTX, rewritten(all22Tagged, 1, macB, lbMAC, 30, 3), "tx"},
		{"udp service behind another port: redirect", dns, xdpRedirect, rewritten(dns, 0, macC, port2MAC, 0, 0), "redirect"},
		{"ipv6 tcp", web6, xdpTX, rewritten(web6, 0, macA6, lbMAC, 0, 0), "tx"},
		{"ipv6 hop-by-hop, dstopts and AH skipped", web6Ext, xdpTX, rewritten(web6Ext, 0, macA6, lbMAC, 0, 0), "tx"},
		{"ipv6 extension chain beyond the bound passes", web6TooMany, xdpPass, nil, "pass_ext_headers"},
		{"ipv6 ESP passes", web6ESP, xdpPass, nil, "pass_ext_headers"},
		{"ipv6 VLAN 10 in, backend VLAN 40", tls6Tagged, xdpTX, rewritten(tls6Tagged, 1, macF, lbMAC, 40, 1), "tx"},
		{"truncated tcp header to a VIP passes", truncTCP, xdpPass, nil, "pass_malformed_l4"},
		{"truncated ipv4 header passes", truncIP, xdpPass, nil, "pass_malformed_l3"},
		{"ipv4 IHL 4 passes", badIHL, xdpPass, nil, "pass_malformed_l3"},
		{"truncated VLAN header passes", truncVLAN, xdpPass, nil, "pass_malformed_l2"},
		{"all backends down, drop policy", v4(t, p4("198.51.100.4", tcpTo(80)), 0), xdpDrop, nil, "drop_no_backend"},
		{"all backends down, pass policy", v4(t, p4("198.51.100.5", tcpTo(80)), 0), xdpPass, nil, "pass_no_backend"},
		{"icmp frag-needed follows the quoted flow", icmpErr, xdpTX, rewritten(icmpErr, 0, macA, lbMAC, 0, 0), "icmp_to_backend"},
		{"icmp frag-needed quoting no service passes", icmpErrOther, xdpPass, nil, "pass_no_service"},
		{"icmp error quoting another source passes", icmpErrForged, xdpPass, nil, "pass_no_service"},
		{"icmpv6 packet-too-big follows the quoted flow", icmp6Err, xdpTX, rewritten(icmp6Err, 0, macA6, lbMAC, 0, 0), "icmp_to_backend"},
		{"icmp echo to an icmp service", ping, xdpTX, rewritten(ping, 0, macH, lbMAC, 0, 0), "tx"},
		{"ipv4 first fragment", frag1, xdpRedirect, rewritten(frag1, 0, macC, port2MAC, 0, 0), "redirect"},
		{"ipv4 later fragment follows the first", frag2, xdpRedirect, rewritten(frag2, 0, macC, port2MAC, 0, 0), "redirect"},
		{"ipv4 later fragment without its first passes", fragLost, xdpPass, nil, "pass_frag_untracked"},
		{"ipv6 first fragment", frag61, xdpTX, rewritten(frag61, 0, macG, lbMAC, 0, 0), "tx"},
		{"ipv6 later fragment follows the first", frag62, xdpTX, rewritten(frag62, 0, macG, lbMAC, 0, 0), "tx"},
		{"icmpv6 neighbour solicitation for an icmpv6 VIP passes", ndSolicit, xdpPass, nil, "pass_icmp_control"},
		{"icmpv6 neighbour advertisement to an icmpv6 VIP passes", ndAdvert, xdpPass, nil, "pass_icmp_control"},
		{"icmpv6 router solicitation to an icmpv6 VIP passes", routerSolicit, xdpPass, nil, "pass_icmp_control"},
		{"icmpv6 MLD query to an icmpv6 VIP passes", mldQuery, xdpPass, nil, "pass_icmp_control"},
		{"icmpv6 MLDv2 report to an icmpv6 VIP passes", mld2Report, xdpPass, nil, "pass_icmp_control"},
		{"icmpv6 echo request to an icmpv6 service", ping6, xdpTX, rewritten(ping6, 0, macI, lbMAC, 0, 0), "tx"},
		{"icmpv6 destination unreachable to an icmpv6 service", unreach6, xdpTX, rewritten(unreach6, 0, macI, lbMAC, 0, 0), "tx"},
		{"icmpv6 error inside ipv4 is not steered", v6ErrInV4, xdpPass, nil, "pass_no_service"},
		{"icmp error inside ipv6 is not steered", v4ErrInV6, xdpPass, nil, "pass_malformed_l3"}, // and ::ffff: is no IPv6 destination
		{"icmp error quoting a later fragment is not steered", laterFragQuote, xdpPass, nil, "pass_no_service"},
		{"icmpv6 error quoting a later fragment is not steered", laterFragQuote6, xdpPass, nil, "pass_no_service"},
		{"icmp error quoting an unfragmented packet still follows its flow", firstFragQuote, xdpTX, rewritten(firstFragQuote, 0, macA, lbMAC, 0, 0), "icmp_to_backend"},
	}
	if dir := os.Getenv("KEEPBIT_WRITE_FUZZ_SEEDS"); dir != "" {
		// Regenerates testdata/fuzz/FuzzXDP/table-NN from the cases.
		for i, c := range cases {
			seed := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", c.in)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("table-%02d", i)), []byte(seed), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := l.reasons()
			in := append([]byte{}, c.in...)
			verdict, out := l.run(in)
			if verdict != c.verdict {
				after := l.reasons()
				for r, n := range after {
					if n.Packets != before[r].Packets {
						t.Logf("counted under %s", r)
					}
				}
				t.Fatalf("verdict %s, want %s", verdictName(verdict), verdictName(c.verdict))
			}
			want := c.want
			if want == nil {
				want = c.in
			}
			if c.verdict != xdpDrop && !bytes.Equal(out, want) {
				t.Fatalf("output bytes differ\n got: %s\nwant: %s", hex.EncodeToString(out), hex.EncodeToString(want))
			}
			after := l.reasons()
			if d := after[c.reason].Packets - before[c.reason].Packets; d != 1 {
				t.Errorf("reason %s counted %d times, want 1", c.reason, d)
			}
			if d := after[c.reason].Bytes - before[c.reason].Bytes; d != uint64(len(c.in)) {
				t.Errorf("reason %s bytes +%d, want %d", c.reason, d, len(c.in))
			}
		})
	}
}
