package probe

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// State is a check's verdict on its backend.
// earlyStart: a probe may start up to its interval / earlyStart before it
// is due (Run).
const earlyStart = 100

type State int

const (
	Unknown State = iota // not enough results yet
	Up
	Down
)

func (s State) String() string {
	return [...]string{"unknown", "up", "down"}[s]
}

// Result is one probe.
type Result struct {
	Check   string
	Start   time.Time
	Latency time.Duration
	Err     error // nil: success
}

// Event is a state change of a check, with the timing words of
// ARCHITECTURE.md ("Timing words"):
// Detect is when the first probe of the run that crossed rise/fall
// started, Decide when the crossing result came in.
type Event struct {
	Check   string
	From    State
	To      State
	Detect  time.Time
	Decide  time.Time
	Latency time.Duration // of the deciding probe
	Err     error         // of the deciding probe, for Down
}

// Scheduler runs checks. One goroutine keeps the timetable; each probe in
// flight runs in a goroutine of its own that is parked on I/O, so checks
// cost memory only while a probe is outstanding.
type Scheduler struct {
	events  chan Event
	results chan Result // optional observer, may be nil

	// beforeDeliver, when set (tests only), runs after a verdict is
	// recorded and before its event is delivered.
	beforeDeliver func(Event)

	syn synEngines // half-open checks' raw sockets, closed when Run ends

	mu     sync.Mutex
	checks map[string]*check
	// due holds each idle check once, by its next probe (ns since
	// epoch). A removed check's entry stays until it comes up, and is
	// dropped then: removing it at once would need each check's heap
	// position, kept up to date at every swap of every sift.
	due   timeHeap[*check]
	stale int // entries in due of removed checks
	epoch time.Time
	wake  chan struct{}
}

type check struct {
	id       string
	spec     Spec
	prober   prober
	next     time.Time
	queued   bool // in the timetable (not in flight)
	removed  bool
	gone     chan struct{} // closed by Remove: a delivery waiting gives up
	state    State
	okRun    int
	failRun  int
	runStart time.Time // start of the first probe of the current run
}

// NewScheduler returns a scheduler whose events arrive on Events. A
// results channel, when given, receives every probe (dropped if full).
func NewScheduler(results chan Result) *Scheduler {
	return &Scheduler{
		events:  make(chan Event, 1024),
		results: results,
		checks:  map[string]*check{},
		epoch:   time.Now(),
		wake:    make(chan struct{}, 1),
	}
}

// scheduleLocked puts c on the timetable at c.next and reports whether
// it is now the earliest entry: only then must Run, which waits for the
// earliest, be woken (poke). Waking it at every probe's end was half of
// its 54,000 wake-ups a second at 10,000 checks. s.mu is held.
func (s *Scheduler) scheduleLocked(c *check) (earliest bool) {
	at := c.next.Sub(s.epoch).Nanoseconds()
	c.queued = true
	s.due.push(at, c)
	first, _ := s.due.first()
	return first == at
}

// Events delivers state changes in the order they were decided.
func (s *Scheduler) Events() <-chan Event { return s.events }

// Add starts (or replaces) check id. The first probe runs within one
// interval, spread by jitter.
func (s *Scheduler) Add(id string, spec Spec) error {
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("check %s: %w", id, err)
	}
	p, err := newProber(spec, &s.syn)
	if err != nil {
		return fmt.Errorf("check %s: %w", id, err)
	}
	s.mu.Lock()
	if old, ok := s.checks[id]; ok {
		s.removeLocked(old)
	}
	c := &check{id: id, spec: spec, prober: p, gone: make(chan struct{})}
	c.next = time.Now().Add(time.Duration(rand.Float64() * float64(spec.Interval)))
	s.checks[id] = c
	earliest := s.scheduleLocked(c)
	s.mu.Unlock()
	if earliest {
		s.poke()
	}
	return nil
}

