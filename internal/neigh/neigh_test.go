package neigh

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }

// TestResolve: a backend in another namespace is found by ARP and by
// neighbour solicitation, a statically known neighbour from the table, and
// an address nobody holds fails within the deadline.
func TestResolve(t *testing.T) {
	privtest.Require(t)
	peerNS := privtest.NewNS(t)
	// No duplicate address detection: link-local addresses usable at once.
	noDAD := func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0)
	}
	if err := noDAD(); err != nil {
		t.Fatal(err)
	}
	if err := privtest.InNS(peerNS, noDAD); err != nil {
		t.Fatal(err)
	}
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "kbn0"}, PeerName: "kbn0p"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(v) })
	peer, _ := netlink.LinkByName("kbn0p")
	if err := netlink.LinkSetNsFd(peer, int(peerNS)); err != nil {
		t.Fatal(err)
	}
	up := func(h *netlink.Handle, name string, addrs ...string) net.HardwareAddr {
		l, err := h.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			ad, _ := netlink.ParseAddr(a)
			ad.Flags = 0x80 // IFA_F_NODAD: no duplicate address detection wait
			if err := h.AddrAdd(l, ad); err != nil {
				t.Fatalf("%s on %s: %v", a, name, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
		return l.Attrs().HardwareAddr
	}
	local := &netlink.Handle{}
	up(local, "kbn0", "10.88.0.1/24", "2001:db8:88::1/64")
	hp, err := netlink.NewHandleAt(peerNS)
	if err != nil {
		t.Fatal(err)
	}
	defer hp.Delete()
	peerMAC := up(hp, "kbn0p", "10.88.0.2/24", "2001:db8:88::2/64")
	time.Sleep(200 * time.Millisecond) // carrier up on both ends

	l, _ := netlink.LinkByName("kbn0")
	static := net.HardwareAddr{0x02, 0, 0, 0, 0x88, 0x09}
	if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: net.ParseIP("10.88.0.9"), HardwareAddr: static, State: netlink.NUD_PERMANENT}); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name    string
		addr    string
		want    net.HardwareAddr
		wantErr string
	}{
		{"ipv4 by ARP", "10.88.0.2", peerMAC, ""},
		{"ipv6 by neighbour solicitation", "2001:db8:88::2", peerMAC, ""},
		{"from the neighbour table", "10.88.0.9", static, ""},
		{"nobody answers (ipv4)", "10.88.0.77", nil, "no reply from 10.88.0.77"},
		{"nobody answers (ipv6)", "2001:db8:88::77", nil, "no advertisement from 2001:db8:88::77"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
			defer cancel()
			hw, err := Resolve(ctx, "kbn0", netip.MustParseAddr(c.addr))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("got %v, %v; want error containing %q", hw, err, c.wantErr)
				}
				return
			}
			if err != nil || hw.String() != c.want.String() {
				t.Fatalf("got %v, %v; want %s", hw, err, c.want)
			}
		})
	}
}
