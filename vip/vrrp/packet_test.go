package vrrp

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"testing"
	"time"
)

var (
	src4 = netip.MustParseAddr("192.0.2.1")
	src6 = netip.MustParseAddr("fe80::1")
)

// TestMarshalBytes: the exact bytes of RFC 5798 section 5.1 for a known
// advertisement (checksum verified independently by TestKeepalived*).
func TestMarshalBytes(t *testing.T) {
	cases := []struct {
		name     string
		a        Advertisement
		src, dst netip.Addr
		want     string
	}{
		{"ipv4, 2 addresses, 1 s", Advertisement{VRID: 51, Priority: 150, Interval: time.Second,
			Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")}}, src4, MulticastV4,
			"31 33 96 02 0064 cs c000020a c000020b"},
		{"ipv6, 10 ms", Advertisement{VRID: 1, Priority: 100, Interval: 10 * time.Millisecond,
			Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::10")}}, src6, MulticastV6,
			"31 01 64 01 0001 cs 20010db8000000000000000000000010"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := c.a.Marshal(c.src, c.dst)
			if err != nil {
				t.Fatal(err)
			}
			// Everything but the checksum is fixed; the checksum must make
			// the one's complement sum (with pseudo-header) come out zero.
			want := []byte{}
			for _, f := range bytes.Fields([]byte(c.want)) {
				if string(f) == "cs" {
					want = append(want, b[6], b[7])
					continue
				}
				d, _ := hex.DecodeString(string(f))
				want = append(want, d...)
			}
			if !bytes.Equal(b, want) {
				t.Fatalf("bytes %x, want %x", b, want)
			}
			if checksum(b, c.src, c.dst) != 0 {
				t.Fatal("checksum does not verify")
			}
			got, err := Parse(b, c.src, c.dst)
			if err != nil || got.VRID != c.a.VRID || got.Priority != c.a.Priority || got.Interval != c.a.Interval || len(got.Addrs) != len(c.a.Addrs) {
				t.Fatalf("round trip: %+v, %v", got, err)
			}
			for i := range got.Addrs {
				if got.Addrs[i] != c.a.Addrs[i] {
					t.Fatalf("address %d: %s, want %s", i, got.Addrs[i], c.a.Addrs[i])
				}
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	good, _ := Advertisement{VRID: 1, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}.Marshal(src4, MulticastV4)
	mut := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	cases := []struct {
		name string
		b    []byte
		src  netip.Addr
		want error
	}{
		{"short header", good[:7], src4, ErrShort},
		{"count beyond the data", mut(func(b []byte) { b[3] = 2 }), src4, ErrShort},
		{"count 0", mut(func(b []byte) { b[3] = 0 }), src4, ErrCount},
		{"version 2", mut(func(b []byte) { b[0] = 0x21 }), src4, ErrVersion},
		{"type 2", mut(func(b []byte) { b[0] = 0x32 }), src4, ErrType},
		{"flipped bit", mut(func(b []byte) { b[2] ^= 1 }), src4, ErrChecksum},
		{"checksum from another sender", good, netip.MustParseAddr("192.0.2.99"), ErrChecksum},
		{"IPv4 message read as IPv6", good, src6, ErrShort},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Parse(c.b, c.src, MulticastV4); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	zero := Advertisement{VRID: 1, Priority: 1, Interval: 10 * time.Millisecond, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}
	b, _ := zero.Marshal(src4, MulticastV4)
	b[4], b[5] = 0, 0
	b[6], b[7] = 0, 0
	cs := checksum(b, src4, MulticastV4)
	b[6], b[7] = byte(cs>>8), byte(cs)
	if _, err := Parse(b, src4, MulticastV4); !errors.Is(err, ErrInterval) {
		t.Fatalf("interval 0: %v", err)
	}
	for _, bad := range []Advertisement{
		{VRID: 1, Priority: 1, Interval: 5 * time.Millisecond, Addrs: zero.Addrs},
		{VRID: 1, Priority: 1, Interval: 41 * time.Second, Addrs: zero.Addrs},
		{VRID: 1, Priority: 1, Interval: time.Second},
		{VRID: 1, Priority: 1, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::1")}},
	} {
		if _, err := bad.Marshal(src4, MulticastV4); err == nil {
			t.Errorf("Marshal(%+v) accepted", bad)
		}
	}
}

// FuzzParse: nothing panics, and whatever parses re-encodes to a message
// that parses to the same advertisement.
func FuzzParse(f *testing.F) {
	for _, a := range []Advertisement{
		{VRID: 1, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}},
		{VRID: 255, Priority: 255, Interval: 10 * time.Millisecond, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")}},
	} {
		b, _ := a.Marshal(src4, MulticastV4)
		f.Add(b, false)
	}
	b6, _ := Advertisement{VRID: 9, Priority: 1, Interval: 40950 * time.Millisecond, Addrs: []netip.Addr{netip.MustParseAddr("2001:db8::1")}}.Marshal(src6, MulticastV6)
	f.Add(b6, true)
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		src, dst := src4, MulticastV4
		if v6 {
			src, dst = src6, MulticastV6
		}
		a, err := Parse(b, src, dst)
		if err != nil {
			return
		}
		again, err := a.Marshal(src, dst)
		if err != nil {
			t.Fatalf("parsed %+v but cannot re-encode it: %v", a, err)
		}
		b2, err := Parse(again, src, dst)
		if err != nil || b2.VRID != a.VRID || b2.Priority != a.Priority || b2.Interval != a.Interval || len(b2.Addrs) != len(a.Addrs) {
			t.Fatalf("re-encoded %+v parses as %+v, %v", a, b2, err)
		}
	})
}
