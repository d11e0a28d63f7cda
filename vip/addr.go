// Package vip owns the VIP addresses of this node: it adds and removes
// them on an interface and tells the network when they move (gratuitous
// ARP, unsolicited neighbour advertisements). Election is in vip/vrrp.
package vip

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// label marks, for whoever reads `ip addr`, the IPv4 addresses Keepbit
// added. Removal never depends on it: an interface name too long for it
// gets none, and a VIP left by another tool or an earlier version may have
// none either. Only the VIPs of the configuration, as host addresses, are
// ever removed; an operator's address of another prefix length is not.
const label = ":kbvip"

func prefix(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen())
}

func nladdr(ifname string, a netip.Addr) *netlink.Addr {
	p := prefix(a)
	n, _ := netlink.ParseAddr(p.String())
	if p.Addr().Is4() {
		// IPv4 labels must start with the interface name.
		n.Label = ifname + label
		if len(n.Label) > 15 {
			n.Label = ""
		}
	} else {
		n.Flags = unix.IFA_F_NODAD // usable at once: no duplicate address detection
	}
	return n
}

// Add puts VIP a on ifname as a /32 or /128. Adding an address that is
// already there is not an error.
func Add(ifname string, a netip.Addr) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("vip %s: interface %q: %w", a, ifname, err)
	}
	if err := netlink.AddrAdd(l, nladdr(ifname, a)); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("vip %s on %s: %w", a, ifname, err)
	}
	return nil
}

// Remove takes VIP a off ifname; removing an absent address is not an error.
func Remove(ifname string, a netip.Addr) error {
	_, err := remove(ifname, a)
	return err
}

// remove deletes the host address a from ifname by address and prefix
// length, whatever its label, and says whether it was there.
func remove(ifname string, a netip.Addr) (bool, error) {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return false, fmt.Errorf("vip %s: interface %q: %w", a, ifname, err)
	}
	n := nladdr(ifname, a)
	// With a label the kernel deletes only an address carrying that same
	// label and answers EADDRNOTAVAIL for an unlabelled one, which read
	// as "absent" left the VIP in place.
	n.Label = ""
	if err := netlink.AddrDel(l, n); err != nil {
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			return false, nil // not there (as a host address)
		}
		return false, fmt.Errorf("remove vip %s from %s: %w", a, ifname, err)
	}
	return true, nil
}

// Has reports whether ifname holds a as a host address.
func Has(ifname string, a netip.Addr) (bool, error) {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return false, fmt.Errorf("interface %q: %w", ifname, err)
	}
	family := netlink.FAMILY_V4
	if a.Unmap().Is6() {
		family = netlink.FAMILY_V6
	}
	list, err := netlink.AddrList(l, family)
	if err != nil {
		return false, err
	}
	want := prefix(a)
	for _, x := range list {
		ones, _ := x.Mask.Size()
		if got, ok := netip.AddrFromSlice(x.IP); ok && netip.PrefixFrom(got.Unmap(), ones) == want {
			return true, nil
		}
	}
	return false, nil
}

// Reconcile makes ifname hold exactly want among the VIPs in all (the VIPs
// this node may own): it adds the missing ones and removes the others,
// leaving every other address alone. It returns what it changed: an
// address another actor removed meanwhile is not reported as removed.
func Reconcile(ifname string, all, want []netip.Addr) (added, removed []netip.Addr, err error) {
	keep := map[netip.Addr]bool{}
	for _, a := range want {
		keep[a.Unmap()] = true
	}
	var errs []error
	for _, a := range all {
		a = a.Unmap()
		has, err := Has(ifname, a)
		if err != nil {
			return added, removed, err
		}
		switch {
		case keep[a] && !has:
			if err := Add(ifname, a); err != nil {
				errs = append(errs, err)
				continue
			}
			added = append(added, a)
		case !keep[a] && has:
			gone, err := remove(ifname, a)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if gone {
				removed = append(removed, a)
			}
		}
	}
	return added, removed, errors.Join(errs...)
}
