package drill

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/ownership"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

var (
	b1 = netip.MustParseAddr("10.0.0.1")
	b2 = netip.MustParseAddr("10.0.0.2")
)

// fakeCtl is a controller with one service "web" whose backends' states
// the test sets; DrillDown/DrillRestore write them and the recorder as
// the real controller would, and packets flow to every up backend.
type fakeCtl struct {
	mu      sync.Mutex
	rec     *recorder.Recorder
	states  map[netip.Addr]loader.State
	packets map[netip.Addr]uint64
	keep    bool // a policy keeps the backend up
	noBack  bool // the check never passes again
	quit    chan struct{}
}

func newFakeCtl(rec *recorder.Recorder, states map[netip.Addr]loader.State) *fakeCtl {
	f := &fakeCtl{rec: rec, states: states, packets: map[netip.Addr]uint64{}, quit: make(chan struct{})}
	go func() { // traffic: 1 packet per ms to each up backend
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-f.quit:
				return
			case <-t.C:
			}
			f.mu.Lock()
			for a, st := range f.states {
				if st == loader.Up {
					f.packets[a]++
				}
			}
			f.mu.Unlock()
		}
	}()
	return f
}

func (f *fakeCtl) Status() []control.ServiceStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	ss := control.ServiceStatus{Name: "web"}
	for _, a := range []netip.Addr{b1, b2} {
		if st, ok := f.states[a]; ok {
			ss.Backends = append(ss.Backends, control.BackendStatus{Address: a, State: st, Health: probe.Up})
		}
	}
	return []control.ServiceStatus{ss}
}

func (f *fakeCtl) Counters() control.Counters {
	sc, _ := f.ServiceCounters("web")
	return control.Counters{Services: map[string]control.ServiceCounters{"web": sc}}
}

func (f *fakeCtl) ServiceCounters(string) (control.ServiceCounters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sc := control.ServiceCounters{Backends: map[netip.Addr]loader.Counter{}}
	for a, n := range f.packets {
		sc.Backends[a] = loader.Counter{Packets: n}
		sc.Service.Packets += n
	}
	return sc, nil
}

func (f *fakeCtl) DrillDown(_ string, a netip.Addr) (loader.State, error) {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.keep {
		f.rec.Add(recorder.Event{Kind: "keep-last", Service: "web", Backend: a.String(), Detect: now, Decide: now})
		return loader.Up, nil
	}
	f.states[a] = loader.Down
	f.rec.Add(recorder.Event{Kind: "backend-down", Service: "web", Backend: a.String(), Detect: now, Decide: now, Apply: time.Now()})
	return loader.Down, nil
}

func (f *fakeCtl) DrillRestore(_ string, a netip.Addr) error {
	if f.noBack {
		return nil
	}
	time.AfterFunc(20*time.Millisecond, func() { // rise x interval
		f.mu.Lock()
		defer f.mu.Unlock()
		f.states[a] = loader.Up
		now := time.Now()
		f.rec.Add(recorder.Event{Kind: "backend-up", Service: "web", Backend: a.String(), Detect: now.Add(-20 * time.Millisecond), Decide: now, Apply: time.Now()})
	})
	return nil
}

func newDrills(f *fakeCtl, node NodeOwners, opt Options) *Drills {
	if opt.Window == 0 {
		opt.Window = 50 * time.Millisecond
	}
	if opt.ReturnTimeout == 0 {
		opt.ReturnTimeout = time.Second
	}
	return New(f, node, f.rec, slog.New(slog.NewTextHandler(io.Discard, nil)), opt)
}

