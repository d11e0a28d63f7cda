// Package control is Keepbit's reconcile loop: config and probe events in,
// dataplane writes and flight-recorder events out. It is the only writer
// of the dataplane.
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/neigh"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// Admin is an operator's override of a backend.
type Admin string

const (
	Enabled  Admin = ""         // follow the health checks
	Draining Admin = "draining" // keep established flows, no new ones
	Disabled Admin = "disabled" // down
)

// Controller owns the dataplanes of the configured interfaces.
type Controller struct {
	log     *slog.Logger
	rec     *recorder.Recorder
	sched   *probe.Scheduler
	results chan probe.Result

	// ProbeObserver, when set before Run, sees every probe result.
	ProbeObserver func(service, backend string, r probe.Result)

	applyMu sync.Mutex // serializes reloads
	mu      sync.Mutex
	cfg     *config.Config
	gen     int
	dps     map[string]*loader.Dataplane
	svcs    map[string]*service
	byCheck map[string]*backend
	// unresolved backends (service name -> addresses) wait for the
	// resolver goroutine, never for the event loop.
	unresolved  map[string]map[netip.Addr]bool
	kickResolve chan struct{}

	base context.Context // lifetime of VRRP instances
	vrrp map[string]*vrrpRun

	// Operator overrides (service name -> backend -> admin) survive a
	// restart in stateDir; see state.go. overrideGen counts changes so
	// that a slower save of an older set never replaces a newer one.
	stateDir    string
	overrides   map[string]map[netip.Addr]Admin
	overrideGen uint64
	saveMu      sync.Mutex
	savedGen    uint64

	// writeState, when set (tests only), replaces the dataplane write of
	// a backend's state.
	writeState func(s *service, addr netip.Addr, st loader.State) (loader.Change, error)
}

type service struct {
	cfg      config.Service
	key      loader.ServiceKey
	dp       *loader.Dataplane
	backends map[netip.Addr]*backend
	order    []netip.Addr
}

type backend struct {
	svc       *service
	cfg       config.Backend
	checkID   string
	mac       net.HardwareAddr
	inDP      bool // in the dataplane's spec (needs a MAC)
	health    probe.State
	state     loader.State // what the dataplane holds
	admin     Admin
	reason    string
	since     time.Time
	flaps     []time.Time
	heldUntil time.Time
	spec      probe.Spec
}

// New opens (or adopts) the dataplane of every interface and applies cfg.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger, rec *recorder.Recorder) (*Controller, error) {
	results := make(chan probe.Result, 4096)
	c := &Controller{
		log: log, rec: rec, sched: probe.NewScheduler(results), results: results,
		dps: map[string]*loader.Dataplane{}, svcs: map[string]*service{}, byCheck: map[string]*backend{},
		unresolved: map[string]map[netip.Addr]bool{}, kickResolve: make(chan struct{}, 1),
		base: ctx, vrrp: map[string]*vrrpRun{},
		stateDir: cfg.Node.StateDir,
	}
	// Overrides are known before the first apply settles anything, so an
	// adopted backend under maintenance never returns to rotation.
	ov, err := loadOverrides(c.stateDir)
	if err != nil {
		return nil, err
	}
	c.overrides = ov
	if err := c.Reload(ctx, cfg); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Run drives the probes and applies their verdicts until ctx ends. It
// never detaches: the pinned dataplane keeps forwarding after exit.
func (c *Controller) Run(ctx context.Context) error {
	go func() { _ = c.sched.Run(ctx) }()
	go c.resolveLoop(ctx)
	go c.trackLoop(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-c.sched.Events():
			c.onProbe(ev)
		case r := <-c.results:
			if c.ProbeObserver != nil {
				service, backend, _ := strings.Cut(r.Check, "|")
				c.ProbeObserver(service, backend, r)
			}
		}
	}
}

