package vip

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

// Burst says how to announce: Count rounds, Spacing apart, and one more
// round Late after the first (0 = none). Linux hosts ignore updates to a
// neighbour entry changed less than locktime (1 s) ago, so a VIP that
// flips back within a second reaches them only through the late round.
type Burst struct {
	Count   int
	Spacing time.Duration
	Late    time.Duration
}

// Announcer tells the segment behind one interface that this node now
// owns some VIPs: for IPv4 a gratuitous ARP request and a gratuitous ARP
// reply (switches and hosts honour one or the other), for IPv6 an
// unsolicited neighbour advertisement with the override flag to all nodes.
type Announcer struct {
	ifc  *net.Interface
	arp  *arp.Client
	ndp  *ndp.Conn
	hwv4 net.HardwareAddr
}

// NewAnnouncer opens, on ifname, the sockets that announcing addrs needs:
// ARP only for IPv4 addresses (it needs an IPv4 address on the interface
// to send from, which an IPv6-only interface lacks), ND only for IPv6.
func NewAnnouncer(ifname string, addrs []netip.Addr) (*Announcer, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("announce on %q: %w", ifname, err)
	}
	var v4, v6 bool
	for _, ip := range addrs {
		ip = ip.Unmap()
		v4, v6 = v4 || ip.Is4(), v6 || ip.Is6()
	}
	a := &Announcer{ifc: ifc}
	if v4 {
		if a.arp, err = arp.Dial(ifc); err != nil {
			return nil, fmt.Errorf("announce on %s: arp: %w", ifname, err)
		}
	}
	if v6 {
		// Zoned by index, not name: Go caches name -> index for up to a
		// minute, and an interface re-created under the same name would
		// bind to the old index ("no such device").
		byIndex := *ifc
		byIndex.Name = strconv.Itoa(ifc.Index)
		if a.ndp, _, err = ndp.Listen(&byIndex, ndp.LinkLocal); err != nil {
			a.Close()
			return nil, fmt.Errorf("announce on %s: ndp: %w", ifname, err)
		}
	}
	return a, nil
}

// Close releases the sockets.
func (a *Announcer) Close() error {
	var errs []error
	if a.ndp != nil {
		errs = append(errs, a.ndp.Close())
	}
	if a.arp != nil {
		errs = append(errs, a.arp.Close())
	}
	return errors.Join(errs...)
}

// Once sends one round for every address and returns when it is on the
// wire; the time it returns is the announce time (ARCHITECTURE.md,
// "Timing words").
func (a *Announcer) Once(addrs []netip.Addr) error {
	for _, ip := range addrs {
		ip = ip.Unmap()
		if ip.Is4() {
			if a.arp == nil {
				return fmt.Errorf("gratuitous arp for %s: announcer opened without IPv4", ip)
			}
			for _, op := range []arp.Operation{arp.OperationRequest, arp.OperationReply} {
				// Gratuitous: sender and target address are both the VIP.
				target := ethernet.Broadcast
				if op == arp.OperationRequest {
					target = net.HardwareAddr{0, 0, 0, 0, 0, 0}
				}
				p, err := arp.NewPacket(op, a.ifc.HardwareAddr, ip, target, ip)
				if err != nil {
					return fmt.Errorf("gratuitous arp for %s: %w", ip, err)
				}
				if err := a.arp.WriteTo(p, ethernet.Broadcast); err != nil {
					return fmt.Errorf("gratuitous arp for %s on %s: %w", ip, a.ifc.Name, err)
				}
			}
			continue
		}
		if a.ndp == nil {
			return fmt.Errorf("unsolicited na for %s: announcer opened without IPv6", ip)
		}
		na := &ndp.NeighborAdvertisement{Override: true, TargetAddress: ip,
			Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: a.ifc.HardwareAddr}}}
		if err := a.ndp.WriteTo(na, nil, netip.IPv6LinkLocalAllNodes()); err != nil {
			return fmt.Errorf("unsolicited na for %s on %s: %w", ip, a.ifc.Name, err)
		}
	}
	return nil
}

// round sends one round, and again at once if that failed: a packet
// socket reports the ENETDOWN of a link that went down on its next send,
// even when the link is back up by then.
func (a *Announcer) round(addrs []netip.Addr) error {
	if err := a.Once(addrs); err != nil {
		return a.Once(addrs)
	}
	return nil
}

// Burst sends b.Count rounds, b.Spacing apart, and the late round, until
// ctx ends. It returns when the first round is out (or failed); the rest
// follow in the background even if the first failed.
func (a *Announcer) Burst(ctx context.Context, addrs []netip.Addr, b Burst) error {
	first := a.round(addrs)
	if b.Count > 1 || b.Late > 0 {
		start := time.Now()
		go func() {
			for i := 1; i < b.Count; i++ {
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(start.Add(time.Duration(i) * b.Spacing))):
					_ = a.round(addrs)
				}
			}
			if b.Late > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(time.Until(start.Add(b.Late))):
					_ = a.round(addrs)
				}
			}
		}()
	}
	return first
}
