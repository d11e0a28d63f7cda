// Package throughput measures how many packets per second Keepbit forwards
// next to the machine's ceiling, in one run on one machine. Both sides get
// the same live-frame stream (internal/loadgen) through a veth pair of their
// own: the ceiling's far end runs the baseline program (swap MACs, send
// back: the least any forwarder does), Keepbit's runs the real dataplane
// with real services. A sink on the sending end counts what comes back per
// destination MAC, so every figure is a count of frames that made the round
// trip, and the backends they reached.
package throughput

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/loadgen"
	"github.com/keepbit/keepbit/internal/spread"
	"github.com/keepbit/keepbit/loader"
)

// Options set the measurement.
type Options struct {
	// Duration of one measurement; default 1 s.
	Duration time.Duration
	// Repeats of each case, alternating ceiling and Keepbit; default 5.
	Repeats int
	// PerRun is frames per BPF_PROG_RUN; default 65,536 (a run has a fixed
	// cost that many frames keep out of the figure).
	PerRun uint32
	// Services is how many services the many-services case spreads its
	// flows over, each with the same 16 backends; default 1,000.
	Services int
	// FlowCacheSize is the dataplane's per-CPU flow cache (entries);
	// 0: the loader's default.
	FlowCacheSize uint32
	// Only keeps the cases whose names contain one of these (all if empty).
	Only []string
	// Progress, when set, is told each measurement as it completes.
	Progress func(string)
}

func (o *Options) defaults() {
	if o.Duration <= 0 {
		o.Duration = time.Second
	}
	if o.Repeats <= 0 {
		o.Repeats = 5
	}
	if o.PerRun == 0 {
		o.PerRun = 1 << 16
	}
	if o.Services <= 0 {
		o.Services = 1000
	}
}

// Backends is how many backends each service has.
const Backends = 16

// ManyTableSize is the Maglev table of the many-services case: a prime
// well above 100 x 16 backends that keeps 1,000 services at a few MiB of
// kernel memory (the default 65,537 slots cost ~0.5 MiB per service).
const ManyTableSize = 2053

// Case is one traffic pattern.
type Case struct {
	Name string `json:"name"`
	// Established: after the first packet of each flow every packet
	// finds its flow (the >= 90% target applies); otherwise most packets
	// open a new flow.
	Established bool   `json:"established"`
	Flows       uint32 `json:"flows"`
	VIPs        uint32 `json:"vips"`
	FrameBytes  int    `json:"frame_bytes"`
	tmpl        loadgen.Template
}

