package ownership

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/flowshare"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
)

// fakeFlows is the controller side: it records settings and shared
// flows, and hands out the reports a test queues.
type fakeFlows struct {
	mu       sync.Mutex
	settings []loader.FlowSharing
	shared   []loader.SharedFlow
	reports  chan []loader.FlowReport
}

func (f *fakeFlows) SetFlowSharing(s loader.FlowSharing) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.settings = append(f.settings, s)
	return nil
}

func (f *fakeFlows) ReadFlowReports(ctx context.Context, fn func([]loader.FlowReport)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case rs := <-f.reports:
			fn(rs)
		}
	}
}

func (f *fakeFlows) ShareFlows(fs []loader.SharedFlow) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shared = append(f.shared, fs...)
	return len(fs) - 1, nil // the last one is "not served here"
}

func (f *fakeFlows) ShareableFlows(fn func([]loader.FlowReport)) error { return nil }

// fakeNode stands in for flowshare.Node.
type fakeNode struct {
	opts      flowshare.Options
	mu        sync.Mutex
	submitted []flowshare.Flow
	peers     [][]netip.AddrPort
	running   chan struct{}
	warm      chan struct{}
	closed    bool
}

func (n *fakeNode) Run(ctx context.Context) error {
	close(n.running)
	<-ctx.Done()
	return nil
}
func (n *fakeNode) Submit(fs []flowshare.Flow) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.submitted = append(n.submitted, fs...)
	return len(fs)
}
func (n *fakeNode) WaitWarm(ctx context.Context) (flowshare.WarmReport, error) {
	select {
	case <-n.warm:
		return flowshare.WarmReport{}, nil
	case <-ctx.Done():
		return flowshare.WarmReport{}, ctx.Err()
	}
}
func (n *fakeNode) SetPeers(p []netip.AddrPort) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.peers = append(n.peers, p)
}
func (n *fakeNode) Stats() flowshare.Stats { return flowshare.Stats{} }
func (n *fakeNode) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	return nil
}

func shareConfig(t *testing.T, key string, rate int, peers ...string) *config.Config {
	t.Helper()
	fs := &config.FlowSharing{Port: 7785, KeyFile: key, MaxRate: rate, LongLivedAfter: 2 * time.Second, Refresh: 5 * time.Second}
	for _, p := range peers {
		fs.PeerAddrs = append(fs.PeerAddrs, netip.MustParseAddrPort(p))
	}
	return &config.Config{FlowSharing: fs}
}

func TestFlowShareOwner(t *testing.T) {
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	flows := &fakeFlows{reports: make(chan []loader.FlowReport, 4)}
	o := NewFlowShare(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), recorder.New(16), flows)
	var nodes []*fakeNode
	o.newNode = func(opts flowshare.Options) (shareNode, error) {
		n := &fakeNode{opts: opts, running: make(chan struct{}), warm: make(chan struct{})}
		nodes = append(nodes, n)
		return n, nil
	}
	release := make(chan struct{})
	o.SetReady(func(ctx context.Context) bool { <-release; return true })
	defer o.Close()

	if err := o.Reload(ctx, shareConfig(t, key, 100, "10.0.0.2:7785")); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || !slices.Equal(nodes[0].opts.Peers, []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:7785")}) || nodes[0].opts.MaxRate != 100 {
		t.Fatalf("node options: %+v", nodes)
	}
	if got := flows.settings[len(flows.settings)-1]; got != (loader.FlowSharing{Enabled: true, LongLived: 2 * time.Second, Refresh: 5 * time.Second}) {
		t.Errorf("dataplane settings %+v", got)
	}
	// Not ready: the node must not ask the others for flows yet.
	select {
	case <-nodes[0].running:
		t.Fatal("node ran before the dataplanes were ready")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-nodes[0].running
	select {
	case <-o.Warm():
		t.Fatal("warm before the warm-up")
	default:
	}
	close(nodes[0].warm)
	select {
	case <-o.Warm():
	case <-time.After(5 * time.Second):
		t.Fatal("warm never closed after the warm-up")
	}

	// A report reaches the node converted; received flows reach the
	// dataplanes converted, and what none took is counted.
	vip := netip.MustParseAddr("192.0.2.10")
	flows.reports <- []loader.FlowReport{{Service: loader.ServiceKey{VIP: vip, Port: 80, Proto: loader.TCP}, Client: netip.MustParseAddrPort("198.51.100.1:4000"), Backend: netip.MustParseAddr("10.1.0.1"), Reason: loader.FlowReportReason(1)}}
	want := flowshare.Flow{VIP: vip, Port: 80, Proto: uint8(loader.TCP), Client: netip.MustParseAddrPort("198.51.100.1:4000"), Backend: netip.MustParseAddr("10.1.0.1")}
	deadline := time.Now().Add(5 * time.Second)
	for {
		nodes[0].mu.Lock()
		got := slices.Clone(nodes[0].submitted)
		nodes[0].mu.Unlock()
		if len(got) == 1 {
			if got[0] != want {
				t.Fatalf("submitted %+v, want %+v", got[0], want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("report never submitted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	n, err := nodes[0].opts.Sink.ShareFlows([]flowshare.Flow{want, want})
	if err != nil || n != 1 {
		t.Fatalf("sink: %d, %v", n, err)
	}
	if flows.shared[0] != (loader.SharedFlow{Service: loader.ServiceKey{VIP: vip, Port: 80, Proto: loader.TCP}, Client: want.Client, Backend: want.Backend}) {
		t.Errorf("shared %+v", flows.shared[0])
	}
	if st := o.Status(); st.Skipped != 1 || !st.Warm || !st.Enabled {
		t.Errorf("status %+v", st)
	}

	// Peers change in place; a rate change restarts the node; no
	// flow_sharing stops it and turns the program's part off.
	if err := o.Reload(ctx, shareConfig(t, key, 100, "10.0.0.3:7785")); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || len(nodes[0].peers) != 1 || nodes[0].peers[0][0] != netip.MustParseAddrPort("10.0.0.3:7785") {
		t.Fatalf("peer change: %d nodes, peers %v", len(nodes), nodes[0].peers)
	}
	if err := o.Reload(ctx, shareConfig(t, key, 200, "10.0.0.3:7785")); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || !nodes[0].closed {
		t.Fatalf("rate change: %d nodes, first closed %v", len(nodes), nodes[0].closed)
	}
	if err := o.Reload(ctx, &config.Config{}); err != nil {
		t.Fatal(err)
	}
	if !nodes[1].closed || flows.settings[len(flows.settings)-1].Enabled {
		t.Errorf("off: node closed %v, settings %+v", nodes[1].closed, flows.settings[len(flows.settings)-1])
	}
	// A bad key file is refused naming the field.
	bad := shareConfig(t, filepath.Join(t.TempDir(), "missing"), 100)
	if err := o.Reload(ctx, bad); err == nil || !strings.Contains(err.Error(), "flow_sharing.key_file") {
		t.Errorf("missing key: %v", err)
	}
}
