package vip

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }

// pair: kbvip0 here, its peer "eth0" in a client namespace.
func pair(t *testing.T) (netns.NsHandle, *netlink.Handle, net.HardwareAddr) {
	return pairOn(t, "kbvip0", true)
}

// pairOn: name here (with 10.66.0.1/24 if v4, else only its IPv6
// link-local address), its peer "eth0" in a client namespace. Our end keeps
// duplicate address detection on, so that a tentative VIP shows Add failed
// to skip it; pairOn waits until its link-local address (the source of our
// neighbour advertisements) is usable.
func pairOn(t *testing.T, name string, v4 bool) (netns.NsHandle, *netlink.Handle, net.HardwareAddr) {
	privtest.Require(t)
	client := privtest.NewNS(t)
	here := lab.VethEnd{NS: netns.None(), Name: name}
	if v4 {
		here.Addrs = []string{"10.66.0.1/24"}
	}
	v := privtest.Veth(t, here, lab.VethEnd{NS: client, Name: "eth0", Addrs: []string{"10.66.0.2/24", "2001:db8:66::2/64"}, NoDAD: true})
	privtest.WaitNonTentative(t, netns.None(), name)
	h, err := lab.Handle(client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Delete)
	return client, h, v.A.MAC
}

func TestAddRemoveReconcile(t *testing.T) {
	pair(t)
	v4, v6 := netip.MustParseAddr("10.66.0.100"), netip.MustParseAddr("2001:db8:66::100")
	for _, a := range []netip.Addr{v4, v6} {
		for range 2 { // idempotent
			if err := Add("kbvip0", a); err != nil {
				t.Fatalf("add %s: %v", a, err)
			}
		}
		if has, err := Has("kbvip0", a); err != nil || !has {
			t.Fatalf("%s not on the interface after Add: %v", a, err)
		}
	}
	l, _ := netlink.LinkByName("kbvip0")
	list, _ := netlink.AddrList(l, netlink.FAMILY_V6)
	for _, x := range list {
		if x.IP.String() == v6.String() && x.Flags&0x40 != 0 { // IFA_F_TENTATIVE
			t.Fatalf("IPv6 VIP is tentative: DAD was not skipped")
		}
	}
	// A hand-made address in the VIP set stays untouched by Reconcile
	// only if it is wanted; others outside the set are never looked at.
	manual := netip.MustParseAddr("10.66.0.200")
	if err := Add("kbvip0", manual); err != nil {
		t.Fatal(err)
	}
	added, removed, err := Reconcile("kbvip0", []netip.Addr{v4, v6, netip.MustParseAddr("10.66.0.101")}, []netip.Addr{v6, netip.MustParseAddr("10.66.0.101")})
	if err != nil || len(added) != 1 || added[0] != netip.MustParseAddr("10.66.0.101") || len(removed) != 1 || removed[0] != v4 {
		t.Fatalf("reconcile: added %v removed %v err %v", added, removed, err)
	}
	if has, _ := Has("kbvip0", manual); !has {
		t.Fatal("reconcile removed an address outside the VIP set")
	}
	for range 2 {
		if err := Remove("kbvip0", v6); err != nil {
			t.Fatalf("remove: %v", err)
		}
	}
	if has, _ := Has("kbvip0", v6); has {
		t.Fatal("still there after Remove")
	}
}

