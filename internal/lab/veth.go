package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TxChecksumOff is `ethtool -K name tx off` (ETHTOOL_STXCSUM) in the
// calling thread's namespace. veth hands checksums to its peer as "to be
// done" (CHECKSUM_PARTIAL); a frame that XDP redirects loses that note and
// arrives with half a checksum. A real NIC fills it in; in a lab, the
// sender must.
func TxChecksumOff(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	value := struct{ cmd, data uint32 }{cmd: 0x00000017} // ETHTOOL_STXCSUM, off
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data uintptr
		_    [16]byte
	}
	copy(ifr.name[:], name)
	ifr.data = uintptr(unsafe.Pointer(&value))
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return fmt.Errorf("SIOCETHTOOL %s: %w", name, errno)
	}
	return nil
}

// AttachPass attaches an XDP program that passes everything to the
// interface with index ifindex in ns: veth delivers XDP_TX/XDP_REDIRECT
// frames only to a peer that runs XDP. detach undoes it.
func AttachPass(ns netns.NsHandle, ifindex int) (detach func(), err error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		return nil, fmt.Errorf("load pass program: %w", err)
	}
	var l link.Link
	err = InNS(ns, func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex})
		return err
	})
	if err != nil {
		prog.Close()
		return nil, fmt.Errorf("attach pass program: %w", err)
	}
	return func() { l.Close(); prog.Close() }, nil
}

// VethEnd is one end of a veth pair as NewVeth makes it.
type VethEnd struct {
	NS    netns.NsHandle   // netns.None(): the caller's namespace
	Name  string           // interface name in NS
	Addrs []string         // CIDRs to put on it
	MAC   net.HardwareAddr // nil: the kernel picks one
	// NoDAD turns IPv6 duplicate address detection off on this interface
	// (Addrs go on with IFA_F_NODAD, accept_dad is 0 before it comes up)
	// and NewVeth waits for its link-local address: its addresses are
	// usable when NewVeth returns.
	NoDAD bool
}

// Link is an interface NewVeth made.
type Link struct {
	NS    netns.NsHandle
	Name  string
	Index int
	MAC   net.HardwareAddr
}

// Veth is a veth pair: what goes out of one end comes in at the other.
type Veth struct {
	A, B Link
}

// NewVeth makes a veth pair with end a in a.NS and end b in b.NS, both
// named, addressed and up, and returns once both have carrier. The peer is
// created in its namespace directly, so its name can be one the caller's
// namespace already uses ("eth0"). Close removes the pair.
func NewVeth(a, b VethEnd) (*Veth, error) {
	ha, err := Handle(a.NS)
	if err != nil {
		return nil, fmt.Errorf("veth %s: %w", a.Name, err)
	}
	defer ha.Delete()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a.Name, HardwareAddr: a.MAC}, PeerName: b.Name, PeerHardwareAddr: b.MAC}
	if b.NS != a.NS {
		peerNS := b.NS
		if peerNS == netns.None() {
			// The caller's namespace: the kernel wants a descriptor of it.
			if peerNS, err = netns.Get(); err != nil {
				return nil, fmt.Errorf("veth %s: this namespace: %w", a.Name, err)
			}
			defer peerNS.Close()
		}
		v.PeerNamespace = netlink.NsFd(peerNS)
	}
	if err := ha.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("veth %s/%s: %w", a.Name, b.Name, err)
	}
	p := &Veth{A: Link{NS: a.NS, Name: a.Name}}
	var err1, err2 error
	if p.A, err1 = setupEnd(a); err1 == nil {
		p.B, err2 = setupEnd(b)
	}
	if err := errors.Join(err1, err2); err != nil {
		p.A = Link{NS: a.NS, Name: a.Name}
		_ = p.Close()
		return nil, fmt.Errorf("veth %s/%s: %w", a.Name, b.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, e := range []VethEnd{a, b} {
		err := waitOperUp(ctx, e.NS, e.Name)
		if err == nil && e.NoDAD {
			// DAD off still takes a trip through the kernel's
			// workqueue before the link-local address is there.
			err = WaitNonTentative(ctx, e.NS, e.Name)
		}
		if err != nil {
			_ = p.Close()
			return nil, fmt.Errorf("veth %s/%s: %w", a.Name, b.Name, err)
		}
	}
	return p, nil
}

func setupEnd(e VethEnd) (Link, error) {
	if e.NoDAD {
		if _, err := Sysctl(e.NS, map[string]string{"net/ipv6/conf/" + e.Name + "/accept_dad": "0"}); err != nil {
			return Link{}, err
		}
	}
	flags := 0
	if e.NoDAD {
		flags = unix.IFA_F_NODAD
	}
	if err := addAddrs(e.NS, e.Name, flags, e.Addrs); err != nil {
		return Link{}, err
	}
	var out Link
	err := withLink(e.NS, e.Name, func(h *netlink.Handle, l netlink.Link) error {
		out = Link{NS: e.NS, Name: e.Name, Index: l.Attrs().Index, MAC: l.Attrs().HardwareAddr}
		return h.LinkSetUp(l)
	})
	return out, err
}

// Close removes the pair (deleting one end deletes both). A pair already
// gone, with its namespace or by hand, is not an error.
func (v *Veth) Close() error {
	err := withLink(v.A.NS, v.A.Name, func(h *netlink.Handle, l netlink.Link) error { return h.LinkDel(l) })
	var nf netlink.LinkNotFoundError
	if err == nil || errors.As(err, &nf) {
		return nil
	}
	return fmt.Errorf("remove veth %s: %w", v.A.Name, err)
}
