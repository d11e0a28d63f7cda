package vip

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }

// pair: kbvip0 here, its peer "eth0" in a client namespace.
func pair(t *testing.T) (netns.NsHandle, *netlink.Handle, net.HardwareAddr) {
	privtest.Require(t)
	client := privtest.NewNS(t)
	for _, ns := range []netns.NsHandle{netns.None(), client} {
		f := func() error { return os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0) }
		if ns == netns.None() {
			if err := f(); err != nil {
				t.Fatal(err)
			}
		} else if err := privtest.InNS(ns, f); err != nil {
			t.Fatal(err)
		}
	}
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "kbvip0"}, PeerName: "kbvip0p"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(v) })
	p, _ := netlink.LinkByName("kbvip0p")
	_ = netlink.LinkSetNsFd(p, int(client))
	l, _ := netlink.LinkByName("kbvip0")
	a, _ := netlink.ParseAddr("10.66.0.1/24")
	_ = netlink.AddrAdd(l, a)
	_ = netlink.LinkSetUp(l)
	h, err := netlink.NewHandleAt(client)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Delete)
	cp, _ := h.LinkByName("kbvip0p")
	_ = h.LinkSetName(cp, "eth0")
	ca, _ := netlink.ParseAddr("10.66.0.2/24")
	_ = h.AddrAdd(cp, ca)
	ca6, _ := netlink.ParseAddr("2001:db8:66::2/64")
	_ = h.AddrAdd(cp, ca6)
	_ = h.LinkSetUp(cp)
	time.Sleep(100 * time.Millisecond)
	return client, h, l.Attrs().HardwareAddr
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
	ann, err := NewAnnouncer("kbvip0", true)
	if err != nil {
		t.Fatal(err)
	}
	defer ann.Close()
	if err := ann.Once([]netip.Addr{v4, v6}); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{v4, v6} {
		deadline := time.Now().Add(2 * time.Second)
		for {
			fam := netlink.FAMILY_V4
			if a.Is6() {
				fam = netlink.FAMILY_V6
			}
			list, _ := h.NeighList(cl.Attrs().Index, fam)
			var got net.HardwareAddr
			for _, n := range list {
				if n.IP.Equal(a.AsSlice()) {
					got = n.HardwareAddr
				}
			}
			if got.String() == ourMAC.String() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("client's entry for %s is %s, want our %s", a, got, ourMAC)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
