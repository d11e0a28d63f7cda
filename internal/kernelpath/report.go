package kernelpath

import (
	"fmt"
	"strings"
	"time"

	"github.com/keepbit/keepbit/internal/spread"
)

// Target is how many times less CPU per forwarded packet Keepbit must add
// than the kernel's own path.
const Target = 10.0

func perPacketNS(ss []Sample) []float64 {
	var out []float64
	for _, s := range ss {
		out = append(out, float64(s.PerPacket())/float64(time.Nanosecond))
	}
	return out
}

func mpps(ss []Sample) []float64 {
	var out []float64
	for _, s := range ss {
		out = append(out, s.Mpps())
	}
	return out
}

// Added is a path's CPU per packet over the floor's, per repeat (the
// floor measured in the same repeat), in ns, from the unpaced runs: with
// the sender's CPU saturated they carry millions of frames, so the rest of
// the machine's noise is a few ns per frame, where the paced runs' is
// hundreds.
func Added(path, floor Result) []float64 {
	var out []float64
	for i := range min(len(path.Max), len(floor.Max)) {
		out = append(out, float64(path.Max[i].PerPacket()-floor.Max[i].PerPacket()))
	}
	return out
}

// Verdict compares the CPU nftables adds per packet with Keepbit's.
func Verdict(res []Result) (ratio float64, text string) {
	var floor, kb, nft *Result
	for i := range res {
		switch res[i].Path {
		case Floor:
			floor = &res[i]
		case Keepbit:
			kb = &res[i]
		case NFT:
			nft = &res[i]
		}
	}
	if floor == nil || kb == nil || nft == nil {
		return 0, "-"
	}
	k, n := spread.Of(Added(*kb, *floor)).Median, spread.Of(Added(*nft, *floor)).Median
	if k <= 0 {
		return 0, "Keepbit's added cost is within the floor's noise: no ratio"
	}
	ratio = n / k
	verdict := "MISSED"
	if ratio >= Target {
		verdict = "met"
	}
	return ratio, fmt.Sprintf("%.1fx (target %.0fx: %s)", ratio, Target, verdict)
}

// Markdown is the section of BENCHMARKS.md for a run.
func Markdown(res []Result, command, settings string) string {
	var b strings.Builder
	b.WriteString("## Kernel path: nftables next to Keepbit\n\n")
	fmt.Fprintf(&b, "Command: `%s` (`make bench-compare`). Settings: %s.\n\n", command, settings)
	b.WriteString("Method (`internal/kernelpath`): live frames cannot feed the IP stack, so here every path gets the same " +
		"frames from the same socket sender: one Go thread writing 60-byte UDP frames of 16 flows to a veth through an " +
		"AF_PACKET socket (qdisc bypassed). Four ports in one namespace, each with its own sender: the **floor** (the " +
		"far end only counts and drops), the **XDP_TX baseline** (the far end swaps the MACs and sends the frame back, as " +
		"Keepbit does, with no lookup: what any XDP forwarder pays on this port), **Keepbit** (the dataplane on the far end, one UDP service with 16 backends, " +
		"`XDP_TX` to the backend's MAC, counted back on the sending end) and **nftables** (the far end is an IP interface; " +
		"a `dnat to jhash ip saddr . udp sport mod 16 map {...}` rule in a prerouting nat chain, conntrack, routing and " +
		"forwarding out of a second veth to 16 backends with permanent neighbour entries, counted on its peer). On veth " +
		"the receive side runs on the sending CPU, so at a fixed offered rate the machine's CPU time (`/proc/stat`, every " +
		"CPU, softirq included) per frame received is the whole chain's cost. The unpaced runs give each path's maximum " +
		"rate with one sender and, carrying millions of frames, the steadier cost per frame: what a path adds there over " +
		"the floor, measured in the same repeat, is its forwarding cost.\n\n")
	b.WriteString("| path | received at the offered rate | machine CPU per packet at the offered rate | " +
		"max rate, one sender, Mpps | machine CPU per packet at the max rate | added to the floor | backends reached |\n" +
		"|---|---|---|---|---|---|---|\n")
	var floor Result
	for _, r := range res {
		if r.Path == Floor {
			floor = r
		}
	}
	for _, r := range res {
		var recv []float64
		reached := Backends
		for _, s := range r.Paced {
			recv = append(recv, float64(s.Received)/max(float64(s.Sent), 1)*100)
			reached = min(reached, s.Backends)
		}
		added := "-"
		if r.Path != Floor {
			added = spread.Of(Added(r, floor)).Text("%.0f") + " ns"
		}
		backends := fmt.Sprintf("%d of %d", reached, Backends)
		if r.Path == Floor || r.Path == Baseline {
			backends = "-"
		}
		fmt.Fprintf(&b, "| %s | %s%% | %s ns | %s | %s ns | %s | %s |\n", r.Path, spread.Of(recv).Text("%.0f"),
			spread.Of(perPacketNS(r.Paced)).Text("%.0f"), spread.Of(mpps(r.Max)).Text("%.2f"),
			spread.Of(perPacketNS(r.Max)).Text("%.0f"), added, backends)
	}
	_, v := Verdict(res)
	fmt.Fprintf(&b, "\nCPU added per forwarded packet, nftables / Keepbit: %s.\n\n", v)
	b.WriteString("Reading it: a frame from a socket reaches a veth's XDP as an skb that veth first converts (a copy, as " +
		"the socket leaves less headroom than XDP needs), and a frame sent back with `XDP_TX` crosses one more veth " +
		"poll before the sink; every path here pays the first, and the XDP paths the second, which is why the XDP_TX " +
		"baseline adds about as much as Keepbit. On a NIC, XDP runs on the driver's buffer before any skb exists, and " +
		"the stack's path keeps its skb, conntrack, routing and forwarding costs. What Keepbit's own program adds is " +
		"its row minus the baseline's here, and the \"Keepbit adds per frame\" column of the live-frames table above.\n\n")
	return b.String()
}
