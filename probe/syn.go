package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// A half-open check (tcp-half-open) sends a bare SYN from a raw socket and
// takes a SYN-ACK as up and an RST as refused. No socket, no handshake and
// no connection reach the backend's application: at 10,000 checks a
// connect() per probe is the cost that saturates a small machine.
//
// One engine serves every half-open check of a scheduler:
//   - a few source ports are reserved by TCP sockets that are bound and
//     never listen, so no other local socket takes them, and the kernel
//     itself answers each SYN-ACK with the RST that releases the backend's
//     half-open connection (no listener or connection matches);
//   - one raw receive socket per family, with a socket filter that lets
//     through only SYN or RST segments to the reserved ports, so the
//     machine's other TCP traffic never reaches user space;
//   - raw send sockets, one per interface (and source, for IPv6).
//
// A probe's SYN carries a random sequence number; the answer's
// acknowledgement number (sequence + 1), its source and its ports find the
// waiting probe.

// synSourcePorts is how many source ports the engine takes turns on. More
// than one keeps two probes of the same target from using one four-tuple
// back to back while the backend may still hold the first.
const synSourcePorts = 16

// synRefresh is how long a route's source address is trusted before it is
// looked up again (IPv4: the checksum covers it).
const synRefresh = 10 * time.Second

// synTuple is a probe's four-tuple (our address is implied by the route).
type synTuple struct {
	remote netip.AddrPort
	local  uint16
}

// synKey is one probe: its four-tuple and the SYN's sequence number.
type synKey struct {
	synTuple
	seq uint32
}

type synSender struct {
	family int
	source netip.Addr
	iface  string
	// zone is an IPv6 link-local target's interface index: the socket is
	// bound to it, so its SYNs leave there or nowhere. (x/net's batch
	// send takes the zone by name and, once the name is gone, sends with
	// no scope: out of any link with the same neighbour address.)
	zone uint32
}

type synEngine struct {
	ports   []uint16
	holders []int // the bound sockets that keep ports ours

	recv4, recv6 net.PacketConn // nil when the family is unavailable

	turn   atomic.Uint32
	sendMu sync.Mutex // one batch sent at a time (startBatch)

	mu      sync.Mutex
	pending map[synKey]func(error)
	// inflight counts pending probes per four-tuple: a probe takes a
	// source port no other pending probe of its target uses, as a second
	// SYN on a four-tuple the backend still holds half-open gets a bare
	// ACK, not a SYN-ACK.
	inflight map[synTuple]int
	senders  map[synSender]*synSocket
	closed   bool
	done     sync.WaitGroup
	// Deadlines of the pending probes (ns since epoch), earliest first;
	// expire fails the probes still pending at theirs. Answered probes
	// leave their entry to expire unused.
	deadlines timeHeap[synKey]
	epoch     time.Time
	timer     *time.Timer
	armed     time.Time // when timer fires; zero: not armed
}

// errNoAnswer is the verdict of a probe whose SYN got no SYN-ACK or RST.
var errNoAnswer = fmt.Errorf("no SYN-ACK or RST: %w", context.DeadlineExceeded)

// waitLocked registers a probe's key until its deadline; e.mu is held.
func (e *synEngine) waitLocked(key synKey, at time.Time, done func(error)) {
	e.pending[key] = done
	e.inflight[key.synTuple]++
	e.deadlines.push(at.Sub(e.epoch).Nanoseconds(), key)
	if e.armed.IsZero() || at.Before(e.armed) {
		e.armed = at
		d := time.Until(at)
		if e.timer == nil {
			e.timer = time.AfterFunc(d, e.expire)
		} else {
			e.timer.Reset(d)
		}
	}
}

// takeLocked removes a pending probe and returns its callback (nil when
// it is no longer pending); e.mu is held.
func (e *synEngine) takeLocked(key synKey) func(error) {
	done := e.pending[key]
	if done == nil {
		return nil
	}
	delete(e.pending, key)
	if e.inflight[key.synTuple]--; e.inflight[key.synTuple] <= 0 {
		delete(e.inflight, key.synTuple)
	}
	return done
}

