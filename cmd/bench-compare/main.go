// bench-compare measures Keepbit's forwarding rate next to the machine's
// ceiling (the baseline MAC-swap program on the same kind of port), and
// the CPU per forwarded packet next to nftables DNAT, in one run, and
// writes BENCHMARKS.md, docs/benchmarks/throughput.json and the chart. Run it as root on an otherwise idle machine (make bench-compare).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/keepbit/keepbit/internal/kernelpath"
	"github.com/keepbit/keepbit/internal/machine"
	"github.com/keepbit/keepbit/internal/throughput"
	"github.com/keepbit/keepbit/loader"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench-compare:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench-compare", flag.ContinueOnError)
	d := fs.Duration("duration", time.Second, "length of one measurement")
	repeats := fs.Int("repeats", 5, "measurements per case and side, alternating ceiling and Keepbit")
	perRun := fs.Uint("per-run", 1<<16, "frames per BPF_PROG_RUN")
	services := fs.Int("services", 1000, "services in the many-services case")
	cache := fs.Uint("flow-cache", 0, "the dataplane's per-CPU flow cache entries (0: the default)")
	only := fs.String("cases", "", "comma-separated parts of case names to run (default: all)")
	root := fs.String("out", ".", "repository root to write BENCHMARKS.md and docs/benchmarks/ under")
	kernel := fs.Bool("kernel-path", true, "also measure nftables DNAT next to Keepbit with a socket sender (needs nft)")
	kernelRate := fs.Int("kernel-rate", 500_000, "offered frames/s for the kernel-path cost measurement")
	kernelRepeats := fs.Int("kernel-repeats", 5, "kernel-path measurements per path and kind")
	kernelDuration := fs.Duration("kernel-duration", 2*time.Second, "length of one kernel-path measurement")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *perRun == 0 || *perRun > 1<<24 {
		return fmt.Errorf("-per-run %d: want 1 .. %d", *perRun, 1<<24)
	}
	opts := throughput.Options{Duration: *d, Repeats: *repeats, PerRun: uint32(*perRun), Services: *services,
		FlowCacheSize: uint32(*cache),
		Progress:      func(s string) { fmt.Fprintln(out, s) }}
	if *only != "" {
		opts.Only = strings.Split(*only, ",")
	}
	rep := throughput.Report{Machine: machine.This(strings.TrimSpace("bench-compare " + strings.Join(args, " "))),
		Settings: fmt.Sprintf("%d repeats of %v per case and side, %d frames per run, many-services case with %d services "+
			"(Maglev tables of %d slots), flow cache %s", *repeats, *d, *perRun, *services, throughput.ManyTableSize, cacheText(uint32(*cache)))}
	res, err := throughput.Run(ctx, opts)
	if err != nil {
		return err
	}
	rep.Results = res
	if *kernel {
		kopts := kernelpath.Options{Rate: *kernelRate, Duration: *kernelDuration, Repeats: *kernelRepeats,
			Progress: func(s string) { fmt.Fprintln(out, "kernel path:", s) }}
		kres, err := kernelpath.Run(ctx, kopts)
		if err != nil {
			return fmt.Errorf("kernel path: %w", err)
		}
		rep.KernelPath = kres
		rep.KernelPathSettings = fmt.Sprintf("%d repeats of %v per path, paced at %d frames/s and unpaced, 16 UDP flows",
			*kernelRepeats, *kernelDuration, *kernelRate)
	}
	if err := throughput.Write(*root, rep); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s, %s, %s\n", throughput.MarkdownPath, throughput.JSONPath, throughput.ChartPath)
	return nil
}

func cacheText(n uint32) string {
	if n == 0 {
		n = loader.DefaultFlowCacheSize
	}
	return fmt.Sprintf("%d entries per CPU", n)
}