// TestRefusals: what a drill refuses, and the error it names.
func TestRefusals(t *testing.T) {
	up2 := map[netip.Addr]loader.State{b1: loader.Up, b2: loader.Up}
	oneUp := map[netip.Addr]loader.State{b1: loader.Up, b2: loader.Down}
	for _, c := range []struct {
		name   string
		states map[netip.Addr]loader.State
		req    Request
		is     error
		want   string
	}{
		{"unknown service", up2, Request{Kind: Backend, Service: "nosuch", Backend: b1}, control.ErrNotConfigured, `service "nosuch": not configured`},
		{"unknown backend", up2, Request{Kind: Backend, Service: "web", Backend: netip.MustParseAddr("10.9.9.9")}, control.ErrNotConfigured, `backend 10.9.9.9: not configured`},
		{"no backend", up2, Request{Kind: Backend, Service: "web"}, ErrInvalid, "backend: required"},
		{"hold too short", up2, Request{Kind: Backend, Service: "web", Backend: b1, For: time.Millisecond}, ErrInvalid, "for: 1ms: want 100ms to 1h0m0s"},
		{"hold too long", up2, Request{Kind: Backend, Service: "web", Backend: b1, For: 2 * time.Hour}, ErrInvalid, "for: 2h0m0s"},
		{"negative hold", up2, Request{Kind: Backend, Service: "web", Backend: b1, For: -time.Second}, ErrInvalid, "for: -1s"},
		{"unknown kind", up2, Request{Kind: "rack", For: time.Second}, ErrInvalid, `kind: "rack"`},
		{"last usable backend", oneUp, Request{Kind: Backend, Service: "web", Backend: b1}, ErrRefused, "without a usable backend"},
		{"target down already", oneUp, Request{Kind: Backend, Service: "web", Backend: b2, Force: true}, ErrRefused, "backend 10.0.0.2 is down"},
		{"node with nothing to hand off", up2, Request{Kind: Node}, ErrRefused, "carries no VIP"},
		{"node drill with a service", up2, Request{Kind: Node, Service: "web"}, ErrInvalid, "service: a node drill takes no service"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFakeCtl(recorder.New(64), c.states)
			defer close(f.quit)
			d := newDrills(f, NodeOwners{}, Options{})
			_, err := d.Run(context.Background(), c.req)
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %v containing %q", err, c.is, c.want)
			}
			if len(d.History()) != 0 {
				t.Fatal("a refused drill was kept")
			}
		})
	}
}

// TestBackendDrill: a drill against the fake takes b1 out and back and
// measures it; a second drill of b1 meanwhile is refused; -force drills
// the last backend; a policy that keeps the backend up fails the drill.
func TestBackendDrill(t *testing.T) {
	rec := recorder.New(256)
	f := newFakeCtl(rec, map[netip.Addr]loader.State{b1: loader.Up, b2: loader.Up})
	defer close(f.quit)
	var got []Result
	d := newDrills(f, NodeOwners{}, Options{OnResult: func(r Result) { got = append(got, r) }, Keep: 2})
	second := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		_, err := d.Run(context.Background(), Request{Kind: Backend, Service: "web", Backend: b1, For: 200 * time.Millisecond})
		second <- err
	}()
	res, err := d.Run(context.Background(), Request{Kind: Backend, Service: "web", Backend: b1, For: 300 * time.Millisecond})
	if err != nil || res.Result != ResultOK {
		t.Fatalf("drill: %v, %+v", err, res)
	}
	if err := <-second; !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("second drill of b1: %v, want already running", err)
	}
	tr := res.Traffic
	if res.Out.Event != "backend-down" || res.Back.Event != "backend-up" || tr.StoppedAt.IsZero() || tr.BackAt.IsZero() ||
		tr.Target.During != 0 || tr.Target.Before == 0 || tr.Target.After == 0 || res.MTTR < 15*time.Millisecond || res.MTTR > 500*time.Millisecond {
		t.Fatalf("report: %+v", res)
	}
	if len(got) != 1 || got[0].ID != res.ID {
		t.Fatalf("OnResult saw %d results", len(got))
	}

	// The last up backend: refused, then forced.
	f.mu.Lock()
	f.states[b2] = loader.Down
	f.mu.Unlock()
	if _, err := d.Run(context.Background(), Request{Kind: Backend, Service: "web", Backend: b1, For: 100 * time.Millisecond}); !errors.Is(err, ErrRefused) {
		t.Fatalf("last backend: %v, want refused", err)
	}
	res, err = d.Run(context.Background(), Request{Kind: Backend, Service: "web", Backend: b1, For: 100 * time.Millisecond, Force: true})
	if err != nil || res.Result != ResultOK || !res.Forced {
		t.Fatalf("forced drill: %v, %+v", err, res)
	}

	// keep-last keeps it: nothing went out, the drill says so and fails.
	f.mu.Lock()
	f.keep = true
	f.mu.Unlock()
	res, err = d.Run(context.Background(), Request{Kind: Backend, Service: "web", Backend: b1, For: 100 * time.Millisecond, Force: true})
	if err != nil || res.Result != ResultFailed || !strings.Contains(strings.Join(res.Notes, ";"), "policy kept the backend up") {
		t.Fatalf("kept by policy: %v, %+v", err, res)
	}
	if h := d.History(); len(h) != 2 || h[1].ID != res.ID {
		t.Fatalf("history keeps %d, want the last 2", len(h))
	}
	c := d.Counts()
	if c[[2]string{"backend", "ok"}] != 2 || c[[2]string{"backend", "failed"}] != 1 || c[[2]string{"backend", "refused"}] != 2 {
		t.Fatalf("counts %v", c)
	}
}

