// Package drill rehearses failures on a running node and measures them.
// A backend drill takes a backend out the way a failed check would (the
// controller's own failover path), holds it out, and gives it back to its
// checks; a node drill hands this node's VIPs to its peers (VRRP priority
// 0, BGP withdrawal) and takes them back. Each drill reads the flight
// recorder and samples the dataplane counters every few milliseconds, and
// reports the phase durations, when traffic left the target and came
// back, packet rates and MTTR. The package owns the refusals (a drill
// that would leave a service without a usable backend, a second drill of
// one target), the history of the last results and scheduled drills; it
// sees the controller and the VIP owners through narrow interfaces.
package drill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
)

// Kind of drill.
type Kind string

const (
	Backend Kind = "backend"
	Node    Kind = "node"
)

// Results of a drill (the metrics' result label).
const (
	ResultOK      = "ok"      // out and back, traffic followed
	ResultFailed  = "failed"  // a problem is listed
	ResultAborted = "aborted" // the caller went away; restored early
	ResultRefused = "refused" // never started (counted, not kept)
)

// Controller is what a backend drill needs of the controller
// (*control.Controller).
type Controller interface {
	Status() []control.ServiceStatus
	// Counters reads every dataplane's counters (node drills).
	Counters() control.Counters
	// ServiceCounters reads the dataplane of one service.
	ServiceCounters(service string) (control.ServiceCounters, error)
	// DrillDown takes the backend out as a failed check would and
	// returns the state the dataplane holds after it.
	DrillDown(service string, addr netip.Addr) (loader.State, error)
	// DrillRestore hands the backend back to its checks.
	DrillRestore(service string, addr netip.Addr) error
}

// ErrRefused is wrapped by every refusal (the API answers 409); ErrInvalid
// by bad requests (400), which name the field.
var (
	ErrRefused = errors.New("drill refused")
	ErrInvalid = errors.New("invalid drill request")
)

type wrapped struct {
	msg  string
	kind error
}

func (e wrapped) Error() string        { return e.msg }
func (e wrapped) Is(target error) bool { return target == e.kind }

func refuse(format string, args ...any) error {
	return wrapped{msg: fmt.Sprintf(format, args...), kind: ErrRefused}
}

func invalid(field, format string, args ...any) error {
	return wrapped{msg: field + ": " + fmt.Sprintf(format, args...), kind: ErrInvalid}
}

// Request is one drill to run.
type Request struct {
	Kind    Kind
	Service string     // backend drills
	Backend netip.Addr // backend drills
	// For: how long the target stays out (0: DefaultFor).
	For   time.Duration
	Force bool
	// Source: who asked ("operator", "schedule"); shown in the report.
	Source string
}

// Limits of Request.For.
const (
	DefaultFor = 10 * time.Second
	MinFor     = 100 * time.Millisecond
	MaxFor     = time.Hour
)

// Result is one drill's report.
type Result struct {
	ID      uint64        `json:"id"`
	Kind    Kind          `json:"kind"`
	Service string        `json:"service,omitempty"`
	Backend string        `json:"backend,omitempty"`
	Source  string        `json:"source"`
	Forced  bool          `json:"forced,omitempty"`
	For     time.Duration `json:"for"`
	Result  string        `json:"result"` // ok, failed, aborted
	// Problems: why the result is failed. Notes: what the drill did not
	// check or could not measure.
	Problems []string  `json:"problems,omitempty"`
	Notes    []string  `json:"notes,omitempty"`
	Started  time.Time `json:"started"`
	Fault    time.Time `json:"fault"`
	Restore  time.Time `json:"restore,omitzero"`
	Ended    time.Time `json:"ended"`
	// Out: the transition that took the target out; Back: the one that
	// brought it back.
	Out     Phase   `json:"out"`
	Back    Phase   `json:"back"`
	Traffic Traffic `json:"traffic"`
	// MTTR: from the end of the fault until traffic reached the target
	// again (until it was back in the dataplane when it had no traffic).
	MTTR time.Duration `json:"mttr"`
	// Event: the flight-recorder event of the result (drill-ok, ...).
	Event uint64 `json:"event"`
}