// sourcePortLocked picks the next source port in turn that no pending
// probe to remote uses; e.mu is held.
func (e *synEngine) sourcePortLocked(remote netip.AddrPort) uint16 {
	base := e.turn.Add(1)
	for i := range uint32(len(e.ports)) {
		p := e.ports[(base+i)%uint32(len(e.ports))]
		if e.inflight[synTuple{remote, p}] == 0 {
			return p
		}
	}
	return e.ports[base%uint32(len(e.ports))]
}

// expire fails the probes whose deadline has passed.
func (e *synEngine) expire() {
	var late []func(error)
	e.mu.Lock()
	now := time.Since(e.epoch).Nanoseconds()
	for at, ok := e.deadlines.first(); ok && at <= now; at, ok = e.deadlines.first() {
		_, key := e.deadlines.pop()
		if done := e.takeLocked(key); done != nil {
			late = append(late, done)
		}
	}
	e.armed = time.Time{}
	if at, ok := e.deadlines.first(); ok && !e.closed {
		e.armed = e.epoch.Add(time.Duration(at))
		e.timer.Reset(time.Until(e.armed))
	}
	e.mu.Unlock()
	for _, done := range late {
		done(errNoAnswer)
	}
}

// synEngines creates the engine on the first half-open check and closes it
// with its scheduler.
type synEngines struct {
	mu     sync.Mutex
	e      *synEngine
	closed bool
}

func (h *synEngines) get() (*synEngine, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errors.New("the scheduler has stopped")
	}
	if h.e == nil {
		e, err := newSynEngine()
		if err != nil {
			return nil, err
		}
		h.e = e
	}
	return h.e, nil
}

func (h *synEngines) close() {
	h.mu.Lock()
	e := h.e
	h.e, h.closed = nil, true
	h.mu.Unlock()
	if e != nil {
		e.close()
	}
}

func newSynEngine() (*synEngine, error) {
	e := &synEngine{pending: map[synKey]func(error){}, inflight: map[synTuple]int{}, senders: map[synSender]*synSocket{}, epoch: time.Now()}
	for range synSourcePorts {
		fd, port, err := reservePort()
		if err != nil {
			e.close()
			return nil, fmt.Errorf("reserve a source port: %w", err)
		}
		e.holders = append(e.holders, fd)
		e.ports = append(e.ports, port)
	}
	var err error
	if e.recv4, err = synReceiver(unix.AF_INET, e.ports); err != nil {
		e.close()
		return nil, fmt.Errorf("raw TCP socket (needs CAP_NET_RAW): %w", err)
	}
	// IPv6 may be disabled on the host; IPv6 checks then fail by name.
	if c, err := synReceiver(unix.AF_INET6, e.ports); err == nil {
		e.recv6 = c
	}
	e.done.Add(1)
	go e.receive(batchOf(e.recv4, unix.AF_INET), true)
	if e.recv6 != nil {
		e.done.Add(1)
		go e.receive(batchOf(e.recv6, unix.AF_INET6), false)
	}
	return e, nil
}

// reservePort binds a TCP socket to an ephemeral port of both families (one
// of them where the host has no IPv6) and never listens on it.
func reservePort() (int, uint16, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		if err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err == nil {
			err = unix.Bind(fd, &unix.SockaddrInet6{})
		}
		if err != nil {
			unix.Close(fd)
			return -1, 0, err
		}
	} else {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, 0, err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{}); err != nil {
			unix.Close(fd)
			return -1, 0, err
		}
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet6:
		return fd, uint16(sa.Port), nil
	case *unix.SockaddrInet4:
		return fd, uint16(sa.Port), nil
	}
	unix.Close(fd)
	return -1, 0, errors.New("bound socket has no port")
}

