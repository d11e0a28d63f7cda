package throughput

import (
	"encoding/json"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/keepbit/keepbit/internal/kernelpath"
	"github.com/keepbit/keepbit/internal/machine"
)

// Target is the share of the ceiling's rate Keepbit must forward on
// established flows.
const Target = 0.90

// Report is a run's results and where it ran.
type Report struct {
	Machine  machine.Info `json:"machine"`
	Settings string       `json:"settings"`
	Results  []Result     `json:"results"`
	// KernelPath, when measured, is Keepbit next to nftables DNAT with
	// a socket sender.
	KernelPath         []kernelpath.Result `json:"kernel_path,omitempty"`
	KernelPathSettings string              `json:"kernel_path_settings,omitempty"`
}

// Paths of the written files, relative to the repository root.
const (
	MarkdownPath = "BENCHMARKS.md"
	JSONPath     = "docs/benchmarks/throughput.json"
	ChartPath    = "docs/benchmarks/throughput.png"
)

// Write puts the markdown, the JSON and the chart under root.
func Write(root string, r Report) error {
	if err := os.MkdirAll(filepath.Join(root, filepath.Dir(ChartPath)), 0o755); err != nil {
		return err
	}
	if err := chart(filepath.Join(root, ChartPath), r.Results); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, JSONPath), append(js, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(root, MarkdownPath), []byte(Markdown(r)), 0o644)
}

// Verdict says whether a result meets the target; "" when the target
// does not apply (new flows).
func (r Result) Verdict() string {
	if !r.Established {
		return ""
	}
	m := SpreadOf(r.Ratios()).Median
	if m >= Target {
		return fmt.Sprintf("%.2f >= %.2f: met", m, Target)
	}
	return fmt.Sprintf("%.2f < %.2f: MISSED", m, Target)
}

// Markdown is BENCHMARKS.md.
func Markdown(r Report) string {
	var b strings.Builder
	b.WriteString("# Benchmarks\n\nEvery figure here comes with the command that produced it and is measured next to a " +
		"baseline in the same run on the same machine, so read the ratios first: absolute rates depend on the machine and on " +
		"what else it was doing. This file is written by `make bench-compare`; do not edit it by hand.\n\n")
	b.WriteString("## Forwarding throughput\n\n")
	fmt.Fprintf(&b, "Command: `%s` (`make bench-compare`). Machine: %s.\n\n", r.Machine.Command, r.Machine)
	fmt.Fprintf(&b, "Settings: %s.\n\n", r.Settings)
	b.WriteString("Method (`internal/throughput`): one network namespace, two veth pairs. On each, a live-frame generator " +
		"(`internal/loadgen`: `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, one Go thread) sends the case's stream into the " +
		"far end, and a sink program on the sending end counts the frames that come back by destination MAC. On the **ceiling** " +
		"pair the far end runs the baseline program (swap the MACs, `XDP_TX`: the least any forwarder does); on the **Keepbit** " +
		"pair it runs the Keepbit dataplane (native XDP, the loader as keepbitd uses it) with real services, whose 16 backends " +
		"each have a MAC of their own, so the sink also tells how many backends the flows reached. A case alternates ceiling and " +
		"Keepbit measurements with the same stream, so both see the same machine load; a rate is frames that came back per " +
		"second, lost is the share of frames sent that did not come back. On veth the far end's receive poll runs on the " +
		"sending CPU right after each batch of 64 frames, so sender, forwarder and sink take turns on one CPU: a rate is the " +
		"inverse of the whole chain's cost per frame, which is why nothing is lost and why the difference between the two " +
		"sides' costs (1/Keepbit - 1/ceiling) is what Keepbit's program adds per frame.\n\n")
	b.WriteString("| case | frame | ceiling Mpps median [min-max] | Keepbit Mpps median [min-max] | Keepbit / ceiling | " +
		"target (established) | Keepbit adds per frame | lost, Keepbit | backends reached |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, res := range r.Results {
		var loss []float64
		reached := Backends
		for _, s := range res.Keepbit {
			loss = append(loss, 100*s.Loss())
			reached = min(reached, s.Backends)
		}
		v := res.Verdict()
		if v == "" {
			v = "-"
		}
		c, k := SpreadOf(Mpps(res.Ceiling)), SpreadOf(Mpps(res.Keepbit))
		fmt.Fprintf(&b, "| %s | %d B | %s | %s | %s | %s | %s | %s%% | %d of %d |\n", res.Name, res.FrameBytes,
			c.Text("%.2f"), k.Text("%.2f"), SpreadOf(res.Ratios()).Text("%.2f"), v,
			addedCost(c.Median, k.Median), SpreadOf(loss).Text("%.0f"), reached, Backends)
	}
	fmt.Fprintf(&b, "\n![packets per second, ceiling and Keepbit, by case](%s)\n\n", ChartPath)
	b.WriteString("The raw samples (frames sent, received, elapsed, backends reached per measurement) are in " +
		"[" + JSONPath + "](" + JSONPath + ").\n\n")
	if len(r.KernelPath) > 0 {
		b.WriteString(kernelpath.Markdown(r.KernelPath, r.Machine.Command, r.KernelPathSettings))
	}
	b.WriteString("## Elsewhere\n\n" +
		"- Cost of one packet through the program (`BPF_PROG_RUN`, ns per packet and the ratio to the baseline program, " +
		"established, new-flow, IPv6 and VLAN paths): `make bench`, figures in README.md (\"Measured here\").\n" +
		"- Failover next to HAProxy and keepalived (client gap on a backend kill, VIP takeover after a master freeze): " +
		"[docs/compare-alternatives.md](docs/compare-alternatives.md).\n" +
		"- Client-visible failover for every failure scenario: [docs/failover-report.md](docs/failover-report.md) " +
		"(`make failover-report`).\n")
	return b.String()
}

