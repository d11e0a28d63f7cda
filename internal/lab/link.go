package lab

import (
	"context"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Handle is a netlink handle inside ns (netns.None(): the caller's
// namespace); Delete it after use.
func Handle(ns netns.NsHandle) (*netlink.Handle, error) {
	if ns == netns.None() {
		return netlink.NewHandle()
	}
	return netlink.NewHandleAt(ns)
}

// withLink runs fn with a handle in ns and the link called name there.
func withLink(ns netns.NsHandle, name string, fn func(*netlink.Handle, netlink.Link) error) error {
	h, err := Handle(ns)
	if err != nil {
		return err
	}
	defer h.Delete()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	return fn(h, l)
}

// AddAddrs puts cidrs ("10.0.0.1/24", "2001:db8::1/64") on iface in ns.
func AddAddrs(ns netns.NsHandle, iface string, cidrs ...string) error {
	return addAddrs(ns, iface, 0, cidrs)
}

// addAddrs adds cidrs with address flags (IFA_F_NODAD).
func addAddrs(ns netns.NsHandle, iface string, flags int, cidrs []string) error {
	return withLink(ns, iface, func(h *netlink.Handle, l netlink.Link) error {
		for _, c := range cidrs {
			a, err := netlink.ParseAddr(c)
			if err != nil {
				return fmt.Errorf("address %q: %w", c, err)
			}
			a.Flags = flags
			if err := h.AddrAdd(l, a); err != nil {
				return fmt.Errorf("address %s on %s: %w", c, iface, err)
			}
		}
		return nil
	})
}

// SetUp brings the links names in ns up ("lo" included: a new namespace
// starts with its loopback down).
func SetUp(ns netns.NsHandle, names ...string) error {
	for _, n := range names {
		if err := withLink(ns, n, func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetUp(l) }); err != nil {
			return fmt.Errorf("up %s: %w", n, err)
		}
	}
	return nil
}

// AddRoute adds a route in ns to dst (a prefix, a bare address for a host
// route, or "default") through the on-link gateway gw; the kernel picks the
// interface that reaches gw.
func AddRoute(ns netns.NsHandle, dst, gw string) error {
	r := &netlink.Route{Gw: net.ParseIP(gw)}
	if r.Gw == nil {
		return fmt.Errorf("route to %s: gateway %q is not an address", dst, gw)
	}
	switch {
	case dst == "default":
	case strings.Contains(dst, "/"):
		_, n, err := net.ParseCIDR(dst)
		if err != nil {
			return fmt.Errorf("route: destination %q: %w", dst, err)
		}
		r.Dst = n
	default:
		ip := net.ParseIP(dst)
		if ip == nil {
			return fmt.Errorf("route: destination %q is not an address or prefix", dst)
		}
		r.Dst = netlink.NewIPNet(ip)
	}
	h, err := Handle(ns)
	if err != nil {
		return err
	}
	defer h.Delete()
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("route to %s via %s: %w", dst, gw, err)
	}
	return nil
}

// Sysctl writes /proc/sys settings (keys relative to /proc/sys, like
// "net/ipv4/ip_forward") in ns and returns what they were before, for
// putting them back. /proc/sys/net is per namespace: the writes happen on a
// thread inside ns.
func Sysctl(ns netns.NsHandle, kv map[string]string) (old map[string]string, err error) {
	old = map[string]string{}
	err = InNS(ns, func() error {
		for _, k := range slices.Sorted(maps.Keys(kv)) {
			p := "/proc/sys/" + k
			b, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("sysctl %s: %w", k, err)
			}
			if err := os.WriteFile(p, []byte(kv[k]), 0); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", k, kv[k], err)
			}
			old[k] = strings.TrimSpace(string(b))
		}
		return nil
	})
	return old, err
}

// DADOff turns IPv6 duplicate address detection off in ns for interfaces
// created from then on: their addresses (link-local included) are usable at
// once instead of after a second or more of DAD. It returns the old value.
func DADOff(ns netns.NsHandle) (old map[string]string, err error) {
	return Sysctl(ns, map[string]string{"net/ipv6/conf/default/accept_dad": "0"})
}

// WaitNonTentative waits until iface in ns has its IPv6 link-local address
// and none of its IPv6 addresses is still in duplicate address detection
// (tentative): until then the kernel will not send from them. A duplicate
// found by DAD is an error at once.
func WaitNonTentative(ctx context.Context, ns netns.NsHandle, iface string) error {
	return withLink(ns, iface, func(h *netlink.Handle, l netlink.Link) error {
		for {
			as, err := h.AddrList(l, netlink.FAMILY_V6)
			if err != nil {
				return fmt.Errorf("addresses of %s: %w", iface, err)
			}
			tentative := true // until a link-local address shows up
			for _, a := range as {
				if a.IP.IsLinkLocalUnicast() {
					tentative = false
				}
			}
			for _, a := range as {
				if a.Flags&unix.IFA_F_DADFAILED != 0 {
					return fmt.Errorf("%s on %s: duplicate address detected", a.IPNet, iface)
				}
				tentative = tentative || a.Flags&unix.IFA_F_TENTATIVE != 0
			}
			if !tentative {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: IPv6 addresses still tentative: %w", iface, ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
}

// waitOperUp waits until iface in ns reports carrier (operstate up): a veth
// end does once both ends are up.
func waitOperUp(ctx context.Context, ns netns.NsHandle, iface string) error {
	h, err := Handle(ns)
	if err != nil {
		return err
	}
	defer h.Delete()
	for {
		l, err := h.LinkByName(iface)
		if err != nil {
			return fmt.Errorf("link %s: %w", iface, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: no carrier (operstate %s): %w", iface, l.Attrs().OperState, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
