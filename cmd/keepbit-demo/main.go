// keepbit-demo builds a lab of network namespaces (a client, two Keepbit
// nodes, three backends on one bridge), runs keepbitd on both nodes with
// the embedded default config, sends traffic, kills a backend, freezes the
// master, prints what happens as it happens, and removes everything.
// With -bgp it runs the three-node BGP ECMP lab instead (bgp.go).
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keepbit/keepbit/internal/apiclient"
	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/recorder"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "keepbit demo:", err)
		os.Exit(1)
	}
}

// timeline prints lines stamped with the time since the demo started.
type timeline struct {
	mu    sync.Mutex
	start time.Time
	out   io.Writer
}

func (t *timeline) say(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fmt.Fprintf(t.out, "[%7.3fs] %s\n", time.Since(t.start).Seconds(), fmt.Sprintf(format, args...))
}

type nodeProc struct {
	host *lab.Host
	name string
	dir  string
	cmd  *exec.Cmd
	sock string
}

func run(ctx context.Context, args []string, out io.Writer) error {
	if slices.Contains(args, "-bgp") || slices.Contains(args, "--bgp") {
		return runBGP(ctx, args, out) // bgp.go
	}
	self, _ := os.Executable()
	keepbitd := filepath.Join(filepath.Dir(self), "keepbitd")
	if len(args) == 2 && args[0] == "-keepbitd" {
		keepbitd = args[1]
	}
	if os.Geteuid() != 0 {
		return errors.New("must run as root: it creates network namespaces and attaches XDP programs (try: sudo make demo)")
	}
	if _, err := os.Stat(keepbitd); err != nil {
		return fmt.Errorf("keepbitd binary not found at %s (make demo builds it)", keepbitd)
	}
	cfg, err := config.Default()
	if err != nil {
		return err
	}
	svc, vipCfg := cfg.Services[0], cfg.VRRP[0]
	tl := &timeline{start: time.Now(), out: out}
	dir, err := os.MkdirTemp("", "keepbit-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	tl.say("building the lab: client, nodes lb1 and lb2, backends web1-web3 on one bridge")
	l, err := lab.New()
	if err != nil {
		return err
	}
	defer func() { l.Close(); tl.say("lab removed: namespaces, links, programs and pins are gone") }()

	client, err := l.Host("client", "eth0", "10.77.0.2/24")
	if err != nil {
		return err
	}
	if err := client.Do(func() error { return lab.TxChecksumOff("eth0") }); err != nil {
		return err
	}
	var servers []*http.Server
	for i, b := range svc.Backends {
		name := fmt.Sprintf("web%d", i+1)
		h, err := l.Host(name, "eth0", b.Address.String()+"/24")
		if err != nil {
			return err
		}
		srv, err := backend(h, name, svc.VIP.String())
		if err != nil {
			return err
		}
		servers = append(servers, srv)
		defer srv.Close()
	}
	var nodes []*nodeProc
	for i, name := range []string{"lb1", "lb2"} {
		h, err := l.Host(name, cfg.Interfaces[0].Name, fmt.Sprintf("10.77.0.%d/24", 11+i), fmt.Sprintf("10.77.1.%d/24", 1+i))
		if err != nil {
			return err
		}
		n := &nodeProc{host: h, name: name, dir: filepath.Join(dir, name)}
		n.sock = filepath.Join(n.dir, "keepbit.sock")
		if err := startNode(n, keepbitd); err != nil {
			return err
		}
		defer stopNode(n, keepbitd)
		nodes = append(nodes, n)
	}
	tl.say("keepbitd running on lb1 (10.77.0.11) and lb2 (10.77.0.12), embedded default config: VIP %s:%d, VRRP vrid %d every %v",
		svc.VIP, svc.Port, vipCfg.VRID, vipCfg.AdvertInterval)

	evs := make(chan nodeEvent, 256)
	for _, n := range nodes {
		go follow(ctx, n, evs, tl)
	}
	state := &demoState{master: map[string]bool{}, up: map[string]map[string]bool{}}
	printer := func(e nodeEvent) { state.apply(e); tl.say("%s", describe(e)) }
	if err := waitFor(ctx, evs, printer, 20*time.Second, func() bool {
		return state.ready(len(svc.Backends) - 1)
	}); err != nil {
		return fmt.Errorf("the lab did not settle: %w (keepbitd logs in %s)", err, dir)
	}

	tr := &traffic{client: client, url: fmt.Sprintf("http://%s:%d/", svc.VIP, svc.Port)}
	tctx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	go tr.run(tctx)
	drain := func(d time.Duration) {
		_ = waitFor(ctx, evs, printer, d, func() bool { return false })
	}
	tl.say("client: one new HTTP connection to the VIP every 10 ms")
	drain(2 * time.Second)
	tl.say("client answers so far: %s", tr.summary(time.Time{}))

	tl.say(">>> killing backend web1 (its HTTP server stops)")
	servers[0].Close()
	killed := time.Now()
	drain(2 * time.Second)
	gap1, failed1 := tr.gap(killed.Add(-200*time.Millisecond), killed.Add(2*time.Second))
	tl.say("client: longest gap without an answer %v, %d failed requests; answers since: %s", gap1.Round(time.Millisecond), failed1, tr.summary(killed))

	master := state.currentMaster()
	var m *nodeProc
	for _, n := range nodes {
		if n.name == master {
			m = n
		}
	}
	if m == nil {
		return errors.New("no node reports being VRRP master")
	}
	tl.say(">>> freezing the VRRP master %s (SIGSTOP): it stops advertising; its XDP program keeps forwarding", m.name)
	_ = m.cmd.Process.Signal(syscall.SIGSTOP)
	frozen := time.Now()
	drain(2 * time.Second)
	gap2, failed2 := tr.gap(frozen.Add(-200*time.Millisecond), frozen.Add(2*time.Second))
	tl.say("client: longest gap without an answer %v, %d failed requests; answers since: %s", gap2.Round(time.Millisecond), failed2, tr.summary(frozen))
	_ = m.cmd.Process.Signal(syscall.SIGCONT)
	tl.say(">>> thawing %s: two masters meet for a moment and RFC 5798 picks one (equal priority: the higher address wins)", m.name)
	drain(time.Second)
	stopTraffic()

	fmt.Fprintln(out)
	fmt.Fprintln(out, "Failover timeline (flight recorder, time since the demo started and wall clock; phase words as in ARCHITECTURE.md \"Timing words\": detect = first failed probe / master silent, decide, apply = dataplane write returned, announce = gratuitous ARP sent)")
	state.mu.Lock()
	failovers := slices.Clone(state.timeline)
	state.mu.Unlock()
	for _, line := range timelineLines(failovers, tl.start) {
		fmt.Fprintln(out, "  "+line)
	}
	fmt.Fprintf(out, "Client gap: backend killed %v (%d failed), master frozen %v (%d failed). Anchor: keepalived takes 266-297 ms to take over a frozen master with 10-50 ms adverts, 3.2 s by default.\n",
		gap1.Round(time.Millisecond), failed1, gap2.Round(time.Millisecond), failed2)
	return nil
}

// backend serves HTTP on :80 in h, holding the VIP on lo for direct server
// return and answering ARP only for its own address.
func backend(h *lab.Host, name, vip string) (*http.Server, error) {
	if err := h.Sysctl(map[string]string{"net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2"}); err != nil {
		return nil, err
	}
	nh, err := h.Handle()
	if err != nil {
		return nil, err
	}
	defer nh.Delete()
	if err := h.Do(func() error {
		for _, c := range [][]string{{"addr", "add", vip + "/32", "dev", "lo"}, {"route", "add", "10.77.0.0/24", "dev", "eth0"}} {
			if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
				return fmt.Errorf("ip %s: %v: %s", strings.Join(c, " "), err, out)
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	var ln net.Listener
	if err := h.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", ":80")
		return err
	}); err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) })}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

