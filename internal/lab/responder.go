package lab

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
)

// SynResponder loads bpf/synack_responder.c, a tc program: every IPv4 TCP
// SYN it sees is answered with a SYN-ACK from where it was sent to, out of
// the port it came in on; RSTs are dropped, the rest passes. It stands in
// for remote backends of half-open checks, whose work a local listener
// would do on the prober's CPUs. The caller closes the program.
func SynResponder() (*ebpf.Program, error) {
	var objs responderObjects
	if err := loadResponderObjects(&objs, nil); err != nil {
		return nil, fmt.Errorf("load SYN responder: %w", err)
	}
	return objs.SynackResponder, nil
}

// AttachSynResponder attaches SynResponder to the ingress of the interface
// with index ifindex in ns (tcx, Linux 6.6 and later). detach undoes it.
func AttachSynResponder(ns netns.NsHandle, ifindex int) (detach func(), err error) {
	prog, err := SynResponder()
	if err != nil {
		return nil, err
	}
	var l link.Link
	err = InNS(ns, func() error {
		var err error
		l, err = link.AttachTCX(link.TCXOptions{Program: prog, Interface: ifindex, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		prog.Close()
		return nil, fmt.Errorf("attach SYN responder: %w", err)
	}
	return func() { l.Close(); prog.Close() }, nil
}
