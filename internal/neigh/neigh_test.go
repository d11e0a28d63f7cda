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
	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }

// TestResolve: a backend in another namespace is found by ARP and by
// neighbour solicitation, a statically known neighbour from the table, and
// an address nobody holds fails within the deadline.
func TestResolve(t *testing.T) {
	privtest.Require(t)
	peerNS := privtest.NewNS(t)
	// No duplicate address detection: addresses usable at once.
	v := privtest.Veth(t,
		lab.VethEnd{NS: netns.None(), Name: "kbn0", Addrs: []string{"10.88.0.1/24", "2001:db8:88::1/64"}, NoDAD: true},
		lab.VethEnd{NS: peerNS, Name: "kbn0p", Addrs: []string{"10.88.0.2/24", "2001:db8:88::2/64"}, NoDAD: true})
	peerMAC := v.B.MAC

	static := net.HardwareAddr{0x02, 0, 0, 0, 0x88, 0x09}
	if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: v.A.Index, IP: net.ParseIP("10.88.0.9"), HardwareAddr: static, State: netlink.NUD_PERMANENT}); err != nil {
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
