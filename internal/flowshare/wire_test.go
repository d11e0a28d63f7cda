package flowshare

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

var testKey = []byte("0123456789abcdef0123456789abcdef") // 32 bytes

func testCodec(t testing.TB) *Codec {
	t.Helper()
	c, err := NewCodec(testKey)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func flow(vip string, port uint16, proto uint8, client, backend string) Flow {
	return Flow{VIP: netip.MustParseAddr(vip), Port: port, Proto: proto,
		Client: netip.MustParseAddrPort(client), Backend: netip.MustParseAddr(backend)}
}

// independentTag computes the tag from the documented derivation, not
// through the Codec.
func independentTag(body []byte) []byte {
	d := hmac.New(sha256.New, testKey)
	d.Write([]byte("keepbit flow sharing v1"))
	m := hmac.New(sha256.New, d.Sum(nil))
	m.Write(body)
	return m.Sum(nil)[:16]
}

const hdr = "4b46 01" // magic, version

// TestEncodeBytes: each message encodes to exactly these bytes (then the
// tag), and decodes back to itself.
func TestEncodeBytes(t *testing.T) {
	const node, seq, ts = "0102030405060708", "0000000000000001", "1122334455667788"
	cases := []struct {
		name string
		m    Message
		want string // header and body, without the tag
	}{
		{"sync request", Message{Type: TypeSyncRequest, Nonce: 0xaabbccddeeff0011},
			hdr + "02 00 00 0000" + node + seq + ts + "aabbccddeeff0011"},
		{"sync end", Message{Type: TypeSyncEnd, Nonce: 0xaabbccddeeff0011, Datagrams: 3, FlowCount: 300},
			hdr + "03 00 00 0000" + node + seq + ts + "aabbccddeeff0011 00000003 0000012c"},
		{"no flows", Message{Type: TypeFlows},
			hdr + "01 00 00 0000" + node + seq + ts},
		{"IPv4 flows sharing service and backend", Message{Type: TypeFlows, Flows: []Flow{
			flow("192.0.2.10", 80, 6, "198.51.100.1:40000", "10.0.0.1"),
			flow("192.0.2.10", 80, 6, "198.51.100.2:40001", "10.0.0.1"),
			flow("192.0.2.10", 80, 6, "198.51.100.3:40002", "10.0.0.2"),
			flow("192.0.2.11", 80, 6, "198.51.100.3:40003", "10.0.0.2"),
		}}, hdr + "01 00 00 0004" + node + seq + ts +
			"00 06 0050 c000020a 9c40 c6336401 0a000001" + // all written out: 18 bytes
			"18 9c41 c6336402" + // same service, same backend: 7 bytes
			"08 9c42 c6336403 0a000002" + // same service, new backend
			"10 06 0050 c000020b 9c43 c6336403"}, // new service, same backend
		{"IPv6 snapshot flows, mixed families", Message{Type: TypeFlows, Flags: FlagSnapshot, Nonce: 7, Flows: []Flow{
			flow("2001:db8::10", 443, 6, "[2001:db8:1::1]:50000", "2001:db8:2::1"),
			flow("2001:db8::10", 443, 6, "192.0.2.99:1", "2001:db8:2::1"),
			flow("2001:db8::10", 0, 17, "[2001:db8:1::2]:53", "10.0.0.9"),
		}}, hdr + "01 01 00 0003" + node + seq + ts + "0000000000000007" +
			"07 06 01bb 20010db8000000000000000000000010 c350 20010db8000100000000000000000001 20010db8000200000000000000000001" +
			"18 0001 c0000263" +
			"03 11 0000 20010db8000000000000000000000010 0035 20010db8000100000000000000000002 0a000009"},
	}
	c := testCodec(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.m
			m.Node, m.Seq, m.Time = 0x0102030405060708, 1, 0x1122334455667788
			got, n, err := c.Encode(nil, &m)
			if err != nil {
				t.Fatal(err)
			}
			if n != len(m.Flows) {
				t.Errorf("encoded %d of %d flows", n, len(m.Flows))
			}
			want := unhex(t, tc.want)
			want = append(want, independentTag(want)...)
			if !bytes.Equal(got, want) {
				t.Fatalf("encoded\n got %x\nwant %x", got, want)
			}
			var back Message
			if err := c.Decode(got, &back); err != nil {
				t.Fatal(err)
			}
			if len(m.Flows) == 0 {
				m.Flows = []Flow{}
			}
			if back.Flows == nil {
				back.Flows = []Flow{}
			}
			if !reflect.DeepEqual(back, m) {
				t.Errorf("decoded %+v\nwant %+v", back, m)
			}
		})
	}
}

