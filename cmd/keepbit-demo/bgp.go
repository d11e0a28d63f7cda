package main

// keepbit-demo -bgp: three active-active Keepbit nodes behind a BIRD 2
// router (internal/bgplab). Every node announces the VIP over BGP with BFD;
// the router spreads flows over them by ECMP. The demo loads the VIP with
// long-lived connections and a stream of new ones (internal/connload),
// loses a node silently, brings it back, drains one, and (with flow
// sharing) adds a backend and loses a node again, and prints what the
// router and the client saw. It exits non-zero when a promise breaks: a
// route not withdrawn in time, a connection broken.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/keepbit/keepbit/internal/apiclient"
	"github.com/keepbit/keepbit/internal/bgplab"
	"github.com/keepbit/keepbit/internal/connload"
	"github.com/keepbit/keepbit/internal/recorder"
)

// bgpStall: a long-lived connection without an answer for this long is
// broken. TCP's first retransmission comes 200ms or more after a loss, so
// a connection that survives a failover pauses for about that long plus
// the detection time.
const bgpStall = 2 * time.Second

type bgpDemo struct {
	tl       *timeline
	out      io.Writer
	l        *bgplab.Lab
	keepbitd string
	ctl      string
	procs    map[string]*bgpProc
	ld       *connload.Load
	sharing  bool // flow sharing configured and running in keepbitd
	rows     []bgpRow
	failures []string
}

// bgpProc is keepbitd running on a lab node.
type bgpProc struct {
	n    *bgplab.Node
	cmd  *exec.Cmd
	done chan struct{}
}

// bgpRow is one step of the summary table.
type bgpRow struct {
	step, router   string
	gapMax, gapP99 time.Duration
	broken         int // connections broken during the step
	healthy        int // of which on paths that kept working
	via            int // of which through the node that left
	viaTotal       int // connections through the node that left
	newFailed      int // new connections failed during the step
	newAttempts    int
}

// stepStart is where a step began: connload's connections stay broken and
// its new-connection counts add up, so a step counts from here.
type stepStart struct {
	at time.Time
	r  connload.Report
}

func (d *bgpDemo) begin() stepStart {
	d.ld.ResetGaps()
	return stepStart{at: time.Now(), r: d.ld.Report()}
}