// Close resigns the VRRP instances (so a backup takes the VIPs at once)
// and releases the dataplanes without detaching them.
func (c *Controller) Close() {
	c.stopVRRP()
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, dp := range c.dps {
		if err := dp.Close(); err != nil {
			c.log.Warn("close dataplane", "interface", name, "error", err)
		}
	}
	c.dps = map[string]*loader.Dataplane{}
}

// Generation counts successful config loads.
func (c *Controller) Generation() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func attachMode(m string) loader.AttachMode {
	switch m {
	case "native":
		return loader.AttachNative
	case "generic":
		return loader.AttachGeneric
	}
	return loader.AttachAuto
}

func protoOf(s string) loader.Proto {
	p, _ := loader.ParseProto(s) // validated by config
	return p
}

// Reload makes the running state match cfg, touching only what changed:
// unchanged services keep their tables and flows. cfg is already valid;
// a failure part-way is reported and the next reload retries.
func (c *Controller) Reload(ctx context.Context, cfg *config.Config) error {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	return c.reloadLocked(ctx, cfg)
}

// reloadLocked is Reload with applyMu held.
func (c *Controller) reloadLocked(ctx context.Context, cfg *config.Config) error {
	started := time.Now()
	var errs []error
	c.mu.Lock()
	old := c.cfg
	c.mu.Unlock()
	if old != nil {
		if err := errors.Join(startOnly(old.Node, cfg.Node), attachFixed(old.Interfaces, cfg.Interfaces)); err != nil {
			return err
		}
	}

	want := map[string]config.Interface{}
	for _, ifc := range cfg.Interfaces {
		want[ifc.Name] = ifc
	}
	for _, ifc := range cfg.Interfaces {
		c.mu.Lock()
		_, open := c.dps[ifc.Name]
		c.mu.Unlock()
		if open {
			continue
		}
		dp, err := loader.Open(ctx, loader.Options{Interface: ifc.Name, PinRoot: cfg.Node.PinRoot, Mode: attachMode(ifc.Mode),
			HashSeed: cfg.Node.HashSeed, Logger: c.log})
		if err != nil {
			return fmt.Errorf("interface %s: %w", ifc.Name, err)
		}
		c.log.Info("dataplane ready", "interface", ifc.Name, "mode", dp.Mode(), "adopted", dp.Adopted())
		c.mu.Lock()
		c.dps[ifc.Name] = dp
		c.mu.Unlock()
	}

	// Services gone, or moved to another key or interface, leave first.
	next := map[string]config.Service{}
	for _, s := range cfg.Services {
		next[s.Name] = s
	}
	c.mu.Lock()
	var gone []*service
	for name, s := range c.svcs {
		n, keep := next[name]
		if !keep || s.cfg.Interface != n.Interface || s.key != (loader.ServiceKey{VIP: n.VIP, Port: n.Port, Proto: protoOf(n.Protocol)}) {
			gone = append(gone, s)
		}
	}
	c.mu.Unlock()
	for _, s := range gone {
		c.removeService(s)
	}

	// Services apply in parallel: creating one waits for RCU grace
	// periods in the kernel, and those waits overlap.
	var emu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, sc := range cfg.Services {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := c.applyService(ctx, sc, false); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		})
	}
	wg.Wait()
	// Adopted services that the config no longer names are stale.
	for name, dp := range c.dataplanes() {
		for _, si := range dp.Services() {
			if !c.known(si.Key, name) {
				if _, err := dp.DeleteService(si.Key); err != nil {
					errs = append(errs, err)
				} else {
					c.log.Info("removed a service the config no longer has", "service", si.Key)
				}
			}
		}
	}
	for name, dp := range c.dataplanes() {
		if _, ok := want[name]; !ok {
			c.log.Warn("interface removed from config: detaching", "interface", name)
			if err := dp.Detach(); err != nil {
				errs = append(errs, err)
			}
			c.mu.Lock()
			delete(c.dps, name)
			c.mu.Unlock()
		}
	}

	warnNeighbourTable(c.log, cfg)
	if err := c.reloadVRRP(cfg); err != nil {
		errs = append(errs, err)
	}

	if err := c.pruneOverrides(cfg); err != nil {
		errs = append(errs, err)
	}

	c.mu.Lock()
	c.cfg = cfg
	c.gen++
	gen := c.gen
	c.mu.Unlock()
	err := errors.Join(errs...)
	reason := fmt.Sprintf("generation %d, %d services, took %v", gen, len(cfg.Services), time.Since(started).Round(time.Microsecond))
	if err != nil {
		reason += ": " + err.Error()
	}
	c.rec.Add(recorder.Event{Kind: "reload", Reason: reason})
	return err
}

