package flowshare

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Sink takes flows other nodes shared (the dataplane's shared-flows map).
// The slice is only valid during the call. It returns how many it applied
// (flows of services or backends it does not hold are skipped).
type Sink interface {
	ShareFlows([]Flow) (int, error)
}

// Snapshot walks the flows worth sharing this node holds, for a joining
// node's warm-up. fn may block (the answer is rate-limited); the slice is
// the callee's and is not kept.
type Snapshot interface {
	Snapshot(fn func([]Flow)) error
}

// Options configure a Node. Zero values take the defaults named.
type Options struct {
	// Listen is where datagrams arrive; an unspecified address listens on
	// every address. Port 0 picks a free port (tests).
	Listen netip.AddrPort
	// Peers: the other nodes, unicast. Or Multicast (group and port) with
	// Interface; then Listen's port is ignored.
	Peers     []netip.AddrPort
	Multicast netip.AddrPort
	Interface string
	// Key is the shared secret, at least MinKeyLen bytes.
	Key []byte
	// NodeID names this node in its datagrams; 0 picks a random one, a
	// new one each run (so a restarted node starts a fresh sequence).
	NodeID uint64
	// MaxRate: flows a second this node sends at most (default 50000),
	// snapshot answers included.
	MaxRate int
	// BatchInterval: how long a flow may wait for others to fill a
	// datagram (default 5ms).
	BatchInterval time.Duration
	// WarmupTimeout: how long WaitWarm waits for the peers' snapshots
	// (default 2s).
	WarmupTimeout time.Duration
	// QueueLen: flows waiting to be sent at most; more are dropped
	// (default 65536).
	QueueLen int
	// MaxClockSkew: datagrams whose timestamp is further than this from
	// this node's clock are refused (default 30s).
	MaxClockSkew time.Duration
	Sink         Sink     // nil: received flows are counted only
	Snapshot     Snapshot // nil: sync requests are answered with no flows
	Log          *slog.Logger
}

const (
	defaultMaxRate       = 50000
	defaultBatchInterval = 5 * time.Millisecond
	defaultWarmupTimeout = 2 * time.Second
	defaultQueueLen      = 65536
	defaultMaxClockSkew  = 30 * time.Second

	// flushAt: queued flows that fill a datagram even in the worst
	// encoding; the sender then goes without waiting for the batch interval.
	flushAt = 256
	// maxAnswers: snapshot answers streamed at once; a refused requester
	// asks again.
	maxAnswers = 4
	// maxSyncRetries: times a joining node asks a peer again for a
	// snapshot that arrived with datagrams missing.
	maxSyncRetries = 2
)

// Stats are the node's counters since New.
type Stats struct {
	Submitted     uint64 // flows taken into the send queue
	SentDatagrams uint64 // datagrams written (each copy to each peer)
	SentFlows     uint64 // flows in them (each copy to each peer)
	SentBytes     uint64
	Dropped       Drops
	// Received: datagrams accepted (authentic, fresh, not seen before).
	Received      uint64
	ReceivedFlows uint64
	AppliedFlows  uint64 // flows the sink applied
	SinkErrors    uint64
	Own           uint64 // this node's own datagrams (multicast loop), ignored
	Rejected      Rejects

	SyncRequestsSent     uint64
	SyncRequestsReceived uint64
	SyncAnswers          uint64 // snapshots streamed to a requester
	SyncAnswersRefused   uint64 // requests refused: maxAnswers already streaming
	SnapshotFlowsSent    uint64
	SyncEndsReceived     uint64
}

// Drops: flows submitted that never went out, by reason.
type Drops struct {
	QueueFull uint64 // the send queue was full (the rate limit holds them back)
	Invalid   uint64 // an address unset or zoned
	SendError uint64 // the datagram could not be written (counted per copy)
	Stopped   uint64 // still queued when Run returned
}

// Rejects: datagrams refused, by reason.
type Rejects struct {
	Truncated, Malformed, Version, MAC, Clock, Replay uint64
}

// PeerWarmup is what one peer did for this node's warm-up.
type PeerWarmup struct {
	Peer netip.AddrPort // the configured peer; with multicast, where the answer came from
	Node uint64         // its node ID, once heard
	// Answered: its sync end arrived.
	Answered bool
	// Datagrams and Flows received of its snapshot; SentDatagrams and
	// SentFlows what its sync end says it sent (a gap is loss).
	Datagrams, Flows         uint64
	SentDatagrams, SentFlows uint32
	Took                     time.Duration // request to sync end
	// Retries: snapshots asked again after a sync end showed datagrams
	// lost (Lost, in all earlier attempts).
	Retries int
	Lost    uint64
}

// WarmReport says how the warm-up went.
type WarmReport struct {
	Peers    []PeerWarmup     // sorted by address
	Missing  []netip.AddrPort // unicast peers that sent no sync end in time
	TimedOut bool
	Took     time.Duration
}

// Node sends this node's flows to its peers and takes theirs.
type Node struct {
	o      Options
	conn   *net.UDPConn
	local  netip.AddrPort
	id     uint64
	codec  *Codec
	seq    atomic.Uint64
	bucket *tokenBucket
	log    *slog.Logger
	wake   chan struct{}

	running atomic.Bool
	answers sync.WaitGroup

	mu            sync.Mutex
	peers         []netip.AddrPort
	queue         []Flow
	stopped       bool
	answered      map[netip.AddrPort]uint64 // requester -> nonce answered (or being answered)
	answersActive int
	warm          warmState

	warmProgress chan struct{}
	warmDone     chan struct{}
	warmReport   WarmReport

	c counters
}

type warmState struct {
	start  time.Time
	over   bool
	nonces map[uint64]netip.AddrPort // unicast: nonce -> peer
	group  uint64                    // multicast: the one nonce
	peers  map[netip.AddrPort]*PeerWarmup
}

type counters struct {
	submitted, sentDatagrams, sentFlows, sentBytes                         atomic.Uint64
	dropQueue, dropInvalid, dropSend, dropStopped                          atomic.Uint64
	received, receivedFlows, applied, sinkErrors, own                      atomic.Uint64
	rejected                                                               [ReasonReplay + 1]atomic.Uint64
	syncReqSent, syncReqRecv, syncAnswers, syncRefused, snapSent, syncEnds atomic.Uint64
}

// New checks o and binds the socket; Run does the work.
func New(o Options) (*Node, error) {
	codec, err := NewCodec(o.Key)
	if err != nil {
		return nil, fmt.Errorf("flow sharing: %w", err)
	}
	if o.MaxRate == 0 {
		o.MaxRate = defaultMaxRate
	}
	if o.BatchInterval == 0 {
		o.BatchInterval = defaultBatchInterval
	}
	if o.WarmupTimeout == 0 {
		o.WarmupTimeout = defaultWarmupTimeout
	}
	if o.QueueLen == 0 {
		o.QueueLen = defaultQueueLen
	}
	if o.MaxClockSkew == 0 {
		o.MaxClockSkew = defaultMaxClockSkew
	}
	if o.MaxRate < 0 || o.BatchInterval < 0 || o.WarmupTimeout < 0 || o.QueueLen < 0 || o.MaxClockSkew < 0 {
		return nil, errors.New("flow sharing: negative rate, interval, timeout or queue length")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Multicast.IsValid() && len(o.Peers) > 0 {
		return nil, errors.New("flow sharing: peers and a multicast group are exclusive")
	}
	n := &Node{
		o:            o,
		id:           o.NodeID,
		codec:        codec,
		log:          o.Log,
		wake:         make(chan struct{}, 1),
		peers:        unmapAll(o.Peers),
		answered:     map[netip.AddrPort]uint64{},
		warmProgress: make(chan struct{}, 1),
		warmDone:     make(chan struct{}),
	}
	for n.id == 0 {
		n.id = rand.Uint64()
	}
	// Sequences start at 1 each run; receivers keep a window per node
	// ID, and a restarted node (new random ID) starts a fresh one.
	// A burst lets a batch go out at once; 1/20 s of the rate, at least
	// a few datagrams.
	n.bucket = newTokenBucket(float64(o.MaxRate), max(float64(o.MaxRate)/20, 4*flushAt), time.Now())
	if err := n.listen(); err != nil {
		return nil, fmt.Errorf("flow sharing: %w", err)
	}
	return n, nil
}

func unmapAll(ps []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, len(ps))
	for i, p := range ps {
		out[i] = netip.AddrPortFrom(p.Addr().Unmap(), p.Port())
	}
	return out
}

func (n *Node) listen() error {
	if g := n.o.Multicast; g.IsValid() {
		ifi, err := net.InterfaceByName(n.o.Interface)
		if err != nil {
			return fmt.Errorf("multicast interface %q: %w", n.o.Interface, err)
		}
		network := "udp4"
		if g.Addr().Is6() {
			network = "udp6"
		}
		conn, err := net.ListenMulticastUDP(network, ifi, net.UDPAddrFromAddrPort(g))
		if err != nil {
			return fmt.Errorf("join %s on %s: %w", g, ifi.Name, err)
		}
		if err := multicastSockopts(conn, g.Addr().Is6(), ifi.Index); err != nil {
			conn.Close()
			return fmt.Errorf("multicast on %s: %w", ifi.Name, err)
		}
		n.conn = conn
	} else {
		network := "udp"
		if a := n.o.Listen.Addr(); a.IsValid() && !a.IsUnspecified() {
			network = map[bool]string{true: "udp4", false: "udp6"}[a.Is4()]
		}
		la := &net.UDPAddr{Port: int(n.o.Listen.Port())}
		if a := n.o.Listen.Addr(); a.IsValid() && !a.IsUnspecified() {
			la.IP = a.AsSlice()
		}
		conn, err := net.ListenUDP(network, la)
		if err != nil {
			return fmt.Errorf("listen: %w", err)
		}
		n.conn = conn
	}
	// Snapshots arrive in bursts; a larger buffer rides them out (the
	// kernel caps it at net.core.rmem_max).
	_ = n.conn.SetReadBuffer(4 << 20)
	n.local = n.conn.LocalAddr().(*net.UDPAddr).AddrPort()
	return nil
}

// multicastSockopts sends on the configured interface (not wherever the
// routing table points the group) and keeps the loop on, so that nodes
// sharing a host (tests, the lab) hear each other; a node recognises and
// skips its own datagrams by node ID before any MAC work.
func multicastSockopts(conn *net.UDPConn, v6 bool, ifindex int) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if v6 {
			if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, ifindex); serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_LOOP, 1)
			}
			return
		}
		if serr = unix.SetsockoptIPMreqn(int(fd), unix.IPPROTO_IP, unix.IP_MULTICAST_IF, &unix.IPMreqn{Ifindex: int32(ifindex)}); serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, 1)
		}
	})
	return errors.Join(err, serr)
}