func runBGP(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("keepbit-demo -bgp", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Bool("bgp", true, "the three-node BGP ECMP lab (this demo)")
	self, _ := os.Executable()
	keepbitd := fs.String("keepbitd", filepath.Join(filepath.Dir(self), "keepbitd"), "keepbitd binary")
	ctl := fs.String("keepbitctl", "", "keepbitctl binary (default: beside keepbitd)")
	interval := fs.Duration("bfd-interval", 100*time.Millisecond, "BFD transmit and receive interval, both sides")
	mult := fs.Int("bfd-mult", 3, "BFD detect multiplier")
	conns := fs.Int("conns", 200, "long-lived client connections (a sequence number every 10ms each)")
	rate := fs.Float64("rate", 50, "new client connections per second")
	sharing := fs.Bool("flow-sharing", true, "share flows between the nodes (off: the last step shows the resets it prevents)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ctl == "" {
		*ctl = filepath.Join(filepath.Dir(*keepbitd), "keepbitctl")
	}
	if *interval <= 0 || *mult < 1 {
		return fmt.Errorf("-bfd-interval %v -bfd-mult %d: want a positive interval and a multiplier of at least 1", *interval, *mult)
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root: it creates network namespaces, runs BIRD and attaches XDP programs (try: sudo make demo-bgp)")
	}
	for _, b := range []string{*keepbitd, *ctl} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s not found (make demo-bgp builds it)", b)
		}
	}
	if _, err := exec.LookPath("bird"); err != nil {
		return fmt.Errorf("bird: %w (install Debian's bird2; make test-deps does)", err)
	}
	dir, err := os.MkdirTemp("", "keepbit-demo-bgp")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	d := &bgpDemo{tl: &timeline{start: time.Now(), out: out}, out: out, keepbitd: *keepbitd, ctl: *ctl, procs: map[string]*bgpProc{}}
	bfd := &bgplab.BFD{Interval: *interval, Mult: *mult}
	d.tl.say("building the lab: client -> router (BIRD 2, ECMP, L4 hash) -> bridge -> nodes n1-n3 -> backends b1-b3 (b4 spare), DSR")
	l, err := bgplab.New(ctx, dir, bgplab.Options{BGP: true, BFD: bfd, FlowSharing: *sharing, Extra: 1})
	if err != nil {
		return err
	}
	d.l = l
	defer func() { l.Close(); d.tl.say("lab removed: namespaces, links, programs, BIRD and pins are gone") }()
	defer d.stopAll()

	for _, n := range l.Nodes {
		if err := d.start(ctx, n); err != nil {
			return err
		}
	}
	d.tl.say("keepbitd running on n1 (%s), n2 (%s), n3 (%s): VIP %s:%d announced to the router (AS %d -> AS %d), BFD %v x %d",
		l.Nodes[0].Addr, l.Nodes[1].Addr, l.Nodes[2].Addr, bgplab.VIP, bgplab.Port, bgplab.NodeAS, bgplab.RouterAS, bfd.Interval, bfd.Mult)
	if err := d.waitAll(ctx, 30*time.Second, "n1", "n2", "n3"); err != nil {
		return fmt.Errorf("the lab did not settle: %w (keepbitd logs in %s)", err, dir)
	}
	d.tl.say("router: %s via n1 n2 n3 (one ECMP route, BGP and BFD up with every node)", bgplab.VIP)
	if *sharing {
		d.sharing = d.flowSharingRuns(ctx)
		if !d.sharing {
			d.tl.say("this keepbitd does not run flow sharing yet (no flowshare-start event): the backend-change step is skipped")
		}
	}

	ld, err := l.Load(ctx, *conns, *rate, bgpStall)
	if err != nil {
		return err
	}
	d.ld = ld
	defer ld.Stop()
	d.tl.say("client: %d long-lived connections (a sequence number every 10ms each) and %.0f new connections per second", *conns, *rate)
	sleep(ctx, time.Second)
	if _, err := d.where(ctx, "spread", "n1", "n2", "n3"); err != nil {
		return err
	}

	detect := bfd.Detect()
	withdrawWithin := max(time.Second, 4*detect)
	if err := d.nodeLost(ctx, "n2", "n2 dropped", withdrawWithin, true); err != nil {
		return err
	}
	if err := d.nodeBack(ctx, "n2"); err != nil {
		return err
	}
	if err := d.drain(ctx, "n3"); err != nil {
		return err
	}
	if *sharing && d.sharing || !*sharing {
		if err := d.backendThenLoss(ctx, withdrawWithin, *sharing); err != nil {
			return err
		}
	}
	final := ld.Stop()
	d.summary(bfd, *conns, *rate, final)
	if len(d.failures) > 0 {
		return fmt.Errorf("%d expected properties failed: %s", len(d.failures), strings.Join(d.failures, "; "))
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// expect records a failed property; the demo carries on to show the rest.
func (d *bgpDemo) expect(ok bool, format string, args ...any) {
	if !ok {
		msg := fmt.Sprintf(format, args...)
		d.failures = append(d.failures, msg)
		d.tl.say("!!! EXPECTED PROPERTY FAILED: %s", msg)
	}
}

// start runs keepbitd on n and waits until it has every backend up.
func (d *bgpDemo) start(ctx context.Context, n *bgplab.Node) error {
	logf, err := os.Create(filepath.Join(n.Dir, "keepbitd.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	p := &bgpProc{n: n, cmd: exec.Command(d.keepbitd, "--config", n.Config), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := n.Host.Do(p.cmd.Start); err != nil {
		return fmt.Errorf("start keepbitd on %s: %w", n.Name, err)
	}
	d.procs[n.Name] = p
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-wctx.Done():
		}
	}()
	if err := bgplab.WaitBackendsUp(wctx, n, d.l.InConfigAddrs()...); err != nil {
		log, _ := os.ReadFile(filepath.Join(n.Dir, "keepbitd.log"))
		return fmt.Errorf("keepbitd on %s: %w; its log ends:\n%s", n.Name, err, tail(string(log), 10))
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// stopAll kills keepbitd on every node and detaches its program.
func (d *bgpDemo) stopAll() {
	for _, p := range d.procs {
		_ = p.cmd.Process.Kill()
		<-p.done
		_ = p.n.Host.Do(exec.Command(d.keepbitd, "--config", p.n.Config, "--detach").Run)
		_ = syscall.Unmount(filepath.Join(p.n.Dir, "bpf"), syscall.MNT_DETACH)
	}
}

// waitAll waits for the router's sessions (and BFD) with names and its
// route through exactly them.
func (d *bgpDemo) waitAll(ctx context.Context, within time.Duration, names ...string) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	if err := d.l.WaitEstablished(ctx, names...); err != nil {
		return err
	}
	_, err := d.l.WaitNexthops(ctx, names...)
	return err
}

// flowSharingRuns: every node's flight recorder has flowshare-start.
func (d *bgpDemo) flowSharingRuns(ctx context.Context) bool {
	for _, p := range d.procs {
		found := false
		ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_ = apiclient.New(p.n.Socket()).Events(ectx, 0, false, func(_ []byte, e recorder.Event) error {
			found = found || e.Kind == "flowshare-start"
			return nil
		})
		cancel()
		if !found {
			return false
		}
	}
	return true
}

// where prints how the long-lived connections spread over nodes and
// backends and returns the node of each.
func (d *bgpDemo) where(ctx context.Context, what string, names ...string) (map[string]string, error) {
	r := d.ld.Report()
	w, err := d.l.CurrentNodes(ctx, r, names...)
	if err != nil {
		return nil, err
	}
	per := map[string]int{}
	for _, n := range w {
		per[n]++
	}
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %d", n, per[n]))
	}
	d.tl.say("%s: long-lived connections by node: %s; by backend: %s; new connections by backend: %s",
		what, strings.Join(parts, ", "), counts(r.ByBackend), counts(r.New.ByBackend))
	for _, n := range names {
		d.expect(per[n] > 0, "%s: node %s carries no connection: ECMP does not spread them (%v)", what, n, per)
	}
	return w, nil
}

