// Package bgplab builds the BGP lab of issue 8: active-active Keepbit
// nodes behind an ECMP router running BIRD 2. The netns tests and
// `keepbit-demo -bgp` share it: the topology, the router's BIRD config,
// the nodes' keepbit.yaml, failure injection at a node's bridge port, and
// reading the router's next hops. Running keepbitd is the caller's: a test
// and the demo want its output in different places.
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
// and answers the client directly through the router (DSR).
package bgplab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/api"
	"github.com/keepbit/keepbit/internal/apiclient"
	"github.com/keepbit/keepbit/internal/connload"
	"github.com/keepbit/keepbit/internal/lab"
)

// The lab's addresses and AS numbers.
const (
	VIP        = "10.90.9.9"
	Port       = 8080
	RouterAddr = "10.91.0.1"
	RouterAS   = 65000
	NodeAS     = 65001
	ClientAddr = "10.90.0.2"
)

// BFD is one side's BFD timers (the same on both sides here).
type BFD struct {
	Interval time.Duration
	Mult     int
}

// Detect is the BFD detection time: Mult intervals without a packet.
func (b BFD) Detect() time.Duration { return time.Duration(b.Mult) * b.Interval }

// Options shape the lab.
type Options struct {
	Nodes    int // Keepbit nodes (default 3)
	Spare    int // nodes created but not started (for "node added")
	Backends int // backends in the config (default 3)
	Extra    int // backends serving but not in the config (for "backend added")
	// BGP: the nodes' configs carry a bgp: section (keepbitd announces
	// the VIP); without it the router needs a static route (StaticRoute).
	BGP bool
	// BFD on every session with these timers; nil: BGP timers only.
	BFD *BFD
	// Hold is the BGP hold time (default 3s, the least BIRD takes).
	Hold        time.Duration
	FlowSharing bool
}

// WithDefaults fills in the defaults of the zero fields.
func (o Options) WithDefaults() Options {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Backends == 0 {
		o.Backends = 3
	}
	if o.Hold == 0 {
		o.Hold = 3 * time.Second
	}
	return o
}

// Node is a Keepbit node: a namespace on the bridge and its keepbitd's
// files (config, pins, state, API socket) under Dir.
type Node struct {
	Name, Addr string
	Host       *lab.Host
	Dir        string
	Config     string // Dir/keepbit.yaml, once written
	undrop     func() error
}

// Socket is the node's API socket (the config puts it there).
func (n *Node) Socket() string { return filepath.Join(n.Dir, "keepbit.sock") }

// Backend is a backend namespace on the bridge with a connload server.
type Backend struct {
	Name, Addr string
	Host       *lab.Host
	Server     *connload.Server
}

// Lab is the built topology with BIRD running on the router; keepbitd
// runs nowhere yet.
type Lab struct {
	Opts     Options
	Switch   *lab.Lab
	Dir      string
	Client   netns.NsHandle
	Router   *lab.Host
	BIRD     *lab.BIRD
	Nodes    []*Node
	Backends []*Backend
	// InConfig: Backends[:InConfig] are in the nodes' configs.
	InConfig int

	cleanup []func()
}

// New builds the lab under dir (node and BIRD directories) and starts
// BIRD on the router. Close removes everything, also after an error.
func New(ctx context.Context, dir string, o Options) (l *Lab, err error) {
	o = o.WithDefaults()
	sw, err := lab.New()
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	l = &Lab{Opts: o, Switch: sw, Dir: dir, InConfig: o.Backends}
	l.cleanup = append(l.cleanup, sw.Close)
	defer func() {
		if err != nil {
			l.Close()
			l = nil
		}
	}()
	if l.Client, err = lab.NewNS(); err != nil {
		return l, fmt.Errorf("client namespace: %w", err)
	}
	l.cleanup = append(l.cleanup, func() { l.Client.Close() })
	if err := l.buildRouter(); err != nil {
		return l, err
	}
	for i := range o.Backends + o.Extra {
		if err := l.addBackendHost(fmt.Sprintf("b%d", i+1), fmt.Sprintf("10.91.0.%d", 21+i)); err != nil {
			return l, err
		}
	}
	for i := range o.Nodes + o.Spare {
		name, addr := fmt.Sprintf("n%d", i+1), fmt.Sprintf("10.91.0.%d", 11+i)
		h, err := sw.Host(name, "eth0", addr+"/24")
		if err != nil {
			return l, fmt.Errorf("node %s: %w", name, err)
		}
		n := &Node{Name: name, Addr: addr, Host: h, Dir: filepath.Join(dir, name)}
		if err := os.MkdirAll(n.Dir, 0o700); err != nil {
			return l, fmt.Errorf("node %s: %w", name, err)
		}
		l.Nodes = append(l.Nodes, n)
	}
	// After every node exists: flow sharing lists the other nodes.
	if err := l.WriteConfigs(); err != nil {
		return l, err
	}
	if err := l.StartBIRD(ctx); err != nil {
		return l, err
	}
	return l, nil
}