// LocalAddr is where the node receives.
func (n *Node) LocalAddr() netip.AddrPort { return n.local }

// ID is this node's ID in its datagrams.
func (n *Node) ID() uint64 { return n.id }

// SetPeers replaces the unicast peers (a config reload). A warm-up in
// progress keeps waiting for the peers it asked.
func (n *Node) SetPeers(peers []netip.AddrPort) {
	n.mu.Lock()
	n.peers = unmapAll(peers)
	n.mu.Unlock()
}

// Close releases the socket; Run closes it on return as well.
func (n *Node) Close() error {
	if err := n.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// Submit queues flows to send and returns how many it took. It never
// blocks: flows past the queue's room are dropped and counted.
func (n *Node) Submit(fs []Flow) int {
	n.mu.Lock()
	took, invalid := 0, 0
	stopped := n.stopped
	for _, f := range fs {
		switch {
		case stopped:
		case !f.valid():
			invalid++
		case len(n.queue) < n.o.QueueLen:
			n.queue = append(n.queue, f)
			took++
		}
	}
	n.mu.Unlock()
	n.c.submitted.Add(uint64(took))
	n.c.dropInvalid.Add(uint64(invalid))
	if stopped {
		n.c.dropStopped.Add(uint64(len(fs) - invalid))
	} else {
		n.c.dropQueue.Add(uint64(len(fs) - took - invalid))
	}
	if took > 0 {
		select {
		case n.wake <- struct{}{}:
		default:
		}
	}
	return took
}

// Stats returns the counters.
func (n *Node) Stats() Stats {
	c := &n.c
	r := func(x Reason) uint64 { return c.rejected[x].Load() }
	return Stats{
		Submitted:     c.submitted.Load(),
		SentDatagrams: c.sentDatagrams.Load(),
		SentFlows:     c.sentFlows.Load(),
		SentBytes:     c.sentBytes.Load(),
		Dropped: Drops{
			QueueFull: c.dropQueue.Load(),
			Invalid:   c.dropInvalid.Load(),
			SendError: c.dropSend.Load(),
			Stopped:   c.dropStopped.Load(),
		},
		Received:      c.received.Load(),
		ReceivedFlows: c.receivedFlows.Load(),
		AppliedFlows:  c.applied.Load(),
		SinkErrors:    c.sinkErrors.Load(),
		Own:           c.own.Load(),
		Rejected: Rejects{
			Truncated: r(ReasonTruncated), Malformed: r(ReasonMalformed), Version: r(ReasonVersion),
			MAC: r(ReasonMAC), Clock: r(ReasonClock), Replay: r(ReasonReplay),
		},
		SyncRequestsSent:     c.syncReqSent.Load(),
		SyncRequestsReceived: c.syncReqRecv.Load(),
		SyncAnswers:          c.syncAnswers.Load(),
		SyncAnswersRefused:   c.syncRefused.Load(),
		SnapshotFlowsSent:    c.snapSent.Load(),
		SyncEndsReceived:     c.syncEnds.Load(),
	}
}

// Run receives, sends and warms up until ctx ends, then closes the
// socket. It returns nil when ctx ends, or why it could not go on.
func (n *Node) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("flow sharing: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A blocked read only returns when the socket closes.
	context.AfterFunc(ctx, func() { n.conn.Close() })
	var wg sync.WaitGroup
	wg.Go(func() { n.sendLoop(ctx) })
	wg.Go(func() { n.warmUp(ctx) })
	err := n.receive(ctx)
	cancel()
	wg.Wait()
	n.answers.Wait()
	n.mu.Lock()
	n.stopped = true
	n.c.dropStopped.Add(uint64(len(n.queue)))
	n.queue = nil
	n.mu.Unlock()
	return err
}

func (n *Node) destinations() []netip.AddrPort {
	if n.o.Multicast.IsValid() {
		return []netip.AddrPort{n.o.Multicast}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.peers)
}

// sendLoop batches the queue into datagrams to every peer.
func (n *Node) sendLoop(ctx context.Context) {
	s := n.newSender()
	var batch, grouped []Flow
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.wake:
		}
		// Let a batch gather for up to BatchInterval after its first
		// flow: a flow costs ~7 bytes, a datagram header and tag 48.
		if n.queued() < flushAt && n.o.BatchInterval > 0 {
			t := time.NewTimer(n.o.BatchInterval)
		gather:
			for {
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
					break gather
				case <-n.wake:
					if n.queued() >= flushAt {
						t.Stop()
						break gather
					}
				}
			}
		}
		n.mu.Lock()
		batch, n.queue = n.queue, batch[:0]
		n.mu.Unlock()
		grouped = s.group(grouped, batch)
		s.send(ctx, grouped, Message{Type: TypeFlows}, n.destinations())
	}
}