// TestDrillAbortAndNoReturn: the caller leaving cuts the hold short (the
// backend is restored); a backend whose check never passes fails the
// drill after the return timeout.
func TestDrillAbortAndNoReturn(t *testing.T) {
	f := newFakeCtl(recorder.New(256), map[netip.Addr]loader.State{b1: loader.Up, b2: loader.Up})
	defer close(f.quit)
	d := newDrills(f, NodeOwners{}, Options{ReturnTimeout: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	res, err := d.Run(ctx, Request{Kind: Backend, Service: "web", Backend: b1, For: time.Hour})
	if err != nil || res.Result != ResultAborted || time.Since(t0) > 5*time.Second || res.Back.Event != "backend-up" {
		t.Fatalf("aborted drill: %v after %v, %+v", err, time.Since(t0), res)
	}
	f.noBack = true
	res, err = d.Run(context.Background(), Request{Kind: Backend, Service: "web", Backend: b1, For: 100 * time.Millisecond})
	if err != nil || res.Result != ResultFailed || !strings.Contains(strings.Join(res.Problems, ";"), "not back within 100ms") {
		t.Fatalf("no return: %v, %+v", err, res)
	}
}

// TestPlanNode: what a node drill hands off, refuses and says it did not
// check.
func TestPlanNode(t *testing.T) {
	bgpOn := &ownership.BGPStatus{Configured: true, Routes: []ownership.BGPRoute{{Announced: true}}}
	for _, c := range []struct {
		name          string
		vr            []ownership.HandoffInfo
		bg            *ownership.BGPStatus
		vrrp, bgp     bool
		refusal, note string
	}{
		{"master, backup heard", []ownership.HandoffInfo{{Name: "v1", State: "master", Heard: 3}}, nil, true, false, "", "whether one is running now was not checked"},
		{"master, never heard anyone", []ownership.HandoffInfo{{Name: "v1", State: "master"}}, nil, true, false, "no backup is known", ""},
		{"master, unicast peer never heard", []ownership.HandoffInfo{{Name: "v1", State: "master", Peers: 1}}, nil, true, false, "", "none heard since start"},
		{"backup here", []ownership.HandoffInfo{{Name: "v1", State: "backup"}}, nil, false, false, "", "nothing to hand off"},
		{"bgp announced", nil, bgpOn, false, true, "", "only the routers know"},
		{"bgp drained already", nil, &ownership.BGPStatus{Configured: true, Draining: true, DrainReason: "drain-node"}, false, false, "drained already", ""},
		{"bgp nothing announced", nil, &ownership.BGPStatus{Configured: true}, false, false, "", "nothing to withdraw"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := planNode(c.vr, c.bg)
			refusals, notes := strings.Join(p.refusals, ";"), strings.Join(p.notes, ";")
			if p.vrrp != c.vrrp || p.bgp != c.bgp || (c.refusal == "") != (refusals == "") || !strings.Contains(refusals, c.refusal) || !strings.Contains(notes, c.note) {
				t.Fatalf("plan %+v", p)
			}
		})
	}
}

// fakeVRRP hands off at once and takes back 30 ms after release.
type fakeVRRP struct {
	mu    sync.Mutex
	rec   *recorder.Recorder
	state string
	f     *fakeCtl
}

func (v *fakeVRRP) HandoffInfo() []ownership.HandoffInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	return []ownership.HandoffInfo{{Name: "v1", State: v.state, Heard: 1}}
}

