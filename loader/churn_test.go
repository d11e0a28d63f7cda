package loader

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/privtest"
)

// The model-based churn test: a seeded generator (model_test.go) produces a
// sequence of loader operations (services and backends added, changed and
// removed, state flaps, syncs or none, restarts, crashes between any two
// kernel writes followed by adoption and re-apply); after every operation
// a fixed population of flows plus brand-new ones runs through the program
// with BPF_PROG_RUN on each CPU (the thread pinned there), and every verdict
// and output frame is checked against the model. A failure is shrunk to a
// short sequence (delta debugging over fresh dataplanes) and printed with
// its seed. `make churn` runs the long version.

var (
	churnSeedFlag   = flag.Uint64("churn.seed", 0, "first churn seed to run (0: the fixed CI seeds)")
	churnSeedsFlag  = flag.Int("churn.seeds", 1, "number of consecutive churn seeds from -churn.seed")
	churnStepsFlag  = flag.Int("churn.steps", 0, "operations per churn seed (0: the CI default)")
	churnShrinkFlag = flag.Duration("churn.shrink", 3*time.Minute, "time budget for shrinking a churn failure")
	churnStrictFlag = flag.Bool("churn.strict-service", false, "fail when an established flow stays on its catch-all backend after a port service for its port appeared")
)

// The CI run: these seeds, this many steps each, on every online CPU.
var churnCISeeds = []uint64{1, 2, 3, 4}

const churnCISteps = 400

// churnFlowsPerDest is the fixed flow population per destination; each
// check also sends one brand-new flow per destination.
const churnFlowsPerDest = 64

// churnIDPool is how many free backend IDs a churn dataplane starts with
// (at most 8 services x 6 backends are live at once).
const churnIDPool = 64

// TestChurnGeneratorDeterministic: a seed names one sequence, whatever
// runs it, so a printed seed reproduces a failure.
func TestChurnGeneratorDeterministic(t *testing.T) {
	a, b := generateChurn(42, 300, 2), generateChurn(42, 300, 2)
	for i := range a {
		if a[i].String() != b[i].String() {
			t.Fatalf("step %d differs:\n%s\n%s", i, a[i], b[i])
		}
	}
	kinds := map[opKind]int{}
	crashes := 0
	for _, op := range a {
		kinds[op.kind]++
		if op.crashAt >= 0 {
			crashes++
		}
	}
	for k := opApply; k <= opRestart; k++ {
		if kinds[k] == 0 {
			t.Errorf("300 steps without one op of kind %d", k)
		}
	}
	if crashes == 0 {
		t.Error("300 steps without a crash")
	}
}

// TestChurn runs the CI seeds (or -churn.seed/-churn.seeds/-churn.steps)
// against a fresh attached dataplane each, and on a failure shrinks the
// sequence and prints it with the seed.
func TestChurn(t *testing.T) {
	e := newChurnEnv(t)
	seeds, steps := churnCISeeds, churnCISteps
	if *churnSeedFlag != 0 {
		seeds = nil
		for i := range max(1, *churnSeedsFlag) {
			seeds = append(seeds, *churnSeedFlag+uint64(i))
		}
	}
	if *churnStepsFlag > 0 {
		steps = *churnStepsFlag
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			ops := generateChurn(seed, steps, len(e.cpus))
			start := time.Now()
			st := &churnStats{}
			f := e.run(t, ops, st)
			if f == nil {
				t.Logf("seed %d: %d steps (%d crashes, %d restarts), %d packets on cpus %v, %v (checks %v, restarts %v)",
					seed, steps, st.crashes, st.restarts, st.packets, e.cpus, time.Since(start).Round(time.Millisecond),
					st.checking.Round(time.Millisecond), st.recovering.Round(time.Millisecond))
				return
			}
			t.Logf("seed %d fails at step %d after %v: [%s] %s", seed, f.step, time.Since(start).Round(time.Millisecond), f.kind, f.msg)
			short, sf, trials := e.shrink(t, ops[:f.step+1], f, *churnShrinkFlag)
			var b strings.Builder
			fmt.Fprintf(&b, "churn seed %d (steps %d, cpus %v): invariant %q broken at step %d of the original sequence\n", seed, steps, e.cpus, f.kind, f.step)
			fmt.Fprintf(&b, "shrunk in %d trials to %d ops; it fails at op %d with: %s\n", trials, len(short), sf.step, sf.msg)
			for i, op := range short {
				fmt.Fprintf(&b, "  %2d  %s\n", i, op)
			}
			fmt.Fprintf(&b, "reproduce: go test -count=1 -run 'TestChurn$/seed=%d$' ./loader/ -args -churn.seed=%d -churn.steps=%d", seed, seed, steps)
			t.Fatal(b.String())
		})
	}
}

