package probe

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// TestRiseFall feeds result sequences to a check and expects the state
// changes at exact positions, with detect = start of the run's first probe.
func TestRiseFall(t *testing.T) {
	type change struct {
		at     int // index of the deciding result
		to     State
		detect int // index of the first result of the run
	}
	cases := []struct {
		name       string
		rise, fall int
		seq        string // '+' success, '-' failure
		want       []change
	}{
		{"rise 2 from unknown", 2, 3, "++", []change{{1, Up, 0}}},
		{"fall 3 after up", 2, 3, "++---", []change{{1, Up, 0}, {4, Down, 2}}},
		{"interrupted failures do not add up", 2, 3, "++--+--+--", []change{{1, Up, 0}}},
		{"flapping never crosses", 3, 3, "+-+-+-++-+", nil},
		{"down from unknown after fall", 2, 2, "--", []change{{1, Down, 0}}},
		{"recover needs rise consecutive", 2, 1, "++-+-++", []change{{1, Up, 0}, {2, Down, 2}, {6, Up, 5}}},
		{"rise 1 fall 1 follows every result", 1, 1, "+-+", []change{{0, Up, 0}, {1, Down, 1}, {2, Up, 2}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := &check{id: "x", spec: Spec{Rise: c.rise, Fall: c.fall}}
			t0 := time.Unix(1000, 0)
			var got []change
			for i, r := range c.seq {
				res := Result{Check: "x", Start: t0.Add(time.Duration(i) * time.Second)}
				if r == '-' {
					res.Err = errors.New("refused")
				}
				if ev, ok := ch.record(res); ok {
					got = append(got, change{at: i, to: ev.To, detect: int(ev.Detect.Sub(t0) / time.Second)})
				}
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("changes %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ok := Spec{Kind: TCP, Target: netip.MustParseAddrPort("127.0.0.1:80"), Interval: time.Second, Timeout: time.Second / 2, Rise: 1, Fall: 1}
	with := func(f func(*Spec)) Spec { s := ok; f(&s); return s }
	cases := []struct {
		name    string
		spec    Spec
		wantErr string
	}{
		{"no type", with(func(s *Spec) { s.Kind = "" }), "type: required"},
		{"bad type", with(func(s *Spec) { s.Kind = "smtp" }), `type: "smtp" is not`},
		{"tcp without port", with(func(s *Spec) { s.Target = netip.AddrPortFrom(s.Target.Addr(), 0) }), "target: tcp needs address:port"},
		{"icmp without address", with(func(s *Spec) { s.Kind = ICMP; s.Target = netip.AddrPort{} }), "target: icmp needs an address"},
		{"exec without command", with(func(s *Spec) { s.Kind = Exec }), "command: required"},
		{"interval too short", with(func(s *Spec) { s.Interval = time.Microsecond }), "interval: 1µs, must be at least 1ms"},
		{"fast interval too short", with(func(s *Spec) { s.FastInterval = time.Microsecond }), "fast_interval"},
		{"timeout zero", with(func(s *Spec) { s.Timeout = 0 }), "timeout: 0s, must be positive"},
		{"timeout beyond interval", with(func(s *Spec) { s.Timeout = 2 * time.Second }), "timeout: 2s is longer than the interval 1s"},
		{"rise 0", with(func(s *Spec) { s.Rise = 0 }), "rise: 0"},
		{"fall 0", with(func(s *Spec) { s.Fall = 0 }), "fall: 0"},
		{"jitter too big", with(func(s *Spec) { s.Jitter = 0.9 }), "jitter: 0.9"},
		{"bad status", with(func(s *Spec) { s.Kind = HTTP; s.ExpectStatus = []int{99} }), "expect_status: 99"},
		{"udp without payload", with(func(s *Spec) { s.Kind = UDP }), "payload: required"},
		{"half-open without port", with(func(s *Spec) { s.Kind = TCPHalfOpen; s.Target = netip.AddrPortFrom(s.Target.Addr(), 0) }), "target: tcp-half-open needs address:port"},
		{"ipv6 source, ipv4 target", with(func(s *Spec) { s.Kind = TCPHalfOpen; s.Source = netip.MustParseAddr("::1") }), "source: ::1 and the target 127.0.0.1 are of different address families"},
		{"ipv4 source, ipv6 target", with(func(s *Spec) {
			s.Source = netip.MustParseAddr("10.0.0.1")
			s.Target = netip.MustParseAddrPort("[2001:db8::1]:80")
		}), "source: 10.0.0.1 and the target 2001:db8::1"},
	}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid spec rejected: %v", err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.spec.Validate()
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("got %v, want error containing %q", err, c.wantErr)
			}
		})
	}
}

// toggler is a TCP listener the test can take down and bring back.
type toggler struct {
	t    *testing.T
	addr string
	ln   *lab.AcceptClose
}

func (g *toggler) up() {
	g.ln = privtest.ServeAcceptClose(g.t, netns.None(), "tcp", g.addr)
	g.addr = g.ln.Addr().String()
}

func (g *toggler) down() { g.ln.Close() }

func waitEvent(t *testing.T, s *Scheduler, want State, within time.Duration) Event {
	t.Helper()
	select {
	case ev := <-s.Events():
		if ev.To != want {
			t.Fatalf("event %s -> %s, want -> %s", ev.From, ev.To, want)
		}
		return ev
	case <-time.After(within):
		t.Fatalf("no -> %s event within %v", want, within)
	}
	return Event{}
}

// TestSchedulerDetectsDown: a TCP backend goes away and comes back; the
// events arrive within fall (rise) x interval plus generous slack, with
// detect before decide.
func TestSchedulerDetectsDown(t *testing.T) {
	g := &toggler{t: t, addr: "127.0.0.1:0"}
	g.up()
	s := NewScheduler(nil)
	ctx := t.Context()
	go s.Run(ctx)
	spec := Spec{Kind: TCP, Target: netip.MustParseAddrPort(g.addr), Interval: 20 * time.Millisecond,
		FastInterval: 5 * time.Millisecond, Timeout: 10 * time.Millisecond, Rise: 2, Fall: 3, Jitter: 0.1}
	if err := s.Add("web", spec); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, s, Up, 2*time.Second)

	g.down()
	downAt := time.Now()
	ev := waitEvent(t, s, Down, 2*time.Second)
	// Fall 3 at the fast interval after the first failure: ~20 ms + 2 x 5 ms.
	t.Logf("down decided %v after the listener closed (detect->decide %v)", ev.Decide.Sub(downAt), ev.Decide.Sub(ev.Detect))
	if ev.Detect.After(ev.Decide) || ev.Detect.Before(downAt.Add(-spec.Interval)) {
		t.Errorf("detect %v, decide %v, listener down at %v", ev.Detect, ev.Decide, downAt)
	}
	if !strings.Contains(ev.Err.Error(), "refused") {
		t.Errorf("deciding error %v, want connection refused", ev.Err)
	}
	if st, _ := s.State("web"); st != Down {
		t.Errorf("state %s, want down", st)
	}

	g.up()
	waitEvent(t, s, Up, 2*time.Second)
	s.Remove("web")
	if _, ok := s.State("web"); ok {
		t.Error("removed check still known")
	}
}