// warnNeighbourTable: every on-link backend that is probed needs a
// neighbour entry, and the kernel keeps at most gc_thresh3 of them (1024 by
// default); beyond that, probes fail with "no buffer space".
func warnNeighbourTable(log *slog.Logger, cfg *config.Config) {
	n := 0
	for _, s := range cfg.Services {
		n += len(s.Backends)
	}
	data, err := os.ReadFile("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
	if err != nil {
		return // not visible in this network namespace
	}
	var limit int
	if _, err := fmt.Sscan(string(data), &limit); err == nil && n > limit {
		log.Warn("more backends than the kernel keeps neighbour entries: probes of on-link backends beyond that fail; raise net.ipv4.neigh.default.gc_thresh1/2/3 or route backends through a gateway",
			"backends", n, "gc_thresh3", limit)
	}
}

func (c *Controller) dataplanes() map[string]*loader.Dataplane {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.dps)
}

func (c *Controller) known(key loader.ServiceKey, iface string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.svcs {
		if s.key == key && s.cfg.Interface == iface {
			return true
		}
	}
	return false
}

func (c *Controller) removeService(s *service) {
	for _, b := range s.backends {
		c.sched.Remove(b.checkID)
	}
	if _, err := s.dp.DeleteService(s.key); err != nil {
		c.log.Warn("remove service", "service", s.cfg.Name, "error", err)
	}
	c.mu.Lock()
	delete(c.svcs, s.cfg.Name)
	for _, b := range s.backends {
		delete(c.byCheck, b.checkID)
	}
	c.mu.Unlock()
	c.rec.Add(recorder.Event{Kind: "service-removed", Service: s.cfg.Name})
}

// sameService reports whether two configs of a service are equal in
// everything but where they were written.
func sameService(a, b config.Service) bool {
	a.CheckNode, b.CheckNode = yaml.Node{}, yaml.Node{}
	a.Backends, b.Backends = slices.Clone(a.Backends), slices.Clone(b.Backends)
	if len(a.Backends) != len(b.Backends) {
		return false
	}
	for i := range a.Backends {
		a.Backends[i].CheckNode, b.Backends[i].CheckNode = yaml.Node{}, yaml.Node{}
	}
	return reflect.DeepEqual(a, b)
}

