package ownership

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/flowshare"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
)

// Flows is what flow sharing needs from the controller: the dataplanes'
// flow reports, a way to install other nodes' flows, a snapshot for a
// joining node, and the program's settings.
type Flows interface {
	SetFlowSharing(f loader.FlowSharing) error
	ReadFlowReports(ctx context.Context, fn func([]loader.FlowReport)) error
	ShareFlows(fs []loader.SharedFlow) (int, error)
	ShareableFlows(fn func([]loader.FlowReport)) error
}

// FlowShare runs node-to-node flow sharing when the config has a
// flow_sharing section: flows this node reports go to the other nodes,
// theirs go into this node's shared_flows map, and a node that starts
// learns the others' flows before its routes are announced (Warm). It sits
// beside the VIP owners because it is what makes a VIP moving between
// nodes keep its connections.
type FlowShare struct {
	log   *slog.Logger
	rec   *recorder.Recorder
	flows Flows
	base  context.Context

	// newNode builds the transport (a test replaces it).
	newNode func(o flowshare.Options) (shareNode, error)
	// ready returns once the dataplanes hold what the config lists (see
	// SetReady); nil: at once.
	ready func(ctx context.Context) bool

	mu     sync.Mutex
	cfg    *config.FlowSharing
	key    []byte
	node   shareNode
	cancel context.CancelFunc
	done   chan struct{}
	warm   chan struct{}
	warmed bool
	report flowshare.WarmReport
	// skipped counts received flows no dataplane took (a VIP this node
	// does not serve, a backend it does not have).
	skipped uint64
}

// shareNode is the part of *flowshare.Node the owner uses.
type shareNode interface {
	Run(ctx context.Context) error
	Submit(fs []flowshare.Flow) int
	WaitWarm(ctx context.Context) (flowshare.WarmReport, error)
	SetPeers(peers []netip.AddrPort)
	Stats() flowshare.Stats
	Close() error
}

// NewFlowShare returns an owner with nothing running; Reload starts
// sharing when the config asks for it. ctx bounds everything it starts.
func NewFlowShare(ctx context.Context, log *slog.Logger, rec *recorder.Recorder, flows Flows) *FlowShare {
	return &FlowShare{
		log: log.With("component", "flowshare"), rec: rec, flows: flows, base: ctx,
		newNode: func(o flowshare.Options) (shareNode, error) { return flowshare.New(o) },
		warm:    make(chan struct{}),
	}
}

// SetReady makes a starting node wait for ready before it asks the other
// nodes for their flows: a shared flow is written only for a backend the
// dataplane already holds, so a snapshot taken in before the backends are
// in (MACs resolved, first check verdicts) would be skipped. Call it
// before the first Reload.
func (o *FlowShare) SetReady(ready func(ctx context.Context) bool) {
	o.mu.Lock()
	o.ready = ready
	o.mu.Unlock()
}

// Warm is closed once this node has learned the other nodes' flows (or
// the warm-up timed out), and at the first Reload without flow sharing:
// the BGP owner announces nothing before (BGP.SetWarmUp).
func (o *FlowShare) Warm() <-chan struct{} { return o.warm }

func (o *FlowShare) setWarm(r flowshare.WarmReport) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.report = r
	if !o.warmed {
		o.warmed = true
		close(o.warm)
	}
}

// restartNeeded: what a running node is made of (its socket and key).
func restartNeeded(a, b *config.FlowSharing, keyA, keyB []byte) bool {
	if a == nil || b == nil {
		return true
	}
	if a.Port != b.Port || a.Listen != b.Listen || a.MaxRate != b.MaxRate ||
		a.BatchInterval != b.BatchInterval || a.WarmupTimeout != b.WarmupTimeout ||
		string(keyA) != string(keyB) {
		return true
	}
	am, bm := a.Multicast, b.Multicast
	if (am == nil) != (bm == nil) {
		return true
	}
	return am != nil && *am != *bm
}

// Reload follows the flow_sharing section: off, started, changed in place
// (peers, the program's ages), or restarted (socket, key, rate).
func (o *FlowShare) Reload(ctx context.Context, cfg *config.Config) error {
	fs := cfg.FlowSharing
	if fs == nil {
		o.stop()
		o.setWarm(flowshare.WarmReport{})
		if err := o.flows.SetFlowSharing(loader.FlowSharing{}); err != nil {
			return fmt.Errorf("flow sharing off: %w", err)
		}
		return nil
	}
	key, err := flowshare.LoadKey(fs.KeyFile)
	if err != nil {
		return fmt.Errorf("flow_sharing.key_file: %w", err)
	}
	// The program's settings first: reports and shared lookups follow
	// the new ages even when the node is kept.
	if err := o.flows.SetFlowSharing(loader.FlowSharing{Enabled: true, LongLived: fs.LongLivedAfter, Refresh: fs.Refresh}); err != nil {
		return fmt.Errorf("flow sharing on: %w", err)
	}
	o.mu.Lock()
	running := o.node != nil && !restartNeeded(o.cfg, fs, o.key, key)
	if running {
		o.node.SetPeers(slices.Clone(fs.PeerAddrs))
		o.cfg = fs
		o.mu.Unlock()
		return nil
	}
	o.mu.Unlock()
	o.stop()
	return o.start(fs, key)
}

