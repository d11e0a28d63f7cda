package lab

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// DropPort drops every frame on host's bridge port, both ways, with tc
// (tcx) programs in the switch namespace, until undo. Both ends' links stay
// up and nothing tells the host or its peers: a silent failure, which only
// timers (BFD, BGP hold, checks) detect.
func (l *Lab) DropPort(host string) (undo func() error, err error) {
	h, err := netlink.NewHandleAt(l.sw)
	if err != nil {
		return nil, err
	}
	defer h.Delete()
	p, err := h.LinkByName("p-" + host)
	if err != nil {
		return nil, fmt.Errorf("port of %s: %w", host, err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* TC_ACT_SHOT */), asm.Return()}})
	if err != nil {
		return nil, fmt.Errorf("load drop program: %w", err)
	}
	var links []link.Link
	undo = func() error {
		var errs []error
		for _, lk := range links {
			errs = append(errs, lk.Close())
		}
		links = nil
		errs = append(errs, prog.Close())
		return errors.Join(errs...)
	}
	err = InNS(l.sw, func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			lk, err := link.AttachTCX(link.TCXOptions{Interface: p.Attrs().Index, Program: prog, Attach: at})
			if err != nil {
				return err
			}
			links = append(links, lk)
		}
		return nil
	})
	if err != nil {
		_ = undo()
		return nil, fmt.Errorf("drop on the port of %s: %w", host, err)
	}
	return undo, nil
}

// ClearHash makes a namespace route like a separate router: it clears the
// flow hash of every packet arriving on iface in ns (a tcx ingress program
// calling bpf_set_hash_invalid). veth keeps the hash the sender's socket
// put on its packets, and the kernel's multipath route selection uses a
// packet's L4 hash as is when it has one; that socket hash changes when
// TCP retransmits after a timeout (txhash rethink), so in a lab every
// retransmission of a connection would try another ECMP next hop, which no
// router does. Cleared, the next hop follows from the 5-tuple
// (fib_multipath_hash_policy=1). undo removes the program.
func ClearHash(ns netns.NsHandle, iface string) (undo func() error, err error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	defer h.Delete()
	l, err := h.LinkByName(iface)
	if err != nil {
		return nil, fmt.Errorf("clear hash on %s: %w", iface, err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{
			// R1 holds the skb already.
			asm.FnSetHashInvalid.Call(),
			asm.Mov.Imm(asm.R0, 0), // TCX_PASS
			asm.Return(),
		}})
	if err != nil {
		return nil, fmt.Errorf("load clear-hash program: %w", err)
	}
	var lk link.Link
	err = InNS(ns, func() error {
		var err error
		lk, err = link.AttachTCX(link.TCXOptions{Interface: l.Attrs().Index, Program: prog, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		prog.Close()
		return nil, fmt.Errorf("clear hash on %s: %w", iface, err)
	}
	return func() error { return errors.Join(lk.Close(), prog.Close()) }, nil
}