func startNode(n *nodeProc, keepbitd string) error {
	if err := os.MkdirAll(n.dir, 0o700); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(n.dir, "keepbitd.log"))
	if err != nil {
		return err
	}
	n.cmd = exec.Command(keepbitd, "--config", "default", "--pin-root", filepath.Join(n.dir, "bpf"),
		"--state-dir", filepath.Join(n.dir, "state"), "--api-socket", n.sock, "--metrics", "off")
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	if err := n.host.Do(n.cmd.Start); err != nil {
		return fmt.Errorf("start keepbitd on %s: %w", n.name, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(n.sock); err == nil {
			return nil
		}
		if n.cmd.ProcessState != nil || n.cmd.Process.Signal(syscall.Signal(0)) != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(n.dir, "keepbitd.log"))
	if strings.Contains(string(log), "attach") {
		return fmt.Errorf("this kernel cannot attach XDP programs on %s: %s", n.name, lastLine(string(log)))
	}
	return fmt.Errorf("keepbitd on %s did not start: %s", n.name, lastLine(string(log)))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func stopNode(n *nodeProc, keepbitd string) {
	_ = n.cmd.Process.Signal(syscall.SIGCONT)
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		_ = n.cmd.Process.Kill()
		<-done
	}
	_ = n.host.Do(exec.Command(keepbitd, "--config", "default", "--pin-root", filepath.Join(n.dir, "bpf"), "--detach").Run)
	_ = syscall.Unmount(filepath.Join(n.dir, "bpf"), syscall.MNT_DETACH)
}

