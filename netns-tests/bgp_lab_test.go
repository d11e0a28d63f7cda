package netnstests

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/connload"
	nslab "github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// The BGP lab (issue 8): active-active Keepbit nodes behind an ECMP router.
//
//	client 10.90.0.2 --- cl0 10.90.0.1 [router: BIRD 2, ECMP over the nodes,
//	                                    L4 multipath hash] eth0 10.91.0.1
//	                                          |
//	                           bridge (switch namespace, 10.91.0.0/24)
//	           |                 |                 |                |
//	    n1 .11 keepbitd   n2 .12 keepbitd   n3 .13 keepbitd   b1 .21 b2 .22 b3 .23 (b4 .24 spare)
//
// Every node announces the VIP to the router (BGP, optional BFD); the
// router spreads flows over the announcing nodes; a node's XDP program
// sends each flow to a backend on the bridge, which holds the VIP on lo
// and answers the client directly through the router (DSR). Failures are
// injected at a node's bridge port (every frame dropped, links up), by
// SIGSTOP, by SIGKILL, or by draining.
const (
	bgpVIP      = "10.90.9.9"
	bgpPort     = 8080
	bgpRouter   = "10.91.0.1"
	bgpRouterAS = 65000
	bgpNodeAS   = 65001
)

// bfdTimers are one side's BFD timers (the same on both sides here).
type bfdTimers struct {
	interval time.Duration
	mult     int
}

type bgpLabOpts struct {
	nodes    int // Keepbit nodes (default 3)
	spare    int // nodes created but not started (for "node added")
	backends int // backends in the config (default 3)
	extra    int // backends serving but not in the config (for "backend added")
	// bgp: the nodes' configs carry a bgp: section (keepbitd announces the
	// VIP); without it the router needs a static route (staticRoute).
	bgp bool
	// bfd: BFD on every session with these timers; nil: BGP timers only.
	bfd *bfdTimers
	// hold is the BGP hold time (default 3s, the least BIRD takes).
	hold        time.Duration
	flowSharing bool
}

type bgpLab struct {
	t        testing.TB
	opts     bgpLabOpts
	sw       *nslab.Lab
	dir      string
	client   netns.NsHandle
	router   *nslab.Host
	bird     *nslab.BIRD
	nodes    []*bgpNode
	backends []*bgpBackend
	inConfig int // backends[:inConfig] are in the nodes' configs
}

type bgpNode struct {
	name, addr string
	host       *nslab.Host
	dir, cfg   string
	d          *daemon
	undrop     func() error
}

type bgpBackend struct {
	name, addr string
	host       *nslab.Host
	srv        *connload.Server
}

