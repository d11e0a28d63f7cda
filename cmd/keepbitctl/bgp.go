package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"
)

// bgp runs the BGP commands: bgp, drain-node, undrain.
func (c *client) bgp(ctx context.Context, cmd string, rest []string) error {
	switch cmd {
	case "drain-node":
		dfs := flag.NewFlagSet("drain-node", flag.ContinueOnError)
		hold := dfs.Duration("hold", -1, "close the sessions after this long (default bgp.drain_hold; 0 keeps them)")
		if _, err := parseAnywhere(dfs, rest); err != nil {
			return err
		}
		d, err := c.api.DrainNode(ctx, *hold)
		if err != nil {
			return err
		}
		return c.print(d, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "draining: %d routes withdrawn; forwarding goes on", d.Withdrawn)
			if d.SessionsCloseAt.IsZero() {
				fmt.Fprintln(w, "; sessions kept")
			} else {
				fmt.Fprintf(w, "; sessions close at %s\n", d.SessionsCloseAt.Format("15:04:05.000"))
			}
		})
	case "undrain":
		if err := c.api.Undrain(ctx); err != nil {
			return err
		}
		return c.print(map[string]bool{"draining": false}, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "undrained: routes are announced again as their health allows")
		})
	}
	st, err := c.api.BGP(ctx)
	if err != nil {
		return err
	}
	return c.print(st, func(w *tabwriter.Writer) {
		if !st.Configured {
			fmt.Fprintln(w, "bgp is not configured")
			return
		}
		fmt.Fprintf(w, "asn %d, router id %s", st.ASN, st.RouterID)
		if st.Draining {
			fmt.Fprintf(w, ", DRAINING since %s (%s)", st.DrainSince.Format("15:04:05.000"), st.DrainReason)
			switch {
			case st.SessionsClosed:
				fmt.Fprint(w, ", sessions closed")
			case !st.SessionsCloseAt.IsZero():
				fmt.Fprintf(w, ", sessions close at %s", st.SessionsCloseAt.Format("15:04:05.000"))
			}
		}
		fmt.Fprintln(w)
		fmt.Fprintln(w, "\nPEER\tASN\tSTATE\tUPTIME\tSENT\tBFD\tREASON")
		for _, s := range st.Sessions {
			state := s.State
			if s.AdminDown {
				state += " (held down)"
			}
			bfd := "-"
			if b := s.BFD; b != nil {
				bfd = b.State
				if b.State != "up" && b.Diag != "none" {
					bfd += " (" + b.Diag + ")"
				}
				if b.Error != "" {
					bfd += ": " + b.Error
				}
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%d\t%s\t%s\n", s.Peer, s.ASN, state, s.Uptime.Round(time.Second), s.RoutesSent, bfd, s.Reason)
		}
		fmt.Fprintln(w, "\nROUTE\tSTATE\tSINCE\tSERVICES\tWHY")
		for _, r := range st.Routes {
			state := "withdrawn"
			if r.Announced {
				state = "announced"
			}
			since := "-"
			if !r.Since.IsZero() {
				since = r.Since.Format("15:04:05.000")
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.Prefix, state, since, strings.Join(r.Services, ","), r.Reason)
		}
	})
}