// Summary is the result in one line (recorder events, notify hooks).
func (r Result) Summary() string {
	s := fmt.Sprintf("drill %d: %s drill (%s) %s: out %v after the fault, traffic stopped after %v, back %v after the restore, mttr %v",
		r.ID, r.Kind, r.Source, r.Result, r.Out.SinceFault, r.Traffic.StoppedAfter, r.Traffic.BackAfter, r.MTTR)
	if len(r.Problems) > 0 {
		s += "; " + strings.Join(r.Problems, "; ")
	}
	return s
}

// Options tune a Drills; zero values take the defaults.
type Options struct {
	// Sample: how often the counters are read (default 2ms; never more
	// often than twice the time a read takes).
	Sample time.Duration
	// Window: how long traffic is watched before the fault and after the
	// return, for the before/after rates (default 1s).
	Window time.Duration
	// ReturnTimeout: how long a restored target may take to come back
	// (default 30s); the drill fails after it.
	ReturnTimeout time.Duration
	// Keep: how many results the history keeps (default 32).
	Keep int
	// OnResult, when set, sees every finished drill (notify hooks).
	OnResult func(Result)
}

// Drills runs drills, one per target at a time, and keeps their results.
type Drills struct {
	ctl  Controller
	node NodeOwners
	rec  *recorder.Recorder
	log  *slog.Logger
	opt  Options

	mu      sync.Mutex
	running map[string]time.Time // target -> started
	history []Result
	nextID  uint64
	counts  map[[2]string]uint64 // (kind, result) -> drills
}

// New returns a Drills over ctl and the VIP owners in node (its members
// may be nil).
func New(ctl Controller, node NodeOwners, rec *recorder.Recorder, log *slog.Logger, opt Options) *Drills {
	if opt.Sample <= 0 {
		opt.Sample = 2 * time.Millisecond
	}
	if opt.Window <= 0 {
		opt.Window = time.Second
	}
	if opt.ReturnTimeout <= 0 {
		opt.ReturnTimeout = 30 * time.Second
	}
	if opt.Keep <= 0 {
		opt.Keep = 32
	}
	return &Drills{ctl: ctl, node: node, rec: rec, log: log, opt: opt, running: map[string]time.Time{}, counts: map[[2]string]uint64{}, nextID: 1}
}

// History returns the kept results, oldest first.
func (d *Drills) History() []Result {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.history)
}

// Counts returns how many drills ended with each (kind, result), refusals
// included.
func (d *Drills) Counts() map[[2]string]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[[2]string]uint64, len(d.counts))
	for k, v := range d.counts {
		out[k] = v
	}
	return out
}

// Running lists the targets being drilled now.
func (d *Drills) Running() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for t := range d.running {
		out = append(out, t)
	}
	slices.Sort(out)
	return out
}

// Run carries out req and returns its report. ctx ending during the hold
// restores the target at once (result aborted); the return and its
// measurement go on regardless, so a target is never left out.
func (d *Drills) Run(ctx context.Context, req Request) (Result, error) {
	if req.For == 0 {
		req.For = DefaultFor
	}
	if req.Source == "" {
		req.Source = "operator"
	}
	if req.For < MinFor || req.For > MaxFor {
		return Result{}, invalid("for", "%v: want %v to %v", req.For, MinFor, MaxFor)
	}
	var (
		res Result
		err error
	)
	switch req.Kind {
	case Backend:
		res, err = d.backend(ctx, req)
	case Node:
		res, err = d.nodeDrill(ctx, req)
	default:
		return Result{}, invalid("kind", "%q: want backend or node", req.Kind)
	}
	if errors.Is(err, ErrRefused) {
		d.count(req.Kind, ResultRefused)
		d.rec.Add(recorder.Event{Kind: "drill-refused", Service: req.Service, Backend: backendString(req), Reason: err.Error()})
	}
	return res, err
}

func backendString(req Request) string {
	if req.Backend.IsValid() {
		return req.Backend.String()
	}
	return ""
}

func (d *Drills) count(k Kind, result string) {
	d.mu.Lock()
	d.counts[[2]string{string(k), result}]++
	d.mu.Unlock()
}

