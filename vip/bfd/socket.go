package bfd

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

const (
	// Port is the destination port of single-hop control packets (RFC 5881
	// section 4).
	Port = 3784
	// TTL of every packet sent, and the only one accepted (RFC 5881
	// section 5, GTSM): a packet from further than one hop away cannot
	// carry it.
	TTL = 255
	// Source ports come from here (RFC 5881 section 4).
	minSrcPort = 49152
	maxSrcPort = 65535
	// tosNetworkControl (IP precedence 6, CS6) is the class routers give
	// their own control traffic, so BFD is not queued behind data.
	tosNetworkControl = 0xc0
)

// sockControl returns a net.ListenConfig Control that binds the socket to
// the interface (when given) and sets the options every BFD socket wants.
func sockControl(ifname string, sender bool) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if ifname != "" {
				if serr = unix.BindToDevice(int(fd), ifname); serr != nil {
					serr = fmt.Errorf("bind to %s: %w", ifname, serr)
					return
				}
			}
			if sender {
				// TC_PRIO_CONTROL: first out of the host's own queues.
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PRIORITY, 7)
			}
		})
		return errors.Join(err, serr)
	}
}

func udpAddr(a netip.Addr, ifname string, port int) netip.AddrPort {
	if a.Is6() && a.IsLinkLocalUnicast() && ifname != "" {
		a = a.WithZone(ifname)
	}
	return netip.AddrPortFrom(a, uint16(port))
}

// listener receives on local:3784, with the TTL or hop limit and the
// ingress interface of every packet.
type listener struct {
	key  listenKey
	conn *net.UDPConn
	p4   *ipv4.PacketConn
	p6   *ipv6.PacketConn
	refs int
}

type listenKey struct {
	local  netip.Addr
	ifname string
}

func openListener(ctx context.Context, k listenKey) (*listener, error) {
	network := "udp4"
	if k.local.Is6() {
		network = "udp6"
	}
	lc := net.ListenConfig{Control: sockControl(k.ifname, false)}
	pc, err := lc.ListenPacket(ctx, network, udpAddr(k.local, k.ifname, Port).String())
	if err != nil {
		return nil, fmt.Errorf("listen on %s port %d: %w", k.local, Port, err)
	}
	l := &listener{key: k, conn: pc.(*net.UDPConn)}
	if k.local.Is4() {
		l.p4 = ipv4.NewPacketConn(l.conn)
		err = l.p4.SetControlMessage(ipv4.FlagTTL|ipv4.FlagInterface|ipv4.FlagDst, true)
	} else {
		l.p6 = ipv6.NewPacketConn(l.conn)
		err = l.p6.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagInterface|ipv6.FlagDst, true)
	}
	if err != nil {
		l.conn.Close()
		return nil, fmt.Errorf("ask for the ttl of received packets: %w", err)
	}
	return l, nil
}

// datagram is one received packet and what the kernel said about it.
type datagram struct {
	n       int
	hops    int // -1: unknown
	ifindex int
	src     netip.Addr
}

func (l *listener) read(buf []byte) (datagram, error) {
	d := datagram{hops: -1}
	var from net.Addr
	var err error
	if l.p4 != nil {
		var cm *ipv4.ControlMessage
		d.n, cm, from, err = l.p4.ReadFrom(buf)
		if cm != nil {
			d.hops, d.ifindex = cm.TTL, cm.IfIndex
		}
	} else {
		var cm *ipv6.ControlMessage
		d.n, cm, from, err = l.p6.ReadFrom(buf)
		if cm != nil {
			d.hops, d.ifindex = cm.HopLimit, cm.IfIndex
		}
	}
	if err != nil {
		return d, err
	}
	if ua, ok := from.(*net.UDPAddr); ok {
		d.src = ua.AddrPort().Addr().Unmap().WithZone("")
	}
	return d, nil
}

// openSender opens a session's socket: bound to its local address and a
// source port of 49152-65535 of its own (RFC 5881 section 4: one port per
// session, the same for its whole life), TTL 255, network-control class.
func openSender(ctx context.Context, local netip.Addr, ifname string) (*net.UDPConn, error) {
	network := "udp4"
	if local.Is6() {
		network = "udp6"
	}
	lc := net.ListenConfig{Control: sockControl(ifname, true)}
	var lastErr error
	for range 64 {
		port := minSrcPort + rand.IntN(maxSrcPort-minSrcPort+1)
		pc, err := lc.ListenPacket(ctx, network, udpAddr(local, ifname, port).String())
		if err != nil {
			if errors.Is(err, unix.EADDRINUSE) {
				lastErr = err
				continue
			}
			return nil, fmt.Errorf("bind the source port: %w", err)
		}
		c := pc.(*net.UDPConn)
		if local.Is4() {
			p := ipv4.NewConn(c)
			err = errors.Join(p.SetTTL(TTL), p.SetTOS(tosNetworkControl))
		} else {
			p := ipv6.NewConn(c)
			err = errors.Join(p.SetHopLimit(TTL), p.SetTrafficClass(tosNetworkControl))
		}
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("set ttl %d: %w", TTL, err)
		}
		return c, nil
	}
	return nil, fmt.Errorf("no free source port in %d-%d: %w", minSrcPort, maxSrcPort, lastErr)
}