func newBGPLab(t testing.TB, o bgpLabOpts) *bgpLab {
	privtest.Require(t)
	if _, err := exec.LookPath("bird"); err != nil {
		t.Fatalf("bird: %v (make test-deps installs bird2)", err)
	}
	if o.nodes == 0 {
		o.nodes = 3
	}
	if o.backends == 0 {
		o.backends = 3
	}
	if o.hold == 0 {
		o.hold = 3 * time.Second
	}
	sw, err := nslab.New()
	must(t, err, "lab")
	t.Cleanup(sw.Close)
	l := &bgpLab{t: t, opts: o, sw: sw, dir: t.TempDir(), client: privtest.NewNS(t), inConfig: o.backends}

	l.router, err = sw.Host("router", "eth0", bgpRouter+"/24")
	must(t, err, "router")
	_, err = nslab.NewVeth(nslab.VethEnd{NS: l.router.NS, Name: "cl0", Addrs: []string{"10.90.0.1/24"}},
		nslab.VethEnd{NS: l.client, Name: "eth0", Addrs: []string{"10.90.0.2/24"}})
	must(t, err, "client link")
	undoHash, err := nslab.ClearHash(l.router.NS, "cl0")
	must(t, err, "router hashes on the 5-tuple")
	t.Cleanup(func() { undoHash() })
	must(t, nslab.SetUp(l.client, "lo"), "client lo")
	must(t, nslab.AddRoute(l.client, "default", "10.90.0.1"), "client default route")
	// L4 hashing: the flows of one client spread over the nodes.
	must(t, l.router.Sysctl(map[string]string{
		"net/ipv4/ip_forward":                  "1",
		"net/ipv4/fib_multipath_hash_policy":   "1",
		"net/ipv4/conf/all/rp_filter":          "0",
		"net/ipv4/conf/eth0/rp_filter":         "0",
		"net/ipv4/conf/all/send_redirects":     "0",
		"net/ipv4/conf/eth0/send_redirects":    "0",
		"net/ipv4/conf/default/send_redirects": "0",
	}), "router sysctl")
	// The nodes' XDP sends frames on (XDP_TX) without finishing their
	// checksums: the router, which forwards the client's packets, must.
	must(t, l.router.Do(func() error { return nslab.TxChecksumOff("eth0") }), "router checksum offload")
	must(t, nslab.InNS(l.client, func() error { return nslab.TxChecksumOff("eth0") }), "client checksum offload")

	for i := range o.backends + o.extra {
		name, addr := fmt.Sprintf("b%d", i+1), fmt.Sprintf("10.91.0.%d", 21+i)
		h, err := sw.Host(name, "eth0", addr+"/24")
		must(t, err, name)
		must(t, h.Sysctl(map[string]string{"net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2"}), "backend sysctl")
		must(t, nslab.AddAddrs(h.NS, "lo", bgpVIP+"/32"), "VIP on backend lo")
		must(t, nslab.AddRoute(h.NS, "default", bgpRouter), "backend default route")
		srv, err := connload.Listen(h.NS, fmt.Sprintf(":%d", bgpPort), name)
		must(t, err, "backend server")
		t.Cleanup(func() { srv.Close() })
		l.backends = append(l.backends, &bgpBackend{name: name, addr: addr, host: h, srv: srv})
	}
	for i := range o.nodes + o.spare {
		name, addr := fmt.Sprintf("n%d", i+1), fmt.Sprintf("10.91.0.%d", 11+i)
		h, err := sw.Host(name, "eth0", addr+"/24")
		must(t, err, name)
		n := &bgpNode{name: name, addr: addr, host: h, dir: filepath.Join(l.dir, name)}
		must(t, os.MkdirAll(n.dir, 0o700), "node dir")
		l.nodes = append(l.nodes, n)
	}
	// After every node exists: flow sharing lists the other nodes.
	for _, n := range l.nodes {
		l.writeNodeConfig(n)
	}
	l.startBIRD()
	return l
}

// birdConfig is the router's config: one BGP session per node (the
// router dials), ECMP into the kernel, BFD when asked.
func (l *bgpLab) birdConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, `router id %s;
protocol device { scan time 1; }
protocol kernel kern {
	ipv4 { import none; export all; };
	# One kernel route with a next hop per node: ECMP.
	merge paths yes limit 16;
}
`, bgpRouter)
	bfdOn := ""
	if f := l.opts.bfd; f != nil {
		ms := f.interval.Milliseconds()
		fmt.Fprintf(&b, `protocol bfd {
	interface "eth0" { min rx interval %d ms; min tx interval %d ms; multiplier %d; };
}
`, ms, ms, f.mult)
		bfdOn = "bfd on;"
	}
	hold := int(l.opts.hold.Seconds())
	fmt.Fprintf(&b, `template bgp keepbit {
	local %s as %d;
	# The router dials the nodes (they listen, passive): GoBGP waits 5-10s
	# before each dial of its own, after start and after every session
	# loss, which made a router restart or a BFD flap a long outage.
	connect delay time 1;
	connect retry time 1;
	hold time %d;
	keepalive time %d;
	error wait time 1, 5;
	%s
	ipv4 { import all; export none; };
}
`, bgpRouter, bgpRouterAS, hold, max(1, hold/3), bfdOn)
	for _, n := range l.nodes {
		fmt.Fprintf(&b, "protocol bgp %s from keepbit { neighbor %s as %d; }\n", n.name, n.addr, bgpNodeAS)
	}
	return b.String()
}