// buildRouter makes the router namespace: on the bridge, a link to the
// client, forwarding with an L4 multipath hash.
func (l *Lab) buildRouter() error {
	var err error
	if l.Router, err = l.Switch.Host("router", "eth0", RouterAddr+"/24"); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	if _, err := lab.NewVeth(lab.VethEnd{NS: l.Router.NS, Name: "cl0", Addrs: []string{"10.90.0.1/24"}},
		lab.VethEnd{NS: l.Client, Name: "eth0", Addrs: []string{ClientAddr + "/24"}}); err != nil {
		return fmt.Errorf("client link: %w", err)
	}
	undoHash, err := lab.ClearHash(l.Router.NS, "cl0")
	if err != nil {
		return fmt.Errorf("router hashes on the 5-tuple: %w", err)
	}
	l.cleanup = append(l.cleanup, func() { _ = undoHash() })
	if err := lab.SetUp(l.Client, "lo"); err != nil {
		return fmt.Errorf("client lo: %w", err)
	}
	if err := lab.AddRoute(l.Client, "default", "10.90.0.1"); err != nil {
		return fmt.Errorf("client default route: %w", err)
	}
	// L4 hashing: the flows of one client spread over the nodes.
	if err := l.Router.Sysctl(map[string]string{
		"net/ipv4/ip_forward":                  "1",
		"net/ipv4/fib_multipath_hash_policy":   "1",
		"net/ipv4/conf/all/rp_filter":          "0",
		"net/ipv4/conf/eth0/rp_filter":         "0",
		"net/ipv4/conf/all/send_redirects":     "0",
		"net/ipv4/conf/eth0/send_redirects":    "0",
		"net/ipv4/conf/default/send_redirects": "0",
	}); err != nil {
		return fmt.Errorf("router sysctl: %w", err)
	}
	// The nodes' XDP sends frames on (XDP_TX) without finishing their
	// checksums: the router, which forwards the client's packets, must.
	if err := l.Router.Do(func() error { return lab.TxChecksumOff("eth0") }); err != nil {
		return fmt.Errorf("router checksum offload: %w", err)
	}
	if err := lab.InNS(l.Client, func() error { return lab.TxChecksumOff("eth0") }); err != nil {
		return fmt.Errorf("client checksum offload: %w", err)
	}
	return nil
}

// addBackendHost makes a DSR backend: the VIP on lo, ARP only for its own
// address, a connload server on the service port.
func (l *Lab) addBackendHost(name, addr string) error {
	h, err := l.Switch.Host(name, "eth0", addr+"/24")
	if err != nil {
		return fmt.Errorf("backend %s: %w", name, err)
	}
	if err := h.Sysctl(map[string]string{"net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2"}); err != nil {
		return fmt.Errorf("backend %s sysctl: %w", name, err)
	}
	if err := lab.AddAddrs(h.NS, "lo", VIP+"/32"); err != nil {
		return fmt.Errorf("backend %s: VIP on lo: %w", name, err)
	}
	if err := lab.AddRoute(h.NS, "default", RouterAddr); err != nil {
		return fmt.Errorf("backend %s default route: %w", name, err)
	}
	srv, err := connload.Listen(h.NS, fmt.Sprintf(":%d", Port), name)
	if err != nil {
		return fmt.Errorf("backend %s: %w", name, err)
	}
	l.cleanup = append(l.cleanup, func() { srv.Close() })
	l.Backends = append(l.Backends, &Backend{Name: name, Addr: addr, Host: h, Server: srv})
	return nil
}

