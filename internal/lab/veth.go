package lab

import (
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
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