func (v *fakeVRRP) Handoff(why string, names []string) func() {
	if len(names) != 1 || names[0] != "v1" {
		panic("handoff of " + strings.Join(names, ","))
	}
	v.set("fault", loader.Down)
	return func() { time.AfterFunc(30*time.Millisecond, func() { v.set("master", loader.Up) }) }
}

func (v *fakeVRRP) set(state string, st loader.State) {
	v.mu.Lock()
	v.state = state
	v.mu.Unlock()
	v.f.mu.Lock()
	v.f.states[b1] = st // traffic reaches this node's services, or not
	v.f.mu.Unlock()
	now := time.Now()
	e := recorder.Event{Kind: "vrrp-" + state, Service: "v1", Detect: now, Decide: now}
	if state == "master" {
		e.Announce = time.Now()
	}
	v.rec.Add(e)
}

// TestNodeDrill: a VRRP handoff and return, measured from the node's
// service counters; refused without a known backup unless forced.
func TestNodeDrill(t *testing.T) {
	rec := recorder.New(256)
	f := newFakeCtl(rec, map[netip.Addr]loader.State{b1: loader.Up})
	defer close(f.quit)
	v := &fakeVRRP{rec: rec, state: "master", f: f}
	d := newDrills(f, NodeOwners{VRRP: v}, Options{})
	res, err := d.Run(context.Background(), Request{Kind: Node, For: 200 * time.Millisecond})
	if err != nil || res.Result != ResultOK || res.Out.Event != "vrrp-fault" || res.Back.Event != "vrrp-master" ||
		res.Traffic.Target.During != 0 || res.MTTR < 25*time.Millisecond {
		t.Fatalf("node drill: %v, %+v", err, res)
	}
}

// TestMeasure: the figures from a synthetic timeline (1 ms samples; the
// backend gets 10 packets a sample, the service 20).
func TestMeasure(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Out at 100 ms (last backend packet seen by the 101 ms sample),
	// restored at 300 ms, back at 350 ms (the 351 ms sample sees it).
	samples := func(stopAt, backAt, leakAt int) []Sample {
		var s []Sample
		var n, svc uint64
		for ms := 0; ms <= 500; ms++ {
			if ms > 0 && (ms <= stopAt || ms >= backAt || ms == leakAt) {
				n += 10
			}
			if ms > 0 {
				svc += 20
			}
			s = append(s, Sample{At: at(ms), Target: n, Service: svc})
		}
		return s
	}
	events := []recorder.Event{
		{Kind: "drill-start", Time: at(0)},
		{Kind: "backend-down", Service: "web", Backend: "10.0.0.1", Time: at(100), Detect: at(100), Decide: at(100), Apply: at(100).Add(5 * time.Microsecond),
			DetectToApply: 5 * time.Microsecond, DecideToApply: 5 * time.Microsecond},
		{Kind: "backend-down", Service: "web", Backend: "10.0.0.2", Time: at(120)},
		{Kind: "backend-up", Service: "web", Backend: "10.0.0.1", Time: at(349), Detect: at(300), Decide: at(349), Apply: at(349),
			DetectToDecide: 49 * time.Millisecond},
	}
	tl := Timeline{Kind: Backend, Service: "web", Backend: "10.0.0.1", Start: at(0), Fault: at(100), Restore: at(300), End: at(500), Events: events}
	for _, c := range []struct {
		name                   string
		stop, back, leak       int
		wantStopped, wantBack  time.Duration
		wantMTTR, wantGap      time.Duration
		wantProblem            string
		wantBefore, wantDuring float64
	}{
		{"clean", 101, 351, -1, time.Millisecond, 51 * time.Millisecond, 51 * time.Millisecond, 250 * time.Millisecond, "", 10000, 0},
		{"stopped before the fault's sample", 99, 351, -1, time.Millisecond, 51 * time.Millisecond, 51 * time.Millisecond, 250 * time.Millisecond, "", 9900, 0},
		// The second sample after the fault counts only packets sent
		// after the write: a leak.
		{"a packet in the second sample", 102, 351, -1, 0, 51 * time.Millisecond, 51 * time.Millisecond, 0, "traffic still reached the target during the drill (10 packets)", 10000, 0},
		{"a leak while out", 101, 351, 200, 0, 51 * time.Millisecond, 51 * time.Millisecond, 0, "traffic still reached the target during the drill (10 packets)", 10000, 0},
		{"never came back", 101, 10000, -1, time.Millisecond, 0, 49 * time.Millisecond, 0, "traffic did not come back", 10000, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			tl.Samples = samples(c.stop, c.back, c.leak)
			out, back, tr, mttr, problems := Measure(tl)
			if out.Event != "backend-down" || out.DecideToApply != 5*time.Microsecond || back.Event != "backend-up" || back.DetectToDecide != 49*time.Millisecond {
				t.Fatalf("phases %+v %+v", out, back)
			}
			if tr.StoppedAfter != c.wantStopped || tr.BackAfter != c.wantBack || mttr != c.wantMTTR || tr.Gap != c.wantGap {
				t.Fatalf("stopped after %v, back after %v, mttr %v, gap %v; want %v, %v, %v, %v", tr.StoppedAfter, tr.BackAfter, mttr, tr.Gap,
					c.wantStopped, c.wantBack, c.wantMTTR, c.wantGap)
			}
			if got := strings.Join(problems, ";"); (c.wantProblem == "") != (got == "") || !strings.Contains(got, c.wantProblem) {
				t.Fatalf("problems %q, want %q", got, c.wantProblem)
			}
			if tr.Target.Before != c.wantBefore || tr.Service.Before != 20000 || tr.Service.During != 20000 || tr.Samples != 501 || tr.Interval != time.Millisecond {
				t.Fatalf("rates %+v %+v", tr.Target, tr.Service)
			}
			if c.wantGap > 0 && tr.Target.During != c.wantDuring {
				t.Fatalf("during %v", tr.Target.During)
			}
		})
	}
}

