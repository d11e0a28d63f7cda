package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	"github.com/keepbit/keepbit/internal/flowshare"
)

// FlowSharing is the `flow_sharing:` section. Nil when absent (off);
// present, even empty, turns it on (then key_file and peers or multicast
// are required).
//
//	flow_sharing:
//	  port: 7785                  # UDP, the same on every node
//	  listen: 10.0.0.1            # default: every address
//	  peers: [10.0.0.2, 10.0.0.3] # or "address:port"; or multicast:
//	  multicast: {group: 239.255.77.85, interface: eth1}
//	  key_file: /etc/keepbit/flow-sharing.key  # >= 32 bytes, mode 0600
//	  max_rate: 50000             # flows/s sent at most
//	  batch_interval: 5ms
//	  warmup_timeout: 2s
//	  long_lived_after: 10s
//	  refresh: 30s
type FlowSharing struct {
	// Port: UDP port on every node. 7785 is not an IANA registration: it
	// sits outside Linux's ephemeral range (32768-60999) and away from
	// BFD's 3784/3785/4784; set another if it clashes.
	Port uint16 `yaml:"port"`
	// Listen: the address to receive on; unset = every address.
	Listen netip.Addr `yaml:"listen"`
	// Peers: the other nodes, as "address" (port: Port) or "address:port".
	Peers []string `yaml:"peers"`
	// Multicast: one group instead of a peer list (one L2 segment: TTL 1).
	Multicast *FlowMulticast `yaml:"multicast"`
	// KeyFile holds the shared secret that authenticates datagrams: at
	// least 32 bytes, not readable by group or others.
	KeyFile string `yaml:"key_file"`
	// MaxRate: flows a second this node sends at most (snapshot answers
	// included); a backlog beyond it waits in a bounded queue, then drops.
	MaxRate int `yaml:"max_rate"`
	// BatchInterval: how long a flow waits for others to fill a datagram.
	BatchInterval time.Duration `yaml:"batch_interval"`
	// WarmupTimeout: how long a (re)joining node waits for its peers'
	// shared flows before it announces its routes.
	WarmupTimeout time.Duration `yaml:"warmup_timeout"`
	// LongLivedAfter: the dataplane reports a flow that has lived this
	// long even if its backend did not move (so a later change finds it
	// shared already); Refresh: how often at most it reports it again.
	LongLivedAfter time.Duration `yaml:"long_lived_after"`
	Refresh        time.Duration `yaml:"refresh"`

	// PeerAddrs: Peers parsed, each with its port.
	PeerAddrs []netip.AddrPort `yaml:"-"`
}

// FlowMulticast: the group flows are sent to and the interface it is
// joined on.
type FlowMulticast struct {
	Group     netip.Addr `yaml:"group"`
	Interface string     `yaml:"interface"`
}

// Flow sharing defaults.
const (
	DefaultFlowSharingPort    = 7785
	DefaultFlowMaxRate        = 50000
	DefaultFlowBatchInterval  = 5 * time.Millisecond
	DefaultFlowWarmupTimeout  = 2 * time.Second
	DefaultFlowLongLivedAfter = 10 * time.Second
	DefaultFlowRefresh        = 30 * time.Second
)

func (d *decoder) flowSharingDefaults(c *Config) {
	fs := c.FlowSharing
	if fs == nil {
		return
	}
	fs.Listen = fs.Listen.Unmap()
	if fs.Multicast != nil {
		fs.Multicast.Group = fs.Multicast.Group.Unmap()
	}
	// An explicit 0 is an error (validate), not a request for the default.
	written := func(f string) bool { return d.written("flow_sharing." + f) }
	if !written("port") {
		fs.Port = DefaultFlowSharingPort
	}
	if !written("max_rate") {
		fs.MaxRate = DefaultFlowMaxRate
	}
	if !written("batch_interval") {
		fs.BatchInterval = DefaultFlowBatchInterval
	}
	if !written("warmup_timeout") {
		fs.WarmupTimeout = DefaultFlowWarmupTimeout
	}
	if !written("long_lived_after") {
		fs.LongLivedAfter = DefaultFlowLongLivedAfter
	}
	if !written("refresh") {
		fs.Refresh = DefaultFlowRefresh
	}
}