// churnEnv is one veth pair (the forwarder's interface and a second egress
// port) in the test's private namespace, a private bpffs mount, and one
// worker goroutine locked to each online CPU.
type churnEnv struct {
	iface   string
	port2   string
	ifindex int
	root    string
	cpus    []int
	work    []chan func()
}

func newChurnEnv(t *testing.T) *churnEnv {
	t.Helper()
	privtest.Require(t)
	suffix := rand.Uint32() & 0xffffff
	e := &churnEnv{iface: fmt.Sprintf("kbc%06x", suffix), port2: fmt.Sprintf("kbd%06x", suffix), root: pinRoot(t)}
	e.ifindex = addPort(t, e.iface, lbMAC)
	addPort(t, e.port2, port2MAC)
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatalf("cpu affinity: %v", err)
	}
	for cpu := 0; cpu < 1024 && len(e.cpus) < 8; cpu++ {
		if set.IsSet(cpu) {
			e.cpus = append(e.cpus, cpu)
		}
	}
	if n := ebpf.MustPossibleCPU(); len(e.cpus) < min(n, 2) {
		t.Logf("only cpus %v of %d possible are usable here", e.cpus, n)
	}
	for _, cpu := range e.cpus {
		ch := make(chan func())
		ready := make(chan error)
		go func() {
			// Never unlocked: the thread dies with the goroutine, and its
			// affinity with it.
			runtime.LockOSThread()
			var one unix.CPUSet
			one.Set(cpu)
			ready <- unix.SchedSetaffinity(0, &one)
			for f := range ch {
				f()
			}
		}()
		if err := <-ready; err != nil {
			t.Fatalf("pin a thread to cpu %d: %v", cpu, err)
		}
		e.work = append(e.work, ch)
	}
	t.Cleanup(func() {
		for _, ch := range e.work {
			close(ch)
		}
		_ = RemovePinned(e.root, e.iface)
	})
	return e
}

type xdpResult struct {
	verdict uint32
	out     []byte
	err     error
}

// runOn runs frames through prog on the i-th online CPU, in order.
func (e *churnEnv) runOn(i int, prog *ebpf.Program, frames [][]byte) []xdpResult {
	res := make([]xdpResult, len(frames))
	done := make(chan struct{})
	e.work[i] <- func() {
		defer close(done)
		for j, in := range frames {
			out := make([]byte, len(in)+64)
			opts := ebpf.RunOptions{Data: in, DataOut: out, Context: xdpMD{DataEnd: uint32(len(in)), IngressIfindex: uint32(e.ifindex)}}
			v, err := prog.Run(&opts)
			res[j] = xdpResult{verdict: v, out: opts.DataOut, err: err}
		}
	}
	<-done
	return res
}

type churnFailure struct {
	step int
	kind string // which invariant; shrinking keeps it
	msg  string
}

type churnStats struct {
	crashes, restarts, packets int
	checking, recovering       time.Duration
}

// churnFlow is one client flow. est is the membership serial the model
// says the dataplane's flow entry names (0: none): while that membership is
// live and up or draining, the flow must stay on it.
type churnFlow struct {
	dest   churnDest
	client netip.AddrPort
	frame  []byte
	est    int
}

type churnRun struct {
	tb    testing.TB
	e     *churnEnv
	d     *Dataplane
	m     *model
	flows []*churnFlow
	macs  map[string]string // every MAC ever configured -> whose, for messages
	fresh uint16            // source port of the next brand-new flow
	step  int
	stats *churnStats
}

func churnFrame(tb testing.TB, client netip.AddrPort, d churnDest) []byte {
	proto := layers.IPProtocolTCP
	if d.proto == UDP {
		proto = layers.IPProtocolUDP
	}
	p := pkt{src: client.Addr().String(), dst: d.vip.String(), l4: l4{proto, client.Port(), d.port}, payload: []byte("churn")}
	if d.vip.Is4() {
		return v4(tb, p, 0)
	}
	return v6(tb, p)
}

func churnClient(d churnDest, host int, port uint16) netip.AddrPort {
	if d.vip.Is4() {
		return netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("203.0.113.%d", host)), port)
	}
	return netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("2001:db8:ffff::%x", host)), port)
}