// applyService makes the dataplane and the checks match sc; an unchanged
// service is left alone unless force (new MACs to write).
func (c *Controller) applyService(ctx context.Context, sc config.Service, force bool) error {
	c.mu.Lock()
	dp := c.dps[sc.Interface]
	s, exists := c.svcs[sc.Name]
	unchanged := !force && exists && sameService(s.cfg, sc) && len(c.unresolved[sc.Name]) == 0
	c.mu.Unlock()
	if unchanged {
		return nil // its tables, flows and checks stay as they are
	}
	key := loader.ServiceKey{VIP: sc.VIP, Port: sc.Port, Proto: protoOf(sc.Protocol)}
	if !exists {
		s = &service{key: key, dp: dp, backends: map[netip.Addr]*backend{}}
	}
	// What an earlier keepbitd left in the dataplane, to resume from.
	pinned := map[netip.Addr]loader.BackendSpec{}
	for _, si := range dp.Services() {
		if si.Key == key {
			for _, b := range si.Backends {
				pinned[b.Addr] = b
			}
		}
	}

	// Every field of a backend that Status or settle read is written
	// under c.mu; only the neighbour-table lookups run outside it.
	type plan struct {
		b          *backend
		bc         config.Backend
		lookup     bool
		macChanged bool
		mac        net.HardwareAddr
	}
	c.mu.Lock()
	plans := make([]plan, 0, len(sc.Backends))
	for _, bc := range sc.Backends {
		b := s.backends[bc.Address]
		if b == nil {
			b = &backend{svc: s, checkID: sc.Name + "|" + bc.Address.String(), state: loader.Down, health: probe.Unknown, since: time.Now(), reason: "waiting for checks",
				admin: c.overrides[sc.Name][bc.Address]}
			if p, ok := pinned[bc.Address]; ok {
				b.state, b.reason = p.State, "adopted"
				b.mac = p.MAC
			}
		}
		macChanged := bc.MAC != b.cfg.MAC
		plans = append(plans, plan{b: b, bc: bc, macChanged: macChanged, lookup: bc.MAC == "" && (b.mac == nil || macChanged)})
	}
	c.mu.Unlock()
	for i := range plans {
		if p := &plans[i]; p.lookup {
			p.mac = neigh.Lookup(egress(sc, p.bc), p.bc.Address)
		}
	}

	next := map[netip.Addr]*backend{}
	var order, unresolved []netip.Addr
	c.mu.Lock()
	for _, p := range plans {
		b := p.b
		b.svc = s
		b.cfg = p.bc
		switch {
		case p.bc.MAC != "":
			b.mac, _ = net.ParseMAC(p.bc.MAC)
		case p.mac != nil:
			b.mac = p.mac
		case p.macChanged:
			b.mac = nil
		}
		if b.mac == nil {
			unresolved = append(unresolved, p.bc.Address)
		}
		next[p.bc.Address] = b
		order = append(order, p.bc.Address)
	}
	for addr, b := range s.backends {
		if next[addr] == nil {
			delete(c.byCheck, b.checkID)
			c.sched.Remove(b.checkID)
		}
	}
	s.cfg, s.key, s.dp, s.backends, s.order = sc, key, dp, next, order
	c.svcs[sc.Name] = s
	spec := c.specLocked(s)
	c.mu.Unlock()
	for _, addr := range unresolved {
		c.queueResolve(sc.Name, addr)
	}

	_, applyErr := dp.ApplyService(key, spec)
	// A probe verdict may have been written between building spec and
	// ApplyService. Whatever ApplyService did with it, the controller's
	// idea of each backend's state becomes what the dataplane holds (read
	// back under c.mu, so no settle runs in between), and every backend
	// is settled against that: a verdict is never left undone.
	c.mu.Lock()
	c.readBackLocked(s)
	moves := c.settleLocked(s, nil, time.Time{}, time.Now())
	c.mu.Unlock()
	c.report(moves)
	if applyErr != nil {
		return fmt.Errorf("service %s: %w", sc.Name, applyErr)
	}
	for _, addr := range order {
		b := next[addr]
		ps := bcCheck(sc, b.cfg)
		c.mu.Lock()
		c.byCheck[b.checkID] = b
		same := reflect.DeepEqual(ps, b.spec)
		b.spec = ps
		c.mu.Unlock()
		if !same {
			if err := c.sched.Add(b.checkID, ps); err != nil {
				return fmt.Errorf("service %s: %w", sc.Name, err)
			}
		}
	}
	if !exists {
		c.rec.Add(recorder.Event{Kind: "service-added", Service: sc.Name, Reason: key.String()})
	}
	return nil
}

func bcCheck(sc config.Service, bc config.Backend) probe.Spec {
	return bc.Check.Spec(bc.Address, sc.Port)
}