func (l *bgpLab) startBIRD() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dir := filepath.Join(l.dir, "bird")
	must(l.t, os.MkdirAll(dir, 0o700), "bird dir")
	b, err := nslab.StartBIRD(ctx, l.router.NS, dir, l.birdConfig())
	must(l.t, err, "start bird")
	l.t.Cleanup(func() { b.Close() })
	must(l.t, b.WaitProtocol(ctx, "kern", "up"), "bird kernel protocol")
	l.bird = b
}

// restartBIRD kills the router's BIRD and starts it again: its kernel
// routes stay in between, as after a routing daemon crash.
func (l *bgpLab) restartBIRD() {
	must(l.t, l.bird.Close(), "stop bird")
	l.startBIRD()
}

// writeNodeConfig writes n's keepbit.yaml: the service with the backends in
// the config, BGP towards the router when the lab has it.
func (l *bgpLab) writeNodeConfig(n *bgpNode) {
	var b strings.Builder
	fmt.Fprintf(&b, `node: {hash_seed: 7, pin_root: %[1]s/bpf, state_dir: %[1]s/state}
interfaces: [{name: eth0}]
api: {socket: %[1]s/keepbit.sock}
metrics: {listen: "off"}
log: {format: json, level: info}
defaults:
  check: {type: tcp, interval: 100ms, timeout: 80ms, rise: 1, fall: 3}
services:
  - name: app
    vip: %[2]s
    port: %[3]d
    backends:
`, n.dir, bgpVIP, bgpPort)
	for _, be := range l.backends[:l.inConfig] {
		fmt.Fprintf(&b, "      - {address: %s}\n", be.addr)
	}
	if l.opts.bgp {
		b.WriteString(l.bgpSection(n))
	}
	if l.opts.flowSharing {
		b.WriteString(l.flowSharingSection(n))
	}
	n.cfg = filepath.Join(n.dir, "keepbit.yaml")
	must(l.t, os.WriteFile(n.cfg, []byte(b.String()), 0o600), "node config")
}

// bgpSection follows internal/config/bgp.go: the node listens and lets
// the router dial (passive: GoBGP's own dials come 5-10s late), announces
// the service VIP, withdraws at once on failure and re-announces after
// 200ms of health.
func (l *bgpLab) bgpSection(n *bgpNode) string {
	hold := l.opts.hold
	s := fmt.Sprintf(`bgp:
  asn: %d
  router_id: %s
  listen_port: 179
  announce_after: 200ms
  drain_hold: 2s
  peers:
    - address: %s
      asn: %d
      passive: true
      hold_time: %s
      keepalive: %s
`, bgpNodeAS, n.addr, bgpRouter, bgpRouterAS, hold, max(time.Second, (hold/3).Truncate(time.Second)))
	if f := l.opts.bfd; f != nil {
		s += fmt.Sprintf("      bfd: {min_tx: %s, min_rx: %s, multiplier: %d}\n", f.interval, f.interval, f.mult)
	}
	return s
}

// flowSharingSection: the nodes share flows with each other by unicast,
// following internal/config/flowshare.go. Long-lived flows are shared
// after 1s (the least the schema takes): the scenarios wait 1.5s after a
// change before they fail a node.
func (l *bgpLab) flowSharingSection(n *bgpNode) string {
	var peers []string
	for _, o := range l.nodes {
		if o != n {
			peers = append(peers, o.addr)
		}
	}
	key := filepath.Join(n.dir, "flow-sharing.key")
	must(l.t, os.WriteFile(key, []byte("keepbit-bgp-lab-shared-flow-key-0123456789"), 0o600), "flow sharing key")
	return fmt.Sprintf(`flow_sharing:
  listen: %s
  peers: [%s]
  key_file: %s
  batch_interval: 2ms
  warmup_timeout: 2s
  long_lived_after: 1s
  refresh: 5s
`, n.addr, strings.Join(peers, ", "), key)
}