// run replays ops on a fresh dataplane and returns the first broken
// invariant, nil when every check held.
func (e *churnEnv) run(tb testing.TB, ops []churnOp, st *churnStats) (f *churnFailure) {
	r := &churnRun{tb: tb, e: e, m: newModel(), macs: map[string]string{}, fresh: 20000, step: -1, stats: st}
	for _, d := range churnDests() {
		for i := range churnFlowsPerDest {
			c := churnClient(d, 1+i%4, uint16(10000+i))
			r.flows = append(r.flows, &churnFlow{dest: d, client: c, frame: churnFrame(tb, c, d)})
		}
	}
	if err := RemovePinned(e.root, e.iface); err != nil {
		return r.fail("setup", "remove old pins: %v", err)
	}
	if f := r.open(); f != nil {
		return f
	}
	defer func() {
		if r.d != nil {
			if err := r.d.Detach(); err != nil && f == nil {
				f = r.fail("setup", "detach: %v", err)
			}
		}
	}()
	for i, op := range ops {
		r.step = i
		r.note(op)
		if f := r.do(op); f != nil {
			return f
		}
	}
	return nil
}

func (r *churnRun) fail(kind, format string, args ...any) *churnFailure {
	return &churnFailure{step: r.step, kind: kind, msg: fmt.Sprintf(format, args...)}
}

// note remembers whose MACs an op configures, so a frame forwarded to a
// stale MAC can be explained.
func (r *churnRun) note(op churnOp) {
	if op.kind != opApply {
		return
	}
	for _, b := range op.spec.Backends {
		r.macs[b.MAC.String()] = fmt.Sprintf("backend %s of service %s (configured at step %d)", b.Addr, op.key, r.step)
	}
}

func (r *churnRun) open() *churnFailure {
	d, err := Open(context.Background(), Options{Interface: r.e.iface, PinRoot: r.e.root, HashSeed: churnSeed})
	if err != nil {
		return r.fail("open", "open/adopt: %v", err)
	}
	// Stop the background table rebuild: tables then change only in
	// ApplyService and Sync, at points the sequence says, so a sequence
	// replays exactly; "no rebuild yet" is a step without Sync. Close
	// copes with a loop that already stopped.
	close(d.stop)
	<-d.done
	// A small pool of free backend IDs: the FIFO of released IDs wraps
	// within a few dozen adds (as it does after 65535 on a long-lived
	// dataplane), so IDs are reused across services in every run.
	d.mu.Lock()
	d.freeBe = d.freeBe[:min(len(d.freeBe), churnIDPool)]
	d.mu.Unlock()
	r.d = d
	return nil
}

// reuseLatest puts the most recently released backend ID first in the
// free list, so the next backend added anywhere takes it: the loader must
// not depend on a released ID staying unused for long (its FIFO wraps on a
// long-lived dataplane). IDs still waiting out a grace period are not in
// the free list and stay protected.
func (r *churnRun) reuseLatest() {
	d := r.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if n := len(d.freeBe); n > 1 {
		last := d.freeBe[n-1]
		copy(d.freeBe[1:], d.freeBe[:n-1])
		d.freeBe[0] = last
	}
}

// dpSpec is op's spec as the dataplane takes it: a copy (ApplyService
// normalizes it in place), with the second port's real name.
func (r *churnRun) dpSpec(sp ServiceSpec) ServiceSpec {
	out := sp
	out.Backends = nil
	for _, b := range sp.Backends {
		b.MAC = slices.Clone(b.MAC)
		if b.Port != "" {
			b.Port = r.e.port2
		}
		out.Backends = append(out.Backends, b)
	}
	return out
}

// exec performs op on d; m is the model before op (ops on services or
// backends it lacks are skipped, as the model skips them).
func (r *churnRun) exec(op churnOp, m *model) error {
	d := r.d
	switch op.kind {
	case opApply:
		_, err := d.ApplyService(op.key, r.dpSpec(op.spec))
		return err
	case opDelete:
		if _, ok := m.services[op.key]; !ok {
			return nil
		}
		_, err := d.DeleteService(op.key)
		return err
	case opState:
		s, ok := m.services[op.key]
		if !ok {
			return nil
		}
		if _, ok := s.backends[op.addr]; !ok {
			return nil
		}
		for _, st := range op.states {
			if _, err := d.SetBackendState(op.key, op.addr, st); err != nil {
				return err
			}
		}
	case opSync:
		return d.Sync()
	}
	return nil
}

