package drill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
)

// Notifier runs a notify hook for a flight-recorder event (the
// controller's RunNotify, so drill hooks run like backend and VIP hooks).
type Notifier interface {
	RunNotify(n config.Notify, e recorder.Event)
}

// Schedule runs the config's scheduled drills (`drills:`). It follows the
// config as a control.Owner: an entry unchanged by a reload keeps its
// timer, a changed or new one starts over (its first drill one period
// after), a removed one stops (a drill it is running finishes).
type Schedule struct {
	d      *Drills
	notify Notifier
	log    *slog.Logger
	base   context.Context // lifetime of the timers

	mu      sync.Mutex
	entries map[int]*scheduled // by position in the config
}

type scheduled struct {
	cfg  config.Drill
	stop context.CancelFunc
	done chan struct{}
}

// NewSchedule returns a schedule with no entries; Reload starts them.
// Drills run as long as ctx.
func NewSchedule(ctx context.Context, d *Drills, notify Notifier, log *slog.Logger) *Schedule {
	return &Schedule{d: d, notify: notify, log: log, base: ctx, entries: map[int]*scheduled{}}
}

// Reload makes the running entries those of cfg.
func (s *Schedule) Reload(_ context.Context, cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, e := range s.entries {
		if i < len(cfg.Drills) && reflect.DeepEqual(e.cfg, cfg.Drills[i]) {
			continue
		}
		e.stop()
		delete(s.entries, i)
	}
	for i, dc := range cfg.Drills {
		if _, running := s.entries[i]; running {
			continue
		}
		ctx, cancel := context.WithCancel(s.base)
		e := &scheduled{cfg: dc, stop: cancel, done: make(chan struct{})}
		s.entries[i] = e
		go s.loop(ctx, e)
	}
	return nil
}

// Close stops every entry and waits for its drill, if one runs, to end.
func (s *Schedule) Close() {
	s.mu.Lock()
	entries := s.entries
	s.entries = map[int]*scheduled{}
	s.mu.Unlock()
	for _, e := range entries {
		e.stop()
		<-e.done
	}
}

func (s *Schedule) loop(ctx context.Context, e *scheduled) {
	defer close(e.done)
	t := time.NewTicker(e.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.runOnce(ctx, e.cfg)
	}
}

// runOnce runs one scheduled drill and hands its result (or refusal) to
// the entry's notify hook. A refusal is a result too: the operator asked
// for the drill and it did not happen.
func (s *Schedule) runOnce(ctx context.Context, dc config.Drill) {
	req := Request{Kind: Kind(dc.Kind), Service: dc.Service, Backend: dc.Backend, For: dc.For, Source: "schedule"}
	res, err := s.d.Run(ctx, req)
	var ev recorder.Event
	switch {
	case err == nil:
		ev = recorder.Event{Seq: res.Event, Time: res.Ended, Kind: "drill-" + res.Result, Service: res.Service, Backend: res.Backend, Reason: res.Summary()}
	case errors.Is(err, ErrRefused):
		s.log.Warn("scheduled drill refused", "kind", dc.Kind, "service", dc.Service, "backend", dc.Backend, "reason", err)
		ev = recorder.Event{Time: time.Now(), Kind: "drill-" + ResultRefused, Service: dc.Service, Backend: backendString(req), Reason: err.Error()}
	default:
		// Not configured any more (a reload is on its way) or invalid.
		s.log.Error("scheduled drill", "kind", dc.Kind, "service", dc.Service, "backend", dc.Backend, "error", err)
		ev = recorder.Event{Time: time.Now(), Kind: "drill-error", Service: dc.Service, Backend: backendString(req), Reason: fmt.Sprint(err)}
	}
	if dc.Notify.Command != "" && s.notify != nil {
		go s.notify.RunNotify(dc.Notify, ev)
	}
}
