// failover-report runs every failure scenario of the failover report in a
// network-namespace lab with real keepbitd processes and writes
// docs/failover-report.md, docs/failover-report.json and the charts.
// Run it as root (make failover-report).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/keepbit/keepbit/internal/failreport"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "failover-report:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	// A backend of the lab: this binary again, in the backend's namespace.
	if len(args) == 2 && args[0] == failreport.ServeFlag {
		return failreport.ServeBackend(ctx, args[1])
	}
	fs := flag.NewFlagSet("failover-report", flag.ContinueOnError)
	runs := fs.Int("runs", 20, "runs per scenario")
	only := fs.String("scenarios", "", "comma-separated parts of scenario names to run (default: all)")
	dir := fs.String("out", "docs", "directory for failover-report.md, .json and the charts")
	keepbitd := fs.String("keepbitd", "bin/keepbitd", "keepbitd binary")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *runs < 1 {
		return fmt.Errorf("-runs %d: at least 1", *runs)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	kb, err := filepath.Abs(*keepbitd)
	if err != nil {
		return err
	}
	if _, err := os.Stat(kb); err != nil {
		return fmt.Errorf("-keepbitd: %w (make failover-report builds it)", err)
	}
	var filters []string
	if *only != "" {
		filters = strings.Split(*only, ",")
	}
	scs, err := failreport.Select(failreport.Scenarios(), filters)
	if err != nil {
		return err
	}
	opts := failreport.Options{Keepbitd: kb, Self: self}
	L, err := failreport.Build(ctx, opts)
	if err != nil {
		return err
	}
	defer L.Close()
	rep := failreport.Report{Machine: failreport.ThisMachine("failover-report " + strings.Join(args, " ")),
		Options: "HTTP checks every 10 ms (timeout 10 ms, fast interval 5 ms, rise 2, fall 2), VRRP adverts every 10 ms, 3 backends, 2 nodes"}
	for _, sc := range scs {
		var results []failreport.Result
		var errs []string
		for i := range *runs {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r, err := L.Run(ctx, sc, failreport.Load{})
			if err != nil {
				errs = append(errs, err.Error())
				fmt.Fprintf(out, "%s run %d: %v\n", sc.Name, i+1, err)
				if err := L.Settle(ctx, 30*time.Second); err != nil {
					return fmt.Errorf("%s: the lab did not recover: %w", sc.Name, err)
				}
				continue
			}
			results = append(results, r)
		}
		if len(results) == 0 {
			return fmt.Errorf("%s: every run failed: %s", sc.Name, strings.Join(errs, "; "))
		}
		sr, err := failreport.Summarize(sc, results, errs)
		if err != nil {
			return err
		}
		s := sr.Summary
		fmt.Fprintf(out, "%-50s gap p50 %-8v p99 %-8v max %-8v failed new %-4d broken on failed %-3d on healthy %d\n",
			sc.Name, s.GapP50.Round(100*time.Microsecond), s.GapP99.Round(100*time.Microsecond), s.GapMax.Round(100*time.Microsecond),
			s.FailedNew, s.BrokenFailed, s.BrokenHealthy)
		rep.Scenarios = append(rep.Scenarios, sr)
	}
	if err := failreport.Write(*dir, "failover-report.md", rep); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s\n", filepath.Join(*dir, "failover-report.md"))
	return nil
}
