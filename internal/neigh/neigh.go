// Package neigh finds the Ethernet address of a backend that the config
// gives without one: from the kernel's neighbour table when it is known
// there, else by asking on the wire (ARP for IPv4, neighbour solicitation
// for IPv6).
package neigh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
	"github.com/vishvananda/netlink"
)

// usable neighbour states: the kernel has (or recently had) an answer.
const usable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP

// Lookup returns addr's MAC on ifname from the neighbour table only; nil
// when the kernel does not know it. It never waits.
func Lookup(ifname string, addr netip.Addr) net.HardwareAddr {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil
	}
	return fromTable(ifc.Index, addr.Unmap())
}

// Resolve returns addr's MAC on interface ifname.
func Resolve(ctx context.Context, ifname string, addr netip.Addr) (net.HardwareAddr, error) {
	addr = addr.Unmap()
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("interface %q: %w", ifname, err)
	}
	if hw := fromTable(ifc.Index, addr); hw != nil {
		return hw, nil
	}
	if addr.Is4() {
		return viaARP(ctx, ifc, addr)
	}
	return viaNDP(ctx, ifc, addr)
}

func fromTable(ifindex int, addr netip.Addr) net.HardwareAddr {
	family := netlink.FAMILY_V4
	if addr.Is6() {
		family = netlink.FAMILY_V6
	}
	list, err := netlink.NeighList(ifindex, family)
	if err != nil {
		return nil
	}
	for _, n := range list {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == addr && n.State&usable != 0 && len(n.HardwareAddr) == 6 {
			return n.HardwareAddr
		}
	}
	return nil
}

// retries asks up to three times within ctx (default 1 s).
func deadline(ctx context.Context) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return time.Now().Add(time.Second)
}

func viaARP(ctx context.Context, ifc *net.Interface, addr netip.Addr) (net.HardwareAddr, error) {
	c, err := arp.Dial(ifc)
	if err != nil {
		return nil, fmt.Errorf("arp on %s: %w", ifc.Name, err)
	}
	defer c.Close()
	end := deadline(ctx)
	for time.Now().Before(end) {
		try := min(time.Until(end), 300*time.Millisecond)
		_ = c.SetDeadline(time.Now().Add(try))
		hw, err := c.Resolve(addr)
		if err == nil {
			return hw, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("arp on %s: no reply from %s", ifc.Name, addr)
}

func viaNDP(ctx context.Context, ifc *net.Interface, addr netip.Addr) (net.HardwareAddr, error) {
	// The link-local address's zone must be the index, not the name: Go
	// caches name -> index for up to a minute, and an interface deleted
	// and re-created under the same name (a lab, a VLAN re-made by the
	// operator) would bind to the old index ("no such device").
	byIndex := *ifc
	byIndex.Name = strconv.Itoa(ifc.Index)
	c, _, err := ndp.Listen(&byIndex, ndp.LinkLocal)
	if err != nil {
		return nil, fmt.Errorf("ndp on %s: %w", ifc.Name, err)
	}
	defer c.Close()
	snm, err := ndp.SolicitedNodeMulticast(addr)
	if err != nil {
		return nil, fmt.Errorf("ndp: %w", err)
	}
	ns := &ndp.NeighborSolicitation{TargetAddress: addr, Options: []ndp.Option{
		&ndp.LinkLayerAddress{Direction: ndp.Source, Addr: ifc.HardwareAddr}}}
	end := deadline(ctx)
	for time.Now().Before(end) {
		if err := c.WriteTo(ns, nil, snm); err != nil {
			return nil, fmt.Errorf("ndp on %s: send solicitation: %w", ifc.Name, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(min(time.Until(end), 300*time.Millisecond)))
		for {
			msg, _, _, err := c.ReadFrom()
			if err != nil {
				break
			}
			na, ok := msg.(*ndp.NeighborAdvertisement)
			if !ok || na.TargetAddress != addr {
				continue
			}
			for _, o := range na.Options {
				if lla, ok := o.(*ndp.LinkLayerAddress); ok && lla.Direction == ndp.Target {
					return lla.Addr, nil
				}
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.New("ndp on " + ifc.Name + ": no advertisement from " + addr.String())
}