func egress(sc config.Service, bc config.Backend) string {
	if bc.Port != "" {
		return bc.Port
	}
	return sc.Interface
}

// specLocked is the dataplane's view of s: backends with a known MAC.
func (c *Controller) specLocked(s *service) loader.ServiceSpec {
	spec := loader.ServiceSpec{TableSize: s.cfg.TableSize}
	if s.cfg.WhenAllDown == "pass" {
		spec.NoBackend = loader.PassNoBackend
	}
	for _, addr := range s.order {
		b := s.backends[addr]
		if b.mac == nil {
			b.inDP = false // leaving: no state writes for it from now
			continue
		}
		// One entering the dataplane becomes inDP at the read-back after
		// ApplyService: until the apply has added it, a settle writing its
		// state would only fail ("not configured").
		spec.Backends = append(spec.Backends, loader.BackendSpec{
			Addr: addr, MAC: b.mac, VLAN: b.cfg.VLAN, Port: b.cfg.Port, Weight: b.cfg.Weight, Group: b.cfg.Group, State: b.state,
		})
	}
	return spec
}

func (c *Controller) queueResolve(service string, addr netip.Addr) {
	c.mu.Lock()
	if c.unresolved[service] == nil {
		c.unresolved[service] = map[netip.Addr]bool{}
	}
	c.unresolved[service][addr] = true
	c.mu.Unlock()
	select {
	case c.kickResolve <- struct{}{}:
	default:
	}
}

// resolveLoop asks the network for the MACs of backends the neighbour table
// did not know (16 at a time), and re-applies a service when one answers;
// what stays silent is asked again every 2 s.
func (c *Controller) resolveLoop(ctx context.Context) {
	retry := time.NewTicker(2 * time.Second)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kickResolve:
		case <-retry.C:
		}
		type job struct {
			service, iface string
			addr           netip.Addr
		}
		var jobs []job
		c.mu.Lock()
		for name, addrs := range c.unresolved {
			s := c.svcs[name]
			for addr := range addrs {
				if s == nil || s.backends[addr] == nil || s.backends[addr].mac != nil {
					delete(addrs, addr)
					continue
				}
				jobs = append(jobs, job{name, egress(s.cfg, s.backends[addr].cfg), addr})
			}
		}
		c.mu.Unlock()
		found := map[string]bool{}
		var fmu sync.Mutex
		sem := make(chan struct{}, 16)
		var wg sync.WaitGroup
		for _, j := range jobs {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				rctx, cancel := context.WithTimeout(ctx, time.Second)
				hw, err := neigh.Resolve(rctx, j.iface, j.addr)
				cancel()
				if err != nil {
					c.log.Debug("backend MAC unresolved", "service", j.service, "backend", j.addr, "error", err)
					return
				}
				c.mu.Lock()
				if s := c.svcs[j.service]; s != nil && s.backends[j.addr] != nil {
					s.backends[j.addr].mac = hw
					delete(c.unresolved[j.service], j.addr)
				}
				c.mu.Unlock()
				fmu.Lock()
				found[j.service] = true
				fmu.Unlock()
			})
		}
		wg.Wait()
		for name := range found {
			c.reapplyResolved(ctx, name)
		}
	}
}

// reapplyResolved re-applies service name once some of its backends' MACs
// are known. The service is looked up under applyMu: a reload that ran
// while the resolver waited may have removed it or moved it to another
// key, and re-applying the config of before would put the old service
// back in the dataplane (and leave the new one unmanaged).
func (c *Controller) reapplyResolved(ctx context.Context, name string) {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	c.mu.Lock()
	s := c.svcs[name]
	var sc config.Service
	if s != nil {
		sc = s.cfg
	}
	c.mu.Unlock()
	if s == nil {
		return // removed by a reload meanwhile
	}
	if err := c.applyService(ctx, sc, true); err != nil {
		c.log.Warn("apply service after MAC resolution", "service", name, "error", err)
	} else {
		c.log.Info("backend MACs resolved", "service", name)
	}
}