var errChurnCrash = errors.New("crash injected by the churn test")

func (r *churnRun) do(op churnOp) *churnFailure {
	if op.kind == opRestart {
		r.stats.restarts++
		if f := r.restart(nil, r.m, op.cpus, -1); f != nil {
			return f
		}
		r.m.apply(op)
		return r.check(op.cpus)
	}
	r.reuseLatest()
	if op.crashAt < 0 {
		if err := r.exec(op, r.m); err != nil {
			return r.fail("op-error", "%s: %v", op, err)
		}
		r.m.apply(op)
		return r.check(op.cpus)
	}

	r.stats.crashes++
	prev, next := r.m.clone(), r.m.clone()
	next.apply(op)
	if err := r.crashing(op.crashAt, func() error { return r.exec(op, prev) }); err != nil {
		return r.fail("op-error", "%s: %v", op, err)
	}
	if f := r.checkWeak(prev, next, op.cpus, "right after the crash"); f != nil {
		return f
	}
	if f := r.restart(prev, next, op.cpus, op.crashAgain); f != nil {
		return f
	}
	r.m = next
	return r.check(op.cpus)
}

// crashing runs fn as a process that dies right before its at-th kernel
// write: that write and every later one are refused. It returns fn's error
// unless that is the crash itself.
func (r *churnRun) crashing(at int, fn func() error) error {
	// Writes may come from several goroutines (on kernels without batches
	// for maps of maps, a new service installs its two buffers in
	// parallel).
	var mu sync.Mutex
	n, refused := 0, false
	r.d.beforeWrite = func(string) error {
		mu.Lock()
		defer mu.Unlock()
		if n >= at {
			refused = true
			return errChurnCrash
		}
		n++
		return nil
	}
	err := fn()
	mu.Lock()
	crashed := refused
	mu.Unlock()
	// A process that died writes nothing more: the hook stays and refuses
	// any write (a background one included) until the handle is closed.
	if err != nil && !(crashed && errors.Is(err, errChurnCrash)) {
		return err
	}
	return nil
}

// reopen closes this process's handles (pinned state keeps forwarding) and
// opens again, adopting the pins.
func (r *churnRun) reopen() *churnFailure {
	if err := r.d.Close(); err != nil {
		return r.fail("close", "close: %v", err)
	}
	r.d = nil
	return r.open()
}

// restart is what a restarted controller does: reopen, then re-apply next
// (reapply). With prev set (after a crash) the weak invariants are checked
// between adoption and re-apply. With crashAgain >= 0 the restarted
// process dies too, before that write of its re-apply, and a third one
// recovers.
func (r *churnRun) restart(prev, next *model, cpus uint8, crashAgain int) *churnFailure {
	defer func(start time.Time) { r.stats.recovering += time.Since(start) }(time.Now())
	if f := r.reopen(); f != nil {
		return f
	}
	if prev != nil {
		if f := r.checkWeak(prev, next, cpus, "after adoption, before re-apply"); f != nil {
			return f
		}
	}
	if crashAgain >= 0 {
		if err := r.crashing(crashAgain, func() error { return r.reapply(next) }); err != nil {
			return r.fail("reapply-error", "%v", err)
		}
		if f := r.checkWeak(prev, next, cpus, "right after a crash during re-apply"); f != nil {
			return f
		}
		if f := r.reopen(); f != nil {
			return f
		}
		if f := r.checkWeak(prev, next, cpus, "after the second adoption, before re-apply"); f != nil {
			return f
		}
	}
	if err := r.reapply(next); err != nil {
		return r.fail("reapply-error", "%v", err)
	}
	return nil
}

