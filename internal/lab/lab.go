package lab

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Lab is a bridge in a namespace of its own with hosts attached to it.
type Lab struct {
	sw      netns.NsHandle
	hosts   []*Host
	cleanup []func()
}

// Host is a namespace with one interface on the lab's bridge.
type Host struct {
	Name  string
	NS    netns.NsHandle
	Iface string
	MAC   net.HardwareAddr
}

// New creates the switch namespace and its bridge.
func New() (*Lab, error) {
	sw, err := NewNS()
	if err != nil {
		return nil, err
	}
	l := &Lab{sw: sw}
	l.cleanup = append(l.cleanup, func() { sw.Close() })
	h, err := netlink.NewHandleAt(sw)
	if err != nil {
		l.Close()
		return nil, err
	}
	defer h.Delete()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := errors.Join(h.LinkAdd(br), h.LinkSetUp(br)); err != nil {
		l.Close()
		return nil, fmt.Errorf("bridge: %w", err)
	}
	return l, nil
}

// Close removes every namespace, link and program the lab created.
func (l *Lab) Close() {
	for i := len(l.cleanup) - 1; i >= 0; i-- {
		l.cleanup[i]()
	}
	l.cleanup = nil
}

// Host adds a namespace whose interface iface (on the bridge) has cidrs.
// IPv6 duplicate address detection is off there, so addresses are usable
// at once.
func (l *Lab) Host(name, iface string, cidrs ...string) (*Host, error) {
	ns, err := NewNS()
	if err != nil {
		return nil, err
	}
	l.cleanup = append(l.cleanup, func() { ns.Close() })
	if _, err := DADOff(ns); err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	port := "p-" + name
	if len(port) > 15 {
		return nil, fmt.Errorf("host name %q: too long for an interface name", name)
	}
	v, err := NewVeth(VethEnd{NS: l.sw, Name: port}, VethEnd{NS: ns, Name: iface, Addrs: cidrs})
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	hs, err := netlink.NewHandleAt(l.sw)
	if err != nil {
		return nil, err
	}
	defer hs.Delete()
	p, err := hs.LinkByName(port)
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	br, err := hs.LinkByName("br0")
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	if err := hs.LinkSetMaster(p, br); err != nil {
		return nil, fmt.Errorf("host %s: attach to the bridge: %w", name, err)
	}
	// A host may run XDP that sends frames back out (XDP_TX); veth hands
	// those to its peer only when the peer runs XDP too.
	detach, err := AttachPass(l.sw, v.A.Index)
	if err != nil {
		return nil, err
	}
	l.cleanup = append(l.cleanup, detach)
	if err := SetUp(ns, "lo"); err != nil {
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	host := &Host{Name: name, NS: ns, Iface: iface, MAC: v.B.MAC}
	l.hosts = append(l.hosts, host)
	return host, nil
}

// Do runs fn inside the host's namespace.
func (h *Host) Do(fn func() error) error { return InNS(h.NS, fn) }

// Sysctl writes /proc/sys settings (keys relative to /proc/sys) in the host.
func (h *Host) Sysctl(kv map[string]string) error {
	_, err := Sysctl(h.NS, kv)
	return err
}

// Handle is a netlink handle inside the host; Delete it after use.
func (h *Host) Handle() (*netlink.Handle, error) { return netlink.NewHandleAt(h.NS) }

// SetPort sets the bridge port of host up or down: down cuts the host
// off the segment (a partition) while its own interface stays up.
func (l *Lab) SetPort(host string, up bool) error {
	h, err := netlink.NewHandleAt(l.sw)
	if err != nil {
		return err
	}
	defer h.Delete()
	p, err := h.LinkByName("p-" + host)
	if err != nil {
		return fmt.Errorf("port of %s: %w", host, err)
	}
	if up {
		return h.LinkSetUp(p)
	}
	return h.LinkSetDown(p)
}