// claim marks target as drilled, or refuses when it is already.
func (d *Drills) claim(target string) (release func(), err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if since, busy := d.running[target]; busy {
		return nil, refuse("%s: a drill is already running (since %s)", target, since.Format("15:04:05.000"))
	}
	d.running[target] = time.Now()
	return func() {
		d.mu.Lock()
		delete(d.running, target)
		d.mu.Unlock()
	}, nil
}

// backendCheck finds the backend and refuses what a drill must not do.
func backendCheck(st []control.ServiceStatus, req Request) error {
	addr := req.Backend.Unmap()
	for _, s := range st {
		if s.Name != req.Service {
			continue
		}
		var target *control.BackendStatus
		others := 0
		for i, b := range s.Backends {
			if b.Address == addr {
				target = &s.Backends[i]
			} else if b.State == loader.Up {
				others++
			}
		}
		if target == nil {
			return fmt.Errorf("service %q: backend %s: %w", req.Service, addr, control.ErrNotConfigured)
		}
		if target.State != loader.Up {
			why := target.Reason
			if target.Admin != control.Enabled {
				why = string(target.Admin) + " by operator"
			}
			return refuse("service %q: backend %s is %s (%s): a drill needs it up", req.Service, addr, target.State, why)
		}
		if others == 0 && !req.Force {
			return refuse("service %q: taking backend %s out would leave the service without a usable backend (no other backend is up): -force to drill anyway", req.Service, addr)
		}
		return nil
	}
	return fmt.Errorf("service %q: %w", req.Service, control.ErrNotConfigured)
}

func (d *Drills) backend(ctx context.Context, req Request) (Result, error) {
	if req.Service == "" {
		return Result{}, invalid("service", "required")
	}
	if !req.Backend.IsValid() {
		return Result{}, invalid("backend", "required")
	}
	req.Backend = req.Backend.Unmap()
	// Claimed first: a second drill of the target hears that, not that
	// the target is down (which the first drill did).
	release, err := d.claim(fmt.Sprintf("service %q backend %s", req.Service, req.Backend))
	if err != nil {
		return Result{}, err
	}
	defer release()
	if err := backendCheck(d.ctl.Status(), req); err != nil {
		return Result{}, err
	}
	read := func() (Sample, error) {
		sc, err := d.ctl.ServiceCounters(req.Service)
		if err != nil {
			return Sample{}, err
		}
		return Sample{At: time.Now(), Target: sc.Backends[req.Backend].Packets, Service: sc.Service.Packets}, nil
	}
	var notes []string
	back := func() bool {
		for _, s := range d.ctl.Status() {
			if s.Name == req.Service {
				for _, b := range s.Backends {
					if b.Address == req.Backend {
						return b.State == loader.Up
					}
				}
			}
		}
		return false
	}
	return d.run(ctx, req, read, func() error {
		st, err := d.ctl.DrillDown(req.Service, req.Backend)
		if err == nil && st != loader.Down {
			notes = append(notes, fmt.Sprintf("the service's policy kept the backend %s (panic threshold or keep-last): it was not taken out", st))
		}
		return err
	}, func() error {
		return d.ctl.DrillRestore(req.Service, req.Backend)
	}, back, &notes)
}