// reapply brings the adopted dataplane to next as a controller does:
// delete the services the config does not name, apply every configured
// service, set each backend's state where the held one differs, sync.
func (r *churnRun) reapply(next *model) error {
	d := r.d
	for _, si := range d.Services() {
		if _, ok := next.services[si.Key]; !ok {
			if _, err := d.DeleteService(si.Key); err != nil {
				return fmt.Errorf("re-apply: delete %s: %w", si.Key, err)
			}
		}
	}
	for _, k := range next.sortedKeys() {
		if _, err := d.ApplyService(k, r.dpSpec(next.services[k].spec())); err != nil {
			return fmt.Errorf("re-apply: apply %s: %w", k, err)
		}
	}
	for _, k := range next.sortedKeys() {
		held := map[netip.Addr]State{}
		for _, si := range d.Services() {
			if si.Key == k {
				for _, b := range si.Backends {
					held[b.Addr] = b.State
				}
			}
		}
		for _, b := range next.services[k].sortedBackends() {
			if got, ok := held[b.spec.Addr]; !ok || got != b.spec.State {
				if _, err := d.SetBackendState(k, b.spec.Addr, b.spec.State); err != nil {
					return fmt.Errorf("re-apply: state of %s in %s: %w", b.spec.Addr, k, err)
				}
			}
		}
	}
	if err := d.Sync(); err != nil {
		return fmt.Errorf("re-apply: sync: %w", err)
	}
	return nil
}

// decodeOut splits a forwarded frame: destination and source MAC, the VLAN
// it carries (0 = none), and whether everything from L3 on is the input's.
func decodeOut(in, out []byte) (dst, src net.HardwareAddr, vlan uint16, intact bool) {
	if len(out) < 14 {
		return nil, nil, 0, false
	}
	dst, src = net.HardwareAddr(out[0:6]), net.HardwareAddr(out[6:12])
	off := 12
	if binary.BigEndian.Uint16(out[12:]) == 0x8100 {
		if len(out) < 18 {
			return dst, src, 0, false
		}
		vlan = binary.BigEndian.Uint16(out[14:]) & 0xfff
		off = 16
	}
	return dst, src, vlan, bytes.Equal(out[off:], in[12:])
}

func forwarded(v uint32) bool { return v == xdpTX || v == xdpRedirect }

// stepFlows is the population plus one brand-new flow per destination.
func (r *churnRun) stepFlows() []*churnFlow {
	flows := slices.Clone(r.flows)
	for _, d := range churnDests() {
		c := churnClient(d, 200, r.fresh)
		flows = append(flows, &churnFlow{dest: d, client: c, frame: churnFrame(r.tb, c, d)})
	}
	r.fresh++
	if r.fresh == 0 {
		r.fresh = 20000
	}
	return flows
}

func (r *churnRun) runChecks(cpus uint8, flows []*churnFlow, judge func(cpu int, f *churnFlow, res xdpResult, seen *int) *churnFailure) *churnFailure {
	frames := make([][]byte, len(flows))
	for i, f := range flows {
		frames[i] = f.frame
	}
	seen := make([]int, len(flows))
	defer func(start time.Time) { r.stats.checking += time.Since(start) }(time.Now())
	for ci, cpu := range r.e.cpus {
		if cpus&(1<<ci) == 0 {
			continue
		}
		res := r.e.runOn(ci, r.d.objs.KeepbitXdp, frames)
		r.stats.packets += len(frames)
		for i, f := range flows {
			if res[i].err != nil {
				return r.fail("prog-run", "BPF_PROG_RUN on cpu %d: %v", cpu, res[i].err)
			}
			if res[i].verdict == xdpAborted {
				return r.fail("aborted", "cpu %d: flow %s -> %s: XDP_ABORTED", cpu, f.client, f.dest)
			}
			if fl := judge(cpu, f, res[i], &seen[i]); fl != nil {
				return fl
			}
		}
	}
	return nil
}

func (r *churnRun) describe(hw net.HardwareAddr) string {
	if who, ok := r.macs[hw.String()]; ok {
		return hw.String() + ", " + who
	}
	return hw.String() + ", never configured"
}

func (b *mBackend) String() string {
	return fmt.Sprintf("%s of %s (%s, serial %d)", b.spec.Addr, b.key, b.spec.State, b.serial)
}