// onProbe turns a check's verdict into the backend's dataplane state,
// through the operator's override and the service's policies.
func (c *Controller) onProbe(ev probe.Event) {
	c.mu.Lock()
	b := c.byCheck[ev.Check]
	if b == nil {
		c.mu.Unlock()
		return
	}
	changed := b.health != ev.To
	b.health = ev.To
	if ev.To == probe.Down && ev.Err != nil {
		b.reason = "check failed: " + ev.Err.Error()
	} else {
		b.reason = "check " + ev.To.String()
	}
	// Only a change of health is a transition: a check re-added by a
	// reload starts unknown and repeats the health the backend has.
	if s := b.svc.cfg.Flap; s.Transitions > 0 && changed {
		now := time.Now()
		b.flaps = append(b.flaps, now)
		for len(b.flaps) > 0 && now.Sub(b.flaps[0]) > s.Within {
			b.flaps = b.flaps[1:]
		}
		if len(b.flaps) >= s.Transitions {
			b.heldUntil = now.Add(s.HoldDown)
			b.flaps = nil
			b.reason = fmt.Sprintf("flapping: %d transitions within %v, held down for %v", s.Transitions, s.Within, s.HoldDown)
			time.AfterFunc(s.HoldDown, func() { c.reevaluate(b) })
		}
	}
	c.mu.Unlock()
	c.settle(b, ev.Detect, ev.Decide)
}

func (c *Controller) reevaluate(b *backend) {
	c.settle(b, time.Time{}, time.Now())
}

// settle computes what the dataplane should hold for b, writes it, and
// re-settles the rest of b's service when that moved anything.
func (c *Controller) settle(b *backend, detect, decide time.Time) {
	c.mu.Lock()
	moves := c.settleLocked(b.svc, b, detect, decide)
	c.mu.Unlock()
	c.report(moves)
}

// move is one outcome of settling a backend, reported after c.mu is let go.
type move struct {
	svc     string
	addr    netip.Addr
	want    loader.State
	kind    string // "panic", "keep-last": a policy refused to take it out
	reason  string
	detect  time.Time
	decide  time.Time
	applied time.Time // zero: nothing written
	err     error
	notify  config.Notify
}

// settleLocked writes what the dataplane should hold for first (nil: for
// every backend of s), and then, as long as a pass writes anything,
// settles s's other backends: the panic threshold and keep-last depend on
// how many backends are up, so a backend they kept up while failing must
// go once the others recover. Each pass only moves a failing backend down
// or a healthy one up, so the passes end; the bound is a safety net, not
// a limit ever reached. Writes take microseconds (one state word each).
func (c *Controller) settleLocked(s *service, first *backend, detect, decide time.Time) []move {
	if c.svcs[s.cfg.Name] != s {
		return nil // removed meanwhile
	}
	var moves []move
	try := func(b *backend, detect, decide time.Time, trigger bool) bool {
		want, kind, reason := c.desiredLocked(b)
		if want == b.state || !b.inDP {
			if trigger && (kind == "panic" || kind == "keep-last") {
				moves = append(moves, move{svc: s.cfg.Name, addr: b.cfg.Address, want: want, kind: kind, reason: reason, detect: detect, decide: decide})
			}
			return false
		}
		ch, err := c.writeStateLocked(s, b.cfg.Address, want)
		if err != nil {
			moves = append(moves, move{svc: s.cfg.Name, addr: b.cfg.Address, want: want, err: err})
			return false
		}
		b.state, b.since = want, ch.Returned
		moves = append(moves, move{svc: s.cfg.Name, addr: b.cfg.Address, want: want, kind: kind, reason: reason,
			detect: detect, decide: decide, applied: ch.Returned, notify: s.cfg.Notify})
		return true
	}
	again := first == nil
	if first != nil {
		if s.backends[first.cfg.Address] != first {
			return nil // removed meanwhile
		}
		again = try(first, detect, decide, true)
	}
	for pass := 0; again && pass <= len(s.order); pass++ {
		again = false
		now := time.Now()
		for _, addr := range s.order {
			if try(s.backends[addr], time.Time{}, now, first == nil && pass == 0) {
				again = true
			}
		}
	}
	return moves
}

