package probe

import (
	"context"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// completer runs every asynchronous verdict on one goroutine, as the
// half-open engine's receive loop does.
type completer struct{ work chan func() }

func (c *completer) run(ctx context.Context) {
	for {
		select {
		case f := <-c.work:
			f()
		case <-ctx.Done():
			return
		}
	}
}

// asyncFake answers every probe with its verdict through the completer;
// alternate flips the verdict each probe.
type asyncFake struct {
	c         *completer
	alternate bool
	n         atomic.Int64
}

func (f *asyncFake) probe(context.Context) error { return errors.New("asyncFake: use start") }

func (f *asyncFake) start(_ time.Time, done func(error)) {
	var err error
	if f.alternate && f.n.Add(1)%2 == 0 {
		err = errors.New("down")
	}
	f.c.work <- func() { done(err) }
}

func addCheck(s *Scheduler, id string, p prober, rise int) {
	spec := Spec{Kind: TCPHalfOpen, Target: netip.MustParseAddrPort("127.0.0.1:1"), Interval: time.Millisecond, Timeout: time.Millisecond, Rise: rise, Fall: 1}
	c := &check{id: id, spec: spec, prober: p, next: time.Now(), gone: make(chan struct{})}
	s.mu.Lock()
	s.checks[c.id] = c
	s.scheduleLocked(c)
	s.mu.Unlock()
}

// TestAsyncDeliveryDoesNotBlockTheEngine: a state change whose delivery
// waits (the consumer is slow) must not hold the goroutine that completes
// every asynchronous probe, or every other check would stop too. Check
// "slow" flips on every probe and its first delivery is held; check "b"
// must still come up meanwhile.
func TestAsyncDeliveryDoesNotBlockTheEngine(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	comp := &completer{work: make(chan func(), 64)}
	go comp.run(ctx)
	s := NewScheduler(nil)
	release := make(chan struct{})
	defer close(release)
	s.beforeDeliver = func(ev Event) {
		if ev.Check == "slow" {
			<-release
		}
	}
	addCheck(s, "slow", &asyncFake{c: comp, alternate: true}, 1)
	go s.Run(ctx)
	time.Sleep(20 * time.Millisecond) // "slow" decided and is held in delivery
	addCheck(s, "b", &asyncFake{c: comp}, 3)
	s.poke()
	select {
	case ev := <-s.Events():
		if ev.Check != "b" || ev.To != Up {
			t.Fatalf("event %+v, want b up", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("b never came up while another check's delivery was held: the completing goroutine is blocked")
	}
}

// TestAsyncEventsInOrder: events of an asynchronous check that flips on
// every probe chain (each From is the previous To), as for probes with a
// goroutine of their own.
func TestAsyncEventsInOrder(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	comp := &completer{work: make(chan func(), 64)}
	go comp.run(ctx)
	s := NewScheduler(nil)
	var delayed atomic.Int64
	s.beforeDeliver = func(Event) {
		if delayed.Add(1) <= 5 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	addCheck(s, "flip", &asyncFake{c: comp, alternate: true}, 1)
	go s.Run(ctx)
	expectChained(t, s, 40)
}
