package main

import (
	"context"
	"fmt"
	"sort"
	"text/tabwriter"
)

// flowShare prints GET /v1/flowshare.
func (c *client) flowShare(ctx context.Context) error {
	st, err := c.api.FlowShare(ctx)
	if err != nil {
		return err
	}
	return c.print(st, func(w *tabwriter.Writer) {
		if !st.Enabled {
			fmt.Fprintln(w, "flow sharing is not configured")
			return
		}
		warm := "warming up"
		if st.Warm {
			warm = fmt.Sprintf("warm (warm-up took %v", st.WarmupTook)
			if st.TimedOut {
				warm += ", timed out"
			}
			warm += ")"
		}
		fmt.Fprintln(w, "flow sharing:", warm)
		fmt.Fprintln(w, "PEER\tANSWERED\tFLOWS")
		for _, p := range st.Peers {
			fmt.Fprintf(w, "%s\t%v\t%d\n", p.Peer, p.Answered, p.Flows)
		}
		for _, m := range st.Missing {
			fmt.Fprintf(w, "%s\tno answer\t-\n", m)
		}
		fmt.Fprintln(w, "\nCOUNTER\tVALUE")
		names := make([]string, 0, len(st.Counters))
		for k := range st.Counters {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			fmt.Fprintf(w, "%s\t%d\n", k, st.Counters[k])
		}
		ifaces := make([]string, 0, len(st.Dataplane))
		for k := range st.Dataplane {
			ifaces = append(ifaces, k)
		}
		sort.Strings(ifaces)
		for _, i := range ifaces {
			d := st.Dataplane[i]
			fmt.Fprintf(w, "\ndataplane %s: reported %d, report dropped %d, shared hit %d, shared stale %d\n",
				i, d["reported"], d["report_dropped"], d["shared_hit"], d["shared_stale"])
		}
		if st.Error != "" {
			fmt.Fprintln(w, "error:", st.Error)
		}
	})
}