type nodeEvent struct {
	node string
	recorder.Event
}

// follow streams a node's flight recorder through its API socket until
// ctx ends.
func follow(ctx context.Context, n *nodeProc, out chan<- nodeEvent, tl *timeline) {
	got := false
	err := apiclient.New(n.sock).Events(ctx, 0, true, func(_ []byte, e recorder.Event) error {
		got = true
		select {
		case out <- nodeEvent{node: n.name, Event: e}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	// A node stopped at the end of the demo ends its stream; only a
	// stream that never started is worth saying (the lab then waits in
	// vain for that node).
	if err != nil && !got && ctx.Err() == nil {
		tl.say("%s: no events: %v", n.name, err)
	}
}

func waitFor(ctx context.Context, evs <-chan nodeEvent, each func(nodeEvent), within time.Duration, done func() bool) error {
	deadline := time.After(within)
	for !done() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-evs:
			each(e)
		case <-deadline:
			return fmt.Errorf("not within %v", within)
		}
	}
	return nil
}

func describe(e nodeEvent) string {
	switch {
	case strings.HasPrefix(e.Kind, "backend-"):
		s := fmt.Sprintf("%s: %s %s (%s)", e.node, e.Kind, e.Backend, e.Reason)
		if !e.Apply.IsZero() && !e.Detect.IsZero() {
			s += fmt.Sprintf(" detect->decide %v, decide->apply %v", e.DetectToDecide.Round(time.Microsecond), e.DecideToApply.Round(time.Microsecond))
		}
		return s
	case strings.HasPrefix(e.Kind, "vrrp-"):
		s := fmt.Sprintf("%s: %s (%s)", e.node, e.Kind, e.Reason)
		if !e.Announce.IsZero() {
			s += fmt.Sprintf(" detect->announce %v", e.DetectToAnnounce.Round(time.Microsecond))
		}
		return s
	}
	return strings.Join(strings.Fields(fmt.Sprintf("%s: %s %s %s", e.node, e.Kind, e.Service, e.Reason)), " ")
}

// demoState follows the events: who is master, which backends are up.
type demoState struct {
	mu       sync.Mutex
	master   map[string]bool
	up       map[string]map[string]bool
	timeline []nodeEvent // failover events, in arrival order
}

func (s *demoState) apply(e nodeEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch e.Kind {
	case "vrrp-master":
		s.master[e.node] = true
	case "vrrp-backup", "vrrp-fault", "vrrp-initialize":
		s.master[e.node] = false
	case "backend-up", "backend-down":
		if s.up[e.node] == nil {
			s.up[e.node] = map[string]bool{}
		}
		s.up[e.node][e.Backend] = e.Kind == "backend-up"
	}
	if (strings.HasPrefix(e.Kind, "backend-") || strings.HasPrefix(e.Kind, "vrrp-")) && !e.Detect.IsZero() {
		s.timeline = append(s.timeline, e)
	}
}

// timelineLines lists the failover events in the order they happened,
// each stamped with its time since start (as the live lines are) and its
// wall clock. Each node's recorder is followed on its own stream, so
// events arrive interleaved in no particular order between nodes; they
// are sorted by their full time (not its printed milliseconds, which tie
// and wrap at midnight), then by node and sequence number for a stable
// order.
func timelineLines(evs []nodeEvent, start time.Time) []string {
	evs = slices.Clone(evs)
	slices.SortStableFunc(evs, func(a, b nodeEvent) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		if c := strings.Compare(a.node, b.node); c != 0 {
			return c
		}
		return cmp.Compare(a.Seq, b.Seq)
	})
	lines := make([]string, 0, len(evs))
	for _, e := range evs {
		line := fmt.Sprintf("[%7.3fs] %s %-4s %-13s %-11s", e.Time.Sub(start).Truncate(time.Millisecond).Seconds(), e.Time.Format("15:04:05.000"), e.node, e.Kind, e.Backend)
		if !e.Apply.IsZero() {
			line += fmt.Sprintf(" detect->decide %9v  decide->apply %9v", e.DetectToDecide.Round(time.Microsecond), e.DecideToApply.Round(time.Microsecond))
		}
		if !e.Announce.IsZero() {
			line += fmt.Sprintf(" detect->announce %9v", e.DetectToAnnounce.Round(time.Microsecond))
		}
		lines = append(lines, strings.TrimRight(line, " "))
	}
	return lines
}