func counts(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// others are the nodes announcing besides name.
func others(all []string, name string) []string {
	return slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == name })
}

// nodeLost drops node name at its bridge port and prints the timeline:
// failure -> BFD down at the router -> route withdrawn -> client gap.
func (d *bgpDemo) nodeLost(ctx context.Context, name, step string, within time.Duration, strict bool) error {
	all := []string{"n1", "n2", "n3"}
	w, err := d.l.CurrentNodes(ctx, d.ld.Report(), all...)
	if err != nil {
		return err
	}
	s := d.begin()
	d.tl.say(">>> %s dropped at its bridge port: every frame lost both ways, links up (a silent failure: only BFD notices)", name)
	t0 := time.Now()
	routes := d.watchRoutes(ctx)
	if err := d.l.Drop(name); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, max(within, 5*time.Second))
	withdrawn, err := d.l.WaitNexthops(wctx, others(all, name)...)
	cancel()
	if err != nil {
		d.expect(false, "%s: the router kept its route through %s: %v", step, name, err)
		return nil
	}
	sleep(ctx, bgpStall+time.Second)
	changes := routes()
	// Read after the wait: BIRD may log the BFD event after it has
	// already taken the route out of the kernel.
	bfdAt, bfdSeen := d.l.BFDDownAfter(t0, name)
	r := d.ld.Report()

	fmt.Fprintf(d.out, "\n%s: timeline\n", step)
	fmt.Fprintf(d.out, "  +%7v  failure injected: %s's bridge port drops every frame\n", time.Duration(0), name)
	// BIRD stamps its log line after the fact and the route is polled:
	// the two can come out a millisecond or two either way.
	bfdCol := "BFD down: not in BIRD's log"
	lines := []mark{{withdrawn, fmt.Sprintf("route withdrawn: the router's next hops for %s go from 3 to 2 (%s)", bgplab.VIP, strings.Join(others(all, name), " "))}}
	if bfdSeen {
		bfdCol = fmt.Sprintf("BFD down +%v", bfdAt.Sub(t0).Round(time.Millisecond))
	}
	for _, c := range d.l.BFDChanges(t0) {
		what := fmt.Sprintf("the router's BFD session with %s: %s -> %s", c.Node, c.From, c.To)
		switch {
		case c.Node == name && c.At.Equal(bfdAt):
			what = fmt.Sprintf("BFD down at the router (%d x %v without a packet from %s)", d.l.Opts.BFD.Mult, d.l.Opts.BFD.Interval, name)
		case c.Node != name:
			what += " (a healthy node: BFD flapped)"
		}
		lines = append(lines, mark{c.At.Sub(t0), what})
	}
	// The route after it reached the two survivors: any later change is
	// a flap (nothing else changes during the step).
	survivors := strings.Join(others(all, name), " ")
	reached := false
	for _, c := range changes {
		if reached {
			lines = append(lines, mark{c.at, fmt.Sprintf("route changed again: next hops %s (a flap)", c.hops)})
		}
		reached = reached || c.hops == survivors
	}
	slices.SortStableFunc(lines, func(a, b mark) int { return int(a.at - b.at) })
	for _, ln := range lines {
		fmt.Fprintf(d.out, "  +%7v  %s\n", ln.at.Round(time.Millisecond), ln.text)
	}
	row := d.row(step, fmt.Sprintf("%s, 3 -> 2 next hops +%v", bfdCol, withdrawn.Round(time.Millisecond)), s, r, w, name)
	fmt.Fprintf(d.out, "  client: %d of %d long-lived connections went through %s; longest gap %v (p50 %v, p99 %v over all connections)\n",
		row.viaTotal, len(r.Conns), name, r.GapMax.Round(time.Millisecond), r.GapP50.Round(time.Millisecond), r.GapP99.Round(time.Millisecond))
	fmt.Fprintf(d.out, "  connections broken: %d on healthy paths, %d of %d through %s; new connections failed: %d of %d\n\n",
		row.healthy, row.via, row.viaTotal, name, row.newFailed, row.newAttempts)
	fmt.Fprintf(d.out, "Node lost (%s): BFD down after %s, route withdrawn after %v (3 -> 2 next hops), client gap max %v, broken %d on healthy paths, %d through the lost node\n\n",
		step, durOr(bfdAt.Sub(t0), bfdSeen), withdrawn.Round(time.Millisecond), r.GapMax.Round(time.Millisecond), row.healthy, row.via)
	d.expect(withdrawn <= within, "%s: route withdrawn after %v, want within %v", step, withdrawn.Round(time.Millisecond), within)
	d.expect(row.healthy == 0, "%s: %d connections broken on healthy paths: %v", step, row.healthy, brief(s, r))
	if strict {
		d.expect(row.via == 0, "%s: %d connections through %s broken (identical Maglev tables should keep them): %v", step, row.via, name, brief(s, r))
	}
	d.rows = append(d.rows, row)
	return nil
}

