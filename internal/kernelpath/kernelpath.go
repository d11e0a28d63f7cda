// Package kernelpath measures what one forwarded packet costs the machine
// on Keepbit's XDP path and on the kernel's own load-balancing path
// (nftables DNAT through the IP stack), both fed by the same socket
// sender. Live frames (internal/loadgen) cannot feed the stack (a passed
// live frame reaches IP only one batch per run), so every path here gets
// the same AF_PACKET frames, and a floor path (the sender into a port that
// only counts and drops) is measured alongside: a path's cost is what it
// adds to the floor.
package kernelpath

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/loadgen"
	"github.com/keepbit/keepbit/loader"
)

// Backends is how many backends each path spreads the flows over.
const Backends = 16

// Path names, in the order they are measured.
const (
	Floor    = "floor (sender and sink only)"
	Baseline = "XDP_TX baseline (MAC swap: the least an XDP forwarder does)"
	Keepbit  = "Keepbit (XDP, DSR)"
	NFT      = "nftables DNAT (IP stack, conntrack)"
)

// Options sets a run.
type Options struct {
	Rate     int           // offered frames/s for the cost measurement
	Duration time.Duration // of one measurement
	Repeats  int           // measurements per path and kind, alternating paths
	Flows    int           // UDP flows the frames rotate over
	// Progress, when set, is told each measurement.
	Progress func(string)
}

func (o *Options) defaults() {
	if o.Rate == 0 {
		o.Rate = 500_000
	}
	if o.Duration == 0 {
		o.Duration = 2 * time.Second
	}
	if o.Repeats == 0 {
		o.Repeats = 3
	}
	if o.Flows == 0 {
		o.Flows = 16
	}
}

// Sample is one measurement of one path.
type Sample struct {
	Sent     uint64        `json:"sent"`
	Received uint64        `json:"received"` // at the sink, past the path
	Elapsed  time.Duration `json:"elapsed_ns"`
	// Busy is CPU time the whole machine spent not idle meanwhile
	// (/proc/stat, every CPU, softirq included).
	Busy     time.Duration `json:"busy_ns"`
	Backends int           `json:"backends"` // backends that received frames
}

// PerPacket is the machine's CPU time per frame received.
func (s Sample) PerPacket() time.Duration {
	if s.Received == 0 {
		return 0
	}
	return s.Busy / time.Duration(s.Received)
}

// Mpps is the received rate.
func (s Sample) Mpps() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Received) / s.Elapsed.Seconds() / 1e6
}

// Result is a path's measurements: at the offered rate (for cost) and
// unpaced (for the maximum rate).
type Result struct {
	Path  string   `json:"path"`
	Paced []Sample `json:"paced"`
	Max   []Sample `json:"max"`
}

// lab addresses and MACs.
var (
	vip       = netip.MustParseAddr("198.51.100.20")
	client    = netip.MustParseAddr("203.0.113.9")
	macGen    = net.HardwareAddr{0x02, 0xbe, 0, 0, 1, 0xf1}
	macLB     = net.HardwareAddr{0x02, 0xbe, 0, 0, 1, 0xf2}
	macOut    = net.HardwareAddr{0x02, 0xbe, 0, 0, 1, 0xf3}
	macSinkNS = net.HardwareAddr{0x02, 0xbe, 0, 0, 1, 0xf4}
)

func backendMAC(i int) net.HardwareAddr { return net.HardwareAddr{0x02, 0xee, 0, 0, 0, byte(i + 1)} }
func backendAddr(i int) netip.Addr      { return netip.AddrFrom4([4]byte{10, 200, 0, byte(i + 1)}) }

// path is one sender feeding one forwarder whose output one sink counts.
type path struct {
	name string
	send *sender
	sink *loadgen.Sink
}

type bench struct {
	ns       netns.NsHandle
	baseline *ebpf.Program
	baseLink link.Link
	veths    []*lab.Veth
	sinks    []*loadgen.Sink
	senders  []*sender
	dp       *loader.Dataplane
	pinRoot  string
	paths    []path
}

func (b *bench) close() error {
	var errs []error
	if b.dp != nil {
		errs = append(errs, b.dp.Detach())
	}
	if b.pinRoot != "" {
		errs = append(errs, lab.RemovePinRoot(b.pinRoot))
	}
	if b.baseLink != nil {
		errs = append(errs, b.baseLink.Close())
	}
	if b.baseline != nil {
		errs = append(errs, b.baseline.Close())
	}
	for _, s := range b.senders {
		errs = append(errs, s.Close())
	}
	for _, s := range b.sinks {
		errs = append(errs, s.Close())
	}
	for _, v := range b.veths {
		errs = append(errs, v.Close())
	}
	if b.ns.IsOpen() {
		errs = append(errs, b.ns.Close())
	}
	return errors.Join(errs...)
}

