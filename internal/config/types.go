package config

import (
	"fmt"
	"net"
	"strings"
)

// The enumerations below are decoded and checked once, at the edge: a
// value that reached the control loop is one of the constants, and
// nothing downstream parses strings again.

// Protocol is a service's transport.
type Protocol string

const (
	TCP    Protocol = "tcp"
	UDP    Protocol = "udp"
	ICMP   Protocol = "icmp"
	ICMPv6 Protocol = "icmpv6"
)

func (p *Protocol) UnmarshalText(b []byte) error {
	return oneOfText(p, b, TCP, UDP, ICMP, ICMPv6)
}

// AttachMode is how the forwarder attaches to an interface.
type AttachMode string

const (
	// AttachAuto: native XDP when the driver has it, else generic.
	AttachAuto    AttachMode = "auto"
	AttachNative  AttachMode = "native"
	AttachGeneric AttachMode = "generic"
)

func (m *AttachMode) UnmarshalText(b []byte) error {
	return oneOfText(m, b, AttachAuto, AttachNative, AttachGeneric)
}

// WhenAllDown is what a service does with its traffic when no backend
// is usable.
type WhenAllDown string

const (
	// Drop the service's packets (counted).
	DropAll WhenAllDown = "drop"
	// Pass them to the local stack.
	PassAll WhenAllDown = "pass"
	// KeepLast keeps forwarding to the last healthy set.
	KeepLast WhenAllDown = "keep-last"
)

func (w *WhenAllDown) UnmarshalText(b []byte) error {
	return oneOfText(w, b, DropAll, PassAll, KeepLast)
}

// oneOfText sets *dst to the allowed value b names. An empty value
// leaves the default (as an absent key does).
func oneOfText[T ~string](dst *T, b []byte, allowed ...T) error {
	if len(b) == 0 {
		return nil
	}
	for _, a := range allowed {
		if string(b) == string(a) {
			*dst = a
			return nil
		}
	}
	names := make([]string, len(allowed))
	for i, a := range allowed {
		names[i] = string(a)
	}
	return fmt.Errorf("%q is not one of %s", b, strings.Join(names, ", "))
}

// MAC is a unicast Ethernet address; the zero MAC means "not given"
// (resolved from the neighbour table). Comparable, unlike
// net.HardwareAddr, so a changed MAC is a plain !=.
type MAC [6]byte

func (m *MAC) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*m = MAC{}
		return nil
	}
	hw, err := net.ParseMAC(string(b))
	if err != nil || len(hw) != 6 {
		return fmt.Errorf("%q is not an Ethernet address like 02:00:5e:10:00:01", b)
	}
	if hw[0]&1 != 0 {
		return fmt.Errorf("%s is a multicast address", hw)
	}
	if [6]byte(hw) == ([6]byte{}) {
		return fmt.Errorf("%s is the zero address", hw)
	}
	*m = MAC(hw)
	return nil
}

func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// IsZero: no MAC given.
func (m MAC) IsZero() bool { return m == MAC{} }

// HardwareAddr is m for the net and netlink APIs (nil when zero).
func (m MAC) HardwareAddr() net.HardwareAddr {
	if m.IsZero() {
		return nil
	}
	return net.HardwareAddr(m[:])
}

func (m MAC) String() string {
	if m.IsZero() {
		return ""
	}
	return net.HardwareAddr(m[:]).String()
}