// routeChange is the router's route to the VIP changing: its next hops
// from then on.
type routeChange struct {
	at   time.Duration
	hops string
}

// watchRoutes polls the router's route to the VIP every 2ms until the
// returned stop, which returns its changes, timed from the call.
func (d *bgpDemo) watchRoutes(ctx context.Context) (stop func() []routeChange) {
	ctx, cancel := context.WithCancel(ctx)
	t0 := time.Now()
	done := make(chan []routeChange)
	go func() {
		var out []routeChange
		last := strings.Join(d.l.Nexthops(), " ")
		for {
			select {
			case <-ctx.Done():
				done <- out
				return
			case <-time.After(2 * time.Millisecond):
			}
			if hops := strings.Join(d.l.Nexthops(), " "); hops != last {
				last = hops
				if hops == "" {
					hops = "none (no route)"
				}
				out = append(out, routeChange{time.Since(t0), hops})
			}
		}
	}()
	return func() []routeChange { cancel(); return <-done }
}

// mark is a line of a step's timeline, at its time since the failure.
type mark struct {
	at   time.Duration
	text string
}

func durOr(d time.Duration, ok bool) string {
	if !ok {
		return "(not logged)"
	}
	return d.Round(time.Millisecond).String()
}

// row counts what happened to the client since the step began: broken
// connections sorted into those that went through node via (by w, the
// nodes' flow tables before the change) and the others, the gaps, the new
// connections that failed.
func (d *bgpDemo) row(step, router string, s stepStart, r connload.Report, w map[string]string, via string) bgpRow {
	row := bgpRow{step: step, router: router, gapMax: r.GapMax, gapP99: r.GapP99,
		newFailed: r.NewFailed() - s.r.NewFailed(), newAttempts: r.New.Attempts - s.r.New.Attempts}
	for _, c := range r.Conns {
		through := via != "" && w[c.Local] == via
		if through {
			row.viaTotal++
		}
		if c.Broken == "" || c.BrokenAt.Before(s.at) {
			continue
		}
		row.broken++
		if through {
			row.via++
		} else {
			row.healthy++
		}
	}
	return row
}

