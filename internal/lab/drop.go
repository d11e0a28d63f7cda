package lab

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
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
