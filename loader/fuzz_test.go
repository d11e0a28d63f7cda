package loader

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// wireView is the little the fuzz oracle needs from a frame, parsed by
// hand so the oracle does not share code with the program under test.
type wireView struct {
	tags    int
	vid     uint16 // first tag's VID
	l3      int    // offset of L3
	dst     netip.Addr
	hasAddr bool
}

func view(b []byte) wireView {
	v := wireView{l3: 14}
	if len(b) < 14 {
		return v
	}
	et := binary.BigEndian.Uint16(b[12:])
	for v.tags < 2 && (et == 0x8100 || et == 0x88a8) && len(b) >= v.l3+4 {
		if v.tags == 0 {
			v.vid = binary.BigEndian.Uint16(b[v.l3:]) & 0x0fff
		}
		et = binary.BigEndian.Uint16(b[v.l3+2:])
		v.l3 += 4
		v.tags++
	}
	switch {
	case et == 0x0800 && len(b) >= v.l3+20:
		v.dst, v.hasAddr = netip.AddrFrom4([4]byte(b[v.l3+16:v.l3+20])), true
	case et == 0x86dd && len(b) >= v.l3+40:
		v.dst, v.hasAddr = netip.AddrFrom16([16]byte(b[v.l3+24:v.l3+40])), true
	}
	return v
}

func FuzzXDP(f *testing.F) {
	l := packetLab(f)
	vips := map[netip.Addr]bool{}
	backendVLAN := map[string]uint16{}
	noBackend := map[netip.Addr]bool{}
	for _, s := range l.dp.Services() {
		vips[s.Key.VIP] = true
		up := false
		for _, b := range s.Backends {
			backendVLAN[b.MAC.String()] = b.VLAN
			up = up || b.State == Up
		}
		if !up {
			noBackend[s.Key.VIP] = true
		}
	}
	p := pkt{src: "203.0.113.7", dst: "198.51.100.1", l4: l4{layers.IPProtocolTCP, 1, 80}}
	f.Add(v4(f, p, 0))
	p.tags = []tag{{vid: 10}}
	f.Add(v4(f, p, 2))
	f.Add(v6(f, pkt{src: "2001:db8:ffff::7", dst: "2001:db8::1", l4: l4{layers.IPProtocolTCP, 1, 80}}, 0, 60))
	f.Add(icmpFragNeeded(f, "192.0.2.254", "198.51.100.1", "203.0.113.7", 80, 1))

	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 || len(in) > 4000 {
			return // BPF_PROG_RUN refuses frames below an Ethernet header
		}
		l.t = t
		verdict, out := l.run(append([]byte{}, in...))
		iv := view(in)
		forVIP := iv.hasAddr && vips[iv.dst.Unmap()]
		switch verdict {
		case xdpPass:
			if !bytes.Equal(out, in) {
				t.Fatalf("XDP_PASS changed the frame\n in: %x\nout: %x", in, out)
			}
		case xdpDrop:
			if !forVIP || !noBackend[iv.dst.Unmap()] {
				t.Fatalf("dropped a frame not for a VIP without backends (dst %v)", iv.dst)
			}
		case xdpTX, xdpRedirect:
			if !forVIP {
				t.Fatalf("forwarded a frame not addressed to a VIP (dst %v, has address %v)", iv.dst, iv.hasAddr)
			}
			ov := view(out)
			dst := net.HardwareAddr(out[:6]).String()
			vlan, ok := backendVLAN[dst]
			if !ok {
				t.Fatalf("forwarded to %s, not a configured backend", dst)
			}
			wantSrc := lbMAC
			if verdict == xdpRedirect {
				wantSrc = port2MAC
			}
			if !bytes.Equal(out[6:12], wantSrc) {
				t.Fatalf("source MAC %s, want the egress port's %s", net.HardwareAddr(out[6:12]), wantSrc)
			}
			if (vlan == 0 && ov.tags != 0) || (vlan != 0 && (ov.tags != 1 || ov.vid != vlan)) {
				t.Fatalf("backend on VLAN %d but frame has %d tags (vid %d)", vlan, ov.tags, ov.vid)
			}
			if !bytes.Equal(out[ov.l3:], in[iv.l3:]) {
				t.Fatalf("L3 changed\n in: %x\nout: %x", in[iv.l3:], out[ov.l3:])
			}
		default:
			t.Fatalf("verdict %s", verdictName(verdict))
		}
	})
}