// brief lists up to 5 connections broken since s.
func brief(s stepStart, r connload.Report) string {
	var parts []string
	for _, c := range r.BrokenConns() {
		if c.BrokenAt.Before(s.at) {
			continue
		}
		if len(parts) == 5 {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, fmt.Sprintf("%s %s (%s)", c.Local, c.Broken, c.Err))
	}
	return strings.Join(parts, ", ")
}

// nodeBack reconnects node name: its checks bring its backends back, it
// announces again after announce_after (and flow sharing's warm-up), and
// the router spreads flows over three nodes again.
func (d *bgpDemo) nodeBack(ctx context.Context, name string) error {
	s := d.begin()
	d.tl.say(">>> %s reconnected: BFD comes up (1s intervals until Up), its checks find the backends, it announces again", name)
	t0 := time.Now()
	if err := d.l.Undrop(name); err != nil {
		return err
	}
	if err := d.waitAll(ctx, 30*time.Second, "n1", "n2", "n3"); err != nil {
		d.expect(false, "%s back: %v", name, err)
		return nil
	}
	back := time.Since(t0)
	d.tl.say("router: %s via n1 n2 n3 again, %v after %s was reconnected", bgplab.VIP, back.Round(time.Millisecond), name)
	sleep(ctx, time.Second)
	r := d.ld.Report()
	row := d.row(name+" back", fmt.Sprintf("2 -> 3 next hops +%v", back.Round(time.Millisecond)), s, r, nil, "")
	d.tl.say("client: %d connections broken, new connections failed %d of %d, longest gap %v",
		row.broken, row.newFailed, row.newAttempts, r.GapMax.Round(time.Millisecond))
	d.expect(row.broken == 0, "%s back: %d connections broken: %v", name, row.broken, brief(s, r))
	d.rows = append(d.rows, row)
	_, err := d.where(ctx, name+" back", "n1", "n2", "n3")
	return err
}

// drain runs keepbitctl drain-node on node name: its route is withdrawn at
// once while it keeps forwarding for drain_hold (2s), then it closes its
// sessions; undrain brings it back.
func (d *bgpDemo) drain(ctx context.Context, name string) error {
	n := d.l.Node(name)
	w, err := d.l.CurrentNodes(ctx, d.ld.Report(), "n1", "n2", "n3")
	if err != nil {
		return err
	}
	s := d.begin()
	d.tl.say(">>> keepbitctl drain-node on %s: withdraw the route, keep forwarding for drain_hold (2s), then close the session", name)
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, d.ctl, "-socket", n.Socket(), "drain-node").CombinedOutput()
	if err != nil {
		return fmt.Errorf("keepbitctl drain-node on %s: %w: %s", name, err, out)
	}
	d.tl.say("%s: keepbitctl: %s", name, strings.TrimSpace(string(out)))
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = d.l.WaitNexthops(wctx, others([]string{"n1", "n2", "n3"}, name)...)
	cancel()
	took := time.Since(t0)
	if err != nil {
		d.expect(false, "drain-node %s: %v", name, err)
		return nil
	}
	d.tl.say("router: route withdrawn %v after drain-node (3 -> 2 next hops); %s still forwards what comes its way", took.Round(time.Millisecond), name)
	sleep(ctx, 3*time.Second) // beyond drain_hold
	r := d.ld.Report()
	row := d.row(name+" drained", fmt.Sprintf("3 -> 2 next hops +%v", took.Round(time.Millisecond)), s, r, w, name)
	d.tl.say("client: connections broken %d on healthy paths, %d of %d through %s; new connections failed %d of %d; longest gap %v",
		row.healthy, row.via, row.viaTotal, name, row.newFailed, row.newAttempts, r.GapMax.Round(time.Millisecond))
	d.expect(took <= 2*time.Second, "drain-node %s: route withdrawn after %v, want within 2s", name, took)
	d.expect(row.broken == 0, "drain-node %s: %d connections broken: %v", name, row.broken, brief(s, r))
	d.expect(row.newFailed == 0, "drain-node %s: %d new connections failed", name, row.newFailed)
	d.rows = append(d.rows, row)

	out, err = exec.CommandContext(ctx, d.ctl, "-socket", n.Socket(), "undrain").CombinedOutput()
	if err != nil {
		return fmt.Errorf("keepbitctl undrain on %s: %w: %s", name, err, out)
	}
	d.tl.say(">>> keepbitctl undrain on %s", name)
	if err := d.waitAll(ctx, 30*time.Second, "n1", "n2", "n3"); err != nil {
		d.expect(false, "undrain %s: %v", name, err)
		return nil
	}
	d.tl.say("router: %s via n1 n2 n3 again", bgplab.VIP)
	return nil
}