// TestAnnounceMovesNeighbourEntries: a client holding a stale entry for the
// VIP (another node's MAC) follows our gratuitous ARP and unsolicited NA.
func TestAnnounceMovesNeighbourEntries(t *testing.T) {
	_, h, ourMAC := pair(t)
	v4, v6 := netip.MustParseAddr("10.66.0.100"), netip.MustParseAddr("2001:db8:66::100")
	old := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	cl, _ := h.LinkByName("eth0")
	for _, a := range []netip.Addr{v4, v6} {
		if err := h.NeighSet(&netlink.Neigh{LinkIndex: cl.Attrs().Index, IP: a.AsSlice(), HardwareAddr: old, State: netlink.NUD_STALE}); err != nil {
			t.Fatalf("stale entry for %s: %v", a, err)
		}
	}
	ann, err := NewAnnouncer("kbvip0", []netip.Addr{v4, v6})
	if err != nil {
		t.Fatal(err)
	}
	defer ann.Close()
	if err := ann.Once([]netip.Addr{v4, v6}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{v4, v6} {
		waitNeigh(t, h, cl.Attrs().Index, a, ourMAC)
	}
}

// waitNeigh waits until the client's neighbour entry for a is mac.
func waitNeigh(t *testing.T, h *netlink.Handle, index int, a netip.Addr, mac net.HardwareAddr) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		fam := netlink.FAMILY_V4
		if a.Is6() {
			fam = netlink.FAMILY_V6
		}
		list, _ := h.NeighList(index, fam)
		var got net.HardwareAddr
		for _, n := range list {
			if n.IP.Equal(a.AsSlice()) {
				got = n.HardwareAddr
			}
		}
		if got.String() == mac.String() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("client's entry for %s is %s, want our %s", a, got, mac)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRemoveWhateverTheLabel: a VIP without Keepbit's label (an interface
// name too long for one, an earlier run, another tool) is removed all the
// same; Reconcile reports only what it removed, and an operator's address
// of another prefix length is left alone. Before, Remove passed the label,
// the kernel answered EADDRNOTAVAIL for the unlabelled VIP, Remove took
// that for "absent" and Reconcile reported the VIP removed while it stayed.
func TestRemoveWhateverTheLabel(t *testing.T) {
	pair(t)
	l, _ := netlink.LinkByName("kbvip0")
	v4, v6 := netip.MustParseAddr("10.66.0.100"), netip.MustParseAddr("2001:db8:66::100")
	raw := func(cidr, label string) func(t *testing.T) {
		return func(t *testing.T) {
			a, _ := netlink.ParseAddr(cidr)
			a.Label = label
			if err := netlink.AddrAdd(l, a); err != nil {
				t.Fatalf("add %s: %v", cidr, err)
			}
		}
	}
	cases := []struct {
		name        string
		setup       func(t *testing.T)
		vip         netip.Addr
		wantRemoved bool
		wantLeft    string // an address that must still be on the interface
	}{
		{"unlabelled IPv4 VIP", raw("10.66.0.100/32", ""), v4, true, ""},
		{"labelled IPv4 VIP", func(t *testing.T) {
			if err := Add("kbvip0", v4); err != nil {
				t.Fatal(err)
			}
		}, v4, true, ""},
		{"other label", raw("10.66.0.100/32", "kbvip0:op"), v4, true, ""},
		{"IPv6 VIP", raw("2001:db8:66::100/128", ""), v6, true, ""},
		{"absent", func(*testing.T) {}, v4, false, ""},
		{"operator's /24 of the same address", raw("10.66.0.100/24", ""), v4, false, "10.66.0.100/24"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.setup(t)
			t.Cleanup(func() {
				for _, cidr := range []string{"10.66.0.100/32", "10.66.0.100/24", "2001:db8:66::100/128"} {
					a, _ := netlink.ParseAddr(cidr)
					_ = netlink.AddrDel(l, a)
				}
			})
			_, removed, err := Reconcile("kbvip0", []netip.Addr{c.vip}, nil)
			if err != nil {
				t.Fatalf("reconcile: %v", err)
			}
			if got := len(removed) == 1 && removed[0] == c.vip; got != c.wantRemoved || len(removed) > 1 {
				t.Fatalf("reconcile reported removed %v, want removed: %v", removed, c.wantRemoved)
			}
			if has, err := Has("kbvip0", c.vip); err != nil || has {
				t.Fatalf("VIP %s still on the interface after Reconcile (err %v)", c.vip, err)
			}
			// Removing it again is a no-op, not an error.
			if err := Remove("kbvip0", c.vip); err != nil {
				t.Fatalf("remove of an absent VIP: %v", err)
			}
			if c.wantLeft != "" {
				list, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
				found := false
				for _, a := range list {
					found = found || a.IPNet.String() == c.wantLeft
				}
				if !found {
					t.Fatalf("%s was removed: not a VIP", c.wantLeft)
				}
			}
		})
	}
	// Remove alone, on an unlabelled VIP.
	raw("10.66.0.100/32", "")(t)
	if err := Remove("kbvip0", v4); err != nil {
		t.Fatal(err)
	}
	if has, _ := Has("kbvip0", v4); has {
		t.Fatal("Remove left the unlabelled VIP")
	}
}

// TestAnnounceIPv6Only: an interface without any IPv4 address announces
// IPv6 VIPs. Before, NewAnnouncer always opened an ARP client, which
// needs an IPv4 address to send from, and failed.
func TestAnnounceIPv6Only(t *testing.T) {
	_, h, ourMAC := pairOn(t, "kbvip6", false)
	v6 := netip.MustParseAddr("2001:db8:66::106")
	cl, _ := h.LinkByName("eth0")
	old := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99}
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: cl.Attrs().Index, IP: v6.AsSlice(), HardwareAddr: old, State: netlink.NUD_STALE}); err != nil {
		t.Fatal(err)
	}
	ann, err := NewAnnouncer("kbvip6", []netip.Addr{v6})
	if err != nil {
		t.Fatalf("announcer on an IPv6-only interface: %v", err)
	}
	defer ann.Close()
	if err := ann.Once([]netip.Addr{v6}); err != nil {
		t.Fatal(err)
	}
	waitNeigh(t, h, cl.Attrs().Index, v6, ourMAC)
	// Asked for an IPv4 address it was not opened for, it says so.
	if err := ann.Once([]netip.Addr{netip.MustParseAddr("10.66.0.106")}); err == nil {
		t.Fatal("announced an IPv4 address without an ARP socket")
	}
}