func (n *Node) queued() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.queue)
}

// sender encodes and writes datagrams for one goroutine.
type sender struct {
	n     *Node
	codec *Codec
	buf   []byte
	grouper
}

func (n *Node) newSender() *sender {
	return &sender{n: n, codec: n.codec.Clone(), buf: make([]byte, 0, MaxDatagram)}
}

// send writes flows (valid ones) to every destination, in as many
// datagrams as they take, each waiting for the rate limit. It returns the
// datagrams and flows it sent (one copy counted).
func (s *sender) send(ctx context.Context, flows []Flow, m Message, dsts []netip.AddrPort) (datagrams, sent int) {
	n := s.n
	for len(flows) > 0 {
		m.Flows = flows
		b, k, err := s.codec.Encode(s.buf[:0], &m)
		if err != nil { // flows are checked when taken: a bug
			n.log.Error("flow sharing: encode", "err", err)
			n.c.dropInvalid.Add(uint64(len(flows)))
			return datagrams, sent
		}
		if err := n.bucket.wait(ctx, k); err != nil {
			n.c.dropStopped.Add(uint64(len(flows)))
			return datagrams, sent
		}
		// Sequence and time are set once the rate limit lets the datagram
		// go, so that concurrent senders' sequences arrive nearly in order.
		b = s.codec.reseal(b, n.id, n.seq.Add(1), time.Now().UnixNano())
		s.buf = b
		if len(dsts) > 0 {
			s.write(b, k, dsts)
			datagrams++
			sent += k
		}
		flows = flows[k:]
	}
	return datagrams, sent
}