func (b *bench) veth(a, z lab.VethEnd) (*lab.Veth, error) {
	a.NS, z.NS = b.ns, b.ns
	v, err := lab.NewVeth(a, z)
	if err == nil {
		b.veths = append(b.veths, v)
	}
	return v, err
}

func (b *bench) sinkOn(ifindex int) (*loadgen.Sink, error) {
	s, err := loadgen.AttachSink(b.ns, ifindex)
	if err == nil {
		b.sinks = append(b.sinks, s)
	}
	return s, err
}

func (b *bench) senderOn(ifindex int) (*sender, error) {
	s, err := newSender(b.ns, ifindex)
	if err == nil {
		b.senders = append(b.senders, s)
	}
	return s, err
}

// build makes one namespace with three ports, each fed by its own sender:
//
//	floor:    genf -> lbf (sink: count, drop)
//	baseline: genx -> lbx (MAC swap, XDP_TX) -> genx (sink)
//	Keepbit: genk -> lbk (Keepbit: XDP_TX to a backend MAC) -> genk (sink)
//	nft:     genn -> lbn (IP stack, DNAT, forward) -> lbo -> sinko (sink)
func build(ctx context.Context) (_ *bench, err error) {
	b := &bench{ns: netns.None()}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.close())
		}
	}()
	if b.ns, err = lab.NewNS(); err != nil {
		return nil, err
	}
	if _, err = lab.Sysctl(b.ns, map[string]string{"net/ipv6/conf/default/disable_ipv6": "1", "net/ipv6/conf/all/disable_ipv6": "1",
		"net/ipv4/ip_forward": "1"}); err != nil {
		return nil, err
	}

	f, err := b.veth(lab.VethEnd{Name: "genf", MAC: macGen}, lab.VethEnd{Name: "lbf", MAC: macLB})
	if err != nil {
		return nil, err
	}
	fsink, err := b.sinkOn(f.B.Index)
	if err != nil {
		return nil, err
	}
	fsend, err := b.senderOn(f.A.Index)
	if err != nil {
		return nil, err
	}

	x, err := b.veth(lab.VethEnd{Name: "genx", MAC: macGen}, lab.VethEnd{Name: "lbx", MAC: macLB})
	if err != nil {
		return nil, err
	}
	xsink, err := b.sinkOn(x.A.Index)
	if err != nil {
		return nil, err
	}
	xsend, err := b.senderOn(x.A.Index)
	if err != nil {
		return nil, err
	}
	if b.baseline, err = loader.LoadBaseline(); err != nil {
		return nil, err
	}
	if err = lab.InNS(b.ns, func() error {
		var err error
		b.baseLink, err = link.AttachXDP(link.XDPOptions{Program: b.baseline, Interface: x.B.Index, Flags: link.XDPDriverMode})
		return err
	}); err != nil {
		return nil, fmt.Errorf("attach baseline: %w", err)
	}

	k, err := b.veth(lab.VethEnd{Name: "genk", MAC: macGen}, lab.VethEnd{Name: "lbk", MAC: macLB})
	if err != nil {
		return nil, err
	}
	ksink, err := b.sinkOn(k.A.Index)
	if err != nil {
		return nil, err
	}
	ksend, err := b.senderOn(k.A.Index)
	if err != nil {
		return nil, err
	}
	if b.pinRoot, err = os.MkdirTemp("", "keepbit-kernelpath"); err != nil {
		return nil, err
	}
	err = lab.InNS(b.ns, func() error {
		var err error
		b.dp, err = loader.Open(ctx, loader.Options{Interface: "lbk", PinRoot: b.pinRoot, Mode: loader.AttachNative, HashSeed: 1})
		if err != nil {
			return err
		}
		var bs []loader.BackendSpec
		for i := range Backends {
			bs = append(bs, loader.BackendSpec{Addr: backendAddr(i), MAC: backendMAC(i), Weight: 1, State: loader.Up})
		}
		_, err = b.dp.ApplyService(loader.ServiceKey{VIP: vip, Port: 80, Proto: loader.UDP}, loader.ServiceSpec{Backends: bs})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("keepbit: %w", err)
	}

	n, err := b.veth(lab.VethEnd{Name: "genn", MAC: macGen}, lab.VethEnd{Name: "lbn", MAC: macLB, Addrs: []string{"203.0.113.1/24"}})
	if err != nil {
		return nil, err
	}
	o, err := b.veth(lab.VethEnd{Name: "lbo", MAC: macOut, Addrs: []string{"10.200.0.254/24"}}, lab.VethEnd{Name: "sinko", MAC: macSinkNS})
	if err != nil {
		return nil, err
	}
	nsink, err := b.sinkOn(o.B.Index)
	if err != nil {
		return nil, err
	}
	nsend, err := b.senderOn(n.A.Index)
	if err != nil {
		return nil, err
	}
	if err := neighbours(b.ns, o.A.Index); err != nil {
		return nil, err
	}
	if err := nftRules(ctx, b.ns); err != nil {
		return nil, err
	}
	b.paths = []path{{Floor, fsend, fsink}, {Baseline, xsend, xsink}, {Keepbit, ksend, ksink}, {NFT, nsend, nsink}}
	return b, nil
}