// synFilter accepts TCP segments to one of ports with SYN or RST set.
// IPv4 raw sockets see the IP header, IPv6 ones start at TCP.
func synFilter(ports []uint16, ipHeader bool) ([]unix.SockFilter, error) {
	prog := []bpf.Instruction{bpf.LoadConstant{Dst: bpf.RegX, Val: 0}}
	if ipHeader {
		prog[0] = bpf.LoadMemShift{Off: 0} // X = IPv4 header length
	}
	prog = append(prog, bpf.LoadIndirect{Off: 2, Size: 2}) // destination port
	for i, p := range ports {
		// A match skips the rest of the chain and the drop after it.
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(p), SkipTrue: uint8(len(ports) - i)})
	}
	prog = append(prog,
		bpf.RetConstant{Val: 0},
		bpf.LoadIndirect{Off: 13, Size: 1}, // flags
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: tcpSYN | tcpRST, SkipFalse: 1},
		bpf.RetConstant{Val: 128}, // IPv4 header (<= 60) and the TCP header
		bpf.RetConstant{Val: 0},
	)
	return assemble(prog)
}

func assemble(prog []bpf.Instruction) ([]unix.SockFilter, error) {
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, err
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

func attachFilter(fd int, f []unix.SockFilter) error {
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]})
}

const (
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

func synReceiver(family int, ports []uint16) (net.PacketConn, error) {
	filter, err := synFilter(ports, family == unix.AF_INET)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return nil, err
	}
	if err := attachFilter(fd, filter); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("socket filter: %w", err)
	}
	// A round of 10,000 checks answers in a burst: past rmem_max when
	// allowed (CAP_NET_ADMIN), else up to it.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	c, err := packetConn(fd, "tcp-half-open")
	if err != nil {
		return nil, fmt.Errorf("receive socket: %w", err)
	}
	return c, nil
}

// packetConn makes a connection of raw socket fd, which it takes over, for
// x/net's batch calls (recvmmsg, sendmmsg).
func packetConn(fd int, name string) (net.PacketConn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close() // the connection holds a duplicate
	return net.FilePacketConn(f)
}

// batchConn is ipv4.PacketConn or ipv6.PacketConn (their Message types
// are one): ReadBatch is one recvmmsg, WriteBatch one sendmmsg on Linux.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// batchOf wraps c for its family's batch calls.
func batchOf(c net.PacketConn, family int) batchConn {
	if family == unix.AF_INET6 {
		return ipv6.NewPacketConn(c)
	}
	return ipv4.NewPacketConn(c)
}

// synBatch is how many answers one receive call takes at most: at 100,000
// probes a second a call per answer was a tenth of the prober's CPU, and a
// system call costs 1.5 us on the VM this was measured on.
const synBatch = 64

func (e *synEngine) receive(c batchConn, ipHeader bool) {
	defer e.done.Done()
	msgs := make([]ipv4.Message, synBatch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 256)}
	}
	type answer struct {
		key     synKey
		verdict error
	}
	answers := make([]answer, 0, synBatch)
	dones := make([]func(error), 0, synBatch)
	for {
		n, err := c.ReadBatch(msgs, 0)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		answers = answers[:0]
		for _, m := range msgs[:n] {
			var from unix.Sockaddr
			if a, ok := m.Addr.(*net.IPAddr); ok && !ipHeader {
				// The IPv6 header is not handed over: the source is.
				from = &unix.SockaddrInet6{Addr: [16]byte(a.IP.To16())}
			}
			key, flags, ok := parseAnswer(m.Buffers[0][:m.N], from, ipHeader)
			if !ok {
				continue
			}
			switch {
			case flags&tcpRST != 0:
				answers = append(answers, answer{key, fmt.Errorf("refused: RST: %w", syscall.ECONNREFUSED)})
			case flags&(tcpSYN|tcpACK) == tcpSYN|tcpACK:
				answers = append(answers, answer{key, nil})
			}
		}
		dones = dones[:0]
		e.mu.Lock()
		for _, a := range answers {
			dones = append(dones, e.takeLocked(a.key))
		}
		e.mu.Unlock()
		for i, done := range dones {
			if done != nil {
				done(answers[i].verdict)
			}
		}
	}
}

