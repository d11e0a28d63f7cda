// keepbitctl is the operator's CLI for keepbitd: JSON over HTTP on the
// daemon's Unix socket; tables for people, -o json for scripts.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/keepbit/keepbit/internal/api"
	"github.com/keepbit/keepbit/internal/apiclient"
	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/recorder"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "keepbitctl:", err)
		os.Exit(1)
	}
}

const usage = `usage: keepbitctl [-socket PATH] [-o table|json] COMMAND [ARGS]

commands:
  status                          daemon generation, interfaces, services
  services                        services with backends, states and counters
  backends [SERVICE]              backends (of one service)
  events [-follow] [-after N]     flight recorder events
  flows [-limit N]                top flows by packets
  vip                             VRRP instances: state, priority, master, last transition
  bgp                             BGP sessions (state, uptime, BFD) and VIP routes (announced or why not)
  drain-node [-hold D]            withdraw every route; the sessions close after D (default bgp.drain_hold, 0 keeps them)
  flowshare                       flow sharing: warm-up (which peers answered), sent/received/rejected counters, the program's shared hits
  undrain                         announce the routes again as their health allows
  drill backend SERVICE BACKEND [-for D] [-force]
                                  take the backend out as a failure would for D (10s), restore it through its checks, report
  drill node [-for D] [-force]    hand this node's VIPs to its peers (VRRP priority 0, BGP withdraw) for D and back, report
  drills                          the last drill results
  reload                          re-read the daemon's config file
  check-config FILE               validate a config file locally
  diff FILE                       what a reload of FILE would change in the running daemon (services,
                                  backends, weights, VIPs, VRRP, ...; fields a reload refuses are marked)
  drain SERVICE BACKEND [-wait] [-timeout D] [-idle D]
                                  no new flows; with -wait, until its live flows reach zero
  enable SERVICE BACKEND          follow the health checks again
  disable SERVICE BACKEND         take the backend down`