func (c *Controller) writeStateLocked(s *service, addr netip.Addr, st loader.State) (loader.Change, error) {
	if c.writeState != nil {
		return c.writeState(s, addr, st)
	}
	return s.dp.SetBackendState(s.key, addr, st)
}

// report records, logs and hands to the notify hook what settleLocked did.
func (c *Controller) report(moves []move) {
	for _, m := range moves {
		switch {
		case m.err != nil:
			c.log.Error("apply backend state", "service", m.svc, "backend", m.addr, "error", m.err)
		case m.applied.IsZero():
			c.rec.Add(recorder.Event{Kind: m.kind, Service: m.svc, Backend: m.addr.String(), Reason: m.reason, Detect: m.detect, Decide: m.decide})
		default:
			e := c.rec.Add(recorder.Event{Kind: "backend-" + m.want.String(), Service: m.svc, Backend: m.addr.String(),
				Reason: m.reason, Detect: m.detect, Decide: m.decide, Apply: m.applied})
			c.log.Info("backend "+m.want.String(), "service", m.svc, "backend", m.addr, "reason", m.reason,
				"detect_to_decide", e.DetectToDecide, "decide_to_apply", e.DecideToApply)
			if m.notify.Command != "" {
				go c.runNotify(m.notify, e)
			}
		}
	}
}

// readBackLocked makes the controller's idea of each backend's state what
// the dataplane holds for s.
func (c *Controller) readBackLocked(s *service) {
	if c.svcs[s.cfg.Name] != s {
		return
	}
	held := s.dp.BackendStates(s.key)
	for _, addr := range s.order {
		b := s.backends[addr]
		st, ok := held[addr]
		b.inDP = ok
		if !ok {
			// Not in the dataplane (MAC unknown, or the apply failed): it
			// takes no traffic, so it is down, for Status and for the
			// panic threshold and keep-last, which count backends up.
			if b.state != loader.Down {
				b.state, b.since = loader.Down, time.Now()
			}
			continue
		}
		if st != b.state {
			c.log.Warn("dataplane holds another state than the controller thought: corrected", "service", s.cfg.Name, "backend", addr,
				"thought", b.state, "holds", st)
			b.state = st
		}
	}
}

// desiredLocked applies, in order: the operator's override, flap hold-down,
// the health verdict, then the service's panic threshold and keep-last
// policy, which may refuse to take a backend out.
func (c *Controller) desiredLocked(b *backend) (loader.State, string, string) {
	switch b.admin {
	case Disabled:
		return loader.Down, "", "disabled by operator"
	case Draining:
		return loader.Draining, "", "draining by operator"
	}
	if time.Now().Before(b.heldUntil) {
		return loader.Down, "", b.reason
	}
	if b.health == probe.Up {
		return loader.Up, "", b.reason
	}
	if b.health == probe.Unknown {
		return b.state, "", b.reason
	}
	s := b.svc
	if b.state == loader.Up {
		up, total := 0, len(s.backends)
		for _, o := range s.backends {
			if o.state == loader.Up {
				up++
			}
		}
		if t := s.cfg.PanicThreshold; t > 0 && (total-up+1)*100 > t*total {
			return loader.Up, "panic", fmt.Sprintf("%d of %d backends would be down, beyond the panic threshold of %d%%: not ejected (%s)", total-up+1, total, t, b.reason)
		}
		if s.cfg.WhenAllDown == "keep-last" && up == 1 {
			return loader.Up, "keep-last", "last healthy backend kept (when_all_down: keep-last): " + b.reason
		}
	}
	return loader.Down, "", b.reason
}