// parseAnswer reads who answered which SYN: the answer acknowledges the
// SYN's sequence number + 1.
func parseAnswer(b []byte, from unix.Sockaddr, ipHeader bool) (synKey, uint8, bool) {
	var src netip.Addr
	if ipHeader {
		if len(b) < 20 || b[0]>>4 != 4 {
			return synKey{}, 0, false
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl+20 {
			return synKey{}, 0, false
		}
		src = netip.AddrFrom4([4]byte(b[12:16]))
		b = b[ihl:]
	} else {
		sa, ok := from.(*unix.SockaddrInet6)
		if !ok || len(b) < 20 {
			return synKey{}, 0, false
		}
		src = netip.AddrFrom16(sa.Addr)
	}
	key := synKey{
		synTuple: synTuple{remote: netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[0:])), local: binary.BigEndian.Uint16(b[2:])},
		seq:      binary.BigEndian.Uint32(b[8:]) - 1,
	}
	return key, b[13], true
}

func (e *synEngine) close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return
	}
	e.closed = true
	senders := e.senders
	e.senders = nil
	if e.timer != nil {
		e.timer.Stop()
	}
	// Probes in flight are never answered now: their scheduler has
	// stopped, and a direct caller waits on its own context.
	clear(e.pending)
	clear(e.inflight)
	e.deadlines = timeHeap[synKey]{}
	e.mu.Unlock()
	for _, c := range []net.PacketConn{e.recv4, e.recv6} {
		if c != nil {
			c.Close()
		}
	}
	e.done.Wait()
	for _, c := range senders {
		c.conn.Close()
	}
	for _, fd := range e.holders {
		unix.Close(fd)
	}
}

// synSocket is a raw socket that sends SYNs, as a connection that sends
// a batch in one sendmmsg.
type synSocket struct {
	conn  net.PacketConn
	batch batchConn
}

// sender returns the raw socket that sends for family, source and iface.
// IPv4 sends whole packets (IP_HDRINCL: the checksum needs the source, so
// the prober chooses it); IPv6 lets the kernel add the header and the
// checksum, from a socket bound to the source when one is set.
func (e *synEngine) sender(k synSender) (*synSocket, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, errors.New("the scheduler has stopped")
	}
	if c := e.senders[k]; c != nil {
		return c, nil
	}
	proto := unix.IPPROTO_RAW
	if k.family == unix.AF_INET6 {
		proto = unix.IPPROTO_TCP
	}
	fd, err := unix.Socket(k.family, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("raw socket (needs CAP_NET_RAW): %w", err)
	}
	if err := configureSender(fd, k); err != nil {
		unix.Close(fd)
		return nil, err
	}
	conn, err := packetConn(fd, "tcp-half-open-send")
	if err != nil {
		return nil, fmt.Errorf("send socket: %w", err)
	}
	c := &synSocket{conn: conn, batch: batchOf(conn, k.family)}
	e.senders[k] = c
	return c, nil
}

func configureSender(fd int, k synSender) error {
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20)
	}
	if k.iface != "" {
		if err := unix.BindToDevice(fd, k.iface); err != nil {
			return fmt.Errorf("interface: %w", err)
		}
	}
	if k.zone != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BINDTOIFINDEX, int(k.zone)); err != nil {
			return fmt.Errorf("zone: %w", err)
		}
	}
	if k.family == unix.AF_INET {
		return nil
	}
	// An IPv6 TCP raw socket also receives every TCP segment: this one
	// only sends.
	drop, err := assemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})
	if err == nil {
		err = attachFilter(fd, drop)
	}
	if err != nil {
		return fmt.Errorf("socket filter: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_CHECKSUM, 16); err != nil {
		return fmt.Errorf("checksum offset: %w", err)
	}
	if k.source.IsValid() {
		if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: k.source.As16()}); err != nil {
			return fmt.Errorf("source: %w", err)
		}
	}
	return nil
}

type synProber struct {
	engine *synEngine
	spec   Spec
	target netip.AddrPort // unmapped, without zone
	zone   uint32         // IPv6 link-local scope

	mu       sync.Mutex
	source   netip.Addr // IPv4: the route's source, looked up again on failures
	resolved time.Time
}