func (s *sender) write(b []byte, flows int, dsts []netip.AddrPort) {
	n := s.n
	for _, d := range dsts {
		if _, err := n.conn.WriteToUDPAddrPort(b, d); err != nil {
			n.c.dropSend.Add(uint64(flows))
			if !errors.Is(err, net.ErrClosed) {
				n.log.Debug("flow sharing: send", "to", d, "err", err)
			}
			continue
		}
		n.c.sentDatagrams.Add(1)
		n.c.sentFlows.Add(uint64(flows))
		n.c.sentBytes.Add(uint64(len(b)))
	}
}

// control sends a sync request or end to one destination, outside the
// rate limit (they are few and tiny).
func (s *sender) control(m Message, dst netip.AddrPort) error {
	m.Node, m.Seq, m.Time = s.n.id, s.n.seq.Add(1), time.Now().UnixNano()
	b, _, err := s.codec.Encode(s.buf[:0], &m)
	if err != nil {
		return err
	}
	s.buf = b
	_, err = s.n.conn.WriteToUDPAddrPort(b, dst)
	return err
}

// receive reads, verifies and dispatches datagrams until the socket closes.
func (n *Node) receive(ctx context.Context) error {
	codec := n.codec.Clone()
	buf := make([]byte, 64<<10)
	r := receiver{n: n, codec: codec, windows: map[uint64]*replayWindow{}}
	for {
		nb, from, err := n.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("flow sharing: receive: %w", err)
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		r.handle(ctx, buf[:nb], from, time.Now())
	}
}