// neighbours makes the backends reachable on lbo without ARP: they do not
// exist, the sink only counts frames by destination MAC.
func neighbours(ns netns.NsHandle, ifindex int) error {
	h, err := lab.Handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	for i := range Backends {
		n := &netlink.Neigh{LinkIndex: ifindex, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: backendAddr(i).AsSlice(), HardwareAddr: backendMAC(i)}
		if err := h.NeighSet(n); err != nil {
			return fmt.Errorf("neighbour %s: %w", backendAddr(i), err)
		}
	}
	return nil
}

// nftRules is the kernel path's load balancer: DNAT of the VIP to one of
// the backends by a hash of the flow's source (what an nftables load
// balancer does; conntrack keeps a flow on its backend).
func nftRules(ctx context.Context, ns netns.NsHandle) error {
	var m []string
	for i := range Backends {
		m = append(m, fmt.Sprintf("%d : %s", i, backendAddr(i)))
	}
	rules := fmt.Sprintf(`table ip keepbit_bench {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s udp dport 80 dnat to jhash ip saddr . udp sport mod %d map { %s }
	}
}
`, vip, Backends, strings.Join(m, ", "))
	return lab.InNS(ns, func() error {
		cmd := exec.CommandContext(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(rules)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("nft -f: %w: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	})
}

// Frames are the UDP frames of flows to the VIP, one per flow (source
// port 10000 + i), 60 bytes on the wire without the FCS.
func Frames(flows int) ([][]byte, error) {
	var out [][]byte
	for i := range flows {
		eth := &layers.Ethernet{SrcMAC: macGen, DstMAC: macLB, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: client.AsSlice(), DstIP: vip.AsSlice()}
		udp := &layers.UDP{SrcPort: layers.UDPPort(10000 + i), DstPort: 80}
		if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
			return nil, err
		}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			eth, ip, udp, gopacket.Payload(make([]byte, 18))); err != nil {
			return nil, err
		}
		out = append(out, buf.Bytes())
	}
	return out, nil
}

// Run builds the lab, measures every path Repeats times each way,
// alternating paths so that all see the same machine load, and tears the
// lab down.
func Run(ctx context.Context, opts Options) (_ []Result, err error) {
	opts.defaults()
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, errors.New("nft not found: install nftables (make test-deps)")
	}
	frames, err := Frames(opts.Flows)
	if err != nil {
		return nil, err
	}
	b, err := build(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, b.close()) }()
	res := make([]Result, len(b.paths))
	for i, p := range b.paths {
		res[i].Path = p.name
	}
	for r := range opts.Repeats {
		for _, rate := range []int{opts.Rate, 0} {
			for i, p := range b.paths {
				s, err := measure(ctx, p, frames, rate, opts.Duration)
				if err != nil {
					return res, fmt.Errorf("%s: %w", p.name, err)
				}
				if s.Received == 0 {
					return res, fmt.Errorf("%s: none of %d frames came through", p.name, s.Sent)
				}
				kind := "max"
				if rate > 0 {
					kind = "paced"
					res[i].Paced = append(res[i].Paced, s)
				} else {
					res[i].Max = append(res[i].Max, s)
				}
				if opts.Progress != nil {
					opts.Progress(fmt.Sprintf("repeat %d, %s: %s: %.3f Mpps received of %d sent, %v CPU per packet, %d backends",
						r+1, kind, p.name, s.Mpps(), s.Sent, s.PerPacket(), s.Backends))
				}
			}
		}
	}
	return res, nil
}

// settle is how long frames in flight take to reach the sink.
const settle = 50 * time.Millisecond

func measure(ctx context.Context, p path, frames [][]byte, rate int, d time.Duration) (Sample, error) {
	before, err := p.sink.Counts()
	if err != nil {
		return Sample{}, err
	}
	busy0 := machineBusy()
	sent, elapsed, err := p.send.send(ctx, frames, rate, d)
	if err != nil {
		return Sample{}, err
	}
	select {
	case <-ctx.Done():
		return Sample{}, ctx.Err()
	case <-time.After(settle):
	}
	busy := machineBusy() - busy0
	after, err := p.sink.Counts()
	if err != nil {
		return Sample{}, err
	}
	got := after.Sub(before)
	s := Sample{Sent: sent, Received: got.Total(), Elapsed: elapsed, Busy: busy}
	for i := range Backends {
		if got[backendMAC(i)[5]] > 0 {
			s.Backends++
		}
	}
	return s, nil
}

// machineBusy is the time every CPU spent neither idle nor waiting for
// I/O, from /proc/stat (USER_HZ ticks).
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, f := range fields[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return time.Duration(busy) * time.Second / 100
}