func (o *FlowShare) options(fs *config.FlowSharing, key []byte) flowshare.Options {
	opts := flowshare.Options{
		Key: key, MaxRate: fs.MaxRate, BatchInterval: fs.BatchInterval, WarmupTimeout: fs.WarmupTimeout,
		Sink: shareSink{o}, Snapshot: shareSnapshot{o.flows}, Log: o.log,
	}
	listen := fs.Listen
	if !listen.IsValid() {
		listen = netip.IPv6Unspecified()
	}
	opts.Listen = netip.AddrPortFrom(listen, fs.Port)
	if m := fs.Multicast; m != nil {
		opts.Multicast = netip.AddrPortFrom(m.Group, fs.Port)
		opts.Interface = m.Interface
	} else {
		opts.Peers = slices.Clone(fs.PeerAddrs)
	}
	return opts
}

func (o *FlowShare) start(fs *config.FlowSharing, key []byte) error {
	node, err := o.newNode(o.options(fs, key))
	if err != nil {
		return fmt.Errorf("flow sharing: %w", err)
	}
	ctx, cancel := context.WithCancel(o.base)
	done := make(chan struct{})
	o.mu.Lock()
	o.cfg, o.key, o.node, o.cancel, o.done = fs, key, node, cancel, done
	o.mu.Unlock()
	o.rec.Add(recorder.Event{Kind: "flowshare-start", Reason: fmt.Sprintf("port %d, %d peers", fs.Port, len(fs.PeerAddrs))})
	var wg sync.WaitGroup
	wg.Add(3)
	o.mu.Lock()
	ready := o.ready
	o.mu.Unlock()
	readyC := make(chan struct{})
	go func() {
		defer wg.Done()
		// Run sends the sync requests: only once the dataplanes can take
		// the answers.
		if ready != nil && !ready(ctx) && ctx.Err() == nil {
			o.log.Warn("flow sharing: asking for the other nodes' flows before every backend is in the dataplane")
		}
		close(readyC)
		if err := node.Run(ctx); err != nil && ctx.Err() == nil {
			o.log.Error("flow sharing stopped", "error", err)
		}
	}()
	go func() {
		defer wg.Done()
		// Reports are submitted as they come; Submit never blocks, so a
		// slow network costs dropped reports (counted), never the
		// ring buffer reader.
		err := o.flows.ReadFlowReports(ctx, func(rs []loader.FlowReport) { node.Submit(toShared(rs)) })
		if err != nil && ctx.Err() == nil {
			o.log.Error("flow reports stopped", "error", err)
		}
	}()
	go func() {
		defer wg.Done()
		select {
		case <-readyC:
		case <-ctx.Done():
			return
		}
		started := time.Now()
		r, err := node.WaitWarm(ctx)
		if err != nil {
			return // stopped before warm: the next start warms
		}
		why := fmt.Sprintf("%d peers answered in %v", len(r.Peers)-len(r.Missing), time.Since(started).Round(time.Millisecond))
		if len(r.Missing) > 0 {
			why += fmt.Sprintf(", no answer from %v", r.Missing)
		}
		o.log.Info("flow sharing warm", "took", r.Took, "answered", len(r.Peers)-len(r.Missing), "missing", r.Missing, "timed_out", r.TimedOut)
		o.rec.Add(recorder.Event{Kind: "flowshare-warm", Reason: why})
		o.setWarm(r)
	}()
	go func() {
		wg.Wait()
		node.Close()
		close(done)
	}()
	return nil
}

// stop ends a running node and waits for its goroutines.
func (o *FlowShare) stop() {
	o.mu.Lock()
	cancel, done := o.cancel, o.done
	o.node, o.cancel, o.done, o.cfg = nil, nil, nil, nil
	o.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// Close stops sharing; the dataplanes keep the flows they learned.
func (o *FlowShare) Close() { o.stop() }

// FlowShareStatus is what `keepbitctl flowshare` and the metrics show.
type FlowShareStatus struct {
	Enabled bool
	Warm    bool
	Warmup  flowshare.WarmReport
	Node    flowshare.Stats
	// Skipped: received flows no dataplane took.
	Skipped uint64
}

// Status reports the transport's counters and the warm-up.
func (o *FlowShare) Status() FlowShareStatus {
	o.mu.Lock()
	defer o.mu.Unlock()
	st := FlowShareStatus{Enabled: o.node != nil, Warm: o.warmed, Warmup: o.report, Skipped: o.skipped}
	if o.node != nil {
		st.Node = o.node.Stats()
	}
	return st
}

// shareSink writes received flows into the dataplanes.
type shareSink struct{ o *FlowShare }

func (s shareSink) ShareFlows(fs []flowshare.Flow) (int, error) {
	in := make([]loader.SharedFlow, len(fs))
	for i, f := range fs {
		in[i] = loader.SharedFlow{
			Service: loader.ServiceKey{VIP: f.VIP, Port: f.Port, Proto: loader.Proto(f.Proto)},
			Client:  f.Client, Backend: f.Backend,
		}
	}
	n, err := s.o.flows.ShareFlows(in)
	if skipped := len(fs) - n; skipped > 0 {
		s.o.mu.Lock()
		s.o.skipped += uint64(skipped)
		s.o.mu.Unlock()
	}
	return n, err
}

// shareSnapshot answers a joining node with the flows worth sharing.
type shareSnapshot struct{ flows Flows }

func (s shareSnapshot) Snapshot(fn func([]flowshare.Flow)) error {
	return s.flows.ShareableFlows(func(rs []loader.FlowReport) { fn(toShared(rs)) })
}

func toShared(rs []loader.FlowReport) []flowshare.Flow {
	out := make([]flowshare.Flow, len(rs))
	for i, r := range rs {
		out[i] = flowshare.Flow{VIP: r.Service.VIP, Port: r.Service.Port, Proto: uint8(r.Service.Proto), Client: r.Client, Backend: r.Backend}
	}
	return out
}