func (d *decoder) validateFlowSharing(c *Config) {
	fs := c.FlowSharing
	if fs == nil {
		return
	}
	const p = "flow_sharing"
	if fs.Port == 0 {
		d.fail(p+".port", "0 is not a port: want 1-65535 (default %d)", DefaultFlowSharingPort)
	}
	if fs.Listen.IsValid() && fs.Listen.IsMulticast() {
		d.fail(p+".listen", "%s is a multicast address: use multicast.group", fs.Listen)
	}
	switch {
	case len(fs.Peers) == 0 && fs.Multicast == nil:
		d.fail(p, "needs peers (the other nodes' addresses) or multicast (group and interface)")
	case len(fs.Peers) > 0 && fs.Multicast != nil:
		d.fail(p+".multicast", "peers and multicast are exclusive: pick one")
	}
	seen := map[netip.AddrPort]int{}
	for i, s := range fs.Peers {
		ip := fmt.Sprintf("%s.peers[%d]", p, i)
		ap, err := parsePeer(s, fs.Port)
		if err != nil {
			d.fail(ip, "%q is not an address or address:port", s)
			continue
		}
		a := ap.Addr()
		switch {
		case a.IsUnspecified() || a.IsMulticast():
			d.fail(ip, "%s is not a node's unicast address", a)
			continue
		case ap.Port() == 0:
			if fs.Port != 0 { // else port's own error says it
				d.fail(ip, "port 0")
			}
			continue
		case fs.Listen.IsValid() && !fs.Listen.IsUnspecified() && a.Is4() != fs.Listen.Is4():
			d.fail(ip, "%s is not of listen's family (%s)", a, fs.Listen)
			continue
		}
		if j, dup := seen[ap]; dup {
			d.fail(ip, "%s is listed twice (also peers[%d])", ap, j)
			continue
		}
		seen[ap] = i
		fs.PeerAddrs = append(fs.PeerAddrs, ap)
	}
	if m := fs.Multicast; m != nil {
		if !m.Group.IsValid() {
			d.fail(p+".multicast.group", "required")
		} else if !m.Group.IsMulticast() {
			d.fail(p+".multicast.group", "%s is not a multicast address", m.Group)
		}
		if m.Interface == "" {
			d.fail(p+".multicast.interface", "required: the interface the group is joined on")
		}
		if fs.Listen.IsValid() {
			d.fail(p+".listen", "not used with multicast (the group's port is bound on every address)")
		}
	}
	switch {
	case fs.KeyFile == "":
		d.fail(p+".key_file", "required: a file holding the shared secret (openssl rand -base64 48)")
	case !filepath.IsAbs(fs.KeyFile):
		d.fail(p+".key_file", "%q is not an absolute path", fs.KeyFile)
	default:
		if _, err := flowshare.LoadKey(fs.KeyFile); err != nil {
			d.fail(p+".key_file", "%v", err)
		}
	}
	if fs.MaxRate < 1 || fs.MaxRate > 10_000_000 {
		d.fail(p+".max_rate", "%d flows/s, want 1-10000000", fs.MaxRate)
	}
	durationIn(d, p+".batch_interval", fs.BatchInterval, 100*time.Microsecond, time.Second)
	durationIn(d, p+".warmup_timeout", fs.WarmupTimeout, 10*time.Millisecond, 10*time.Minute)
	durationIn(d, p+".long_lived_after", fs.LongLivedAfter, time.Second, time.Hour)
	durationIn(d, p+".refresh", fs.Refresh, time.Second, time.Hour)
}

// parsePeer takes "addr" (with the default port) or "addr:port"
// ("[v6]:port" for IPv6).
func parsePeer(s string, port uint16) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return netip.AddrPort{}, fmt.Errorf("zone")
		}
		return netip.AddrPortFrom(a.Unmap(), port), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Addr().Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("%q: %w", s, strconv.ErrSyntax)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
