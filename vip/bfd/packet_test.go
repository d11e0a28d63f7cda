package bfd

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPacketWire: packets and their exact bytes, both ways.
func TestPacketWire(t *testing.T) {
	cases := []struct {
		name string
		p    Packet
		wire string
	}{
		{"down, first packet (your discriminator unknown), 1 s while not up",
			Packet{State: Down, DetectMult: 3, MyDiscr: 0x11223344, DesiredMinTx: time.Second, RequiredMinRx: 10 * time.Millisecond},
			// vers 1 diag 0 | sta 1 | mult 3 | len 24 | my | your 0 | 1000000 us | 10000 us | echo 0
			"20 40 03 18 11223344 00000000 000f4240 00002710 00000000"},
		{"up with poll, 10 ms",
			Packet{State: Up, Poll: true, DetectMult: 3, MyDiscr: 1, YourDiscr: 0xfffffffe, DesiredMinTx: 10 * time.Millisecond, RequiredMinRx: 10 * time.Millisecond},
			"20 e0 03 18 00000001 fffffffe 00002710 00002710 00000000"},
		{"init answering a poll (final)",
			Packet{State: Init, Final: true, DetectMult: 5, MyDiscr: 7, YourDiscr: 9, DesiredMinTx: time.Second, RequiredMinRx: 300 * time.Millisecond},
			"20 90 05 18 00000007 00000009 000f4240 000493e0 00000000"},
		{"down after detection time expired",
			Packet{Diag: DiagDetectionTimeExpired, State: Down, DetectMult: 3, MyDiscr: 7, DesiredMinTx: time.Second, RequiredMinRx: time.Second},
			"21 40 03 18 00000007 00000000 000f4240 000f4240 00000000"},
		{"admin down (diag 7) from a shutting-down node",
			Packet{Diag: DiagAdminDown, State: AdminDown, DetectMult: 3, MyDiscr: 7, YourDiscr: 8, DesiredMinTx: time.Second, RequiredMinRx: 10 * time.Millisecond},
			"27 00 03 18 00000007 00000008 000f4240 00002710 00000000"},
		{"a peer's C and D bits and echo interval are carried",
			Packet{Diag: DiagNeighborDown, State: Up, CPIndependent: true, Demand: true, DetectMult: 255, MyDiscr: 1, YourDiscr: 2, DesiredMinTx: maxInterval, RequiredMinRx: 0, RequiredMinEchoRx: 50 * time.Millisecond},
			"23 ca ff 18 00000001 00000002 ffffffff 00000000 0000c350"},
		{"reserved diag 31 passes through",
			Packet{Diag: 31, State: Down, DetectMult: 1, MyDiscr: 1},
			"3f 40 01 18 00000001 00000000 00000000 00000000 00000000"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := unhex(t, c.wire)
			got, err := c.p.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("marshal:\n got %x\nwant %x", got, want)
			}
			back, err := Unmarshal(want)
			if err != nil {
				t.Fatal(err)
			}
			if back != c.p {
				t.Fatalf("unmarshal: %v, want %v", back, c.p)
			}
		})
	}
}

// TestUnmarshalRefuses: every discard rule of RFC 5880 section 6.8.6 that
// needs no session, and the field the error names.
func TestUnmarshalRefuses(t *testing.T) {
	good := "20 40 03 18 11223344 00000000 000f4240 00002710 00000000"
	cases := []struct {
		name  string
		wire  string
		err   error
		field string
	}{
		{"short datagram", "20 40 03 18 11223344 00000000 000f4240 00002710 000000", ErrMalformed, "length"},
		{"empty", "", ErrMalformed, "length"},
		{"version 0", "00 40 03 18 11223344 00000000 000f4240 00002710 00000000", ErrMalformed, "version"},
		{"version 2", "40 40 03 18 11223344 00000000 000f4240 00002710 00000000", ErrMalformed, "version"},
		{"length field below 24", "20 40 03 17 11223344 00000000 000f4240 00002710 00000000", ErrMalformed, "length"},
		{"length field beyond the datagram", "20 40 03 19 11223344 00000000 000f4240 00002710 00000000", ErrMalformed, "length"},
		{"detect mult 0", "20 40 00 18 11223344 00000000 000f4240 00002710 00000000", ErrMalformed, "detect mult"},
		{"multipoint", "20 41 03 18 11223344 00000000 000f4240 00002710 00000000", ErrMalformed, "multipoint"},
		{"my discriminator 0", "20 40 03 18 00000000 00000000 000f4240 00002710 00000000", ErrMalformed, "my discriminator"},
		{"your discriminator 0 in init", "20 80 03 18 11223344 00000000 000f4240 00002710 00000000", ErrMalformed, "your discriminator"},
		{"your discriminator 0 in up", "20 c0 03 18 11223344 00000000 000f4240 00002710 00000000", ErrMalformed, "your discriminator"},
		{"authentication (A bit), simple password section", "20 44 03 1c 11223344 00000000 000f4240 00002710 00000000 01 04 01 61", ErrAuth, "A bit"},
		{"A bit without a section", "20 44 03 18 11223344 00000000 000f4240 00002710 00000000", ErrAuth, "A bit"},
	}
	if _, err := Unmarshal(unhex(t, good)); err != nil {
		t.Fatalf("the good packet: %v", err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Unmarshal(unhex(t, c.wire))
			if !errors.Is(err, c.err) || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("error %v, want %v naming %q", err, c.err, c.field)
			}
		})
	}
}