// Close stops BIRD, undoes dropped ports and removes every namespace,
// link and program of the lab. Idempotent.
func (l *Lab) Close() {
	for _, n := range l.Nodes {
		_ = l.Undrop(n.Name)
	}
	for i := len(l.cleanup) - 1; i >= 0; i-- {
		l.cleanup[i]()
	}
	l.cleanup = nil
}

// BIRDConfig is the router's config: one BGP session per node (the
// router dials), ECMP into the kernel, BFD when o asks for it.
func BIRDConfig(o Options, nodes []*Node) string {
	o = o.WithDefaults()
	var b strings.Builder
	// Millisecond log times: the demo reads when BFD went down from them.
	fmt.Fprintf(&b, `log stderr all;
timeformat log iso long ms;
router id %s;
protocol device { scan time 1; }
protocol kernel kern {
	ipv4 { import none; export all; };
	# One kernel route with a next hop per node: ECMP.
	merge paths yes limit 16;
}
`, RouterAddr)
	bfdOn := ""
	if f := o.BFD; f != nil {
		ms := f.Interval.Milliseconds()
		// debug events: BIRD logs each session's state changes, with the
		// millisecond times of timeformat log.
		fmt.Fprintf(&b, `protocol bfd {
	debug { events };
	interface "eth0" { min rx interval %d ms; min tx interval %d ms; multiplier %d; };
}
`, ms, ms, f.Mult)
		bfdOn = "bfd on;"
	}
	hold := int(o.Hold.Seconds())
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
`, RouterAddr, RouterAS, hold, max(1, hold/3), bfdOn)
	for _, n := range nodes {
		fmt.Fprintf(&b, "protocol bgp %s from keepbit { neighbor %s as %d; }\n", n.Name, n.Addr, NodeAS)
	}
	return b.String()
}

// StartBIRD starts BIRD on the router with BIRDConfig and waits for its
// kernel protocol.
func (l *Lab) StartBIRD(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dir := filepath.Join(l.Dir, "bird")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("bird dir: %w", err)
	}
	b, err := lab.StartBIRD(ctx, l.Router.NS, dir, BIRDConfig(l.Opts, l.Nodes))
	if err != nil {
		return err
	}
	l.cleanup = append(l.cleanup, func() { b.Close() })
	l.BIRD = b
	if err := b.WaitProtocol(ctx, "kern", "up"); err != nil {
		return fmt.Errorf("bird kernel protocol: %w", err)
	}
	return nil
}

// RestartBIRD kills the router's BIRD and starts it again: its kernel
// routes stay in between, as after a routing daemon crash.
func (l *Lab) RestartBIRD(ctx context.Context) error {
	if err := l.BIRD.Close(); err != nil {
		return fmt.Errorf("stop bird: %w", err)
	}
	return l.StartBIRD(ctx)
}

// WriteConfigs writes every node's keepbit.yaml (WriteNodeConfig).
func (l *Lab) WriteConfigs() error {
	for _, n := range l.Nodes {
		if err := WriteNodeConfig(l.Opts, n, l.Nodes, l.Backends[:l.InConfig]); err != nil {
			return err
		}
	}
	return nil
}

// WriteNodeConfig writes n's keepbit.yaml in n.Dir and sets n.Config: the
// service with backends, BGP towards the router when o has it, flow
// sharing with the other nodes when o has it.
func WriteNodeConfig(o Options, n *Node, nodes []*Node, backends []*Backend) error {
	o = o.WithDefaults()
	var b strings.Builder
	fmt.Fprintf(&b, `node: {hash_seed: 7, pin_root: %s, state_dir: %s}
interfaces: [{name: eth0}]
api: {socket: %s}
metrics: {listen: "off"}
log: {format: json, level: info}
defaults:
  check: {type: tcp, interval: 100ms, timeout: 80ms, rise: 1, fall: 3}
services:
  - name: app
    vip: %s
    port: %d
    backends:
`, yamlString(filepath.Join(n.Dir, "bpf")), yamlString(filepath.Join(n.Dir, "state")), yamlString(n.Socket()), VIP, Port)
	for _, be := range backends {
		fmt.Fprintf(&b, "      - {address: %s}\n", be.Addr)
	}
	if o.BGP {
		b.WriteString(bgpSection(o, n))
	}
	if o.FlowSharing {
		s, err := flowSharingSection(n, nodes)
		if err != nil {
			return err
		}
		b.WriteString(s)
	}
	n.Config = filepath.Join(n.Dir, "keepbit.yaml")
	if err := os.WriteFile(n.Config, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("node %s config: %w", n.Name, err)
	}
	return nil
}

// bgpSection follows internal/config/bgp.go: the node listens and lets
// the router dial (passive: GoBGP's own dials come 5-10s late), announces
// the service VIP, withdraws at once on failure and re-announces after
// 200ms of health.
func bgpSection(o Options, n *Node) string {
	hold := o.Hold
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
`, NodeAS, n.Addr, RouterAddr, RouterAS, hold, max(time.Second, (hold/3).Truncate(time.Second)))
	if f := o.BFD; f != nil {
		s += fmt.Sprintf("      bfd: {min_tx: %s, min_rx: %s, multiplier: %d}\n", f.Interval, f.Interval, f.Mult)
	}
	return s
}