type receiver struct {
	n         *Node
	codec     *Codec
	m         Message
	windows   map[uint64]*replayWindow
	lastSweep time.Time
}

func (r *receiver) rejectf(reason Reason, from netip.AddrPort, err error) {
	r.n.c.rejected[reason].Add(1)
	r.n.log.Debug("flow sharing: rejected", "from", from, "reason", reason, "err", err)
}

func (r *receiver) handle(ctx context.Context, b []byte, from netip.AddrPort, now time.Time) {
	n := r.n
	// Our own multicast datagrams come back: skip them before the MAC.
	if len(b) >= headerLen && b[0] == magic0 && b[1] == magic1 && nodeOf(b) == n.id {
		n.c.own.Add(1)
		return
	}
	if len(b) > MaxDatagram {
		r.rejectf(ReasonMalformed, from, fmt.Errorf("%d bytes, more than %d", len(b), MaxDatagram))
		return
	}
	m := &r.m
	if err := r.codec.Decode(b, m); err != nil {
		r.rejectf(ReasonOf(err), from, err)
		return
	}
	if skew := now.Sub(time.Unix(0, m.Time)); skew > n.o.MaxClockSkew || skew < -n.o.MaxClockSkew {
		r.rejectf(ReasonClock, from, fmt.Errorf("timestamp %v off this node's clock", skew.Round(time.Millisecond)))
		return
	}
	w := r.windows[m.Node]
	if w == nil {
		r.sweep(now)
		w = &replayWindow{}
		r.windows[m.Node] = w
	}
	if !w.accept(m.Seq) {
		r.rejectf(ReasonReplay, from, fmt.Errorf("node %x sequence %d (highest %d)", m.Node, m.Seq, w.top))
		return
	}
	w.last = now
	n.c.received.Add(1)
	switch m.Type {
	case TypeFlows:
		n.c.receivedFlows.Add(uint64(len(m.Flows)))
		if m.Flags&FlagSnapshot != 0 {
			n.warmData(from, m)
		}
		if n.o.Sink != nil && len(m.Flows) > 0 {
			applied, err := n.o.Sink.ShareFlows(m.Flows)
			n.c.applied.Add(uint64(max(applied, 0)))
			if err != nil {
				n.c.sinkErrors.Add(1)
				n.log.Warn("flow sharing: applying shared flows", "from", from, "err", err)
			}
		}
	case TypeSyncRequest:
		n.c.syncReqRecv.Add(1)
		n.startAnswer(ctx, from, m.Nonce)
	case TypeSyncEnd:
		n.c.syncEnds.Add(1)
		n.warmEnd(from, m)
	}
}

// sweep forgets senders not heard for longer than any datagram of theirs
// could still pass the clock check: a replay of one would be refused
// there. This bounds the memory restarted peers (new IDs) leave behind.
func (r *receiver) sweep(now time.Time) {
	if now.Sub(r.lastSweep) < time.Second {
		return
	}
	r.lastSweep = now
	for id, w := range r.windows {
		if now.Sub(w.last) > 2*r.n.o.MaxClockSkew+time.Second {
			delete(r.windows, id)
		}
	}
}