// check holds the dataplane to the model after a completed step.
func (r *churnRun) check(cpus uint8) *churnFailure {
	m := r.m
	return r.runChecks(cpus, r.stepFlows(), func(cpu int, f *churnFlow, res xdpResult, seen *int) *churnFailure {
		where := fmt.Sprintf("cpu %d, flow %s -> %s", cpu, f.client, f.dest)
		s := m.match(f.dest)
		if s == nil {
			if res.verdict != xdpPass || !bytes.Equal(res.out, f.frame) {
				what := verdictName(res.verdict)
				if forwarded(res.verdict) {
					dst, _, _, _ := decodeOut(f.frame, res.out)
					what += " to " + r.describe(dst)
				}
				return r.fail("no-service-forwarded", "%s: no service has this destination, want PASS byte-identical, got %s", where, what)
			}
			return nil
		}
		var want *mBackend
		why := ""
		if b := m.bySerial(f.est); b != nil && (b.spec.State == Up || b.spec.State == Draining) && sameHome(b.key, s.key) {
			want, why = b, "the flow is established on it"
		}
		var ups []*mBackend
		if want == nil {
			for _, b := range s.sortedBackends() {
				if b.spec.State == Up {
					ups = append(ups, b)
				}
			}
			if len(ups) == 0 {
				wantV := uint32(xdpDrop)
				if s.noBackend == PassNoBackend {
					wantV = xdpPass
				}
				if res.verdict != wantV || (wantV == xdpPass && !bytes.Equal(res.out, f.frame)) {
					what := verdictName(res.verdict)
					kind := "no-backend-verdict"
					if forwarded(res.verdict) {
						dst, _, _, _ := decodeOut(f.frame, res.out)
						what += " to " + r.describe(dst)
						kind = "no-backend-forwarded"
					}
					return r.fail(kind, "%s: service %s has no backend up, want %s, got %s", where, s.key, verdictName(wantV), what)
				}
				return nil
			}
			if s.fresh {
				p, err := s.predict(f.client, f.dest)
				if err != nil {
					return r.fail("model", "%s: predict: %v", where, err)
				}
				want, why = p, "the Maglev table of the up backends says so"
			}
		}
		if !forwarded(res.verdict) {
			return r.fail("not-forwarded", "%s: service %s has usable backends, got %s", where, s.key, verdictName(res.verdict))
		}
		dst, src, vlan, intact := decodeOut(f.frame, res.out)
		if !intact {
			return r.fail("frame", "%s: forwarded frame's L3 differs from the input's", where)
		}
		b := m.byMAC(dst)
		switch {
		case b == nil:
			return r.fail("unknown-backend", "%s: forwarded to %s, which no configured backend has now", where, r.describe(dst))
		case b.key != s.key && b != want:
			return r.fail("wrong-service", "%s: belongs to %s, forwarded to backend %s", where, s.key, b)
		}
		wantV, wantSrc := uint32(xdpTX), lbMAC
		if b.spec.Port != "" {
			wantV, wantSrc = xdpRedirect, port2MAC
		}
		if vlan != b.spec.VLAN || res.verdict != wantV || !bytes.Equal(src, wantSrc) {
			return r.fail("stale-record", "%s: backend %s: got %s vlan %d src %s, want %s vlan %d src %s",
				where, b, verdictName(res.verdict), vlan, src, verdictName(wantV), b.spec.VLAN, wantSrc)
		}
		if *seen != 0 && *seen != b.serial {
			return r.fail("split", "%s: forwarded to %s, but on an earlier cpu this step to %s", where, b, m.bySerial(*seen))
		}
		if want != nil && b != want {
			kind := "maglev"
			if why == "the flow is established on it" {
				kind = "established-moved"
			}
			return r.fail(kind, "%s: forwarded to %s, want %s because %s", where, b, want, why)
		}
		if want == nil && b.spec.State != Up {
			return r.fail("not-usable", "%s: new flow forwarded to %s, which is not up", where, b)
		}
		*seen, f.est = b.serial, b.serial
		return nil
	})
}

// sameHome reports whether a flow established on a backend of service
// est may stay there while its packets belong to service now. Always when
// they are the same service. When a port service appears next to the VIP's
// catch-all, the dataplane keeps established flows of that port on their
// catch-all backend (flow entries are keyed by 5-tuple, not by service)
// until that backend goes down or leaves; -churn.strict-service refuses
// that, per the letter of "only to a backend of the service the packet is
// addressed to".
func sameHome(est, now ServiceKey) bool {
	if est == now {
		return true
	}
	return !*churnStrictFlag && est.Port == 0 && est.VIP == now.VIP && est.Proto == now.Proto
}