func newSynProber(s Spec, engines *synEngines) (prober, error) {
	if engines == nil {
		return nil, errors.New("type: tcp-half-open needs a scheduler")
	}
	e, err := engines.get()
	if err != nil {
		return nil, fmt.Errorf("type: tcp-half-open: %w", err)
	}
	addr := s.Target.Addr()
	p := &synProber{engine: e, spec: s, target: netip.AddrPortFrom(addr.Unmap().WithZone(""), s.Target.Port())}
	if p.target.Addr().Is6() {
		if e.recv6 == nil {
			return nil, errors.New("target: IPv6 is not available on this host")
		}
		if zone := addr.Zone(); zone != "" {
			ifi, err := net.InterfaceByName(zone)
			if err != nil {
				return nil, fmt.Errorf("target: zone %q: %w", zone, err)
			}
			p.zone = uint32(ifi.Index)
		}
	}
	return p, nil
}

// probe runs one probe and waits for its verdict or the end of ctx.
func (p *synProber) probe(ctx context.Context) error {
	verdict := make(chan error, 1)
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(time.Hour)
	}
	p.start(dl, func(err error) { verdict <- err })
	select {
	case err := <-verdict:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no SYN-ACK or RST: %w", ctx.Err())
	}
}

// start sends the SYN and returns; done gets the verdict from the
// engine's receive loop (SYN-ACK, RST) or its deadline timer.
func (p *synProber) start(deadline time.Time, done func(error)) {
	p.engine.startBatch([]synStart{{p, deadline, done}})
}

// synStart is one probe to start.
type synStart struct {
	p        *synProber
	deadline time.Time
	done     func(error)
}

// startBatch starts probes of this engine: their pending entries under
// one lock, their SYNs by one sendmmsg per sending socket. The scheduler
// hands over the probes due at one wake-up (around a hundred at 10,000
// checks of 100 ms): a send call per SYN cost 1.5 us of system call
// overhead each on the VM this was measured on.
func (e *synEngine) startBatch(starts []synStart) {
	type probe struct {
		key synKey
		msg ipv4.Message
	}
	probes := make([]probe, len(starts))
	for i, st := range starts {
		p, done := st.p, st.done
		starts[i].done = func(err error) {
			if err != nil {
				// The route may have changed: look the source up again,
				// at most once a second (a down backend fails every probe).
				p.mu.Lock()
				if time.Since(p.resolved) > time.Second {
					p.resolved = time.Time{}
				}
				p.mu.Unlock()
			}
			done(err)
		}
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		for _, st := range starts {
			st.done(errors.New("the scheduler has stopped"))
		}
		return
	}
	for i, st := range starts {
		local := e.sourcePortLocked(st.p.target)
		probes[i].key = synKey{synTuple{st.p.target, local}, rand.Uint32()}
		e.waitLocked(probes[i].key, st.deadline, st.done)
	}
	e.mu.Unlock()
	fail := func(i int, err error) {
		e.mu.Lock()
		done := e.takeLocked(probes[i].key)
		e.mu.Unlock()
		if done != nil { // else the deadline or an answer got there first
			done(err)
		}
	}
	// The SYNs, grouped by the socket that sends them (one, mostly).
	var groups []synSender
	byGroup := map[synSender][]int{}
	for i, st := range starts {
		k, err := st.p.syn(&probes[i].msg, probes[i].key)
		if err != nil {
			fail(i, err)
			continue
		}
		if _, ok := byGroup[k]; !ok {
			groups = append(groups, k)
		}
		byGroup[k] = append(byGroup[k], i)
	}
	for _, k := range groups {
		idx := byGroup[k]
		c, err := e.sender(k)
		if err != nil {
			for _, i := range idx {
				fail(i, err)
			}
			continue
		}
		msgs := make([]ipv4.Message, len(idx))
		for j, i := range idx {
			msgs[j] = probes[i].msg
		}
		// Never wait for room: SYNs queued for neighbours that do not
		// resolve fill the socket's buffer, and a probe waiting behind
		// them would outlive its timeout and hold up every other probe.
		// A full buffer fails the probes it refuses at once instead.
		// Sends go one batch at a time: from both CPUs at once, bursts
		// of SYNs overflowed the receive backlog on loopback (97% of
		// 100,000 probes/s timed out; one at a time, 0-0.03%).
		type refused struct {
			i   int
			err error
		}
		var failed []refused
		e.sendMu.Lock()
		for len(msgs) > 0 {
			n, err := c.batch.WriteBatch(msgs, unix.MSG_DONTWAIT)
			if err == nil && n == 0 {
				err = errors.New("sent nothing")
			}
			if err != nil {
				// The first message not sent is the one refused.
				n = 1
				failed = append(failed, refused{idx[0], sendError(err)})
			}
			msgs, idx = msgs[n:], idx[n:]
		}
		e.sendMu.Unlock()
		for _, f := range failed {
			fail(f.i, f.err)
		}
	}
}