// client is the daemon's API and how answers are printed.
type client struct {
	api  *apiclient.Client
	out  io.Writer
	json bool
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("keepbitctl", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprintln(fs.Output(), usage) }
	socket := fs.String("socket", "/run/keepbit/keepbit.sock", "keepbitd API socket")
	format := fs.String("o", "table", "output: table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *format != "table" && *format != "json" {
		return fmt.Errorf("-o: %q is not table or json", *format)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no command")
	}
	c := &client{out: out, json: *format == "json", api: apiclient.New(*socket)}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "status":
		st, err := c.api.Status(ctx)
		if err != nil {
			return err
		}
		return c.print(st, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "generation\t%d\ninterfaces\t%s\nservices\t%d\nstarted\t%s\n", st.Generation, strings.Join(st.Interfaces, ","), st.Services, st.Started.Format(time.RFC3339))
		})
	case "services", "backends":
		svcs, err := c.api.Services(ctx)
		if err != nil {
			return err
		}
		if cmd == "backends" && len(rest) > 0 {
			var only []api.Service
			for _, s := range svcs {
				if s.Name == rest[0] {
					only = append(only, s)
				}
			}
			if len(only) == 0 {
				return fmt.Errorf("service %q: not configured", rest[0])
			}
			svcs = only
		}
		return c.print(svcs, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "SERVICE\tKEY\tBACKEND\tSTATE\tHEALTH\tADMIN\tWEIGHT\tGROUP\tPACKETS\tDETECT\tREASON")
			for _, s := range svcs {
				for _, b := range s.ServiceStatus.Backends {
					admin := b.Admin
					if admin == "" {
						admin = "-"
					}
					pred, reason := api.DetectColumn(b)
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", s.Name, s.Key, b.Address, b.State, b.Health, admin, b.Weight, b.Group, s.Backends[b.Address].Packets, pred, reason)
				}
			}
		})
	case "events":
		efs := flag.NewFlagSet("events", flag.ContinueOnError)
		follow := efs.Bool("follow", false, "keep printing new events")
		after := efs.Uint64("after", 0, "only events after this number")
		if _, err := parseAnywhere(efs, rest); err != nil {
			return err
		}
		return c.events(ctx, *after, *follow)
	case "flows":
		ffs := flag.NewFlagSet("flows", flag.ContinueOnError)
		limit := ffs.Int("limit", 20, "how many")
		if _, err := parseAnywhere(ffs, rest); err != nil {
			return err
		}
		flows, err := c.api.Flows(ctx, *limit)
		if err != nil {
			return err
		}
		return c.print(flows, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "CLIENT\tVIP\tPROTO\tBACKEND\tPACKETS\tBYTES\tIDLE")
			for _, f := range flows {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", f.Client, f.VIP, f.Proto, f.Backend, f.Packets, f.Bytes, f.LastSeen.Round(time.Millisecond))
			}
		})
	case "vip":
		vips, err := c.api.VIPs(ctx)
		if err != nil {
			return err
		}
		return c.print(vips, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "INSTANCE\tVRID\tINTERFACE\tVIPS\tSTATE\tPRIORITY\tMASTER\tSINCE\tREASON")
			for _, v := range vips {
				prio := fmt.Sprint(v.Priority)
				if v.Priority != v.BasePriority {
					prio = fmt.Sprintf("%d (of %d: %s)", v.Priority, v.BasePriority, v.Tracking)
				}
				since := "-"
				if !v.Since.IsZero() {
					since = v.Since.Format("15:04:05.000")
				}
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.VRID, v.Interface, strings.Join(v.VIPs, ","), v.State, prio, v.Master, since, v.Reason)
			}
		})
	case "bgp", "drain-node", "undrain":
		return c.bgp(ctx, cmd, rest)
	case "flowshare":
		return c.flowShare(ctx)
	case "drill", "drills":
		return c.drill(ctx, cmd, rest)
	case "reload":
		gen, err := c.api.Reload(ctx)
		if err != nil {
			return err
		}
		return c.print(map[string]int{"generation": gen}, func(w *tabwriter.Writer) { fmt.Fprintf(w, "reloaded: generation %d\n", gen) })
	case "check-config":
		if len(rest) != 1 {
			return errors.New("check-config: want one FILE")
		}
		cfg, err := config.Load(rest[0])
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: ok, %d interfaces, %d services\n", rest[0], len(cfg.Interfaces), len(cfg.Services))
		return nil
	case "diff":
		if len(rest) != 1 {
			return errors.New("diff: want one FILE")
		}
		// Checked here first: file:line errors without a daemon.
		if _, err := config.Load(rest[0]); err != nil {
			return err
		}
		body, err := os.ReadFile(rest[0])
		if err != nil {
			return err
		}
		changes, err := c.api.Diff(ctx, rest[0], body)
		if err != nil {
			return err
		}
		if c.json {
			return c.print(changes, nil)
		}
		return config.WriteChanges(c.out, changes)
	case "drain", "enable", "disable":
		afs := flag.NewFlagSet(cmd, flag.ContinueOnError)
		wait := afs.Bool("wait", false, "drain: wait until the backend's live flows reach zero")
		timeout := afs.Duration("timeout", 5*time.Minute, "drain -wait: give up after this long")
		idle := afs.Duration("idle", 10*time.Second, "drain -wait: a flow silent this long is over")
		pos, err := parseAnywhere(afs, rest)
		if err != nil {
			return err
		}
		if len(pos) != 2 {
			return fmt.Errorf("%s: want SERVICE BACKEND", cmd)
		}
		svc, be := pos[0], pos[1]
		admin := map[string]control.Admin{"drain": control.Draining, "enable": control.Enabled, "disable": control.Disabled}[cmd]
		if err := c.api.SetAdmin(ctx, svc, be, admin); err != nil {
			return err
		}
		if cmd != "drain" || !*wait {
			fmt.Fprintf(out, "%s %s: %s\n", svc, be, cmd)
			return nil
		}
		return c.waitDrained(ctx, svc, be, *timeout, *idle)
	}
	fs.Usage()
	return fmt.Errorf("unknown command %q", cmd)
}

// parseAnywhere parses flags that may come before, between or after the
// positional arguments (`drain web 10.0.0.1 -wait`), and returns those.
func parseAnywhere(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// waitDrained polls until the backend has no live flow and its packet
// counter stood still for a poll, or the timeout passes; it says which.
func (c *client) waitDrained(ctx context.Context, svc, be string, timeout, idle time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last api.Live
	first := true
	for {
		live, err := c.api.Live(ctx, svc, be, idle)
		if err != nil {
			return err
		}
		if !first && live.Flows == 0 && live.Packets == last.Packets {
			fmt.Fprintf(c.out, "%s %s: drained (no live flows)\n", svc, be)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s %s: timeout after %v: %d flows still live", svc, be, timeout, live.Flows)
		}
		first, last = false, live
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *client) events(ctx context.Context, after uint64, follow bool) error {
	return c.api.Events(ctx, after, follow, func(raw []byte, e recorder.Event) error {
		if c.json {
			_, err := fmt.Fprintln(c.out, string(raw))
			return err
		}
		line := fmt.Sprintf("%d %s %s", e.Seq, e.Time.Format("15:04:05.000"), e.Kind)
		for _, kv := range [][2]string{{"service", e.Service}, {"backend", e.Backend}} {
			if kv[1] != "" {
				line += " " + kv[0] + "=" + kv[1]
			}
		}
		if !e.Apply.IsZero() {
			line += fmt.Sprintf(" detect->decide=%v decide->apply=%v", e.DetectToDecide, e.DecideToApply)
		}
		if e.Reason != "" {
			line += " (" + e.Reason + ")"
		}
		_, err := fmt.Fprintln(c.out, line)
		return err
	})
}

func (c *client) print(v any, table func(*tabwriter.Writer)) error {
	if c.json {
		enc := json.NewEncoder(c.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	table(w)
	return w.Flush()
}