// checkWeak holds a dataplane caught between prev and next (a crash during
// the op that leads from one to the other) to what must hold anyway: a
// packet goes only to a backend that is a member, not down, with that
// record, of the service the packet belongs to in prev or next; a
// destination with no service in either passes untouched; one flow never
// goes to two backends.
func (r *churnRun) checkWeak(prev, next *model, cpus uint8, when string) *churnFailure {
	return r.runChecks(cpus, r.stepFlows(), func(cpu int, f *churnFlow, res xdpResult, seen *int) *churnFailure {
		where := fmt.Sprintf("%s: cpu %d, flow %s -> %s", when, cpu, f.client, f.dest)
		sp, sn := prev.match(f.dest), next.match(f.dest)
		if !forwarded(res.verdict) {
			if sp == nil && sn == nil && (res.verdict != xdpPass || !bytes.Equal(res.out, f.frame)) {
				return r.fail("weak-no-service", "%s: no service before or after, want PASS byte-identical, got %s", where, verdictName(res.verdict))
			}
			if res.verdict == xdpPass && !bytes.Equal(res.out, f.frame) {
				return r.fail("weak-frame", "%s: passed frame altered", where)
			}
			return nil
		}
		dst, src, vlan, intact := decodeOut(f.frame, res.out)
		if !intact {
			return r.fail("weak-frame", "%s: forwarded frame's L3 differs from the input's", where)
		}
		if sp == nil && sn == nil {
			return r.fail("weak-deleted-forwarded", "%s: no service before or after the crashed op, forwarded to %s", where, r.describe(dst))
		}
		var ok *mBackend
		for _, c := range []struct {
			m *model
			s *mService
		}{{prev, sp}, {next, sn}} {
			if c.s == nil {
				continue
			}
			b := c.m.byMAC(dst)
			if b == nil || b.spec.State == Down || b.spec.VLAN != vlan {
				continue
			}
			if b.key != c.s.key && (b.serial != f.est || !sameHome(b.key, c.s.key)) {
				continue
			}
			wantV, wantSrc := uint32(xdpTX), lbMAC
			if b.spec.Port != "" {
				wantV, wantSrc = xdpRedirect, port2MAC
			}
			if res.verdict == wantV && bytes.Equal(src, wantSrc) {
				ok = b
				break
			}
		}
		if ok == nil {
			in := func(m *model, s *mService) string {
				if s == nil {
					return "none"
				}
				return s.key.String()
			}
			return r.fail("weak-wrong-backend", "%s: forwarded to %s (vlan %d), not a usable member of the packet's service before (%s) or after (%s)",
				where, r.describe(dst), vlan, in(prev, sp), in(next, sn))
		}
		if *seen != 0 && *seen != ok.serial {
			return r.fail("weak-split", "%s: forwarded to %s, on an earlier cpu to serial %d", where, ok, *seen)
		}
		*seen, f.est = ok.serial, ok.serial
		return nil
	})
}

// shrink looks for a short subsequence of ops that still breaks the same
// invariant, by delta debugging: drop chunks (halves, quarters, ...), then
// single ops, each candidate replayed on a fresh dataplane.
func (e *churnEnv) shrink(tb testing.TB, ops []churnOp, f *churnFailure, budget time.Duration) ([]churnOp, *churnFailure, int) {
	deadline := time.Now().Add(budget)
	trials := 0
	best := f
	try := func(c []churnOp) bool {
		if len(c) == 0 || time.Now().After(deadline) {
			return false
		}
		trials++
		got := e.run(tb, c, &churnStats{})
		if got == nil || got.kind != f.kind {
			return false
		}
		best = got
		return true
	}
	n := 2
	for len(ops) >= 2 && time.Now().Before(deadline) {
		chunk := (len(ops) + n - 1) / n
		reduced := false
		for i := 0; i < len(ops); i += chunk {
			c := slices.Concat(ops[:i], ops[min(i+chunk, len(ops)):])
			if try(c) {
				ops = c[:best.step+1]
				n = max(n-1, 2)
				reduced = true
				break
			}
		}
		if !reduced {
			if n >= len(ops) {
				break
			}
			n = min(2*n, len(ops))
		}
	}
	// Simplify what is left: checks on every CPU where that still fails.
	for i := range ops {
		all := uint8(1<<len(e.cpus) - 1)
		if ops[i].cpus == all {
			continue
		}
		c := slices.Clone(ops)
		c[i].cpus = all
		if try(c) {
			ops = c[:best.step+1]
		}
	}
	if best == f {
		// Never re-ran: report the failure of the sequence as given.
		if got := e.run(tb, ops, &churnStats{}); got != nil {
			best = got
		}
	}
	return ops, best, trials
}

