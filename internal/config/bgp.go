package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// BGP is the `bgp:` section: this node's speaker, its peers and what it
// announces. Nil when the section is absent (no BGP).
//
// Every node of an active-active group announces the same VIPs as /32 or
// /128 routes; the upstream routers spread flows over the nodes by ECMP.
// A node announces a VIP only while it can serve it (see vip/bgp's Health).
type BGP struct {
	// ASN is this node's autonomous system number.
	ASN uint32 `yaml:"asn"`
	// RouterID is the BGP identifier, written as an IPv4 address. It is
	// required and never derived from an interface address: it must be
	// unique among the routers' peers and stable across restarts, and an
	// address picked at start (which may change with the addresses or
	// their order) would silently break both.
	RouterID netip.Addr `yaml:"router_id"`
	// ListenPort: -1 (the default) listens nowhere; this node dials its
	// routers, which is what they expect of a load balancer. A port is
	// needed for passive peers (and tests).
	ListenPort int       `yaml:"listen_port"`
	Peers      []BGPPeer `yaml:"peers"`
	// VIPs restricts and decorates what is announced. Empty: the VIP of
	// every service is announced, without communities or MED.
	VIPs []BGPVIP `yaml:"vips"`
	// AnnounceAfter: how long a VIP must be continuously healthy before
	// it is (re)announced (default 1s). A withdrawal is immediate. The
	// first announcement after start waits for the warm-up instead.
	AnnounceAfter time.Duration `yaml:"announce_after"`
	// Damping grows the wait before re-announcing a VIP that keeps
	// flapping: every route change reshuffles ECMP upstream.
	Damping BGPDamping `yaml:"damping"`
	// WithdrawOnStop (default true): on SIGTERM withdraw every route, keep
	// forwarding for DrainHold, then close the sessions. False closes the
	// sessions at once (the routers withdraw on their own).
	WithdrawOnStop bool `yaml:"withdraw_on_stop"`
	// DrainHold (default 10s): how long forwarding goes on after the
	// routes are withdrawn by drain-node or stop, so that flows the routers
	// still send here (until they have processed the withdrawal) are served.
	DrainHold time.Duration `yaml:"drain_hold"`
	// GracefulRestart (RFC 4724), default false. Off on purpose: with it a
	// router keeps a dead node's routes (and sends it traffic) for the
	// whole restart time, while ECMP needs a dead node's routes gone at
	// once so that the surviving nodes take its flows. Only turn it on
	// when keepbitd restarts must not move flows and node deaths are rare.
	GracefulRestart bool `yaml:"graceful_restart"`
}

// BGPDamping: after a VIP was withdrawn because it failed, it must be
// healthy for announce_after before it is announced again; each further
// failure within Window doubles that wait, up to MaxHoldDown. A VIP that
// stays announced for Window is forgiven.
type BGPDamping struct {
	Window      time.Duration `yaml:"window"`        // default 60s
	MaxHoldDown time.Duration `yaml:"max_hold_down"` // default 60s
}

// BGPPeer is one router this node peers with.
type BGPPeer struct {
	Address netip.Addr `yaml:"address"`
	ASN     uint32     `yaml:"asn"`  // equal to bgp.asn: iBGP
	Port    uint16     `yaml:"port"` // default 179
	// HoldTime: default 9s; 0 (no keepalives, no hold timer) or 3s to
	// 65535s in whole seconds. BFD, not this, is the fast detector.
	HoldTime  time.Duration `yaml:"hold_time"`
	Keepalive time.Duration `yaml:"keepalive"` // default hold_time/3
	Password  string        `yaml:"password"`  // TCP MD5 (RFC 2385)
	// Passive: wait for the router to connect (needs bgp.listen_port).
	Passive bool `yaml:"passive"`
	// BFD: tear the session down as soon as BFD says the router is gone.
	BFD *BGPBFD `yaml:"bfd"`
	// NextHop: at most one address per family. Default for routes of the
	// session's family: this node's own address on the session (the
	// address on the interface that reaches this peer, known once
	// connected). Routes of the other family are sent to this peer only
	// if a next hop of that family is listed here.
	NextHop []netip.Addr `yaml:"next_hop"`
	// LocalAddress: the source address of the session (default: the
	// kernel's choice for the route to the peer).
	LocalAddress netip.Addr `yaml:"local_address"`
}