// backendThenLoss adds backend b4 to every node (established connections
// stay on their backends through each node's flow table) and then loses
// n1: the connections it carried land on n2 and n3, whose Maglev table
// now picks b4 for some of them. With flow sharing those nodes know each
// connection's backend and none breaks; without it some are reset.
func (d *bgpDemo) backendThenLoss(ctx context.Context, within time.Duration, sharing bool) error {
	sleep(ctx, time.Second)
	s := d.begin()
	be, err := d.l.NextBackend()
	if err != nil {
		return err
	}
	for _, name := range []string{"n1", "n2", "n3"} {
		n := d.l.Node(name)
		if _, err := apiclient.New(n.Socket()).Reload(ctx); err != nil {
			return fmt.Errorf("reload %s: %w", name, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := bgplab.WaitBackendsUp(wctx, n, be.Addr)
		cancel()
		if err != nil {
			return err
		}
	}
	how := "flow sharing on: each node shares the flows whose backend its table no longer picks"
	if !sharing {
		how = "flow sharing off"
	}
	d.tl.say(">>> backend %s added on every node (config reload): established connections stay on their backends, new ones may go to %s (%s)", be.Name, be.Name, how)
	sleep(ctx, 1500*time.Millisecond) // long_lived_after (1s) and a batch
	r := d.ld.Report()
	d.expect(d.row("", "", s, r, nil, "").broken == 0 && r.ByBackend[be.Name] == 0, "adding %s broke or moved established connections: %v", be.Name, brief(s, r))
	d.tl.say("client: new connections by backend since: %s", counts(r.New.ByBackend))
	step := "b4 added, n1 dropped"
	if !sharing {
		step += " (no sharing)"
	}
	if err := d.nodeLost(ctx, "n1", step, within, sharing); err != nil {
		return err
	}
	if !sharing {
		row := d.rows[len(d.rows)-1]
		d.tl.say("without flow sharing %d of the %d connections n1 carried broke: what flow sharing prevents", row.via, row.viaTotal)
		d.expect(row.via > 0, "%s: no connection broke without flow sharing: the step does not exercise it", step)
	}
	return nil
}

// summary prints the table of every step.
func (d *bgpDemo) summary(bfd *bgplab.BFD, conns int, rate float64, final connload.Report) {
	fmt.Fprintf(d.out, "\nSummary (BFD %v x %d, %d long-lived connections, %.0f new connections/s; broken = no answer for %v, reset or moved to another backend)\n",
		bfd.Interval, bfd.Mult, conns, rate, bgpStall)
	fmt.Fprintf(d.out, "  %-34s %-44s %-22s %-26s %s\n", "step", "router", "client gap max (p99)", "broken: healthy / via node", "new failed")
	for _, r := range d.rows {
		via := "-"
		if r.viaTotal > 0 {
			via = fmt.Sprintf("%d of %d", r.via, r.viaTotal)
		}
		fmt.Fprintf(d.out, "  %-34s %-44s %-22s %-26s %d of %d\n", r.step, r.router,
			fmt.Sprintf("%v (%v)", r.gapMax.Round(time.Millisecond), r.gapP99.Round(time.Millisecond)),
			fmt.Sprintf("%d / %s", r.healthy, via), r.newFailed, r.newAttempts)
	}
	fmt.Fprintf(d.out, "Whole run: %d long-lived connections, %d broken; %d of %d new connections answered\n",
		len(final.Conns), final.BrokenTotal, final.New.OK, final.New.Attempts)
	if len(d.failures) == 0 {
		fmt.Fprintln(d.out, "Every expected property held.")
	}
}
