// Package control is Keepbit's reconcile loop: config and probe events in,
// dataplane writes and flight-recorder events out. It is the only writer
// of the dataplane.
package control

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// Controller owns the dataplanes of the configured interfaces.
type Controller struct {
	log     *slog.Logger
	rec     *recorder.Recorder
	sched   *probe.Scheduler
	results chan probe.Result
	// ping is answered by Run's loop (Alive): a watchdog's proof that
	// verdicts are still being applied.
	ping chan chan struct{}

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

	// owners carry the VIPs (VRRP, BGP): reloaded after the services,
	// closed before the dataplanes. Guarded by applyMu.
	owners []Owner

	// changed is closed (and replaced) when a service's up-ness may have
	// changed; see Changed.
	changedMu sync.Mutex
	changed   chan struct{}

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
	// incomplete: the last apply failed part way (the dataplane's write,
	// or a backend's check); the next reload applies the service again
	// even if its config did not change.
	incomplete bool
}

type backend struct {
	svc *service
	// cfg points into the running config's backends (never modified; a
	// reload points it at the new config's): a copy per backend was a
	// tenth of the daemon's memory at 16,000 backends.
	cfg *config.Backend
	// checked and checkedPort are what the scheduler's check was made
	// from (nil: none yet); a pointer, like cfg, not a copy of the spec.
	checked     *config.Backend
	checkedPort uint16
	checkID     string
	mac         net.HardwareAddr
	inDP        bool // in the dataplane's spec (needs a MAC)
	health      probe.State
	state       loader.State // what the dataplane holds
	admin       Admin
	reason      string
	since       time.Time
	flaps       []time.Time
	heldUntil   time.Time
	pred        *predictState // predictive detection (predict.go); nil when off
	passive     *passiveState // passive detection (passive.go); nil until sampled
}

// New opens (or adopts) the dataplane of every interface and applies cfg.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger, rec *recorder.Recorder) (*Controller, error) {
	results := make(chan probe.Result, 4096)
	c := &Controller{
		log: log, rec: rec, sched: probe.NewScheduler(results), results: results, ping: make(chan chan struct{}),
		dps: map[string]*loader.Dataplane{}, svcs: map[string]*service{}, byCheck: map[string]*backend{},
		unresolved: map[string]map[netip.Addr]bool{}, kickResolve: make(chan struct{}, 1),
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
	go c.passiveLoop(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-c.sched.Events():
			c.onProbe(ev)
		case reply := <-c.ping:
			close(reply)
		case r := <-c.results:
			c.onResult(ctx, r)
			c.passiveResult(r)
			if c.ProbeObserver != nil {
				// A service's name may hold "|"; an address never does.
				i := strings.LastIndexByte(r.Check, '|')
				service, backend := r.Check[:max(i, 0)], r.Check[i+1:]
				c.ProbeObserver(service, backend, r)
			}
		}
	}
}

// Alive returns once Run's loop has answered, or ctx's error: a loop
// stuck in a write or a lock does not answer, and the service manager's
// watchdog (sdnotify) then sees no keep-alive.
func (c *Controller) Alive(ctx context.Context) error {
	reply := make(chan struct{})
	select {
	case c.ping <- reply:
	case <-ctx.Done():
		return fmt.Errorf("event loop did not answer: %w", ctx.Err())
	}
	<-reply
	return nil
}

// Owner is a way of carrying the VIPs (internal/ownership: VRRP, BGP). It
// follows the config after the services do, and is closed before the
// dataplanes are released.
type Owner interface {
	Reload(ctx context.Context, cfg *config.Config) error
	Close()
}

// Own hands o the running config now and at every reload from now on,
// and closes it in Close. Its error is the first Reload's.
func (c *Controller) Own(ctx context.Context, o Owner) error {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	c.owners = append(c.owners, o)
	c.mu.Lock()
	cfg := c.cfg
	c.mu.Unlock()
	if cfg == nil {
		return nil
	}
	return o.Reload(ctx, cfg)
}

// Close closes the owners (a VRRP master resigns, so a backup takes the
// VIPs at once) and releases the dataplanes without detaching them.
func (c *Controller) Close() {
	c.applyMu.Lock()
	owners := c.owners
	c.owners = nil
	c.applyMu.Unlock()
	for _, o := range owners {
		o.Close()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, dp := range c.dps {
		if err := dp.Close(); err != nil {
			c.log.Warn("close dataplane", "interface", name, "error", err)
		}
	}
	c.dps = map[string]*loader.Dataplane{}
}

// checkSpec is the check the scheduler was given for b.
func (b *backend) checkSpec() (probe.Spec, bool) {
	if b.checked == nil {
		return probe.Spec{}, false
	}
	return checkOf(b.checked, b.checkedPort), true
}