// fakeBGP withdraws its route at a drain and announces it 20 ms after an
// undrain, as route health injection would.
type fakeBGP struct {
	mu        sync.Mutex
	rec       *recorder.Recorder
	f         *fakeCtl
	announced bool
	drains    []time.Duration
}

func (b *fakeBGP) Status() ownership.BGPStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	return ownership.BGPStatus{Configured: true, Routes: []ownership.BGPRoute{{Announced: b.announced}}}
}

func (b *fakeBGP) set(announced bool) {
	b.mu.Lock()
	b.announced = announced
	b.mu.Unlock()
	st, kind := loader.Down, "bgp-withdraw"
	if announced {
		st, kind = loader.Up, "bgp-announce"
	}
	b.f.mu.Lock()
	b.f.states[b1] = st
	b.f.mu.Unlock()
	now := time.Now()
	b.rec.Add(recorder.Event{Kind: kind, Service: "10.0.0.100/32", Detect: now, Decide: now, Apply: time.Now()})
}

func (b *fakeBGP) Drain(_ context.Context, _ string, hold time.Duration) (ownership.DrainInfo, error) {
	b.mu.Lock()
	b.drains = append(b.drains, hold)
	b.mu.Unlock()
	b.set(false)
	return ownership.DrainInfo{Withdrawn: 1}, nil
}

func (b *fakeBGP) Undrain(context.Context) error {
	time.AfterFunc(20*time.Millisecond, func() { b.set(true) })
	return nil
}

// TestNodeDrillBGP: the routes are withdrawn with the sessions kept (hold
// 0) and announced again after the undrain; the report reads them.
func TestNodeDrillBGP(t *testing.T) {
	rec := recorder.New(256)
	f := newFakeCtl(rec, map[netip.Addr]loader.State{b1: loader.Up})
	defer close(f.quit)
	bg := &fakeBGP{rec: rec, f: f, announced: true}
	d := newDrills(f, NodeOwners{BGP: bg}, Options{})
	res, err := d.Run(context.Background(), Request{Kind: Node, For: 200 * time.Millisecond})
	if err != nil || res.Result != ResultOK || res.Out.Event != "bgp-withdraw" || res.Back.Event != "bgp-announce" ||
		res.Traffic.Target.During != 0 || res.MTTR < 15*time.Millisecond || len(bg.drains) != 1 || bg.drains[0] != 0 ||
		!strings.Contains(strings.Join(res.Notes, ";"), "only the routers know") {
		t.Fatalf("bgp node drill: %v, %+v, drains %v", err, res, bg.drains)
	}
}