// BGPBFD: RFC 5880 asynchronous mode timers for one peer.
type BGPBFD struct {
	MinTx      time.Duration `yaml:"min_tx"`     // default 100ms
	MinRx      time.Duration `yaml:"min_rx"`     // default 100ms
	Multiplier int           `yaml:"multiplier"` // default 3
}

// BGPVIP decorates the route of one VIP.
type BGPVIP struct {
	Address     netip.Addr `yaml:"address"`
	Communities []string   `yaml:"communities"` // "65000:100", no-export, no-advertise, no-export-subconfed
	// LargeCommunities (RFC 8092): "65000:1:2".
	LargeCommunities []string `yaml:"large_communities"`
	MED              *uint32  `yaml:"med"` // absent: no MED attribute

	// Parsed forms of the above, filled by validation.
	CommunityValues []uint32         `yaml:"-"`
	LargeValues     []LargeCommunity `yaml:"-"`
}

// LargeCommunity is one RFC 8092 large community.
type LargeCommunity struct{ Global, Local1, Local2 uint32 }

// Announced lists the VIPs to announce with their decorations: the listed
// ones, or (none listed) every service VIP, in service order.
func (b *BGP) Announced(c *Config) []BGPVIP {
	if len(b.VIPs) > 0 {
		return b.VIPs
	}
	var out []BGPVIP
	seen := map[netip.Addr]bool{}
	for _, s := range c.Services {
		if !seen[s.VIP] {
			seen[s.VIP] = true
			out = append(out, BGPVIP{Address: s.VIP})
		}
	}
	return out
}

// NextHopFor returns the peer's explicit next hop of fam's family (invalid
// when none is listed).
func (p *BGPPeer) NextHopFor(fam netip.Addr) netip.Addr {
	for _, a := range p.NextHop {
		if a.Is4() == fam.Is4() {
			return a
		}
	}
	return netip.Addr{}
}

func (d *decoder) bgpDefaults(c *Config) {
	b := c.BGP
	if b == nil {
		return
	}
	if !d.written("bgp.listen_port") {
		b.ListenPort = -1
	}
	if b.AnnounceAfter == 0 && !d.written("bgp.announce_after") {
		b.AnnounceAfter = time.Second
	}
	if b.Damping.Window == 0 && !d.written("bgp.damping.window") {
		b.Damping.Window = 60 * time.Second
	}
	if b.Damping.MaxHoldDown == 0 && !d.written("bgp.damping.max_hold_down") {
		b.Damping.MaxHoldDown = 60 * time.Second
	}
	if !d.written("bgp.withdraw_on_stop") {
		b.WithdrawOnStop = true
	}
	if b.DrainHold == 0 && !d.written("bgp.drain_hold") {
		b.DrainHold = 10 * time.Second
	}
	for i := range b.Peers {
		p := &b.Peers[i]
		path := fmt.Sprintf("bgp.peers[%d]", i)
		p.Address = p.Address.Unmap()
		p.LocalAddress = p.LocalAddress.Unmap()
		for j := range p.NextHop {
			p.NextHop[j] = p.NextHop[j].Unmap()
		}
		if p.Port == 0 && !d.written(path+".port") {
			p.Port = 179
		}
		if p.HoldTime == 0 && !d.written(path+".hold_time") {
			p.HoldTime = 9 * time.Second
		}
		if p.Keepalive == 0 && !d.written(path+".keepalive") {
			p.Keepalive = (p.HoldTime / 3).Truncate(time.Second)
		}
		if f := p.BFD; f != nil {
			if f.MinTx == 0 {
				f.MinTx = 100 * time.Millisecond
			}
			if f.MinRx == 0 {
				f.MinRx = 100 * time.Millisecond
			}
			if f.Multiplier == 0 {
				f.Multiplier = 3
			}
		}
	}
	for i := range b.VIPs {
		b.VIPs[i].Address = b.VIPs[i].Address.Unmap()
	}
}