func sendError(err error) error {
	if errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("send SYN: the raw socket's send buffer is full (SYNs queued for unresolved neighbours?): %w", err)
	}
	return fmt.Errorf("send SYN: %w", err)
}

// syn fills m with the SYN of probe key and says which socket sends it.
func (p *synProber) syn(m *ipv4.Message, key synKey) (synSender, error) {
	dst := p.target.Addr()
	if dst.Is6() {
		// A link-local target's scope is its socket's (synSender.zone).
		*m = ipv4.Message{Buffers: [][]byte{synSegment(key.local, p.target.Port(), key.seq)}, Addr: &net.IPAddr{IP: dst.AsSlice()}}
		return synSender{family: unix.AF_INET6, source: p.spec.Source, iface: p.spec.Interface, zone: p.zone}, nil
	}
	src, err := p.sourceAddr()
	if err != nil {
		return synSender{}, err
	}
	*m = ipv4.Message{Buffers: [][]byte{synPacket4(src, dst, key.local, p.target.Port(), key.seq)}, Addr: &net.IPAddr{IP: dst.AsSlice()}}
	return synSender{family: unix.AF_INET, iface: p.spec.Interface}, nil
}

func (p *synProber) sourceAddr() (netip.Addr, error) {
	if p.spec.Source.IsValid() {
		return p.spec.Source.Unmap(), nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.source.IsValid() && time.Since(p.resolved) < synRefresh {
		return p.source, nil
	}
	src, err := routeSource(p.target.Addr(), p.spec.Interface)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("source address for %s: %w", p.target.Addr(), err)
	}
	p.source, p.resolved = src, time.Now()
	return src, nil
}

// routeSource asks the kernel which source address it would use towards
// dst: a connected UDP socket sends nothing.
func routeSource(dst netip.Addr, iface string) (netip.Addr, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return netip.Addr{}, err
	}
	defer unix.Close(fd)
	if iface != "" {
		if err := unix.BindToDevice(fd, iface); err != nil {
			return netip.Addr{}, fmt.Errorf("interface: %w", err)
		}
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: 9, Addr: dst.As4()}); err != nil {
		return netip.Addr{}, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.Addr{}, err
	}
	sa4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		return netip.Addr{}, errors.New("no IPv4 source")
	}
	return netip.AddrFrom4(sa4.Addr), nil
}

// synSegment is a SYN with an MSS option (a SYN without options looks
// like a scanner to some middleboxes); its checksum is left 0.
func synSegment(sport, dport uint16, seq uint32) []byte {
	b := make([]byte, 24)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], seq)
	b[12] = 6 << 4 // data offset: 6 words
	b[13] = tcpSYN
	binary.BigEndian.PutUint16(b[14:], 64240) // window
	copy(b[20:], []byte{2, 4, 0x05, 0xb4})    // MSS 1460
	return b
}

// synPacket4 is an IPv4 packet holding a SYN, TCP checksum included; the
// kernel fills in the IP identification and header checksum.
func synPacket4(src, dst netip.Addr, sport, dport uint16, seq uint32) []byte {
	seg := synSegment(sport, dport, seq)
	b := make([]byte, 20+len(seg))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[6] = 0x40 // don't fragment
	b[8] = 64   // TTL
	b[9] = unix.IPPROTO_TCP
	s4, d4 := src.As4(), dst.As4()
	copy(b[12:], s4[:])
	copy(b[16:], d4[:])
	copy(b[20:], seg)
	binary.BigEndian.PutUint16(b[36:], tcpChecksum4(s4, d4, b[20:]))
	return b
}

func tcpChecksum4(src, dst [4]byte, seg []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(src[:])
	add(dst[:])
	sum += unix.IPPROTO_TCP + uint32(len(seg))
	add(seg)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