// TestChurnRegressions replays sequences the churn test shrank failures of
// the loader to (issue 7), so each stays fixed whatever the generator does
// next. Every case is one fresh dataplane; the model checks every step.
func TestChurnRegressions(t *testing.T) {
	e := newChurnEnv(t)
	v4web, v4dns, v4tls, v6any := churnKeys[0], churnKeys[2], churnKeys[3], churnKeys[5]
	be := func(addr, hw string, w uint32, st State) BackendSpec {
		return BackendSpec{Addr: netip.MustParseAddr(addr), MAC: mac(hw), Weight: w, State: st}
	}
	apply := func(key ServiceKey, size uint32, cpus uint8, bs ...BackendSpec) churnOp {
		return churnOp{kind: opApply, key: key, spec: ServiceSpec{TableSize: size, Backends: bs}, crashAt: -1, crashAgain: -1, cpus: cpus}
	}
	state := func(key ServiceKey, addr string, cpus uint8, sts ...State) churnOp {
		return churnOp{kind: opState, key: key, addr: netip.MustParseAddr(addr), states: sts, crashAt: -1, crashAgain: -1, cpus: cpus}
	}
	const both, cpu0 = 3, 1
	type tc struct {
		name string
		ops  []churnOp
	}
	cases := []tc{
		{
			// Defect 1: the removed 10.0.0.6 stays in v4web's live table
			// (which, with no backend up, is all members) while its ID is
			// freed; v4dns's 10.0.0.6 takes the ID, and v4web's flows go
			// to v4dns's backend.
			"removed backend's ID reused by another service",
			[]churnOp{
				apply(v4web, 509, both, be("10.0.0.5", "02:cb:00:00:00:65", 4, Draining).port("port2"), be("10.0.0.6", "02:cb:00:00:00:33", 3, Up).vlan(2757)),
				apply(v4web, 509, both, be("10.0.0.5", "02:cb:00:00:00:65", 4, Draining)),
				apply(v4dns, 1021, both, be("10.0.0.6", "02:cb:00:00:00:67", 1, Up), be("2001:db8:b::4", "02:cb:00:00:00:68", 4, Up)),
			},
		},
		{
			// Defect 2: 10.0.0.5 goes down while only cpu 0 sees traffic
			// (its flows move there); back up, cpu 1's cache entry from
			// before matches the restored state word again.
			"down->up flap seen by one cpu: one flow, two backends",
			[]churnOp{
				apply(v6any, 1021, both, be("10.0.0.10", "02:cb:00:00:00:0e", 4, Up).vlan(1389), be("10.0.0.5", "02:cb:00:00:00:0f", 4, Up).port("port2"), be("10.0.0.9", "02:cb:00:00:00:10", 3, Up).group(1)),
				state(v6any, "10.0.0.5", cpu0, Down),
				state(v6any, "10.0.0.5", both, Up),
			},
		},
		{
			// Defect 2, record variant: two record changes flip the info
			// slot there and back, restoring the state word cpu 1 cached
			// with the first record: the flow leaves with a MAC and port
			// the backend no longer has.
			"record slot flipped twice: cached flow keeps the old MAC",
			[]churnOp{
				apply(v6any, 1021, both, be("10.0.0.10", "02:cb:00:00:00:2f", 1, Up).port("port2")),
				state(v6any, "10.0.0.10", both, Draining),
				apply(v6any, 509, cpu0, be("10.0.0.10", "02:cb:00:00:00:3a", 1, Draining)),
				apply(v6any, 509, both, be("10.0.0.10", "02:cb:00:00:00:3a", 3, Draining)),
			},
		},
	}
	// Defect 11: a crash at any write of DeleteService, then adoption and a
	// controller that no longer names the service: nothing of it may be
	// forwarded, cached flows included.
	for at := range 6 {
		del := churnOp{kind: opDelete, key: v4tls, crashAt: at, crashAgain: -1, cpus: both}
		cases = append(cases, tc{fmt.Sprintf("crash before write %d of DeleteService", at), []churnOp{
			apply(v4tls, 1021, both, be("10.0.0.3", "02:cb:00:00:00:16", 2, Up).port("port2").vlan(3430), be("2001:db8:b::1", "02:cb:00:00:00:1d", 3, Up), be("10.0.0.2", "02:cb:00:00:00:18", 4, Draining)),
			{kind: opSync, crashAt: -1, crashAgain: -1, cpus: both},
			del,
		}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if f := e.run(t, c.ops, &churnStats{}); f != nil {
				var b strings.Builder
				for i, op := range c.ops {
					fmt.Fprintf(&b, "  %2d  %s\n", i, op)
				}
				t.Fatalf("[%s] at op %d: %s\n%s", f.kind, f.step, f.msg, b.String())
			}
		})
	}
}