func (d *decoder) validateBGP(c *Config) {
	b := c.BGP
	if b == nil {
		return
	}
	asn := func(path string, v uint32) {
		switch v {
		case 0:
			d.fail(path, "required, 1-4294967294")
		case 23456:
			d.fail(path, "23456 is AS_TRANS (RFC 6793), not an AS number")
		case 65535, 4294967295:
			d.fail(path, "%d is reserved (RFC 7300)", v)
		}
	}
	asn("bgp.asn", b.ASN)
	switch {
	case !b.RouterID.IsValid():
		d.fail("bgp.router_id", "required: an IPv4 address unique among the routers' peers (not derived, so that it stays stable)")
	case !b.RouterID.Is4():
		d.fail("bgp.router_id", "%s: the router ID is written as an IPv4 address", b.RouterID)
	case b.RouterID.IsUnspecified() || b.RouterID.IsMulticast() || b.RouterID == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		d.fail("bgp.router_id", "%s cannot be a router ID", b.RouterID)
	}
	if b.ListenPort != -1 && (b.ListenPort < 1 || b.ListenPort > 65535) {
		d.fail("bgp.listen_port", "%d: want -1 (do not listen) or 1-65535", b.ListenPort)
	}
	if b.AnnounceAfter > time.Hour {
		d.fail("bgp.announce_after", "%v, at most 1h", b.AnnounceAfter)
	}
	if b.Damping.Window < 0 || b.Damping.Window > 24*time.Hour {
		d.fail("bgp.damping.window", "%v, at most 24h", b.Damping.Window)
	}
	if b.Damping.MaxHoldDown < b.AnnounceAfter || b.Damping.MaxHoldDown > 24*time.Hour {
		d.fail("bgp.damping.max_hold_down", "%v: want from announce_after (%v) to 24h", b.Damping.MaxHoldDown, b.AnnounceAfter)
	}
	if b.DrainHold > time.Hour {
		d.fail("bgp.drain_hold", "%v, at most 1h", b.DrainHold)
	}
	if len(b.Peers) == 0 {
		d.fail("bgp.peers", "at least one peer is required")
	}
	peers := map[netip.Addr]int{}
	carries := map[bool]bool{} // is4 -> some peer carries that family
	vips := map[netip.Addr]string{}
	for _, s := range c.Services {
		if s.VIP.IsValid() {
			vips[s.VIP.Unmap()] = s.Name
		}
	}
	for i := range b.Peers {
		p := &b.Peers[i]
		path := fmt.Sprintf("bgp.peers[%d]", i)
		if !p.Address.IsValid() {
			d.fail(path+".address", "required")
		} else if j, dup := peers[p.Address]; dup {
			d.fail(path+".address", "%s is already bgp.peers[%d]", p.Address, j)
		} else {
			peers[p.Address] = i
			if p.Address.IsUnspecified() || p.Address.IsMulticast() {
				d.fail(path+".address", "%s is not a unicast address", p.Address)
			} else if name, ok := vips[p.Address.Unmap()]; ok {
				// The session would follow the route it carries: a
				// withdrawal cuts the session that should carry it.
				d.fail(path+".address", "%s is the VIP of service %s, not a router", p.Address, name)
			}
			carries[p.Address.Is4()] = true
		}
		asn(path+".asn", p.ASN)
		if p.Port == 0 {
			d.fail(path+".port", "0, want 1-65535")
		}
		holdOK := false
		switch {
		case p.HoldTime%time.Second != 0:
			d.fail(path+".hold_time", "%v: BGP counts whole seconds", p.HoldTime)
		case p.HoldTime != 0 && (p.HoldTime < 3*time.Second || p.HoldTime > 65535*time.Second):
			d.fail(path+".hold_time", "%v: want 0 (no hold timer) or 3s to 65535s (RFC 4271)", p.HoldTime)
		default:
			holdOK = true
		}
		switch {
		case !holdOK: // the keepalive follows from it; one error is enough
		case p.Keepalive%time.Second != 0:
			d.fail(path+".keepalive", "%v: BGP counts whole seconds", p.Keepalive)
		case p.HoldTime == 0 && p.Keepalive != 0:
			d.fail(path+".keepalive", "%v with hold_time 0: no keepalives are sent without a hold timer", p.Keepalive)
		case p.HoldTime != 0 && (p.Keepalive < time.Second || p.Keepalive >= p.HoldTime):
			d.fail(path+".keepalive", "%v: want 1s or more, shorter than hold_time %v", p.Keepalive, p.HoldTime)
		}
		if len(p.Password) > 80 {
			d.fail(path+".password", "%d characters, at most 80 (TCP MD5 key)", len(p.Password))
		}
		if p.Passive && b.ListenPort == -1 {
			d.fail(path+".passive", "a passive peer needs bgp.listen_port: nothing listens for it")
		}
		if p.LocalAddress.IsValid() && p.Address.IsValid() && p.LocalAddress.Is4() != p.Address.Is4() {
			d.fail(path+".local_address", "%s is not of the peer address's family", p.LocalAddress)
		}
		fams := map[bool]bool{}
		for j, a := range p.NextHop {
			jp := fmt.Sprintf("%s.next_hop[%d]", path, j)
			switch {
			case fams[a.Is4()]:
				d.fail(jp, "%s: a second next hop of the same family (one per family)", a)
			case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() && !(p.Address.IsValid() && p.Address.IsLoopback()):
				d.fail(jp, "%s is not a usable next hop", a)
			}
			fams[a.Is4()] = true
			if p.Address.IsValid() && a.Is4() != p.Address.Is4() {
				carries[a.Is4()] = true
			}
		}
		if f := p.BFD; f != nil {
			interval := func(field string, v time.Duration) {
				if v < 10*time.Millisecond || v > 60*time.Second || v%time.Millisecond != 0 {
					d.fail(path+".bfd."+field, "%v: want whole milliseconds from 10ms to 60s", v)
				}
			}
			interval("min_tx", f.MinTx)
			interval("min_rx", f.MinRx)
			if f.Multiplier < 1 || f.Multiplier > 255 {
				d.fail(path+".bfd.multiplier", "%d, want 1-255", f.Multiplier)
			}
		}
	}

	serviceVIPs := map[netip.Addr]bool{}
	for _, s := range c.Services {
		serviceVIPs[s.VIP] = true
	}
	listed := map[netip.Addr]int{}
	for i := range b.VIPs {
		v := &b.VIPs[i]
		path := fmt.Sprintf("bgp.vips[%d]", i)
		switch j, dup := listed[v.Address]; {
		case !v.Address.IsValid():
			d.fail(path+".address", "required")
		case dup:
			d.fail(path+".address", "%s is already bgp.vips[%d]", v.Address, j)
		case !serviceVIPs[v.Address]:
			d.fail(path+".address", "%s is not the VIP of any service", v.Address)
		case len(b.Peers) > 0 && !carries[v.Address.Is4()]:
			d.fail(path+".address", "%s: no peer carries %s routes (a peer of that family, or a next_hop of that family on a peer)", v.Address, family(v.Address))
		}
		if v.Address.IsValid() {
			listed[v.Address] = i
		}
		v.CommunityValues = v.CommunityValues[:0]
		for j, s := range v.Communities {
			cv, err := ParseCommunity(s)
			if err != nil {
				d.fail(fmt.Sprintf("%s.communities[%d]", path, j), "%v", err)
				continue
			}
			v.CommunityValues = append(v.CommunityValues, cv)
		}
		v.LargeValues = v.LargeValues[:0]
		for j, s := range v.LargeCommunities {
			lv, err := ParseLargeCommunity(s)
			if err != nil {
				d.fail(fmt.Sprintf("%s.large_communities[%d]", path, j), "%v", err)
				continue
			}
			v.LargeValues = append(v.LargeValues, lv)
		}
	}
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// Well-known communities (RFC 1997).
var wellKnownCommunities = map[string]uint32{
	"no-export":           0xFFFFFF01,
	"no-advertise":        0xFFFFFF02,
	"no-export-subconfed": 0xFFFFFF03,
}

// ParseCommunity reads "ASN:value" (each 0-65535) or a well-known name.
func ParseCommunity(s string) (uint32, error) {
	if v, ok := wellKnownCommunities[s]; ok {
		return v, nil
	}
	parts := strings.Split(s, ":")
	if len(parts) != 2 {
		return 0, fmt.Errorf("%q is not a community like 65000:100 or no-export", s)
	}
	var v [2]uint64
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("%q: each half of a community is a number from 0 to 65535", s)
		}
		v[i] = n
	}
	return uint32(v[0]<<16 | v[1]), nil
}

// ParseLargeCommunity reads "global:local1:local2" (each 0-4294967295).
func ParseLargeCommunity(s string) (LargeCommunity, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return LargeCommunity{}, fmt.Errorf("%q is not a large community like 65000:1:2", s)
	}
	var v [3]uint32
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 32)
		if err != nil {
			return LargeCommunity{}, fmt.Errorf("%q: each part of a large community is a number from 0 to 4294967295", s)
		}
		v[i] = uint32(n)
	}
	return LargeCommunity{v[0], v[1], v[2]}, nil
}