func nodeOf(b []byte) uint64 { return binary.BigEndian.Uint64(b[8:]) }

// startAnswer streams a snapshot to a requester, once per request (the
// requester repeats it until it hears from us).
func (n *Node) startAnswer(ctx context.Context, to netip.AddrPort, nonce uint64) {
	n.mu.Lock()
	if last, ok := n.answered[to]; ok && last == nonce {
		n.mu.Unlock()
		return
	}
	if n.answersActive >= maxAnswers {
		n.mu.Unlock()
		n.c.syncRefused.Add(1)
		return
	}
	n.answered[to] = nonce
	n.answersActive++
	n.mu.Unlock()
	n.answers.Go(func() {
		defer func() {
			n.mu.Lock()
			n.answersActive--
			n.mu.Unlock()
		}()
		n.answer(ctx, to, nonce)
	})
}

func (n *Node) answer(ctx context.Context, to netip.AddrPort, nonce uint64) {
	s := n.newSender()
	m := Message{Type: TypeFlows, Flags: FlagSnapshot, Nonce: nonce}
	dst := []netip.AddrPort{to}
	var pending, grouped []Flow
	var datagrams, flows int
	flush := func() {
		grouped = s.group(grouped, pending)
		d, k := s.send(ctx, grouped, m, dst)
		datagrams += d
		flows += k
		pending = pending[:0]
	}
	var err error
	if n.o.Snapshot != nil {
		err = n.o.Snapshot.Snapshot(func(fs []Flow) {
			if ctx.Err() != nil {
				return
			}
			for _, f := range fs {
				if f.valid() {
					pending = append(pending, f)
				}
			}
			if len(pending) >= 4*flushAt {
				flush()
			}
		})
	}
	if ctx.Err() != nil {
		return
	}
	if len(pending) > 0 {
		flush()
	}
	if err != nil {
		// The requester still gets a sync end: it learns what there was,
		// and does not wait for the rest until its timeout.
		n.log.Warn("flow sharing: snapshot for a joining node", "to", to, "err", err)
	}
	n.c.snapSent.Add(uint64(flows))
	if err := s.control(Message{Type: TypeSyncEnd, Nonce: nonce, Datagrams: uint32(datagrams), FlowCount: uint32(flows)}, to); err != nil {
		n.log.Debug("flow sharing: sync end", "to", to, "err", err)
		return
	}
	n.c.syncAnswers.Add(1)
	n.log.Debug("flow sharing: answered a sync request", "to", to, "flows", flows, "datagrams", datagrams)
}

// warmUp asks every peer for its snapshot and waits for their sync ends
// (unicast) or for WarmupTimeout (multicast: the members are unknown).
// Peers not heard from are asked again, so one lost request or a peer
// starting a moment later costs a resend interval, not the timeout.
func (n *Node) warmUp(ctx context.Context) {
	s := n.newSender()
	n.mu.Lock()
	n.warm = warmState{start: time.Now(), nonces: map[uint64]netip.AddrPort{}, peers: map[netip.AddrPort]*PeerWarmup{}}
	multicast := n.o.Multicast.IsValid()
	if multicast {
		n.warm.group = rand.Uint64() | 1
	} else {
		for _, p := range n.peers {
			if _, dup := n.warm.peers[p]; dup {
				continue
			}
			nonce := rand.Uint64() | 1
			n.warm.nonces[nonce] = p
			n.warm.peers[p] = &PeerWarmup{Peer: p}
		}
	}
	asking := multicast || len(n.warm.peers) > 0
	n.mu.Unlock()

	ask := func() {
		n.mu.Lock()
		type req struct {
			to    netip.AddrPort
			nonce uint64
		}
		var reqs []req
		if multicast {
			reqs = append(reqs, req{n.o.Multicast, n.warm.group})
		}
		for nonce, p := range n.warm.nonces {
			if pw := n.warm.peers[p]; pw.Datagrams == 0 && !pw.Answered {
				reqs = append(reqs, req{p, nonce})
			}
		}
		n.mu.Unlock()
		for _, r := range reqs {
			if err := s.control(Message{Type: TypeSyncRequest, Nonce: r.nonce}, r.to); err != nil {
				n.log.Debug("flow sharing: sync request", "to", r.to, "err", err)
				continue
			}
			n.c.syncReqSent.Add(1)
		}
	}
	deadline := time.NewTimer(n.o.WarmupTimeout)
	defer deadline.Stop()
	resend := time.NewTicker(min(max(n.o.WarmupTimeout/8, 20*time.Millisecond), 500*time.Millisecond))
	defer resend.Stop()
	timedOut := false
	if asking {
		ask()
	wait:
		for {
			select {
			case <-ctx.Done():
				break wait
			case <-deadline.C:
				timedOut = true
				break wait
			case <-resend.C:
				ask()
			case <-n.warmProgress:
				if !multicast && n.allAnswered() {
					break wait
				}
				ask() // a peer whose snapshot came short is asked again at once
			}
		}
	}
	n.finishWarm(timedOut)
}