func (s *demoState) ready(backends int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	masters := 0
	for _, m := range s.master {
		if m {
			masters++
		}
	}
	if masters != 1 || len(s.master) < 2 {
		return false
	}
	for _, n := range []string{"lb1", "lb2"} {
		up := 0
		for _, u := range s.up[n] {
			if u {
				up++
			}
		}
		if up < backends {
			return false
		}
	}
	return true
}

func (s *demoState) currentMaster() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, m := range s.master {
		if m {
			return n
		}
	}
	return ""
}

// traffic opens a new connection to the VIP every 10 ms from the client.
type traffic struct {
	client *lab.Host
	url    string
	mu     sync.Mutex
	log    []result
}

type result struct {
	at      time.Time
	backend string // "" = failed
}

func (t *traffic) run(ctx context.Context) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: lab.DialContext(t.client.NS, 300*time.Millisecond)}
	cl := &http.Client{Transport: tr, Timeout: 300 * time.Millisecond}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		go func() {
			r := result{at: time.Now()}
			if resp, err := cl.Get(t.url); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				r.backend = string(b)
			}
			t.mu.Lock()
			t.log = append(t.log, r)
			t.mu.Unlock()
		}()
	}
}

func (t *traffic) summary(since time.Time) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	count := map[string]int{}
	for _, r := range t.log {
		if r.at.After(since) {
			name := r.backend
			if name == "" {
				name = "failed"
			}
			count[name]++
		}
	}
	var keys []string
	for k := range count {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, count[k]))
	}
	return strings.Join(parts, ", ")
}

// gap is the longest time without a successful answer in [from, to], and
// how many requests failed then.
func (t *traffic) gap(from, to time.Time) (time.Duration, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var ok []time.Time
	failed := 0
	for _, r := range t.log {
		if r.at.Before(from) || r.at.After(to) {
			continue
		}
		if r.backend == "" {
			failed++
		} else {
			ok = append(ok, r.at)
		}
	}
	sort.Slice(ok, func(i, j int) bool { return ok[i].Before(ok[j]) })
	var longest time.Duration
	for i := 1; i < len(ok); i++ {
		longest = max(longest, ok[i].Sub(ok[i-1]))
	}
	return longest, failed
}
