package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

const bgpHead = `interfaces: [{name: eth0}]
services:
  - {name: web, vip: 192.0.2.10, port: 80}
  - {name: web6, vip: "2001:db8::10", port: 80}
  - {name: dns, vip: 192.0.2.53, port: 53, protocol: udp}
`

func TestBGPDefaults(t *testing.T) {
	c, err := Parse("k.yaml", []byte(bgpHead+`bgp:
  asn: 65001
  router_id: 10.0.0.2
  peers:
    - {address: 10.0.0.1, asn: 65000}
`))
	if err != nil {
		t.Fatal(err)
	}
	b := c.BGP
	want := BGP{
		ASN: 65001, RouterID: netip.MustParseAddr("10.0.0.2"), ListenPort: -1,
		Peers:          []BGPPeer{{Address: netip.MustParseAddr("10.0.0.1"), ASN: 65000, Port: 179, HoldTime: 9 * time.Second, Keepalive: 3 * time.Second}},
		AnnounceAfter:  time.Second,
		Damping:        BGPDamping{Window: time.Minute, MaxHoldDown: time.Minute},
		WithdrawOnStop: true, DrainHold: 10 * time.Second,
	}
	if !reflect.DeepEqual(*b, want) {
		t.Fatalf("got  %+v\nwant %+v", *b, want)
	}
	// No vips listed: every service VIP, once, in service order.
	var got []string
	for _, v := range b.Announced(c) {
		got = append(got, v.Address.String())
	}
	if strings.Join(got, " ") != "192.0.2.10 2001:db8::10 192.0.2.53" {
		t.Errorf("announced %v", got)
	}
}

func TestBGPFull(t *testing.T) {
	c, err := Parse("k.yaml", []byte(bgpHead+`bgp:
  asn: 65001
  router_id: 10.0.0.2
  listen_port: 1790
  announce_after: 2s
  damping: {window: 5m, max_hold_down: 2m}
  withdraw_on_stop: false
  drain_hold: 0s
  graceful_restart: true
  peers:
    - address: 10.0.0.1
      asn: 65000
      port: 1179
      hold_time: 0s
      password: secret
      passive: true
      bfd: {min_tx: 10ms, multiplier: 5}
      next_hop: [10.0.0.20, "2001:db8:1::20"]
      local_address: "::ffff:10.0.0.2"
    - {address: "fe80::1", asn: 65001, hold_time: 30s, keepalive: 5s}
  vips:
    - address: 192.0.2.10
      communities: ["65000:100", no-export]
      large_communities: ["65000:1:4294967295"]
      med: 0
    - {address: "2001:db8::10"}
`))
	if err != nil {
		t.Fatal(err)
	}
	b := c.BGP
	if b.ListenPort != 1790 || b.AnnounceAfter != 2*time.Second || b.Damping.Window != 5*time.Minute || b.Damping.MaxHoldDown != 2*time.Minute ||
		b.WithdrawOnStop || b.DrainHold != 0 || !b.GracefulRestart {
		t.Errorf("globals %+v", b)
	}
	p := b.Peers[0]
	if p.Port != 1179 || p.HoldTime != 0 || p.Keepalive != 0 || p.Password != "secret" || !p.Passive ||
		*p.BFD != (BGPBFD{MinTx: 10 * time.Millisecond, MinRx: 100 * time.Millisecond, Multiplier: 5}) ||
		p.LocalAddress.String() != "10.0.0.2" {
		t.Errorf("peer 0 %+v", p)
	}
	if nh := p.NextHopFor(netip.MustParseAddr("2001:db8::10")); nh.String() != "2001:db8:1::20" {
		t.Errorf("IPv6 next hop %s", nh)
	}
	if p := b.Peers[1]; p.HoldTime != 30*time.Second || p.Keepalive != 5*time.Second || p.BFD != nil || p.NextHopFor(netip.MustParseAddr("192.0.2.1")).IsValid() {
		t.Errorf("peer 1 %+v", p)
	}
	v := b.Announced(c)
	if len(v) != 2 || *v[0].MED != 0 || v[1].MED != nil ||
		!reflect.DeepEqual(v[0].CommunityValues, []uint32{65000<<16 | 100, 0xFFFFFF01}) ||
		!reflect.DeepEqual(v[0].LargeValues, []LargeCommunity{{65000, 1, 4294967295}}) {
		t.Errorf("vips %+v", v)
	}
}