// Remove stops check id; a probe in flight finishes unreported.
func (s *Scheduler) Remove(id string) {
	s.mu.Lock()
	if c, ok := s.checks[id]; ok {
		s.removeLocked(c)
	}
	s.mu.Unlock()
}

func (s *Scheduler) removeLocked(c *check) {
	if !c.removed && c.gone != nil {
		close(c.gone)
	}
	if !c.removed && c.queued {
		s.stale++
	}
	c.removed = true
	delete(s.checks, c.id)
	// Checks added and removed faster than they come up would grow the
	// timetable without bound (an hour's interval keeps an entry an
	// hour): past half of it, the removed ones go at once.
	if s.stale > 1024 && 2*s.stale > s.due.len() {
		s.due.drop(func(c *check) bool { return c.removed })
		s.stale = 0
	}
}

// State returns the current state of check id.
func (s *Scheduler) State(id string) (State, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.checks[id]
	if !ok {
		return Unknown, false
	}
	return c.state, true
}

func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run keeps the timetable until ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	defer s.syn.close()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		now := time.Since(s.epoch).Nanoseconds()
		var batch []*check
		for {
			// A check due within a hundredth of its interval starts
			// now, with those due already: one wake-up then starts the
			// probes due around the same time (at 10,000 checks of
			// 100 ms, those of the next millisecond) instead of one
			// wake-up, timer reset and goroutine for every one or two.
			// Its schedule stays anchored to its due times (finish).
			at, c, ok := s.due.peek()
			if !ok || at > now && (c.removed || at-now > int64(c.spec.Interval/earlyStart)) {
				break
			}
			s.due.pop()
			c.queued = false
			if c.removed {
				s.stale--
				continue
			}
			if _, ok := c.prober.(asyncProber); ok {
				batch = append(batch, c)
				continue
			}
			go s.runProbe(ctx, c)
		}
		wait := time.Hour
		if at, ok := s.due.first(); ok {
			wait = time.Duration(at) - time.Since(s.epoch)
		}
		s.mu.Unlock()
		if len(batch) > 0 {
			// One goroutine starts every asynchronous probe due now:
			// sending is a system call each, which the timetable
			// should not wait for.
			go s.startProbes(ctx, batch)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// asyncProber is a prober that needs no goroutine while its probe is in
// flight: start returns at once and done is called once, from another
// goroutine, by the deadline at the latest (never, once the scheduler has
// stopped). At 10,000 checks a goroutine and a context with a timer per
// probe were a third of the prober's CPU.
type asyncProber interface {
	prober
	start(deadline time.Time, done func(error))
}

func (s *Scheduler) startProbes(ctx context.Context, batch []*check) {
	// Half-open probes go to their engine together, which sends their
	// SYNs in one system call per socket.
	syn := map[*synEngine][]synStart{}
	for _, c := range batch {
		start := time.Now()
		done := func(err error) { s.finish(ctx, c, start, err, false) }
		if p, ok := c.prober.(*synProber); ok {
			syn[p.engine] = append(syn[p.engine], synStart{p, start.Add(c.spec.Timeout), done})
			continue
		}
		c.prober.(asyncProber).start(start.Add(c.spec.Timeout), done)
	}
	for e, starts := range syn {
		e.startBatch(starts)
	}
}

func (s *Scheduler) runProbe(ctx context.Context, c *check) {
	start := time.Now()
	pctx, cancel := context.WithTimeout(ctx, c.spec.Timeout)
	err := c.prober.probe(pctx)
	cancel()
	s.finish(ctx, c, start, err, true)
}

// finish records a probe's result and puts its check back on the
// timetable. Unless mayBlock (the caller is the probe's own goroutine), a
// verdict that changes the state is delivered from a goroutine of its
// own: delivery can wait for the consumer, and the caller (an engine's
// receive loop) must not.
func (s *Scheduler) finish(ctx context.Context, c *check, start time.Time, err error, mayBlock bool) {
	if ctx.Err() != nil {
		return
	}
	r := Result{Check: c.id, Start: start, Latency: time.Since(start), Err: err}
	if s.results != nil {
		select {
		case s.results <- r:
		default:
		}
	}
	s.mu.Lock()
	if c.removed {
		s.mu.Unlock()
		return
	}
	ev, changed := c.record(r)
	// Schedule from the previous due time, not from when the goroutine
	// got to run, so a 5 ms check stays at 5 ms instead of drifting.
	c.next = c.next.Add(c.interval())
	if now := time.Now(); c.next.Before(now) {
		c.next = now
	}
	if !changed {
		earliest := s.scheduleLocked(c)
		s.mu.Unlock()
		if earliest {
			s.poke()
		}
		return
	}
	s.mu.Unlock()
	if !mayBlock {
		go s.deliver(ctx, c, ev)
		return
	}
	s.deliver(ctx, c, ev)
}

// deliver sends a state change and then puts its check back on the
// timetable.
func (s *Scheduler) deliver(ctx context.Context, c *check, ev Event) {
	// The event is delivered before the check goes back on the
	// timetable: once re-queued, its next probe may run and decide the
	// opposite at once, and that event must not overtake this one (the
	// control loop would end on the older verdict). Until then the check
	// is off the heap, so no later probe of it exists; a slow consumer
	// delays this check's next probe, not the order.
	if s.beforeDeliver != nil {
		s.beforeDeliver(ev)
	}
	// A check removed before its verdict is delivered stays unreported
	// (Remove's promise): with room in the channel the verdict goes in
	// under the lock, so it is either queued before Remove or dropped;
	// when the channel is full, the wait ends at whichever comes first,
	// room or Remove.
	s.mu.Lock()
	sent := false
	if !c.removed {
		select {
		case s.events <- ev:
			sent = true
		default:
		}
	}
	removed := c.removed
	s.mu.Unlock()
	if removed {
		return
	}
	if !sent {
		select {
		case s.events <- ev:
		case <-c.gone:
			return
		case <-ctx.Done():
			return
		}
	}
	s.mu.Lock()
	earliest := false
	if !c.removed {
		if now := time.Now(); c.next.Before(now) {
			c.next = now
		}
		earliest = s.scheduleLocked(c)
	}
	s.mu.Unlock()
	if earliest {
		s.poke()
	}
}

// Rising reports whether the check is not up but its latest probes
// passed, short of rise: a backend on its way back. False for an unknown
// check.
func (s *Scheduler) Rising(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.checks[id]
	return c != nil && c.state != Up && c.okRun > 0
}

// record applies one result to the consecutive counters (never cumulative)
// and reports a state change when rise or fall is crossed.
func (c *check) record(r Result) (Event, bool) {
	if r.Err == nil {
		if c.okRun == 0 {
			c.runStart = r.Start
		}
		c.okRun++
		c.failRun = 0
		if c.state != Up && c.okRun >= c.spec.Rise {
			return c.change(Up, r), true
		}
		return Event{}, false
	}
	if c.failRun == 0 {
		c.runStart = r.Start
	}
	c.failRun++
	c.okRun = 0
	if c.state != Down && c.failRun >= c.spec.Fall {
		return c.change(Down, r), true
	}
	return Event{}, false
}

func (c *check) change(to State, r Result) Event {
	ev := Event{Check: c.id, From: c.state, To: to, Detect: c.runStart, Decide: time.Now(), Latency: r.Latency, Err: r.Err}
	c.state = to
	return ev
}

// interval is the fast interval while a change is pending, with jitter.
func (c *check) interval() time.Duration {
	iv := c.spec.Interval
	pending := (c.state != Up && c.okRun > 0) || (c.state != Down && c.failRun > 0)
	if pending && c.spec.FastInterval > 0 {
		iv = c.spec.FastInterval
	}
	if c.spec.Jitter > 0 {
		iv += time.Duration((rand.Float64()*2 - 1) * c.spec.Jitter * float64(iv))
	}
	return iv
}