// start starts keepbitd on node i and waits until it has found every
// backend of its config up. It asks keepbitctl, not the log: a restarted
// keepbitd adopts a dataplane whose backends are up already, and writes
// (and logs) nothing for them.
func (l *bgpLab) start(i int) *daemon {
	n := l.nodes[i]
	n.d = runDaemonIn(l.t, n.host.NS, n.cfg, n.dir)
	deadline := time.Now().Add(10 * time.Second)
	for {
		js, err := l.ctl(i, "-o", "json", "services")
		up := map[string]bool{}
		var svcs []struct {
			Backends []struct{ Address, State, Health string }
		}
		if err == nil && json.Unmarshal([]byte(js), &svcs) == nil {
			for _, s := range svcs {
				for _, b := range s.Backends {
					up[b.Address] = b.State == "up" && b.Health == "up"
				}
			}
		}
		all := true
		for _, be := range l.backends[:l.inConfig] {
			all = all && up[be.addr]
		}
		if all {
			return n.d
		}
		select {
		case <-n.d.done:
			l.t.Fatalf("keepbitd on %s exited; log:\n%s", n.name, n.d.dump())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("keepbitd on %s: backends not all up within 10s: %s; log:\n%s", n.name, js, n.d.dump())
		}
	}
}

// startAll starts keepbitd on the first opts.nodes nodes.
func (l *bgpLab) startAll() {
	for i := range l.opts.nodes {
		l.start(i)
	}
}

// ctl runs keepbitctl against node i.
func (l *bgpLab) ctl(i int, args ...string) (string, error) {
	full := append([]string{"-socket", filepath.Join(l.nodes[i].dir, "keepbit.sock")}, args...)
	out, err := exec.Command(binary(l.t, "keepbitctl"), full...).CombinedOutput()
	return string(out), err
}

// addBackend puts the next spare backend into every running node's config,
// reloads them and waits until each has it up.
func (l *bgpLab) addBackend() *bgpBackend {
	if l.inConfig == len(l.backends) {
		l.t.Fatal("no spare backend (bgpLabOpts.extra)")
	}
	be := l.backends[l.inConfig]
	l.inConfig++
	for i, n := range l.nodes {
		l.writeNodeConfig(n)
		if n.d == nil {
			continue
		}
		from := n.d.mark()
		out, err := l.ctl(i, "reload")
		must(l.t, err, "reload "+n.name+": "+out)
		n.d.waitLog(l.t, from, 10*time.Second, map[string]string{"msg": "backend up", "backend": be.addr})
	}
	return be
}

// staticRoute points the router's VIP route at the named nodes (ECMP), as
// a router without BGP would be configured.
func (l *bgpLab) staticRoute(names ...string) {
	var hops []*netlink.NexthopInfo
	for _, name := range names {
		hops = append(hops, &netlink.NexthopInfo{Gw: net.ParseIP(l.node(name).addr)})
	}
	h, err := l.router.Handle()
	must(l.t, err, "router handle")
	defer h.Delete()
	eth0, err := h.LinkByName("eth0")
	must(l.t, err, "router eth0")
	for _, nh := range hops {
		nh.LinkIndex = eth0.Attrs().Index
	}
	must(l.t, h.RouteReplace(&netlink.Route{Dst: netlink.NewIPNet(net.ParseIP(bgpVIP)), MultiPath: hops}), "router static route")
}

func (l *bgpLab) node(name string) *bgpNode {
	for _, n := range l.nodes {
		if n.name == name {
			return n
		}
	}
	l.t.Fatalf("no node %s", name)
	return nil
}