func TestBGPBadConfigs(t *testing.T) {
	const top = bgpHead + "bgp:\n  asn: 65001\n  router_id: 10.0.0.2\n" // bgp: is line 6
	const peer = "  peers: [{address: 10.0.0.1, asn: 65000}]\n"
	cases := []struct {
		name string
		yaml string
		want []string
	}{
		{"no asn, router id or peers", bgpHead + "bgp: {}\n", []string{
			"k.yaml:6: bgp.asn: required, 1-4294967294",
			"k.yaml:6: bgp.router_id: required: an IPv4 address unique among the routers' peers (not derived, so that it stays stable)",
			"k.yaml:6: bgp.peers: at least one peer is required",
		}},
		{"AS_TRANS", bgpHead + "bgp:\n  asn: 23456\n  router_id: 10.0.0.2\n" + peer, []string{"k.yaml:7: bgp.asn: 23456 is AS_TRANS (RFC 6793), not an AS number"}},
		{"ASN too large", bgpHead + "bgp:\n  asn: 4294967296\n  router_id: 10.0.0.2\n" + peer, []string{`k.yaml:7: bgp.asn: "4294967296" is not a whole number from 0 to 4294967295`}},
		{"reserved peer ASN", top + "  peers: [{address: 10.0.0.1, asn: 65535}]\n", []string{"k.yaml:9: bgp.peers[0].asn: 65535 is reserved (RFC 7300)"}},
		{"IPv6 router id", bgpHead + "bgp:\n  asn: 65001\n  router_id: \"2001:db8::2\"\n" + peer, []string{"k.yaml:8: bgp.router_id: 2001:db8::2: the router ID is written as an IPv4 address"}},
		{"zero router id", bgpHead + "bgp:\n  asn: 65001\n  router_id: 0.0.0.0\n" + peer, []string{"k.yaml:8: bgp.router_id: 0.0.0.0 cannot be a router ID"}},
		{"listen port", top + "  listen_port: 0\n" + peer, []string{"k.yaml:9: bgp.listen_port: 0: want -1 (do not listen) or 1-65535"}},
		{"duplicate peer", top + "  peers:\n    - {address: 10.0.0.1, asn: 65000}\n    - {address: \"::ffff:10.0.0.1\", asn: 65000}\n",
			[]string{"k.yaml:11: bgp.peers[1].address: 10.0.0.1 is already bgp.peers[0]"}},
		{"peer without address", top + "  peers: [{asn: 65000}]\n", []string{"k.yaml:9: bgp.peers[0].address: required"}},
		{"peer is a vip", top + "  peers:\n    - {address: 10.0.0.1, asn: 65000}\n    - {address: \"2001:db8::10\", asn: 65000}\n",
			[]string{"k.yaml:11: bgp.peers[1].address: 2001:db8::10 is the VIP of service web6, not a router"}},
		{"hold time too short", top + "  peers:\n    - {address: 10.0.0.1, asn: 65000, hold_time: 2s}\n",
			[]string{"k.yaml:10: bgp.peers[0].hold_time: 2s: want 0 (no hold timer) or 3s to 65535s (RFC 4271)"}},
		{"hold time fraction", top + "  peers:\n    - {address: 10.0.0.1, asn: 65000, hold_time: 4500ms}\n",
			[]string{"k.yaml:10: bgp.peers[0].hold_time: 4.5s: BGP counts whole seconds"}},
		{"keepalive not below hold", top + "  peers:\n    - {address: 10.0.0.1, asn: 65000, hold_time: 3s, keepalive: 3s}\n",
			[]string{"k.yaml:10: bgp.peers[0].keepalive: 3s: want 1s or more, shorter than hold_time 3s"}},
		{"keepalive without hold", top + "  peers:\n    - {address: 10.0.0.1, asn: 65000, hold_time: 0s, keepalive: 1s}\n",
			[]string{"k.yaml:10: bgp.peers[0].keepalive: 1s with hold_time 0: no keepalives are sent without a hold timer"}},
		{"passive without listener", top + "  peers:\n    - address: 10.0.0.1\n      asn: 65000\n      passive: true\n",
			[]string{"k.yaml:12: bgp.peers[0].passive: a passive peer needs bgp.listen_port: nothing listens for it"}},
		{"local address family", top + "  peers:\n    - address: 10.0.0.1\n      asn: 65000\n      local_address: \"2001:db8::2\"\n",
			[]string{"k.yaml:12: bgp.peers[0].local_address: 2001:db8::2 is not of the peer address's family"}},
		{"two next hops of a family", top + "  peers:\n    - address: 10.0.0.1\n      asn: 65000\n      next_hop: [10.0.0.5, 10.0.0.6]\n",
			[]string{"k.yaml:12: bgp.peers[0].next_hop[1]: 10.0.0.6: a second next hop of the same family (one per family)"}},
		{"bfd bounds", top + "  peers:\n    - address: 10.0.0.1\n      asn: 65000\n      bfd: {min_tx: 5ms, min_rx: 100500us, multiplier: 256}\n", []string{
			"k.yaml:12: bgp.peers[0].bfd.min_tx: 5ms: want whole milliseconds from 10ms to 60s",
			"k.yaml:12: bgp.peers[0].bfd.min_rx: 100.5ms: want whole milliseconds from 10ms to 60s",
			"k.yaml:12: bgp.peers[0].bfd.multiplier: 256, want 1-255",
		}},
		{"VIP no service has", top + peer + "  vips: [{address: 192.0.2.99}]\n", []string{"k.yaml:10: bgp.vips[0].address: 192.0.2.99 is not the VIP of any service"}},
		{"VIP listed twice", top + peer + "  vips:\n    - address: 192.0.2.10\n    - address: 192.0.2.10\n", []string{"k.yaml:12: bgp.vips[1].address: 192.0.2.10 is already bgp.vips[0]"}},
		{"IPv6 VIP without an IPv6 peer or next hop", top + peer + "  vips: [{address: \"2001:db8::10\"}]\n",
			[]string{"k.yaml:10: bgp.vips[0].address: 2001:db8::10: no peer carries IPv6 routes (a peer of that family, or a next_hop of that family on a peer)"}},
		{"communities", top + peer + "  vips:\n    - address: 192.0.2.10\n      communities: [\"65000\", \"65536:1\", no-such]\n      large_communities: [\"1:2\", \"1:2:x\"]\n", []string{
			`k.yaml:12: bgp.vips[0].communities[0]: "65000" is not a community like 65000:100 or no-export`,
			`k.yaml:12: bgp.vips[0].communities[1]: "65536:1": each half of a community is a number from 0 to 65535`,
			`k.yaml:12: bgp.vips[0].communities[2]: "no-such" is not a community like 65000:100 or no-export`,
			`k.yaml:13: bgp.vips[0].large_communities[0]: "1:2" is not a large community like 65000:1:2`,
			`k.yaml:13: bgp.vips[0].large_communities[1]: "1:2:x": each part of a large community is a number from 0 to 4294967295`,
		}},
		{"MED out of range", top + peer + "  vips: [{address: 192.0.2.10, med: -1}]\n", []string{`k.yaml:10: bgp.vips[0].med: "-1" is not a whole number from 0 to 4294967295`}},
		{"damping below announce_after", top + peer + "  announce_after: 10s\n  damping: {max_hold_down: 5s}\n",
			[]string{"k.yaml:11: bgp.damping.max_hold_down: 5s: want from announce_after (10s) to 24h"}},
		{"unknown peer field", top + "  peers: [{address: 10.0.0.1, asn: 65000, nexthop: 10.0.0.5}]\n",
			[]string{"k.yaml:9: bgp.peers[0].nexthop: unknown field (known: address, asn, bfd, hold_time, keepalive, local_address, next_hop, passive, password, port)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("k.yaml", []byte(c.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Fatalf("errors:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
			}
		})
	}
}