// TestFiveMillisecondInterval measures the spacing of a 5 ms check: the
// mean must be close to 5 ms (generous bounds; the figure is logged).
func TestFiveMillisecondInterval(t *testing.T) {
	g := &toggler{t: t, addr: "127.0.0.1:0"}
	g.up()
	results := make(chan Result, 4096)
	s := NewScheduler(results)
	go s.Run(t.Context())
	if err := s.Add("fast", Spec{Kind: TCP, Target: netip.MustParseAddrPort(g.addr), Interval: 5 * time.Millisecond,
		Timeout: 4 * time.Millisecond, Rise: 1, Fall: 1}); err != nil {
		t.Fatal(err)
	}
	// The spacing is measured on every probe; a loopback connect that
	// misses its 4 ms timeout on a loaded machine (or under -race) is
	// counted, and only a failing majority fails the test.
	var starts []time.Time
	var failed []error
	deadline := time.After(time.Second)
collect:
	for {
		select {
		case r := <-results:
			if r.Err != nil {
				failed = append(failed, r.Err)
			}
			starts = append(starts, r.Start)
		case <-deadline:
			break collect
		}
	}
	if len(failed)*2 > len(starts) {
		t.Fatalf("%d of %d probes failed, first: %v", len(failed), len(starts), failed[0])
	}
	if len(starts) < 20 {
		t.Fatalf("%d probes in 1s at a 5ms interval", len(starts))
	}
	var gaps []time.Duration
	for i := 1; i < len(starts); i++ {
		gaps = append(gaps, starts[i].Sub(starts[i-1]))
	}
	slices.Sort(gaps)
	var sum time.Duration
	for _, g := range gaps {
		sum += g
	}
	mean := sum / time.Duration(len(gaps))
	t.Logf("5ms check: %d probes in 1s, interval mean %v p50 %v p99 %v max %v", len(starts), mean, gaps[len(gaps)/2], gaps[len(gaps)*99/100], gaps[len(gaps)-1])
	if mean < 4*time.Millisecond || mean > 8*time.Millisecond {
		t.Errorf("mean interval %v, want about 5ms", mean)
	}
}

