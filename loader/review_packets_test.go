package loader

import (
	"bytes"
	"encoding/hex"
	"testing"

	"github.com/google/gopacket/layers"
)

// TestReviewV4MappedIPv6 checks that IPv6 packets naming an IPv4-mapped
// address (::ffff:a.b.c.d) pass, counted as malformed L3. The service and
// flow keys hold IPv4 addresses in exactly that form, so before the parser
// refused them an IPv6 packet to ::ffff:<IPv4 VIP> matched the IPv4 service
// and was forwarded to its IPv4 backend (and an ICMPv6 error to that
// address was steered to it). Such addresses never appear on the wire
// (RFC 4291 2.5.5.2) and the kernel drops them too.
func TestReviewV4MappedIPv6(t *testing.T) {
	l := packetLab(t)
	p6 := func(src, dst string) []byte {
		return v6(t, pkt{src: src, dst: dst, l4: tcpTo(80), payload: []byte("hello")})
	}
	cases := []struct {
		name string
		in   []byte
	}{
		{"ipv6 tcp to the mapped address of an IPv4 VIP", p6("2001:db8:ffff::7", "::ffff:198.51.100.1")},
		{"ipv6 tcp to the mapped address of an IPv4 port-0 VIP", p6("2001:db8:ffff::7", "::ffff:198.51.100.2")},
		{"ipv6 tcp from a mapped source to an IPv6 VIP", p6("::ffff:203.0.113.7", "2001:db8::1")},
		{"ipv6 tcp from a mapped source to a mapped IPv4 VIP", p6("::ffff:203.0.113.7", "::ffff:198.51.100.1")},
		{"icmpv6 packet-too-big to a mapped IPv4 VIP quoting its flow",
			icmpErrRaw(t, true, "2001:db8:ffff::fe", "::ffff:198.51.100.1", layers.IPProtocolICMPv6, 2, 0,
				quoteV6(t, "::ffff:198.51.100.1", "2001:db8:ffff::7", 80, 40000, 0))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := l.reasons()
			verdict, out := l.run(append([]byte{}, c.in...))
			after := l.reasons()
			if verdict != xdpPass {
				t.Fatalf("verdict %s, want pass", verdictName(verdict))
			}
			if !bytes.Equal(out, c.in) {
				t.Fatalf("output bytes differ\n got: %s\nwant: %s", hex.EncodeToString(out), hex.EncodeToString(c.in))
			}
			if d := after["pass_malformed_l3"].Packets - before["pass_malformed_l3"].Packets; d != 1 {
				t.Errorf("pass_malformed_l3 counted %d times, want 1", d)
			}
		})
	}
}
