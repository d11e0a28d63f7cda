package loader

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Proto is an IP protocol number as the dataplane keys services by it.
type Proto uint8

const (
	ICMP   Proto = 1
	TCP    Proto = 6
	UDP    Proto = 17
	ICMPv6 Proto = 58
)

func (p Proto) String() string {
	switch p {
	case ICMP:
		return "icmp"
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case ICMPv6:
		return "icmpv6"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// ParseProto accepts tcp, udp, icmp and icmpv6.
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "icmp":
		return ICMP, nil
	case "icmpv6":
		return ICMPv6, nil
	}
	return 0, fmt.Errorf("protocol %q: want tcp, udp, icmp or icmpv6", s)
}

// ServiceKey names a service the way the dataplane matches packets: VIP,
// destination port and protocol. Port 0 matches every port of the VIP.
type ServiceKey struct {
	VIP   netip.Addr
	Port  uint16
	Proto Proto
}

func (k ServiceKey) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.VIP, k.Port), k.Proto)
}

// State is a backend's health as the dataplane honours it.
type State uint8

const (
	// Down: no new flows, and established flows re-select at once.
	Down State = 0
	// Up: takes new flows.
	Up State = 1
	// Draining: keeps its established flows, takes no new ones.
	Draining State = 2
)

func (s State) String() string {
	switch s {
	case Down:
		return "down"
	case Up:
		return "up"
	case Draining:
		return "draining"
	}
	return fmt.Sprintf("state-%d", uint8(s))
}

// NoBackendPolicy says what happens to a service's packets when none of its
// backends can take them.
type NoBackendPolicy uint8

const (
	// DropNoBackend drops them (counted).
	DropNoBackend NoBackendPolicy = iota
	// PassNoBackend hands them to the local network stack.
	PassNoBackend
)

// MaxGroups is how many priority groups a service may use (0 .. MaxGroups-1).
const MaxGroups = 8

// MaxMembers is how many backends one service may have.
const MaxMembers = 1024

// ServiceSpec is the desired dataplane state of one service.
type ServiceSpec struct {
	// TableSize is the Maglev table size, a prime; 0 means maglev.DefaultSize.
	TableSize uint32
	NoBackend NoBackendPolicy
	Backends  []BackendSpec
}

// BackendSpec is one backend of a service for L2 direct server return.
type BackendSpec struct {
	Addr netip.Addr
	MAC  net.HardwareAddr
	// VLAN the backend sits on; 0 = untagged. The frame leaves with exactly
	// this tag whatever tags it arrived with.
	VLAN uint16
	// Port is the egress interface; "" means the dataplane's own interface.
	Port string
	// Weight is the backend's share of new flows relative to its group.
	Weight uint32
	// Group is the priority group: new flows go to the lowest-numbered group
	// that has a backend up.
	Group uint8
	// State is the initial state of a backend that ApplyService adds to the
	// service; for a backend the service already has it is ignored (the
	// dataplane keeps its state, changed only by SetBackendState).
	State State
}

// Change records one dataplane write: what was asked, when the call
// started, and when the write that makes it visible to XDP returned.
type Change struct {
	Service    ServiceKey
	Backend    netip.Addr // zero for a table change
	What       string     // "state down", "table", "service added", ...
	Started    time.Time
	Prepared   time.Time // table changes: the idle buffer is written
	Returned   time.Time
	Generation uint32 // table generation after the change
}

// Took is the time from the call to the returned write.
func (c Change) Took() time.Duration { return c.Returned.Sub(c.Started) }

// Switch is, for a table change, the time from the prepared buffer to the
// returned write that made it live.
func (c Change) Switch() time.Duration {
	if c.Prepared.IsZero() {
		return c.Took()
	}
	return c.Returned.Sub(c.Prepared)
}

// Counter is a packet and byte count summed over CPUs.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// Flow is one entry of the dataplane's flow table.
type Flow struct {
	Client   netip.AddrPort
	VIP      netip.AddrPort
	Proto    Proto
	Backend  netip.Addr // zero when the ID is no longer in use
	Packets  uint64
	Bytes    uint64
	LastSeen time.Duration // since the flow's last packet
}