// TestDatagramFill: a batch spills into as many datagrams as it takes,
// each at most MaxDatagram bytes.
func TestDatagramFill(t *testing.T) {
	c := testCodec(t)
	var v4, v6 []Flow
	for i := range 1000 {
		v4 = append(v4, Flow{VIP: netip.MustParseAddr("192.0.2.10"), Port: 443, Proto: 6,
			Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), uint16(1024+i)), Backend: netip.MustParseAddr("10.0.0.1")})
		v6 = append(v6, Flow{VIP: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}), Port: 443, Proto: 6,
			Client:  netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 1, 14: byte(i >> 8), 15: byte(i)}), uint16(i)),
			Backend: netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 2, 14: byte(i >> 8), 15: byte(i)})})
	}
	cases := []struct {
		name      string
		flows     []Flow
		wantFlows int // in the first datagram
		wantLen   int
	}{
		// 48 bytes of header and tag, 18 for the first flow, 7 for each next.
		{"IPv4, one service and backend", v4, 191, 48 + 18 + 190*7},
		// nothing shared: 54 bytes a flow.
		{"IPv6, all distinct", v6, 25, 48 + 25*54},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, n, err := c.Encode(nil, &Message{Type: TypeFlows, Flows: tc.flows})
			if err != nil {
				t.Fatal(err)
			}
			if n != tc.wantFlows || len(b) != tc.wantLen || len(b) > MaxDatagram {
				t.Errorf("%d flows in %d bytes, want %d in %d", n, len(b), tc.wantFlows, tc.wantLen)
			}
			var m Message
			if err := c.Decode(b, &m); err != nil || !reflect.DeepEqual(m.Flows, tc.flows[:n]) {
				t.Errorf("decode: %v, flows equal %v", err, reflect.DeepEqual(m.Flows, tc.flows[:n]))
			}
		})
	}
}

func TestEncodeRefuses(t *testing.T) {
	c := testCodec(t)
	good := flow("192.0.2.10", 80, 6, "198.51.100.1:40000", "10.0.0.1")
	zoned := good
	zoned.Backend = netip.MustParseAddr("fe80::1%eth0")
	cases := []struct {
		name string
		m    Message
		want string
	}{
		{"unset backend", Message{Type: TypeFlows, Flows: []Flow{good, {VIP: good.VIP, Client: good.Client}}}, "flows[1]"},
		{"zoned address", Message{Type: TypeFlows, Flows: []Flow{zoned}}, "flows[0]"},
		{"unknown type", Message{Type: 9}, "message type 9"},
		{"unknown flag", Message{Type: TypeFlows, Flags: 0x80}, "flags 0x80"},
		{"flags on a sync request", Message{Type: TypeSyncRequest, Flags: FlagSnapshot}, "flags 0x1 on a sync-request"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, _, err := c.Encode([]byte("keep"), &tc.m)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want it to mention %q", err, tc.want)
			}
			if string(b) != "keep" {
				t.Errorf("dst changed to %q", b)
			}
		})
	}
	if _, err := NewCodec(testKey[:31]); err == nil {
		t.Error("31-byte key accepted")
	}
}

// signed tags arbitrary header and body bytes with the test key, so that
// a malformed datagram gets past the MAC to the parser.
func signed(t *testing.T, s string) []byte {
	b := unhex(t, s)
	return append(b, independentTag(b)...)
}