// TestUnmarshalLiberal: what a receiver must not refuse.
func TestUnmarshalLiberal(t *testing.T) {
	cases := []struct {
		name string
		wire string
		want Packet
	}{
		{"your discriminator 0 in admin down", "27 00 03 18 00000005 00000000 000f4240 000f4240 00000000",
			Packet{Diag: DiagAdminDown, State: AdminDown, DetectMult: 3, MyDiscr: 5, DesiredMinTx: time.Second, RequiredMinRx: time.Second}},
		{"trailing bytes after Length are ignored", "20 40 03 18 00000005 00000000 000f4240 000f4240 00000000 deadbeef",
			Packet{State: Down, DetectMult: 3, MyDiscr: 5, DesiredMinTx: time.Second, RequiredMinRx: time.Second}},
		{"Length beyond 24 within the datagram", "20 40 03 1a 00000005 00000000 000f4240 000f4240 00000000 0000",
			Packet{State: Down, DetectMult: 3, MyDiscr: 5, DesiredMinTx: time.Second, RequiredMinRx: time.Second}},
		{"P and F together", "20 f0 03 18 00000005 00000006 00002710 00002710 00000000",
			Packet{State: Up, Poll: true, Final: true, DetectMult: 3, MyDiscr: 5, YourDiscr: 6, DesiredMinTx: 10 * time.Millisecond, RequiredMinRx: 10 * time.Millisecond}},
		{"required min rx 0 (the peer wants no packets)", "20 40 03 18 00000005 00000000 000f4240 00000000 00000000",
			Packet{State: Down, DetectMult: 3, MyDiscr: 5, DesiredMinTx: time.Second}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Unmarshal(unhex(t, c.wire))
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}

// TestMarshalRefuses: we never send what a receiver must discard.
func TestMarshalRefuses(t *testing.T) {
	ok := Packet{State: Down, DetectMult: 3, MyDiscr: 1, DesiredMinTx: time.Second, RequiredMinRx: time.Second}
	cases := []struct {
		name  string
		edit  func(p *Packet)
		field string
	}{
		{"diag beyond 5 bits", func(p *Packet) { p.Diag = 32 }, "diag"},
		{"state 4", func(p *Packet) { p.State = 4 }, "state"},
		{"detect mult 0", func(p *Packet) { p.DetectMult = 0 }, "detect mult"},
		{"my discriminator 0", func(p *Packet) { p.MyDiscr = 0 }, "my discriminator"},
		{"up without your discriminator", func(p *Packet) { p.State = Up }, "your discriminator"},
		{"tx interval beyond 32 bits of microseconds", func(p *Packet) { p.DesiredMinTx = maxInterval + time.Microsecond }, "desired min tx"},
		{"negative rx interval", func(p *Packet) { p.RequiredMinRx = -1 }, "required min rx"},
		{"echo interval beyond 32 bits", func(p *Packet) { p.RequiredMinEchoRx = 2 * maxInterval }, "echo"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := ok
			c.edit(&p)
			if _, err := p.Marshal(); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("error %v, want one naming %q", err, c.field)
			}
		})
	}
}

// FuzzUnmarshal: Unmarshal never panics, and what it accepts marshals back
// to the same packet (to the same bytes when Length is 24 and nothing
// trails).
func FuzzUnmarshal(f *testing.F) {
	for _, s := range []string{
		"20 40 03 18 11223344 00000000 000f4240 00002710 00000000",
		"20 e0 03 18 00000001 fffffffe 00002710 00002710 00000000",
		"27 00 03 18 00000007 00000008 000f4240 00002710 00000000",
		"20 44 03 1c 11223344 00000000 000f4240 00002710 00000000 01 04 01 61",
		"20 40 03 1a 00000005 00000000 000f4240 000f4240 00000000 0000",
		"3f ff ff ff ffffffff ffffffff ffffffff ffffffff ffffffff",
	} {
		f.Add(unhex(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Unmarshal(b)
		if err != nil {
			return
		}
		out, err := p.Marshal()
		if err != nil {
			t.Fatalf("accepted %x but cannot marshal %v: %v", b, p, err)
		}
		again, err := Unmarshal(out)
		if err != nil || again != p {
			t.Fatalf("round trip of %x: %v (%v), want %v", b, again, err, p)
		}
		if b[3] == PacketLen && len(b) == PacketLen && !bytes.Equal(out, b) {
			t.Fatalf("round trip changed the bytes:\n  in %x\n out %x", b, out)
		}
	})
}
