// keepbitd is the Keepbit daemon: it reads keepbit.yaml, probes every
// backend and keeps the XDP dataplane pointed at the healthy ones.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/cilium/ebpf/rlimit"

	"github.com/keepbit/keepbit/internal/api"
	"github.com/keepbit/keepbit/internal/apiclient"
	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/control"
	"github.com/keepbit/keepbit/internal/drill"
	"github.com/keepbit/keepbit/internal/metrics"
	"github.com/keepbit/keepbit/internal/ownership"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/internal/sdnotify"
	"github.com/keepbit/keepbit/internal/version"
	"github.com/keepbit/keepbit/loader"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "keepbitd:", err)
		os.Exit(1)
	}
}

// settleMax bounds how long a starting node waits for its backends' first
// check verdicts before announcing anyway.
const settleMax = 10 * time.Second

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keepbitd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "/etc/keepbit/keepbit.yaml", `config file; "default" runs the embedded demo config`)
	checkOnly := fs.String("check-config", "", "validate `FILE` and exit without touching anything")
	againstRunning := fs.Bool("against-running", false, "with --check-config: also list what a reload of FILE would change in the running keepbitd (asked over its API socket)")
	printDefault := fs.Bool("print-default-config", false, "print the embedded default config and exit")
	detach := fs.Bool("detach", false, "detach the forwarder from every interface in the config and exit: forwarding STOPS")
	pinRoot := fs.String("pin-root", "", "override node.pin_root (to run several nodes on one host)")
	stateDir := fs.String("state-dir", "", "override node.state_dir (to run several nodes on one host)")
	apiSocket := fs.String("api-socket", "", "override api.socket")
	metricsListen := fs.String("metrics", "", `override metrics.listen ("off" disables)`)
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		_, err := fmt.Fprintln(stdout, version.Get())
		return err
	}
	if *printDefault {
		_, err := stdout.Write(config.DefaultYAML())
		return err
	}
	// overrides applies the command line over a config, the same for the
	// running config and for a candidate that is diffed against it.
	overrides := func(cfg *config.Config) (*config.Config, error) {
		if *pinRoot != "" {
			cfg.Node.PinRoot = *pinRoot
		}
		if *stateDir != "" {
			if !filepath.IsAbs(*stateDir) {
				return nil, fmt.Errorf("--state-dir: %q is not an absolute path", *stateDir)
			}
			cfg.Node.StateDir = *stateDir
		}
		if *apiSocket != "" {
			cfg.API.Socket = *apiSocket
		}
		if *metricsListen != "" {
			cfg.Metrics.Listen = *metricsListen
		}
		return cfg, nil
	}
	if *checkOnly != "" {
		cfg, err := config.Load(*checkOnly)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: ok, %d interfaces, %d services\n", *checkOnly, len(cfg.Interfaces), len(cfg.Services))
		if !*againstRunning {
			return nil
		}
		if cfg, err = overrides(cfg); err != nil {
			return err
		}
		return diffRunning(ctx, cfg.API.Socket, *checkOnly, stdout)
	}
	load := func() (*config.Config, error) {
		var cfg *config.Config
		var err error
		if *configPath == "default" {
			cfg, err = config.Default()
		} else {
			cfg, err = config.Load(*configPath)
		}
		if err != nil {
			return nil, err
		}
		return overrides(cfg)
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	if *detach {
		var errs []error
		for _, ifc := range cfg.Interfaces {
			if err := loader.RemovePinned(cfg.Node.PinRoot, ifc.Name); err != nil {
				errs = append(errs, fmt.Errorf("interface %s: %w", ifc.Name, err))
				continue
			}
			log.Warn("forwarder detached", "interface", ifc.Name)
		}
		return errors.Join(errs...)
	}

	// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (a no-op on
	// later ones); then one sentence naming what this kernel lacks, if
	// anything, rather than a verifier log.
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("lift the memlock limit for BPF maps: %w", err)
	}
	if err := loader.CheckKernel(); err != nil {
		return err
	}
	// One daemon per dataplane: a second one must not adopt, and rewrite,
	// the maps a live one writes. The locks go with the process.
	for _, ifc := range cfg.Interfaces {
		l, err := loader.LockPinDir(cfg.Node.PinRoot, ifc.Name)
		if err != nil {
			return fmt.Errorf("interface %s: %w", ifc.Name, err)
		}
		defer l.Release()
	}
	sd, err := sdnotify.FromEnv(os.Getenv, os.Getpid())
	if err != nil {
		return err
	}

	rec := recorder.New(4096)
	ctl, err := control.New(ctx, cfg, log, rec)
	if err != nil {
		return err
	}
	defer ctl.Close()
	// VIP ownership: VRRP (one node of a segment holds a VIP) and BGP
	// (every node announces it), both asking the controller's Health.
	vr := ownership.NewVRRP(ctx, log, rec, ctl, ctl)
	if err := ctl.Own(ctx, vr); err != nil {
		return err
	}
	go vr.Run(ctx)
	// Flow sharing before BGP: a node learns the other nodes' flows
	// before its routes draw any of them here.
	share := ownership.NewFlowShare(ctx, log, rec, ctl)
	share.SetReady(func(ctx context.Context) bool { return ctl.WaitSettled(ctx, settleMax) })
	if err := ctl.Own(ctx, share); err != nil {
		return err
	}
	bg := ownership.NewBGP(log, rec, ctl)
	// A node draws traffic only once it forwards like its peers: the other
	// nodes' flows learned, and every backend's first check verdict in (a
	// node announcing with backends still "waiting for checks" has another
	// table than its peers and resets the flows ECMP brings it).
	warm := make(chan struct{})
	go func() {
		defer close(warm)
		select {
		case <-share.Warm():
		case <-ctx.Done():
			return
		}
		if !ctl.WaitSettled(ctx, settleMax) {
			log.Warn("announcing before every backend has a check verdict", "waited", settleMax)
		}
	}()
	bg.SetWarmUp(warm)
	if err := ctl.Own(ctx, bg); err != nil {
		return err
	}
	go bg.Run(ctx)

	reload := func(ctx context.Context) error {
		next, err := load()
		if err != nil {
			// The running config keeps serving.
			log.Error("reload refused", "error", err)
			rec.Add(recorder.Event{Kind: "reload-failed", Reason: err.Error()})
			return err
		}
		// What the BGP speaker is made of is fixed at start: refused
		// before anything is applied.
		if err := bg.CheckReload(next); err != nil {
			log.Error("reload refused", "error", err)
			rec.Add(recorder.Event{Kind: "reload-failed", Reason: err.Error()})
			return err
		}
		if err := ctl.Reload(ctx, next); err != nil {
			if errors.Is(err, control.ErrRestartRequired) || errors.Is(err, control.ErrDetachRequired) {
				log.Error("reload refused", "error", err)
				rec.Add(recorder.Event{Kind: "reload-failed", Reason: err.Error()})
				return err
			}
			log.Error("reload incomplete", "error", err)
			return err
		}
		log.Info("config reloaded", "generation", ctl.Generation())
		// The old config and the reload's work are garbage now.
		debug.FreeOSMemory()
		if err := sd.Send(status(ctl.Generation())); err != nil {
			log.Warn("service manager not told", "error", err)
		}
		return nil
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_ = reload(ctx)
			}
		}
	}()
	// Drills take a backend or this node out on purpose and measure it.
	drills := drill.New(ctl, drill.NodeOwners{VRRP: vr, BGP: bg}, rec, log, drill.Options{})
	// Scheduled drills (`drills:`) follow the config like the VIP owners.
	if err := ctl.Own(ctx, drill.NewSchedule(ctx, drills, ctl, log)); err != nil {
		return err
	}
	if cfg.Metrics.Listen != "off" {
		m := metrics.New(ctl, vr)
		m.WatchDrills(drills)
		m.WatchPredict(ctl)
		m.WatchPassive(ctl)
		m.WatchKernelMemory(ctl)
		m.WatchBGP(bg)
		m.WatchFlowShare(share, ctl)
		ctl.ProbeObserver = m.ObserveProbe
		go m.Follow(ctx, rec)
		go func() {
			if err := m.Serve(ctx, cfg.Metrics.Listen); err != nil {
				log.Error("metrics stopped", "listen", cfg.Metrics.Listen, "error", err)
			}
		}()
	}
	diff := func(name string, body []byte) ([]config.Change, error) {
		cand, err := config.Parse(name, body)
		if err != nil {
			return nil, err
		}
		if cand, err = overrides(cand); err != nil {
			return nil, err
		}
		return config.Diff(ctl.RunningConfig(), cand), nil
	}
	srv := &api.Daemon{Control: ctl, VRRP: vr, BGP: bg, FlowShare: share, Drills: drills, Events: rec, Reload: reload, Diff: diff, Started: time.Now(), Log: log}
	go func() {
		if err := srv.Serve(ctx, cfg.API.Socket); err != nil {
			log.Error("api stopped", "socket", cfg.API.Socket, "error", err)
		}
	}()
	log.Info("keepbitd running", "config", *configPath, "interfaces", ctl.Interfaces(), "version", version.Get().Version)
	// Go's default GC target lets the heap grow to twice what is live; at
	// 16,000 backends that was 60 MiB of the daemon's RSS. Running, the
	// daemon collects at +50%, which costs little (the steady allocation
	// rate is the probes'); the start keeps the default, as it allocates
	// most. GOGC in the environment wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	// Parsing the config and building every table made garbage that the
	// heap would otherwise keep mapped until it is reused.
	debug.FreeOSMemory()
	// Ready: every dataplane is attached (or adopted) and the first
	// config applied. The watchdog is fed only while the event loop
	// answers, so a wedged loop gets the daemon restarted (forwarding
	// goes on meanwhile: the program stays attached).
	if err := sd.Send("READY=1\n" + status(ctl.Generation())); err != nil {
		log.Warn("service manager not told", "error", err)
	}
	go func() {
		if err := sd.Watchdog(ctx, ctl.Alive); err != nil {
			log.Error("watchdog stopped", "error", err)
		}
	}()
	err = ctl.Run(ctx)
	log.Info("keepbitd stopping; the dataplane keeps forwarding")
	_ = sd.Send("STOPPING=1\nSTATUS=stopping; the dataplane keeps forwarding")
	// BGP leaves before the process does: with withdraw_on_stop the routes
	// go first and the sessions stay for drain_hold, so the flows routers
	// send until they have processed the withdrawal are still forwarded
	// (the XDP program is never detached by a stop).
	bg.Stop(context.Background())
	return err
}

// diffRunning asks the keepbitd serving socket what a reload of file
// would change, and prints it.
func diffRunning(ctx context.Context, socket, file string, out io.Writer) error {
	body, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	changes, err := apiclient.New(socket).Diff(ctx, file, body)
	if err != nil {
		return fmt.Errorf("--against-running: %w", err)
	}
	return config.WriteChanges(out, changes)
}

// status is the STATUS= line systemctl status shows.
func status(generation int) string {
	return fmt.Sprintf("STATUS=forwarding, config generation %d", generation)
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	level := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}[c.Level]
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
