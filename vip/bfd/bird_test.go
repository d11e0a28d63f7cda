package bfd

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// birdConfig is BIRD 2 as the router next to a Keepbit node: one BFD
// session to it at 10 ms x 3 (an explicit neighbor line, no client
// protocol), with session events logged to stderr in microseconds so the
// test reads when BIRD decided.
func birdConfig(routerID, local, peer netip.Addr, iface string) string {
	return fmt.Sprintf(`timeformat log "%%F %%T.%%6f";
log stderr all;
router id %s;
protocol device {}
protocol bfd kb {
	debug { states, events };
	interface "%s" {
		min rx interval 10 ms;
		min tx interval 10 ms;
		idle tx interval 1 s;
		multiplier 3;
	};
	neighbor %s dev "%s" local %s;
}
`, routerID, iface, peer, iface, local)
}

// birdSession returns the state column of `show bfd sessions` for peer.
func birdSession(ctx context.Context, b *lab.BIRD, peer netip.Addr) (string, error) {
	out, err := b.Cmd(ctx, "show", "bfd", "sessions")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == peer.String() {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("no session to %s in:\n%s", peer, out)
}

func waitBirdSession(t *testing.T, b *lab.BIRD, peer netip.Addr, state string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	last := ""
	for {
		st, err := birdSession(ctx, b, peer)
		if err == nil && strings.EqualFold(st, state) {
			return
		}
		if err != nil {
			last = err.Error()
		} else {
			last = st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("bird's session to %s not %s within %v (last: %s); bird log:\n%s", peer, state, timeout, last, b.Log())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// birdDownAt finds, in BIRD's log after index from, when it took the
// session to peer from Up to Down.
var birdStateLine = regexp.MustCompile(`(?m)^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}) .*Session to (\S+) changed state from Up to Down`)

func birdDownAt(log string, peer netip.Addr) []time.Time {
	var out []time.Time
	for _, m := range birdStateLine.FindAllStringSubmatch(log, -1) {
		if m[2] != peer.String() {
			continue
		}
		at, err := time.ParseInLocation("2006-01-02 15:04:05.000000", m[1], time.Local)
		if err == nil {
			out = append(out, at)
		}
	}
	return out
}

// TestBIRDInterop: a Keepbit session and BIRD 2's BFD come Up at 10 ms x 3
// in both directions' view; BIRD detects a frozen Keepbit session, and
// Keepbit detects a frozen (SIGSTOP) BIRD. Detection times are measured
// from the freeze to the other side's decision (BIRD's log, our event).
func TestBIRDInterop(t *testing.T) {
	privtest.Require(t)
	nsK, nsR := privtest.NewNS(t), privtest.NewNS(t)
	privtest.Veth(t,
		lab.VethEnd{NS: nsK, Name: "eth0", Addrs: []string{"10.9.0.1/24"}, MAC: net.HardwareAddr{2, 0, 0, 0, 9, 1}},
		lab.VethEnd{NS: nsR, Name: "eth0", Addrs: []string{"10.9.0.2/24"}, MAC: net.HardwareAddr{2, 0, 0, 0, 9, 2}})
	kAddr, rAddr := a4, b4

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bird, err := lab.StartBIRD(ctx, nsR, t.TempDir(), birdConfig(rAddr, rAddr, kAddr, "eth0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(bird.Pid(), syscall.SIGCONT)
		_ = bird.Close()
	})
	k := newNode(t, "keepbit", nsK)
	s := k.add(t, sessionCfg(kAddr, rAddr, "eth0", 10*time.Millisecond, 3))
	probe := startStallProbe(t)

	up := func() {
		t.Helper()
		waitState(t, s, Up, 10*time.Second)
		waitBirdSession(t, bird, kAddr, "Up", 5*time.Second)
		deadline := time.Now().Add(2 * time.Second)
		for s.Status().Polling && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	up()
	st := s.Status()
	if st.TxInterval != 10*time.Millisecond || st.DetectTime != 30*time.Millisecond || st.RemoteMultiplier != 3 || st.Polling {
		t.Fatalf("negotiated with bird: %+v", st)
	}
	// Both stay Up for a second at 10 ms x 3.
	from := k.eventCount()
	time.Sleep(time.Second)
	excused := k.falseDowns(t, from, probe, 15*time.Millisecond)
	up()
	after := s.Status().Counters
	t.Logf("1 s Up with bird at 10 ms x 3: %d packets in, %d out; downs excused by stalls: %d",
		after.PacketsIn-st.Counters.PacketsIn, after.PacketsOut-st.Counters.PacketsOut, excused)

	const detect = 30 * time.Millisecond
	const rounds = 3

	// Keepbit freezes: BIRD takes the session down.
	var birdTook []time.Duration
	for round := range rounds {
		up()
		before := len(birdDownAt(bird.Log(), kAddr))
		frozen := time.Now()
		thaw, err := s.freeze(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		waitBirdSession(t, bird, kAddr, "Down", 5*time.Second)
		thaw()
		var downs []time.Time
		deadline := time.Now().Add(time.Second)
		for len(downs) <= before && time.Now().Before(deadline) {
			downs = birdDownAt(bird.Log(), kAddr)
			time.Sleep(5 * time.Millisecond)
		}
		if len(downs) <= before {
			t.Fatalf("round %d: bird shows the session down but logged no Up->Down; log:\n%s", round, bird.Log())
		}
		d := downs[len(downs)-1].Sub(frozen)
		birdTook = append(birdTook, d)
		if d > 3*detect {
			if st, ok := probe.excuse(downs[len(downs)-1], d-3*detect); ok {
				t.Logf("round %d: bird detected after %v; this machine stalled %v meanwhile", round, d, st.gap)
			} else {
				t.Errorf("round %d: bird detected the frozen session after %v, more than 3 x %v", round, d, detect)
			}
		}
	}

	// BIRD freezes (SIGSTOP): Keepbit takes the session down.
	var ourTook []time.Duration
	for round := range rounds {
		up()
		from := k.eventCount()
		stopped := time.Now()
		if err := syscall.Kill(bird.Pid(), syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		ev, _ := k.waitEvent(t, from, 5*time.Second, func(e Event) bool { return e.To == Down })
		if err := syscall.Kill(bird.Pid(), syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		d := ev.At.Sub(stopped)
		ourTook = append(ourTook, d)
		if ev.Diag != DiagDetectionTimeExpired || !ev.PathDown() {
			t.Fatalf("round %d: event %+v, want detection time expired", round, ev)
		}
		if d > 3*detect {
			if st, ok := probe.excuse(ev.At, d-3*detect); ok {
				t.Logf("round %d: detected after %v; this machine stalled %v meanwhile", round, d, st.gap)
			} else {
				t.Errorf("round %d: keepbit detected the stopped bird after %v, more than 3 x %v", round, d, detect)
			}
		}
	}
	up()

	// A clean shutdown reaches BIRD as AdminDown.
	cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer ccancel()
	if err := k.mgr.Remove(cctx, kAddr, rAddr, "eth0"); err != nil {
		t.Fatal(err)
	}
	waitBirdSession(t, bird, kAddr, "Down", 2*time.Second)

	slices.Sort(birdTook)
	slices.Sort(ourTook)
	t.Logf("bird detected a frozen keepbit session after %v; keepbit detected a stopped bird after %v (10 ms x 3, detection time %v)", birdTook, ourTook, detect)
}
