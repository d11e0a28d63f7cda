package bfd

import (
	"net/netip"
	"testing"
	"time"
)

// TestDemuxHostile: what a neighbour on the link can make the receive
// path do, without sockets. Two sessions from 10.0.0.1: s1 to 10.0.0.2 on
// any interface, s2 to 10.0.0.3 bound to ifindex 7. Each datagram is
// checked (TTL, codec) and handed to one session or none, with the drop
// counted.
func TestDemuxHostile(t *testing.T) {
	local := netip.MustParseAddr("10.0.0.1")
	p2, p3, stranger := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.0.66")
	m := NewManager(nil, nil)
	defer m.notes.close()
	s1 := &Session{cfg: SessionConfig{Local: local, Peer: p2}, key: peerKey{local: local, peer: p2}, discr: 0x1111}
	s2 := &Session{cfg: SessionConfig{Local: local, Peer: p3, Interface: "eth7"}, key: peerKey{local: local, peer: p3, ifindex: 7}, discr: 0x2222}
	for _, s := range []*Session{s1, s2} {
		m.sessions[s.key] = s
		m.byDiscr[s.discr] = s
	}
	l := &listener{key: listenKey{local: local}}
	other := &listener{key: listenKey{local: netip.MustParseAddr("10.0.0.9")}}
	pkt := func(state State, your uint32, mod func(*Packet)) []byte {
		p := Packet{State: state, DetectMult: 3, MyDiscr: 0xabcd, YourDiscr: your,
			DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond}
		if mod != nil {
			mod(&p)
		}
		b, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		name    string
		l       *listener
		src     netip.Addr
		hops    int
		ifindex int
		b       []byte
		want    *Session
		counter string
	}{
		{"s1's neighbour naming s1", l, p2, 255, 3, pkt(Up, 0x1111, nil), s1, ""},
		{"s1's neighbour before it knows s1's discriminator", l, p2, 255, 3, pkt(Down, 0, nil), s1, ""},
		{"s2's neighbour on its interface", l, p3, 255, 7, pkt(Up, 0x2222, nil), s2, ""},
		{"another neighbour naming s1's discriminator (would keep s1 up)", l, stranger, 255, 3, pkt(Up, 0x1111, nil), nil, "NoSession"},
		{"s2's neighbour naming s1's discriminator", l, p3, 255, 7, pkt(Up, 0x1111, nil), nil, "NoSession"},
		{"s2's neighbour on another interface", l, p3, 255, 8, pkt(Up, 0x2222, nil), nil, "NoSession"},
		{"s2's neighbour on another interface, discriminator 0", l, p3, 255, 8, pkt(Down, 0, nil), nil, "NoSession"},
		{"s1's neighbour to another local address", other, p2, 255, 3, pkt(Up, 0x1111, nil), nil, "NoSession"},
		{"a stranger with discriminator 0", l, stranger, 255, 3, pkt(Down, 0, nil), nil, "NoSession"},
		{"an unknown discriminator", l, p2, 255, 3, pkt(Up, 0x9999, nil), nil, "NoSession"},
		{"s1's neighbour, one hop further (TTL 254)", l, p2, 254, 3, pkt(Up, 0x1111, nil), nil, "BadTTL"},
		{"no TTL known", l, p2, -1, 3, pkt(Up, 0x1111, nil), nil, "BadTTL"},
		{"huge intervals are legal (the session honours them)", l, p2, 255, 3,
			pkt(Up, 0x1111, func(p *Packet) { p.DesiredMinTx, p.RequiredMinRx = maxInterval, maxInterval }), s1, ""},
		{"zero intervals are legal (min rx 0: send me nothing)", l, p2, 255, 3,
			pkt(Up, 0x1111, func(p *Packet) { p.DesiredMinTx, p.RequiredMinRx = 0, 0 }), s1, ""},
		{"detect mult 0", l, p2, 255, 3, func() []byte { b := pkt(Up, 0x1111, nil); b[2] = 0; return b }(), nil, "Malformed"},
		{"Up with your discriminator 0", l, p2, 255, 3, func() []byte { b := pkt(Down, 0, nil); b[1] = byte(Up) << 6; return b }(), nil, "Malformed"},
		{"authentication asked", l, p2, 255, 3, func() []byte { b := pkt(Up, 0x1111, nil); b[1] |= bitAuth; return b }(), nil, "Auth"},
		{"truncated", l, p2, 255, 3, pkt(Up, 0x1111, nil)[:20], nil, "Malformed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := m.Counters()
			s, _ := m.demux(c.l, datagram{n: len(c.b), hops: c.hops, ifindex: c.ifindex, src: c.src}, c.b)
			if s != c.want {
				t.Errorf("handed to %v, want %v", s, c.want)
			}
			after := m.Counters()
			got := map[string]uint64{"BadTTL": after.BadTTL - before.BadTTL, "Malformed": after.Malformed - before.Malformed,
				"Auth": after.Auth - before.Auth, "NoSession": after.NoSession - before.NoSession}
			for k, n := range got {
				if want := map[bool]uint64{true: 1, false: 0}[k == c.counter]; n != want {
					t.Errorf("%s counted %d, want %d", k, n, want)
				}
			}
		})
	}
}
