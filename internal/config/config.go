// Package config reads keepbit.yaml: it decodes, applies defaults and
// validates, and every error names the file, the line and the field. It
// describes desired state only; the control loop turns it into dataplane
// and probe calls.
package config

import (
	"net/netip"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is one keepbit.yaml.
type Config struct {
	Node       Node        `yaml:"node"`
	Interfaces []Interface `yaml:"interfaces"`
	API        API         `yaml:"api"`
	Metrics    Metrics     `yaml:"metrics"`
	Log        Log         `yaml:"log"`
	Defaults   Defaults    `yaml:"defaults"`
	Services   []Service   `yaml:"services"`
	VRRP       []VRRP      `yaml:"vrrp"`
	// BGP: announce VIPs to upstream routers (active-active behind ECMP).
	BGP *BGP `yaml:"bgp"`
	// FlowSharing: tell the other nodes which backend a flow is on, so a
	// flow that ECMP moves here keeps its backend.
	FlowSharing *FlowSharing `yaml:"flow_sharing"`
	// Drills: scheduled drills (drill.go); none when absent.
	Drills []Drill `yaml:"drills"`
}

// VRRP is one VRRPv3 virtual router: the VIPs this node may own.
type VRRP struct {
	Name           string        `yaml:"name"`
	VRID           uint8         `yaml:"vrid"`
	Interface      string        `yaml:"interface"`
	Priority       uint8         `yaml:"priority"` // 1-254; 255 = address owner
	AdvertInterval time.Duration `yaml:"advert_interval"`
	Preempt        *bool         `yaml:"preempt"` // default true
	PreemptDelay   time.Duration `yaml:"preempt_delay"`
	// Peers: unicast advertisements to these; empty = multicast.
	Peers     []netip.Addr `yaml:"peers"`
	VIPs      []netip.Addr `yaml:"vips"`
	Announce  Announce     `yaml:"announce"`
	Track     Track        `yaml:"track"`
	SyncGroup string       `yaml:"sync_group"`
	Notify    Notify       `yaml:"notify"`
}

// Announce: gratuitous ARP / unsolicited NA on becoming master.
type Announce struct {
	Count   int           `yaml:"count"`   // default 3
	Spacing time.Duration `yaml:"spacing"` // default 10ms
	// Refresh: re-announce this often while master (default 1s; "0s"
	// turns it off). It brings back clients that a rival announced to
	// during a flap this node never saw (a partition shorter than one
	// advertisement, say).
	Refresh *time.Duration `yaml:"refresh"`
	// Late: one more round this long after becoming master (default 1.1s,
	// past Linux's 1 s neighbour locktime); "0s" turns it off.
	Late *time.Duration `yaml:"late"`
}

// Track lists what lowers this node's priority (by Weight) or, with
// weight 0, puts the instance in fault.
type Track struct {
	Dataplane  *TrackItem     `yaml:"dataplane"` // the forwarder attached on the instance's interface
	Interfaces []TrackItem    `yaml:"interfaces"`
	Services   []TrackItem    `yaml:"services"` // all backends down
	Commands   []TrackCommand `yaml:"commands"`
}

type TrackItem struct {
	Name   string `yaml:"name"`
	Weight int    `yaml:"weight"`
}

type TrackCommand struct {
	Command  string        `yaml:"command"`
	Args     []string      `yaml:"args"`
	Interval time.Duration `yaml:"interval"` // default 1s
	Timeout  time.Duration `yaml:"timeout"`  // default 500ms
	Weight   int           `yaml:"weight"`
}

// Node holds what every Keepbit node sharing VIPs must agree on.
type Node struct {
	Name string `yaml:"name"`
	// HashSeed must be equal on all nodes: same flow, same backend.
	HashSeed uint32 `yaml:"hash_seed"`
	PinRoot  string `yaml:"pin_root"`
	// StateDir keeps what must survive a restart that the dataplane does
	// not hold: the operator's overrides (disable, drain). Default
	// /var/lib/keepbit. hash_seed, pin_root and state_dir take effect at
	// start only: a reload that changes them is refused (pin_root, like an
	// interface's mode, takes a detach: a restart keeps the attached link).
	StateDir string `yaml:"state_dir"`
	// FlowCacheSize is the per-CPU flow cache's entries (a power of two,
	// 256 to 1,048,576; 0: 8,192). An established flow the cache does not
	// hold costs a flow table lookup on every packet; each entry costs 96
	// bytes per CPU. Takes effect at start (a restart keeps forwarding).
	FlowCacheSize uint32 `yaml:"flow_cache_size"`
}

// Interface is a port the forwarder runs on.
type Interface struct {
	Name string     `yaml:"name"`
	Mode AttachMode `yaml:"mode"` // auto (default), native, generic
}

type API struct {
	Socket string `yaml:"socket"`
}

type Metrics struct {
	Listen string `yaml:"listen"` // empty = 127.0.0.1:9469; "off" disables
}

type Log struct {
	Format string `yaml:"format"` // text (default) or json
	Level  string `yaml:"level"`  // debug, info (default), warn, error
}

// Defaults apply to every service that does not say otherwise.
type Defaults struct {
	Check     *yaml.Node `yaml:"check"` // nil when not written
	TableSize uint32     `yaml:"table_size"`
}

// Check is a health check as written; probe.Spec is what runs.
type Check struct {
	Type         string        `yaml:"type"`
	Port         uint16        `yaml:"port"` // 0 = the service port
	Interval     time.Duration `yaml:"interval"`
	FastInterval time.Duration `yaml:"fast_interval"`
	Timeout      time.Duration `yaml:"timeout"`
	Rise         int           `yaml:"rise"`
	Fall         int           `yaml:"fall"`
	Jitter       float64       `yaml:"jitter"`
	Source       netip.Addr    `yaml:"source"`
	Interface    string        `yaml:"interface"`
	Method       string        `yaml:"method"`
	Path         string        `yaml:"path"`
	Host         string        `yaml:"host"`
	ExpectStatus []int         `yaml:"expect_status"`
	ExpectBody   string        `yaml:"expect_body"`
	CAFile       string        `yaml:"ca_file"`
	TLSNoVerify  bool          `yaml:"tls_no_verify"`
	Payload      string        `yaml:"payload"`
	ExpectReply  string        `yaml:"expect_reply"`
	Command      string        `yaml:"command"`
	Args         []string      `yaml:"args"`
	Env          []string      `yaml:"env"`
}

// Flap dampening: after Transitions state changes within Within, a
// backend is held down for HoldDown.
type Flap struct {
	Transitions int           `yaml:"transitions"`
	Within      time.Duration `yaml:"within"`
	HoldDown    time.Duration `yaml:"hold_down"`
}

// Notify runs a command on every state change, the event in its
// environment (like keepalived's notify scripts).
type Notify struct {
	Command string        `yaml:"command"`
	Args    []string      `yaml:"args"`
	Timeout time.Duration `yaml:"timeout"`
}

// Service is a VIP, port and protocol with its backends.
type Service struct {
	Name       string     `yaml:"name"`
	VIP        netip.Addr `yaml:"vip"`
	Port       uint16     `yaml:"port"` // 0 = every port
	Protocol   Protocol   `yaml:"protocol"`
	Interface  string     `yaml:"interface"`
	Forwarding string     `yaml:"forwarding"` // dsr (the only mode so far)
	TableSize  uint32     `yaml:"table_size"`
	// WhenAllDown: drop, pass (to the local stack) or keep-last (keep
	// forwarding to the last healthy set).
	WhenAllDown WhenAllDown `yaml:"when_all_down"`
	// PanicThreshold in percent: when more than this share of backends is
	// down, stop ejecting (0 = off).
	PanicThreshold int        `yaml:"panic_threshold"`
	Flap           Flap       `yaml:"flap"`
	Notify         Notify     `yaml:"notify"`
	CheckNode      *yaml.Node `yaml:"check"` // nil when not written
	Backends       []Backend  `yaml:"backends"`
	// Predictive: flag (and drain) a degrading backend before its check
	// fails; nil = off. See predict.go.
	Predictive *Predictive `yaml:"predictive"`
	// Passive: eject a backend whose clients retransmit their SYNs before
	// its check fails; nil = off. See passive.go.
	Passive *Passive `yaml:"passive"`

	// Check is the effective check: defaults, then the service's own.
	Check Check `yaml:"-"`
}

// Backend is one real server of a service.
type Backend struct {
	Address netip.Addr `yaml:"address"`
	MAC     MAC        `yaml:"mac"` // zero: resolved from the neighbour table
	Weight  uint32     `yaml:"weight"`
	Group   uint8      `yaml:"group"` // priority group, 0 most preferred
	VLAN    uint16     `yaml:"vlan"`
	Port    string     `yaml:"port"` // egress interface; default the service's
	// CheckNode is nil when not written: a pointer, as 16,000 backends of
	// 152 bytes of node each were 15% of a cold parse's page faults.
	CheckNode *yaml.Node `yaml:"check"`

	// Check is the effective check: the service's, then the backend's own.
	Check Check `yaml:"-"`
}