// flowSharingSection: the nodes share flows with each other by unicast,
// following internal/config/flowshare.go. Long-lived flows are shared
// after 1s (the least the schema takes): wait 1.5s after a change before
// failing a node.
func flowSharingSection(n *Node, nodes []*Node) (string, error) {
	var peers []string
	for _, o := range nodes {
		if o != n {
			peers = append(peers, o.Addr)
		}
	}
	key := filepath.Join(n.Dir, "flow-sharing.key")
	if err := os.WriteFile(key, []byte("keepbit-bgp-lab-shared-flow-key-0123456789"), 0o600); err != nil {
		return "", fmt.Errorf("node %s flow sharing key: %w", n.Name, err)
	}
	return fmt.Sprintf(`flow_sharing:
  listen: %s
  peers: [%s]
  key_file: %s
  batch_interval: 2ms
  warmup_timeout: 2s
  long_lived_after: 1s
  refresh: 5s
`, n.Addr, strings.Join(peers, ", "), yamlString(key)), nil
}

// yamlString quotes a path for YAML: a temporary directory named after a
// test can hold commas, which end a value in flow style ({a: b, c: d}).
// A JSON string is a YAML double-quoted string.
func yamlString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// NextBackend puts the next spare backend into every node's config (the
// caller reloads the running nodes).
func (l *Lab) NextBackend() (*Backend, error) {
	if l.InConfig == len(l.Backends) {
		return nil, errors.New("no spare backend (Options.Extra)")
	}
	be := l.Backends[l.InConfig]
	l.InConfig++
	return be, l.WriteConfigs()
}

// Node is the node called name, or nil.
func (l *Lab) Node(name string) *Node {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// StaticRoute points the router's VIP route at the named nodes (ECMP), as
// a router without BGP would be configured.
func (l *Lab) StaticRoute(names ...string) error {
	h, err := l.Router.Handle()
	if err != nil {
		return fmt.Errorf("router handle: %w", err)
	}
	defer h.Delete()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("router eth0: %w", err)
	}
	var hops []*netlink.NexthopInfo
	for _, name := range names {
		n := l.Node(name)
		if n == nil {
			return fmt.Errorf("static route: no node %s", name)
		}
		hops = append(hops, &netlink.NexthopInfo{Gw: net.ParseIP(n.Addr), LinkIndex: eth0.Attrs().Index})
	}
	if err := h.RouteReplace(&netlink.Route{Dst: netlink.NewIPNet(net.ParseIP(VIP)), MultiPath: hops}); err != nil {
		return fmt.Errorf("router static route: %w", err)
	}
	return nil
}