// alternating is a prober whose results alternate: success, failure, ...
type alternating struct{ n atomic.Int64 }

func (a *alternating) probe(context.Context) error {
	if a.n.Add(1)%2 == 0 {
		return errors.New("refused")
	}
	return nil
}

// TestEventsOfOneCheckInOrder: with rise = fall = 1 every probe of an
// alternating check decides a change, so consecutive events must chain
// (each one's From is the previous one's To). The seam delays the first
// few deliveries by 20 ms, the way a descheduled goroutine would: when the
// check was re-queued before its event was sent (issue 7), the next probe
// ran meanwhile and its opposite verdict overtook the delayed one, leaving
// the control loop on the older verdict.
func TestEventsOfOneCheckInOrder(t *testing.T) {
	s := NewScheduler(nil)
	var delayed atomic.Int64
	s.beforeDeliver = func(Event) {
		if delayed.Add(1) <= 5 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	spec := Spec{Kind: TCP, Target: netip.MustParseAddrPort("127.0.0.1:1"), Interval: time.Millisecond, Timeout: time.Millisecond, Rise: 1, Fall: 1}
	c := &check{id: "flip", spec: spec, prober: &alternating{}, next: time.Now()}
	s.mu.Lock()
	s.checks[c.id] = c
	s.scheduleLocked(c)
	s.mu.Unlock()
	go s.Run(t.Context())
	expectChained(t, s, 40)
}

// expectChained reads n events of one check: each must begin where the
// previous one ended, or an event overtook an earlier one.
func expectChained(t *testing.T, s *Scheduler, n int) {
	t.Helper()
	prev := Unknown
	for i := range n {
		select {
		case ev := <-s.Events():
			if ev.From != prev {
				t.Fatalf("event %d: %s -> %s arrived after an event that ended in %s: an event overtook an earlier one", i, ev.From, ev.To, prev)
			}
			prev = ev.To
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d: none within 5s", i)
		}
	}
}

// stamping records when each of its probes started.
type stamping struct {
	mu     sync.Mutex
	starts []time.Time
}

func (p *stamping) probe(context.Context) error {
	p.mu.Lock()
	p.starts = append(p.starts, time.Now())
	p.mu.Unlock()
	return nil
}

func (p *stamping) first() (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.starts) == 0 {
		return time.Time{}, false
	}
	return p.starts[0], true
}

// TestTimetableWakeUps: Run waits for the earliest check only, so a check
// that becomes the earliest must wake it (a check due in an hour must not
// hold up one due now), and a check starts at most a hundredth of its
// interval before it is due, however many others start at that wake-up.
func TestTimetableWakeUps(t *testing.T) {
	s := NewScheduler(nil)
	spec := func(iv time.Duration) Spec {
		return Spec{Kind: TCP, Target: netip.MustParseAddrPort("127.0.0.1:1"), Interval: iv, Timeout: time.Second, Rise: 1, Fall: 1}
	}
	now := time.Now()
	late, soon, early := &stamping{}, &stamping{}, &stamping{}
	s.mu.Lock()
	for _, c := range []*check{
		{id: "late", spec: spec(2 * time.Hour), prober: late, next: now.Add(time.Hour)},
		// Due 40 ms after "soon" with a 100 ms interval: may start at
		// most 1 ms early, so not at soon's wake-up.
		{id: "early", spec: spec(100 * time.Millisecond), prober: early, next: now.Add(240 * time.Millisecond)},
	} {
		c.gone = make(chan struct{})
		s.checks[c.id] = c
		s.scheduleLocked(c)
	}
	s.mu.Unlock()
	go s.Run(t.Context())
	time.Sleep(50 * time.Millisecond) // Run now waits for "early"
	s.mu.Lock()
	c := &check{id: "soon", spec: spec(100 * time.Millisecond), prober: soon, next: now.Add(200 * time.Millisecond), gone: make(chan struct{})}
	s.checks[c.id] = c
	earliest := s.scheduleLocked(c)
	s.mu.Unlock()
	if !earliest {
		t.Fatal("a check due before every other is not reported the earliest")
	}
	s.poke()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a, okA := soon.first()
		b, okB := early.first()
		if okA && okB {
			if d := a.Sub(now); d < 199*time.Millisecond || d > 230*time.Millisecond {
				t.Errorf("soon started %v after the start, due at 200ms", d)
			}
			if d := b.Sub(now); d < 239*time.Millisecond {
				t.Errorf("early started %v after the start, due at 240ms: more than 1ms early", d)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("probes did not start: soon %v, early %v", okA, okB)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, ok := late.first(); ok {
		t.Error("the check due in an hour was probed")
	}
}