// nexthops is the router's kernel route to the VIP: its next hops' node
// names, sorted (none: no route).
func (l *bgpLab) nexthops() []string {
	h, err := l.router.Handle()
	if err != nil {
		return nil
	}
	defer h.Delete()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: netlink.NewIPNet(net.ParseIP(bgpVIP))}, netlink.RT_FILTER_DST)
	if err != nil || len(rs) == 0 {
		return nil
	}
	byAddr := map[string]string{}
	for _, n := range l.nodes {
		byAddr[n.addr] = n.name
	}
	var out []string
	add := func(gw net.IP) {
		if name, ok := byAddr[gw.String()]; ok {
			out = append(out, name)
		} else {
			out = append(out, gw.String())
		}
	}
	for _, r := range rs {
		if r.Gw != nil {
			add(r.Gw)
		}
		for _, nh := range r.MultiPath {
			add(nh.Gw)
		}
	}
	slices.Sort(out)
	return out
}

// waitNexthops waits until the router's route to the VIP goes through
// exactly the named nodes and returns how long that took.
func (l *bgpLab) waitNexthops(within time.Duration, names ...string) time.Duration {
	l.t.Helper()
	want := slices.Sorted(slices.Values(names))
	start := time.Now()
	for {
		got := l.nexthops()
		if slices.Equal(got, want) {
			return time.Since(start)
		}
		if time.Since(start) > within {
			out, _ := l.bird.Cmd(context.Background(), "show", "protocols")
			l.t.Fatalf("router's next hops for %s: %v, want %v within %v\nbird:\n%s\nbird log:\n%s", bgpVIP, got, want, within, out, l.bird.Log())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// load starts the load tool in the client namespace; it stops with the test.
func (l *bgpLab) load(conns int, rate float64, stall time.Duration) *connload.Load {
	ld, err := connload.Start(context.Background(), connload.Config{
		Target: fmt.Sprintf("%s:%d", bgpVIP, bgpPort),
		Dial:   nslab.DialContext(l.client, 2*time.Second),
		Conns:  conns, Rate: rate, Stall: stall,
	})
	must(l.t, err, "load")
	l.t.Cleanup(func() { ld.Stop() })
	return ld
}

// flowNodes says which node carries each long-lived connection of r, from
// the nodes' flow tables (a connection a node never saw is not there).
func (l *bgpLab) flowNodes(r connload.Report) map[string][]string {
	mine := map[string]bool{}
	for _, c := range r.Conns {
		mine[c.Local] = true
	}
	out := map[string][]string{}
	for i, n := range l.nodes {
		if n.d == nil {
			continue
		}
		js, err := l.ctl(i, "-o", "json", "flows", "-limit", "100000")
		must(l.t, err, "flows of "+n.name+": "+js)
		var flows []struct{ Client string }
		must(l.t, json.Unmarshal([]byte(js), &flows), "flows json")
		for _, f := range flows {
			if mine[f.Client] {
				out[f.Client] = append(out[f.Client], n.name)
			}
		}
	}
	return out
}

// drop cuts node name off the bridge (every frame dropped, links up).
func (l *bgpLab) drop(name string) {
	n := l.node(name)
	undo, err := l.sw.DropPort(name)
	must(l.t, err, "drop "+name)
	n.undrop = undo
	l.t.Cleanup(func() { l.undrop(name) })
}

func (l *bgpLab) undrop(name string) {
	n := l.node(name)
	if n.undrop != nil {
		must(l.t, n.undrop(), "undrop "+name)
		n.undrop = nil
	}
}

// freeze stops node name's keepbitd (SIGSTOP): its XDP program keeps
// forwarding, but nothing of its control plane (BGP, BFD, checks) runs.
func (l *bgpLab) freeze(name string) { l.node(name).d.signal(syscall.SIGSTOP) }
func (l *bgpLab) thaw(name string)   { l.node(name).d.signal(syscall.SIGCONT) }

// kill kills node name's keepbitd (SIGKILL) and waits for it to be gone.
func (l *bgpLab) kill(name string) {
	n := l.node(name)
	n.d.signal(syscall.SIGKILL)
	<-n.d.done
}

// spread counts connections per node and per backend.
func spread(nodes map[string][]string) map[string]int {
	out := map[string]int{}
	for _, ns := range nodes {
		for _, n := range ns {
			out[n]++
		}
	}
	return out
}