// run is the common course of a drill: watch, fault, hold, restore, wait
// for the return, watch, measure, keep.
func (d *Drills) run(ctx context.Context, req Request, read func() (Sample, error), fault, restore func() error, back func() bool, notes *[]string) (Result, error) {
	res := Result{Kind: req.Kind, Service: req.Service, Backend: backendString(req), Source: req.Source, Forced: req.Force, For: req.For,
		Started: time.Now()}
	start := d.rec.Add(recorder.Event{Kind: "drill-start", Service: req.Service, Backend: res.Backend,
		Reason: fmt.Sprintf("%s drill for %v (%s)", req.Kind, req.For, req.Source)})
	smp := startSampler(read, d.opt.Sample)
	problems := []string{}
	tl := Timeline{Kind: req.Kind, Service: req.Service, Backend: res.Backend, Start: res.Started}
	if req.Kind == Node {
		// The peer takes the VIPs after its skew time (VRRP) or the
		// routers converge (BGP): half the hold is allowed for it.
		tl.Settle = req.For / 2
	}

	wait := func(ctx context.Context, dur time.Duration) bool {
		t := time.NewTimer(dur)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	aborted := !wait(ctx, d.opt.Window)
	if !aborted {
		tl.Fault = time.Now()
		if err := fault(); err != nil {
			smp.stop()
			return Result{}, err
		}
		aborted = !wait(ctx, req.For)
	}
	if tl.Fault.IsZero() {
		// Aborted before the fault: nothing was touched.
		smp.stop()
		res.Result, res.Ended = ResultAborted, time.Now()
		d.keep(&res)
		return res, nil
	}
	tl.Restore = time.Now()
	if err := restore(); err != nil {
		problems = append(problems, "restore: "+err.Error())
	}
	// Wait for the return (the target's own checks, the election) on
	// the daemon's time, not the caller's: it is measured either way. An
	// aborted drill (the caller left, the daemon stops) waits briefly and
	// watches nothing after: the restore is what mattered.
	wait4 := d.opt.ReturnTimeout
	if aborted {
		wait4 = min(wait4, 2*time.Second)
	}
	deadline := time.Now().Add(wait4)
	returned := false
	for !returned && time.Now().Before(deadline) {
		if returned = back(); !returned {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if !returned {
		problems = append(problems, fmt.Sprintf("not back within %v of the restore", wait4))
	} else if !aborted {
		time.Sleep(d.opt.Window)
	}
	tl.Samples, tl.End = smp.stop(), time.Now()
	if smp.err != nil {
		*notes = append(*notes, "counters: "+smp.err.Error())
	}
	tl.Events = d.rec.Since(start.Seq)
	out, ret, tr, mttr, more := Measure(tl)
	res.Problems = append(problems, more...)
	res.Notes = *notes
	if tr.Target.Before == 0 {
		res.Notes = append(res.Notes, "no traffic reached the target before the fault: when traffic stopped and came back was not measured")
	}
	res.Fault, res.Restore, res.Ended, res.Out, res.Back, res.Traffic, res.MTTR = tl.Fault, tl.Restore, tl.End, out, ret, tr, mttr
	switch {
	case aborted:
		res.Result = ResultAborted
	case len(res.Problems) > 0:
		res.Result = ResultFailed
	default:
		res.Result = ResultOK
	}
	d.keep(&res)
	d.log.Info("drill ended", "id", res.ID, "kind", req.Kind, "service", req.Service, "backend", res.Backend, "result", res.Result,
		"out", res.Out.SinceFault, "traffic_stopped_after", tr.StoppedAfter, "traffic_back_after", tr.BackAfter, "mttr", mttr, "problems", res.Problems)
	return res, nil
}

// keep numbers res, records it, stores it and hands it to OnResult.
func (d *Drills) keep(res *Result) {
	d.mu.Lock()
	res.ID = d.nextID
	d.nextID++
	e := d.rec.Add(recorder.Event{Kind: "drill-" + res.Result, Service: res.Service, Backend: res.Backend, Reason: res.Summary()})
	res.Event = e.Seq
	d.history = append(d.history, *res)
	if len(d.history) > d.opt.Keep {
		d.history = slices.Delete(d.history, 0, len(d.history)-d.opt.Keep)
	}
	d.counts[[2]string{string(res.Kind), res.Result}]++
	d.mu.Unlock()
	if d.opt.OnResult != nil {
		d.opt.OnResult(*res)
	}
}

// sampler reads the counters on its own goroutine until stop.
type sampler struct {
	quit    chan struct{}
	done    chan struct{}
	samples []Sample
	err     error // the first failed read
}

func startSampler(read func() (Sample, error), every time.Duration) *sampler {
	s := &sampler{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			t0 := time.Now()
			x, err := read()
			if err != nil && s.err == nil {
				s.err = err
			}
			if err == nil {
				s.samples = append(s.samples, x)
			}
			// Never more than half the time in reads: on a node with many
			// services a read takes longer than the interval.
			pause := max(every, 2*time.Since(t0))
			select {
			case <-s.quit:
				return
			case <-time.After(pause):
			}
		}
	}()
	return s
}

func (s *sampler) stop() []Sample {
	close(s.quit)
	<-s.done
	return s.samples
}
