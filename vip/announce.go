package vip

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
)

// Burst says how to announce: Count rounds, Spacing apart.
type Burst struct {
	Count   int
	Spacing time.Duration
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

// NewAnnouncer opens the sockets it needs on ifname; v6 opens the ND one.
func NewAnnouncer(ifname string, v6 bool) (*Announcer, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("announce on %q: %w", ifname, err)
	}
	a := &Announcer{ifc: ifc}
	if a.arp, err = arp.Dial(ifc); err != nil {
		return nil, fmt.Errorf("announce on %s: arp: %w", ifname, err)
	}
	if v6 {
		if a.ndp, _, err = ndp.Listen(ifc, ndp.LinkLocal); err != nil {
			a.arp.Close()
			return nil, fmt.Errorf("announce on %s: ndp: %w", ifname, err)
		}
	}
	return a, nil
}

// Close releases the sockets.
func (a *Announcer) Close() error {
	if a.ndp != nil {
		a.ndp.Close()
	}
	return a.arp.Close()
}

// Once sends one round for every address and returns when it is on the
// wire; the time it returns is the announce time of design.md.
func (a *Announcer) Once(addrs []netip.Addr) error {
	for _, ip := range addrs {
		ip = ip.Unmap()
		if ip.Is4() {
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

// Burst sends b.Count rounds, b.Spacing apart, until ctx ends. It returns
// when the first round is out; the rest follow in the background.
func (a *Announcer) Burst(ctx context.Context, addrs []netip.Addr, b Burst) error {
	if err := a.Once(addrs); err != nil {
		return err
	}
	if b.Count > 1 {
		go func() {
			t := time.NewTicker(b.Spacing)
			defer t.Stop()
			for range b.Count - 1 {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					_ = a.Once(addrs)
				}
			}
		}()
	}
	return nil
}