// TestDecodeRejects: every way a datagram can be wrong, and its reason.
func TestDecodeRejects(t *testing.T) {
	c := testCodec(t)
	good, _, err := c.Encode(nil, &Message{Type: TypeFlows, Node: 1, Seq: 1, Flows: []Flow{flow("192.0.2.10", 80, 6, "198.51.100.1:40000", "10.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	const head = "0000000000000001 0000000000000001 0000000000000000" // node, seq, time
	const v4flow = "00 06 0050 c000020a 9c40 c6336401 0a000001"
	other, _ := NewCodec(bytes.Repeat([]byte("k"), 32))
	wrongKey, _, _ := other.Encode(nil, &Message{Type: TypeFlows, Node: 1, Seq: 1})
	cases := []struct {
		name string
		b    []byte
		want Reason
		msg  string
	}{
		{"empty", nil, ReasonTruncated, "truncated: 0 bytes, a datagram has at least 48"},
		{"header only", good[:32], ReasonTruncated, "truncated: 32 bytes, a datagram has at least 48"},
		{"bad magic", mod(func(b []byte) []byte { b[0] = 'X'; return b }), ReasonMalformed, "malformed: magic 0x5846"},
		{"version 2", mod(func(b []byte) []byte { b[2] = 2; return b }), ReasonVersion, "version: version 2, this node speaks 1"},
		{"flipped bit in a flow", mod(func(b []byte) []byte { b[40] ^= 1; return b }), ReasonMAC, "mac: tag does not match"},
		{"flipped bit in the tag", mod(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ReasonMAC, "mac: tag does not match"},
		{"cut short", good[:len(good)-1], ReasonMAC, "mac: tag does not match"},
		{"another key", wrongKey, ReasonMAC, "mac: tag does not match"},
		{"count beyond the body", signed(t, hdr+"01 00 00 0002"+head+v4flow), ReasonTruncated, "truncated: flows[1] of 2: ends inside the flow"},
		{"flow cut inside", signed(t, hdr+"01 00 00 0001"+head+"00 06 0050 c000020a 9c40 c633"), ReasonTruncated, "truncated: flows[0] of 1: ends inside the flow"},
		{"bytes after the flows", signed(t, hdr+"01 00 00 0001"+head+v4flow+"00"), ReasonMalformed, "malformed: 1 bytes after the 1 flows"},
		{"reserved flow bits", signed(t, hdr+"01 00 00 0001"+head+"20 06 0050 c000020a 9c40 c6336401 0a000001"), ReasonMalformed, "malformed: flows[0] of 1: reserved flag bits in 0x20"},
		{"first flow repeats", signed(t, hdr+"01 00 00 0001"+head+"18 9c40 c6336401"), ReasonMalformed, "malformed: flows[0] of 1: the first flow repeats a previous one (0x18)"},
		{"repeat with family", signed(t, hdr+"01 00 00 0002"+head+v4flow+"09 9c40 c6336401 0a000001"), ReasonMalformed, "malformed: flows[1] of 2: a repeated field with its family flag in 0x9"},
		{"unknown type", signed(t, hdr+"09 00 00 0000"+head), ReasonMalformed, "malformed: message type 9"},
		{"unknown flag", signed(t, hdr+"01 02 00 0000"+head), ReasonMalformed, "malformed: flags 0x2"},
		{"reserved header byte", signed(t, hdr+"01 00 01 0000"+head), ReasonMalformed, "malformed: reserved byte 0x1"},
		{"snapshot without nonce", signed(t, hdr+"01 01 00 0000"+head+"0000"), ReasonTruncated, "truncated: snapshot without its nonce"},
		{"sync request short", signed(t, hdr+"02 00 00 0000"+head+"00000000"), ReasonTruncated, "truncated: sync-request body of 4 bytes, want 8"},
		{"sync request long", signed(t, hdr+"02 00 00 0000"+head+"0000000000000000 00"), ReasonMalformed, "malformed: sync-request body of 9 bytes, want 8"},
		{"sync end with count", signed(t, hdr+"03 00 00 0001"+head+"0000000000000000 00000000 00000000"), ReasonMalformed, "malformed: count 1 on a sync-end"},
		{"sync end with flags", signed(t, hdr+"03 01 00 0000"+head+"0000000000000000 00000000 00000000"), ReasonMalformed, "malformed: flags 0x1 on a sync-end"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var m Message
			err := c.Decode(tc.b, &m)
			if ReasonOf(err) != tc.want || err.Error() != tc.msg {
				t.Errorf("got %v (reason %v)\nwant %q (%v)", err, ReasonOf(err), tc.msg, tc.want)
			}
		})
	}
	var m Message
	if err := c.Decode(good, &m); err != nil {
		t.Fatalf("the unmodified datagram: %v", err)
	}
}