// Nexthops is the router's kernel route to the VIP: its next hops' node
// names (an unknown gateway by its address), sorted; none: no route.
func (l *Lab) Nexthops() []string {
	h, err := l.Router.Handle()
	if err != nil {
		return nil
	}
	defer h.Delete()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: netlink.NewIPNet(net.ParseIP(VIP))}, netlink.RT_FILTER_DST)
	if err != nil || len(rs) == 0 {
		return nil
	}
	byAddr := map[string]string{}
	for _, n := range l.Nodes {
		byAddr[n.Addr] = n.Name
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

// WaitNexthops waits until the router's route to the VIP goes through
// exactly the named nodes and returns how long that took. The error (ctx
// ended) shows the next hops seen, BIRD's protocols and its log.
func (l *Lab) WaitNexthops(ctx context.Context, names ...string) (time.Duration, error) {
	want := slices.Sorted(slices.Values(names))
	start := time.Now()
	for {
		got := l.Nexthops()
		if slices.Equal(got, want) {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			out, _ := l.BIRD.Cmd(context.Background(), "show", "protocols")
			return time.Since(start), fmt.Errorf("router's next hops for %s: %v, want %v: %w\nbird:\n%s\nbird log:\n%s",
				VIP, got, want, ctx.Err(), out, l.BIRD.Log())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// WaitEstablished waits for the router's sessions with the named nodes,
// and their BFD sessions when the lab has BFD.
func (l *Lab) WaitEstablished(ctx context.Context, names ...string) error {
	for _, name := range names {
		if err := l.BIRD.WaitProtocol(ctx, name, "Established"); err != nil {
			return fmt.Errorf("session with %s: %w", name, err)
		}
	}
	if l.Opts.BFD == nil {
		return nil
	}
	for {
		st, err := l.BFDSessions(ctx)
		up := 0
		for _, name := range names {
			if n := l.Node(name); n != nil && st[n.Addr] == "Up" {
				up++
			}
		}
		if err == nil && up == len(names) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("BFD sessions with %v not all up (%v): %w\nbird log:\n%s", names, st, ctx.Err(), l.BIRD.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// BFDSessions is the router's `show bfd sessions`: state by neighbour
// address.
func (l *Lab) BFDSessions(ctx context.Context) (map[string]string, error) {
	out, err := l.BIRD.Cmd(ctx, "show", "bfd", "sessions")
	st := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && net.ParseIP(f[0]) != nil {
			st[f[0]] = f[2]
		}
	}
	return st, err
}

// BFDChange is a state change of one of the router's BFD sessions, from
// BIRD's log.
type BFDChange struct {
	At       time.Time
	Node     string // the node's name (its address when not a node)
	From, To string // BIRD's state names: Down, Init, Up, AdminDown
}

// bfdChangeLine is BIRD's log line for a BFD session's state change
// (protocol bfd with debug events), after the time stamp.
var bfdChangeLine = regexp.MustCompile(`Session to (\S+) changed state from (\S+) to (\S+)`)

// BFDChanges are the router's BFD state changes logged at or after since
// (BIRDConfig makes BIRD log them with millisecond times), oldest first.
func (l *Lab) BFDChanges(since time.Time) []BFDChange {
	byAddr := map[string]string{}
	for _, n := range l.Nodes {
		byAddr[n.Addr] = n.Name
	}
	return parseBFDChanges(l.BIRD.Log(), byAddr, since)
}

// parseBFDChanges reads BFD state changes out of BIRD's log, naming the
// neighbours byAddr knows.
func parseBFDChanges(log string, byAddr map[string]string, since time.Time) []BFDChange {
	since = since.Truncate(time.Millisecond)
	var out []BFDChange
	for _, line := range strings.Split(log, "\n") {
		m := bfdChangeLine.FindStringSubmatch(line)
		if m == nil || len(line) < 23 {
			continue
		}
		at, err := time.ParseInLocation("2006-01-02 15:04:05.000", line[:23], time.Local)
		if err != nil || at.Before(since) {
			continue
		}
		c := BFDChange{At: at, Node: m[1], From: m[2], To: m[3]}
		if name, ok := byAddr[m[1]]; ok {
			c.Node = name
		}
		out = append(out, c)
	}
	return out
}

// BFDDownAfter is the first time at or after since that the router's BFD
// session with node name went down; false: none logged (yet).
func (l *Lab) BFDDownAfter(since time.Time, name string) (time.Time, bool) {
	for _, c := range l.BFDChanges(since) {
		if c.Node == name && c.To == "Down" {
			return c.At, true
		}
	}
	return time.Time{}, false
}

// Drop cuts node name off the bridge: every frame dropped at its port,
// links up, so that only timers (BFD, BGP hold) notice.
func (l *Lab) Drop(name string) error {
	n := l.Node(name)
	if n == nil {
		return fmt.Errorf("drop: no node %s", name)
	}
	if n.undrop != nil {
		return fmt.Errorf("drop: %s is dropped already", name)
	}
	undo, err := l.Switch.DropPort(name)
	if err != nil {
		return fmt.Errorf("drop %s: %w", name, err)
	}
	n.undrop = undo
	return nil
}

// Undrop reconnects node name (nothing when it is not dropped).
func (l *Lab) Undrop(name string) error {
	n := l.Node(name)
	if n == nil || n.undrop == nil {
		return nil
	}
	err := n.undrop()
	n.undrop = nil
	if err != nil {
		return fmt.Errorf("undrop %s: %w", name, err)
	}
	return nil
}

// Load starts the load tool in the client namespace: conns long-lived
// connections and rate new connections per second; a long-lived connection
// without an answer for stall is broken. It runs until Stop or ctx ends.
func (l *Lab) Load(ctx context.Context, conns int, rate float64, stall time.Duration) (*connload.Load, error) {
	ld, err := connload.Start(ctx, connload.Config{
		Target: fmt.Sprintf("%s:%d", VIP, Port),
		Dial:   lab.DialContext(l.Client, 2*time.Second),
		Conns:  conns, Rate: rate, Stall: stall,
	})
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	return ld, nil
}

// WaitBackendsUp waits until node n's keepbitd (asked through its API
// socket) has each of addrs up and healthy. It asks, not the log: a
// restarted keepbitd adopts a dataplane whose backends are up already, and
// writes (and logs) nothing for them. The error shows the last answer.
func WaitBackendsUp(ctx context.Context, n *Node, addrs ...string) error {
	c := apiclient.New(n.Socket())
	var last string
	for {
		svcs, err := c.Services(ctx)
		up := map[string]bool{}
		if err != nil {
			last = err.Error()
		} else {
			var parts []string
			for _, s := range svcs {
				for _, b := range s.ServiceStatus.Backends {
					up[b.Address] = b.State == "up" && b.Health == "up"
					parts = append(parts, fmt.Sprintf("%s %s/%s", b.Address, b.State, b.Health))
				}
			}
			last = strings.Join(parts, ", ")
		}
		all := true
		for _, a := range addrs {
			all = all && up[a]
		}
		if all {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("keepbitd on %s: backends %v not all up: %w (last: %s)", n.Name, addrs, ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// InConfigAddrs are the addresses of the backends in the nodes' configs.
func (l *Lab) InConfigAddrs() []string {
	var out []string
	for _, be := range l.Backends[:l.InConfig] {
		out = append(out, be.Addr)
	}
	return out
}

// FlowNodes says which of the named nodes carries each long-lived
// connection of r, from the nodes' flow tables (a connection a node never
// saw is not there).
func (l *Lab) FlowNodes(ctx context.Context, r connload.Report, names ...string) (map[string][]string, error) {
	out := map[string][]string{}
	err := l.eachFlow(ctx, r, names, func(node string, f api.Flow) {
		out[f.Client] = append(out[f.Client], node)
	})
	return out, err
}

// eachFlow calls fn with every flow-table entry of the named nodes that is
// one of r's long-lived connections.
func (l *Lab) eachFlow(ctx context.Context, r connload.Report, names []string, fn func(node string, f api.Flow)) error {
	mine := map[string]bool{}
	for _, c := range r.Conns {
		mine[c.Local] = true
	}
	for _, name := range names {
		n := l.Node(name)
		if n == nil {
			return fmt.Errorf("flows: no node %s", name)
		}
		flows, err := apiclient.New(n.Socket()).Flows(ctx, 100000)
		if err != nil {
			return fmt.Errorf("flows of %s: %w", name, err)
		}
		for _, f := range flows {
			if mine[f.Client] {
				fn(name, f)
			}
		}
	}
	return nil
}

// CurrentNodes says which of the named nodes carries each long-lived
// connection of r now: of the nodes whose flow table has it, the one that
// saw it last. A connection ECMP moved away stays in its old node's table
// until it idles out, so FlowNodes can name two.
func (l *Lab) CurrentNodes(ctx context.Context, r connload.Report, names ...string) (map[string]string, error) {
	out := map[string]string{}
	seen := map[string]time.Duration{}
	err := l.eachFlow(ctx, r, names, func(node string, f api.Flow) {
		if prev, ok := seen[f.Client]; !ok || f.LastSeen < prev {
			out[f.Client], seen[f.Client] = node, f.LastSeen
		}
	})
	return out, err
}

// Spread counts connections per node.
func Spread(nodes map[string][]string) map[string]int {
	out := map[string]int{}
	for _, ns := range nodes {
		for _, n := range ns {
			out[n]++
		}
	}
	return out
}