// ErrNotConfigured is wrapped by the errors of operator calls (SetAdmin,
// Live) that name a service or backend the running config does not have, so
// the API can tell "no such thing" from a failure to carry the call out.
var ErrNotConfigured = errors.New("not configured")

// SetAdmin applies an operator override to a backend of a service.
func (c *Controller) SetAdmin(service string, addr netip.Addr, a Admin) error {
	addr = addr.Unmap() // as the config keys it (::ffff:a.b.c.d is a.b.c.d)
	c.mu.Lock()
	s := c.svcs[service]
	if s == nil {
		c.mu.Unlock()
		return fmt.Errorf("service %q: %w", service, ErrNotConfigured)
	}
	b := s.backends[addr]
	if b == nil {
		c.mu.Unlock()
		return fmt.Errorf("service %q: backend %s: %w", service, addr, ErrNotConfigured)
	}
	b.admin = a
	c.setOverrideLocked(service, addr, a)
	c.mu.Unlock()
	// Saved before it is applied: a crash in between leaves the override
	// to be applied at the next start, never a backend back in rotation.
	err := c.saveOverrides()
	c.mu.Lock()
	moves := c.settleLocked(b.svc, b, time.Time{}, time.Now())
	c.mu.Unlock()
	c.report(moves)
	// A failed dataplane write is the operator's to know, not only the
	// log's: the override stays and applies at the backend's next settle.
	var werr error
	for _, m := range moves {
		if m.err != nil && m.addr == addr {
			werr = fmt.Errorf("service %q: backend %s: %s recorded but not applied: %w", service, addr, adminName(a), m.err)
		}
	}
	if err != nil {
		return errors.Join(werr, fmt.Errorf("service %q: backend %s: %s applied but not saved (lost on restart): %w", service, addr, adminName(a), err))
	}
	return werr
}

// BackendStatus is one backend as the daemon sees it.
type BackendStatus struct {
	Address string    `json:"address"`
	MAC     string    `json:"mac"`
	Weight  uint32    `json:"weight"`
	Group   uint8     `json:"group"`
	Health  string    `json:"health"`
	State   string    `json:"state"`
	Admin   string    `json:"admin,omitempty"`
	Reason  string    `json:"reason"`
	Since   time.Time `json:"since"`
}

// ServiceStatus is one service as the daemon sees it.
type ServiceStatus struct {
	Name      string          `json:"name"`
	Key       string          `json:"key"`
	Interface string          `json:"interface"`
	Backends  []BackendStatus `json:"backends"`
}

// Status lists services in config order.
func (c *Controller) Status() []ServiceStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []ServiceStatus
	if c.cfg == nil {
		return out
	}
	for _, sc := range c.cfg.Services {
		s := c.svcs[sc.Name]
		if s == nil {
			continue
		}
		ss := ServiceStatus{Name: sc.Name, Key: s.key.String(), Interface: sc.Interface}
		for _, addr := range s.order {
			b := s.backends[addr]
			mac := ""
			if b.mac != nil {
				mac = b.mac.String()
			}
			ss.Backends = append(ss.Backends, BackendStatus{Address: addr.String(), MAC: mac, Weight: b.cfg.Weight, Group: b.cfg.Group,
				Health: b.health.String(), State: b.state.String(), Admin: string(b.admin), Reason: b.reason, Since: b.since})
		}
		out = append(out, ss)
	}
	return out
}

// Dataplane returns the dataplane of a service, for counters and flows.
func (c *Controller) Dataplane(service string) (*loader.Dataplane, loader.ServiceKey, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.svcs[service]
	if s == nil {
		return nil, loader.ServiceKey{}, false
	}
	return s.dp, s.key, true
}

// Interfaces lists the open dataplanes by interface name.
func (c *Controller) Interfaces() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := make([]string, 0, len(c.dps))
	for n := range c.dps {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