// Sample is one measurement of one side.
type Sample struct {
	Sent     uint64        `json:"sent"`
	Received uint64        `json:"received"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	// Backends is how many of the service's backends received frames.
	Backends int `json:"backends"`
}

// Mpps is what came back, in millions of frames per second.
func (s Sample) Mpps() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Received) / s.Elapsed.Seconds() / 1e6
}

// Loss is the share of sent frames that did not come back.
func (s Sample) Loss() float64 {
	if s.Sent == 0 {
		return 0
	}
	return 1 - float64(s.Received)/float64(s.Sent)
}

// Result is a case's samples, Ceiling[i] and Keepbit[i] measured one
// right after the other.
type Result struct {
	Case
	Ceiling []Sample `json:"ceiling"`
	Keepbit []Sample `json:"keepbit"`
}

// Ratios are Keepbit's rate over the ceiling's, pair by pair.
func (r Result) Ratios() []float64 {
	var out []float64
	for i := range min(len(r.Ceiling), len(r.Keepbit)) {
		if c := r.Ceiling[i].Mpps(); c > 0 {
			out = append(out, r.Keepbit[i].Mpps()/c)
		}
	}
	return out
}

// Spread is a median with the smallest and largest value.
type Spread = spread.Spread

// SpreadOf summarizes vs.
func SpreadOf(vs []float64) Spread { return spread.Of(vs) }

// Mpps returns each sample's rate.
func Mpps(ss []Sample) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = s.Mpps()
	}
	return out
}

// The lab's MACs: the last byte is what the sinks count by, so the ports'
// must differ from the backends' (1 .. Backends).
var (
	macGenK = net.HardwareAddr{0x02, 0xbe, 0, 0, 0, 0xf1}
	macLBK  = net.HardwareAddr{0x02, 0xbe, 0, 0, 0, 0xf2}
	macGenC = net.HardwareAddr{0x02, 0xbe, 0, 0, 0, 0xf3}
	macLBC  = net.HardwareAddr{0x02, 0xbe, 0, 0, 0, 0xf4}
)

func backendMAC(i int) net.HardwareAddr { return net.HardwareAddr{0x02, 0xee, 0, 0, 0, byte(i + 1)} }

var (
	vip4     = netip.MustParseAddr("198.51.100.10")
	vip4VLAN = netip.MustParseAddr("198.51.100.11")
	vip6     = netip.MustParseAddr("2001:db8::10")
	manyBase = netip.MustParseAddr("10.100.0.1")
	client4  = netip.MustParseAddr("203.0.113.9")
	client6  = netip.MustParseAddr("2001:db8:ffff::9")
)

// Cases lists the traffic patterns for a many-services case of services.
func Cases(services int) []Case {
	t4 := loadgen.Template{Src: client4, Dst: vip4, DstPort: 80}
	t6 := loadgen.Template{Src: client6, Dst: vip6, DstPort: 80}
	tv := loadgen.Template{Src: client4, Dst: vip4VLAN, DstPort: 80, VLAN: 10}
	tm := loadgen.Template{Src: client4, Dst: manyBase, DstPort: 80}
	return []Case{
		{Name: "1 service x 16 backends, 1 flow", Established: true, Flows: 1, VIPs: 1, tmpl: t4},
		{Name: "1 service x 16 backends, 16 flows", Established: true, Flows: 16, VIPs: 1, tmpl: t4},
		{Name: "1 service x 16 backends, 10,000 flows", Established: true, Flows: 10000, VIPs: 1, tmpl: t4},
		{Name: fmt.Sprintf("%s services x 16 backends, %s flows", thousands(services), thousands(services*16)), Established: true,
			Flows: uint32(services * 16), VIPs: uint32(services), tmpl: tm},
		{Name: "IPv6, 1 service x 16 backends, 16 flows", Established: true, Flows: 16, VIPs: 1, tmpl: t6},
		{Name: "VLAN 10 in, 20 out (retag), 16 flows", Established: true, Flows: 16, VIPs: 1, tmpl: tv},
		{Name: "mostly new flows (16,777,216 flows)", Flows: 1 << 24, VIPs: 1, tmpl: t4},
	}
}

// bench is the lab: one namespace, one veth pair per side.
type bench struct {
	ns       netns.NsHandle
	k, c     *lab.Veth
	sinkK    *loadgen.Sink
	sinkC    *loadgen.Sink
	sendK    *loadgen.Sender
	sendC    *loadgen.Sender
	baseline *ebpf.Program
	baseLink link.Link
	dp       *loader.Dataplane
	pinRoot  string
}

func (b *bench) close() error {
	var errs []error
	if b.dp != nil {
		errs = append(errs, b.dp.Detach())
	}
	if b.pinRoot != "" {
		errs = append(errs, lab.RemovePinRoot(b.pinRoot))
	}
	for _, c := range []interface{ Close() error }{b.baseLink, b.baseline, b.sinkK, b.sinkC, b.sendK, b.sendC, b.k, b.c} {
		if c != nil && !isNil(c) {
			errs = append(errs, c.Close())
		}
	}
	if b.ns != netns.None() && b.ns.IsOpen() {
		errs = append(errs, b.ns.Close())
	}
	return errors.Join(errs...)
}

// isNil catches typed nil pointers in the interface list above.
func isNil(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case link.Link:
		return v == nil
	case *ebpf.Program:
		return v == nil
	case *loadgen.Sink:
		return v == nil
	case *loadgen.Sender:
		return v == nil
	case *lab.Veth:
		return v == nil
	}
	return false
}

func build(ctx context.Context, opts Options) (_ *bench, err error) {
	b := &bench{ns: netns.None()}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.close())
		}
	}()
	if b.ns, err = lab.NewNS(); err != nil {
		return nil, err
	}
	// No IPv6 on the ports: the kernel's own router solicitations would
	// be bounced by the baseline and counted as forwarded frames.
	if _, err = lab.Sysctl(b.ns, map[string]string{"net/ipv6/conf/default/disable_ipv6": "1"}); err != nil {
		return nil, err
	}
	if b.k, err = lab.NewVeth(lab.VethEnd{NS: b.ns, Name: "genk", MAC: macGenK}, lab.VethEnd{NS: b.ns, Name: "lbk", MAC: macLBK}); err != nil {
		return nil, err
	}
	if b.c, err = lab.NewVeth(lab.VethEnd{NS: b.ns, Name: "genc", MAC: macGenC}, lab.VethEnd{NS: b.ns, Name: "lbc", MAC: macLBC}); err != nil {
		return nil, err
	}
	if b.sinkK, err = loadgen.AttachSink(b.ns, b.k.A.Index); err != nil {
		return nil, err
	}
	if b.sinkC, err = loadgen.AttachSink(b.ns, b.c.A.Index); err != nil {
		return nil, err
	}
	if b.sendK, err = loadgen.NewSender(b.ns, b.k.A.Index); err != nil {
		return nil, err
	}
	if b.sendC, err = loadgen.NewSender(b.ns, b.c.A.Index); err != nil {
		return nil, err
	}
	if b.baseline, err = loader.LoadBaseline(); err != nil {
		return nil, err
	}
	if err = lab.InNS(b.ns, func() error {
		var err error
		b.baseLink, err = link.AttachXDP(link.XDPOptions{Program: b.baseline, Interface: b.c.B.Index, Flags: link.XDPDriverMode})
		return err
	}); err != nil {
		return nil, fmt.Errorf("attach baseline: %w", err)
	}
	if b.pinRoot, err = os.MkdirTemp("", "keepbit-throughput"); err != nil {
		return nil, err
	}
	// The dataplane resolves its port by name, in the lab's namespace.
	err = lab.InNS(b.ns, func() error {
		var err error
		b.dp, err = loader.Open(ctx, loader.Options{Interface: "lbk", PinRoot: b.pinRoot, Mode: loader.AttachNative, HashSeed: 1,
			FlowCacheSize: opts.FlowCacheSize})
		if err != nil {
			return err
		}
		return applyServices(b.dp, opts.Services)
	})
	if err != nil {
		return nil, fmt.Errorf("keepbit: %w", err)
	}
	return b, nil
}

func applyServices(dp *loader.Dataplane, services int) error {
	backends := func(v6 bool, vlan uint16) []loader.BackendSpec {
		var bs []loader.BackendSpec
		for i := range Backends {
			a := netip.AddrFrom4([4]byte{10, 9, 0, byte(i + 1)})
			if v6 {
				a = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 9, 15: byte(i + 1)})
			}
			bs = append(bs, loader.BackendSpec{Addr: a, MAC: backendMAC(i), VLAN: vlan, Weight: 1, State: loader.Up})
		}
		return bs
	}
	apply := func(vip netip.Addr, spec loader.ServiceSpec) error {
		_, err := dp.ApplyService(loader.ServiceKey{VIP: vip, Port: 80, Proto: loader.TCP}, spec)
		return err
	}
	if err := apply(vip4, loader.ServiceSpec{Backends: backends(false, 0)}); err != nil {
		return err
	}
	if err := apply(vip6, loader.ServiceSpec{Backends: backends(true, 0)}); err != nil {
		return err
	}
	if err := apply(vip4VLAN, loader.ServiceSpec{Backends: backends(false, 20)}); err != nil {
		return err
	}
	vip := manyBase
	for range services {
		if err := apply(vip, loader.ServiceSpec{TableSize: ManyTableSize, Backends: backends(false, 0)}); err != nil {
			return err
		}
		vip = vip.Next()
	}
	return nil
}

// Run builds the lab, measures every case and tears the lab down.
func Run(ctx context.Context, opts Options) (_ []Result, err error) {
	opts.defaults()
	if opts.Services > 65536 {
		return nil, fmt.Errorf("services %d: at most 65,536 (the generator rotates 16 bits of the address)", opts.Services)
	}
	var cases []Case
	for _, c := range Cases(opts.Services) {
		if len(opts.Only) == 0 || slices.ContainsFunc(opts.Only, func(s string) bool { return strings.Contains(c.Name, s) }) {
			cases = append(cases, c)
		}
	}
	if len(cases) == 0 {
		return nil, fmt.Errorf("no case matches %q", opts.Only)
	}
	b, err := build(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, b.close()) }()
	var out []Result
	for _, c := range cases {
		r, err := b.measure(ctx, c, opts)
		if err != nil {
			return out, fmt.Errorf("%s: %w", c.Name, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func (b *bench) measure(ctx context.Context, c Case, opts Options) (Result, error) {
	tk, tc := c.tmpl, c.tmpl
	tk.SrcMAC, tk.DstMAC = macGenK, macLBK
	tc.SrcMAC, tc.DstMAC = macGenC, macLBC
	sk, err := tk.Build(c.Flows, c.VIPs)
	if err != nil {
		return Result{}, err
	}
	sc, err := tc.Build(c.Flows, c.VIPs)
	if err != nil {
		return Result{}, err
	}
	c.FrameBytes = len(sk.Frame)
	r := Result{Case: c}
	for i := range opts.Repeats {
		cs, err := b.sample(ctx, b.sendC, b.sinkC, sc, opts)
		if err != nil {
			return r, fmt.Errorf("ceiling: %w", err)
		}
		ks, err := b.sample(ctx, b.sendK, b.sinkK, sk, opts)
		if err != nil {
			return r, fmt.Errorf("keepbit: %w", err)
		}
		if ks.Received == 0 {
			return r, fmt.Errorf("keepbit forwarded none of %d frames (%s)", ks.Sent, b.reasons())
		}
		r.Ceiling, r.Keepbit = append(r.Ceiling, cs), append(r.Keepbit, ks)
		if opts.Progress != nil {
			opts.Progress(fmt.Sprintf("%s: repeat %d: ceiling %.2f Mpps, keepbit %.2f Mpps (%d backends), ratio %.2f",
				c.Name, i+1, cs.Mpps(), ks.Mpps(), ks.Backends, ks.Mpps()/max(cs.Mpps(), 1e-9)))
		}
	}
	return r, nil
}

// settle is how long frames still in flight take to come back after a
// Send returns: a veth ring of 256 frames drains in microseconds.
const settle = 20 * time.Millisecond

func (b *bench) sample(ctx context.Context, s *loadgen.Sender, sink *loadgen.Sink, st loadgen.Stream, opts Options) (Sample, error) {
	before, err := sink.Counts()
	if err != nil {
		return Sample{}, err
	}
	sent, err := s.Send(ctx, st, opts.Duration, opts.PerRun)
	if err != nil {
		return Sample{}, err
	}
	select {
	case <-ctx.Done():
		return Sample{}, ctx.Err()
	case <-time.After(settle):
	}
	after, err := sink.Counts()
	if err != nil {
		return Sample{}, err
	}
	got := after.Sub(before)
	smp := Sample{Sent: sent.Frames, Received: got.Total(), Elapsed: sent.Elapsed}
	for i := range Backends {
		if got[backendMAC(i)[5]] > 0 {
			smp.Backends++
		}
	}
	return smp, nil
}

// reasons names the dataplane's non-zero packet reasons, for an error.
func (b *bench) reasons() string {
	st, err := b.dp.Stats()
	if err != nil {
		return err.Error()
	}
	var parts []string
	for name, c := range st.Reasons {
		if c.Packets > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", name, c.Packets))
		}
	}
	slices.Sort(parts)
	return "dataplane reasons: " + strings.Join(parts, ", ")
}

// thousands writes n with a comma every three digits, as the case names
// do.
func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