// addedCost is what Keepbit's program adds to the chain's time per frame,
// from the two median rates (the chain runs on one CPU in turns).
func addedCost(ceiling, keepbit float64) string {
	if ceiling <= 0 || keepbit <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f ns", 1e3/keepbit-1e3/ceiling)
}

// chart draws each case's median rate, ceiling and Keepbit side by side.
func chart(path string, rs []Result) error {
	p := plot.New()
	p.Title.Text = "forwarded packets per second (median of the repeats)"
	p.Y.Label.Text = "Mpps"
	var ceil, kb plotter.Values
	var names []string
	for _, r := range rs {
		ceil = append(ceil, SpreadOf(Mpps(r.Ceiling)).Median)
		kb = append(kb, SpreadOf(Mpps(r.Keepbit)).Median)
		names = append(names, r.Name)
	}
	w := vg.Points(14)
	for i, s := range []struct {
		name string
		vs   plotter.Values
		c    color.RGBA
	}{{"ceiling (MAC swap)", ceil, color.RGBA{127, 127, 127, 255}}, {"Keepbit", kb, color.RGBA{31, 119, 180, 255}}} {
		bars, err := plotter.NewBarChart(s.vs, w)
		if err != nil {
			return err
		}
		bars.Color = s.c
		bars.LineStyle.Width = 0
		bars.Offset = w * vg.Length(2*i-1) / 2
		p.Add(bars)
		p.Legend.Add(s.name, bars)
	}
	// Headroom above the bars for the legend, and room for the outer bars.
	top := 0.0
	for _, v := range append(ceil, kb...) {
		top = max(top, v)
	}
	p.Y.Min, p.Y.Max = 0, top*1.25
	p.X.Min, p.X.Max = -0.7, float64(len(rs))-0.3
	p.Legend.Top = true
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = 0.5
	p.X.Tick.Label.XAlign = draw.XRight
	return p.Save(10*vg.Inch, 6*vg.Inch, path)
}