func (n *Node) allAnswered() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.warm.peers {
		if !p.Answered {
			return false
		}
	}
	return true
}

func (n *Node) finishWarm(timedOut bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.warm.over = true
	rep := WarmReport{TimedOut: timedOut, Took: time.Since(n.warm.start)}
	for _, p := range n.warm.peers {
		rep.Peers = append(rep.Peers, *p)
		if !p.Answered && !n.o.Multicast.IsValid() {
			rep.Missing = append(rep.Missing, p.Peer)
		}
	}
	slices.SortFunc(rep.Peers, func(a, b PeerWarmup) int { return a.Peer.Compare(b.Peer) })
	slices.SortFunc(rep.Missing, netip.AddrPort.Compare)
	n.warmReport = rep
	close(n.warmDone)
	n.log.Info("flow sharing: warm-up done", "took", rep.Took, "answered", len(rep.Peers)-len(rep.Missing), "missing", rep.Missing, "timed_out", timedOut)
}

// warmPeer finds the warm-up entry an answer belongs to (n.mu held).
func (n *Node) warmPeer(from netip.AddrPort, m *Message) *PeerWarmup {
	if n.warm.over || n.warm.peers == nil {
		return nil
	}
	if n.o.Multicast.IsValid() {
		if m.Nonce != n.warm.group {
			return nil
		}
		p := n.warm.peers[from]
		if p == nil {
			p = &PeerWarmup{Peer: from}
			n.warm.peers[from] = p
		}
		return p
	}
	peer, ok := n.warm.nonces[m.Nonce]
	if !ok {
		return nil
	}
	return n.warm.peers[peer]
}

func (n *Node) warmData(from netip.AddrPort, m *Message) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p := n.warmPeer(from, m); p != nil {
		p.Node = m.Node
		p.Datagrams++
		p.Flows += uint64(len(m.Flows))
	}
}

func (n *Node) warmEnd(from netip.AddrPort, m *Message) {
	n.mu.Lock()
	p := n.warmPeer(from, m)
	switch {
	case p == nil || p.Answered:
	case uint64(m.Datagrams) > p.Datagrams && p.Retries < maxSyncRetries && !n.o.Multicast.IsValid():
		// Part of the snapshot was lost (a burst overran a socket
		// buffer, say): ask for all of it again under a new nonce, while
		// the timeout allows. Flows are idempotent; what arrived stays.
		p.Retries++
		p.Lost += uint64(m.Datagrams) - p.Datagrams
		p.Datagrams, p.Flows = 0, 0
		delete(n.warm.nonces, m.Nonce)
		n.warm.nonces[rand.Uint64()|1] = p.Peer
	default:
		p.Node = m.Node
		p.Answered = true
		p.SentDatagrams, p.SentFlows = m.Datagrams, m.FlowCount
		p.Took = time.Since(n.warm.start)
	}
	n.mu.Unlock()
	select {
	case n.warmProgress <- struct{}{}:
	default:
	}
}

// WaitWarm returns once every unicast peer has sent its snapshot and sync
// end, or WarmupTimeout after Run started (with multicast, always the
// timeout: the group's members are unknown). The report names who
// answered and who did not. It returns ctx's error if ctx ends first.
func (n *Node) WaitWarm(ctx context.Context) (WarmReport, error) {
	select {
	case <-n.warmDone:
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.warmReport, nil
	case <-ctx.Done():
		return WarmReport{}, ctx.Err()
	}
}
