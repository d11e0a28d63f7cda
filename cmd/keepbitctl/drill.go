package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keepbit/keepbit/internal/drill"
)

// drill runs `drill backend|node` and `drills`.
func (c *client) drill(ctx context.Context, cmd string, rest []string) error {
	if cmd == "drills" {
		h, err := c.api.Drills(ctx)
		if err != nil {
			return err
		}
		return c.print(h, func(w *tabwriter.Writer) {
			if len(h.Running) > 0 {
				fmt.Fprintf(w, "running: %s\n\n", strings.Join(h.Running, "; "))
			}
			fmt.Fprintln(w, "ID\tSTARTED\tKIND\tTARGET\tFOR\tRESULT\tOUT\tSTOPPED\tBACK\tMTTR\tWHY")
			for _, r := range h.Results {
				fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%v\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Started.Format("15:04:05"), r.Kind, target(r), r.For,
					r.Result, ms(r.Out.SinceFault), ms(r.Traffic.StoppedAfter), ms(r.Traffic.BackAfter), ms(r.MTTR), strings.Join(r.Problems, "; "))
			}
		})
	}
	if len(rest) == 0 {
		return errors.New("drill: want backend SERVICE BACKEND or node")
	}
	kind, rest := rest[0], rest[1:]
	dfs := flag.NewFlagSet("drill "+kind, flag.ContinueOnError)
	hold := dfs.Duration("for", 10*time.Second, "how long the target stays out")
	force := dfs.Bool("force", false, "drill even when it leaves a service without a usable backend or no peer is known")
	pos, err := parseAnywhere(dfs, rest)
	if err != nil {
		return err
	}
	if *hold <= 0 {
		return fmt.Errorf("drill: -for: %v: want more than 0", *hold)
	}
	var res drill.Result
	switch kind {
	case "backend":
		if len(pos) != 2 {
			return errors.New("drill backend: want SERVICE BACKEND")
		}
		res, err = c.api.DrillBackend(ctx, pos[0], pos[1], *hold, *force)
	case "node":
		if len(pos) != 0 {
			return errors.New("drill node: takes no arguments")
		}
		res, err = c.api.DrillNode(ctx, *hold, *force)
	default:
		return fmt.Errorf("drill: %q: want backend or node", kind)
	}
	if err != nil {
		return err
	}
	if err := c.print(res, func(w *tabwriter.Writer) { report(w, res) }); err != nil {
		return err
	}
	if res.Result != drill.ResultOK {
		return fmt.Errorf("drill %d: %s", res.ID, res.Result)
	}
	return nil
}

func target(r drill.Result) string {
	if r.Kind == drill.Node {
		return "this node"
	}
	return r.Service + " " + r.Backend
}

// ms prints a phase or a gap at the precision it has: microseconds below
// a millisecond (state writes), tenths of milliseconds below a second;
// "-" for none.
func ms(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond && d > -time.Millisecond:
		return fmt.Sprintf("%.0fus", float64(d)/float64(time.Microsecond))
	case d < time.Second && d > -time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return d.Round(time.Millisecond).String()
}

// report prints one drill's report for people.
func report(w *tabwriter.Writer, r drill.Result) {
	fmt.Fprintf(w, "drill %d: %s drill of %s for %v (%s): %s\n", r.ID, r.Kind, target(r), r.For, r.Source, strings.ToUpper(r.Result))
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	fmt.Fprintln(w, "\nPHASE\tEVENT\tDETECT->DECIDE\tDECIDE->APPLY\tDETECT->APPLY\tDETECT->ANNOUNCE\tAFTER FAULT/RESTORE")
	for _, p := range []struct {
		name string
		ph   drill.Phase
	}{{"out", r.Out}, {"back", r.Back}} {
		ev := p.ph.Event
		if ev == "" {
			ev = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.name, ev, ms(p.ph.DetectToDecide), ms(p.ph.DecideToApply), ms(p.ph.DetectToApply),
			ms(p.ph.DetectToAnnounce), ms(p.ph.SinceFault))
	}
	t := r.Traffic
	fmt.Fprintf(w, "\nTRAFFIC (%d samples, every %v)\t\n", t.Samples, t.Interval.Round(10*time.Microsecond))
	fmt.Fprintf(w, "stopped reaching the target\t%s after the fault\n", ms(t.StoppedAfter))
	if t.Leaked > 0 {
		fmt.Fprintf(w, "packets to the target while out\t%d\n", t.Leaked)
	}
	fmt.Fprintf(w, "came back\t%s after the restore\n", ms(t.BackAfter))
	fmt.Fprintf(w, "target without traffic\t%s\n", ms(t.Gap))
	fmt.Fprintf(w, "MTTR\t%s\n", ms(r.MTTR))
	fmt.Fprintln(w, "\nPACKETS/S\tBEFORE\tDURING\tAFTER")
	fmt.Fprintf(w, "target\t%.0f\t%.0f\t%.0f\n", t.Target.Before, t.Target.During, t.Target.After)
	if r.Kind == drill.Backend {
		fmt.Fprintf(w, "service\t%.0f\t%.0f\t%.0f\n", t.Service.Before, t.Service.During, t.Service.After)
	}
}
