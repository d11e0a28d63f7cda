package loader

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/privtest"
)

// lab is a Dataplane loaded (not attached) on a dummy interface, with a
// second dummy as another egress port, driven by BPF_PROG_RUN.
type lab struct {
	t       testing.TB
	dp      *Dataplane
	ifindex int
	port2   string
	// noContext: run frames without an xdp_md (newLabWithoutContext).
	noContext bool
}

// testProgram is the build the lab loads: KEEPBIT_TEST_PROGRAM (auto,
// current or compat) runs the loader's tests on a build of choice, so
// that the compatible build's packet path is tested on this kernel too
// (make test does).
func testProgram(t testing.TB) Program {
	p, err := ParseProgram(os.Getenv("KEEPBIT_TEST_PROGRAM"))
	if err != nil {
		t.Fatalf("KEEPBIT_TEST_PROGRAM: %v", err)
	}
	return p
}

// xdpContextRuns reports whether BPF_PROG_RUN takes an xdp_md for an XDP
// program (Linux 5.15), which the lab's frames need to name their ingress
// port; older kernels refuse it with EINVAL.
func xdpContextRuns(t testing.TB) bool {
	t.Helper()
	ok, err := xdpContextProbe()
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// needXDPContext skips a test whose frames name their ingress port (l.chosen
// and the like) on a kernel whose BPF_PROG_RUN takes no xdp_md.
func needXDPContext(t testing.TB) {
	t.Helper()
	if !xdpContextRuns(t) {
		t.Skipf("kernel %s lacks BPF_PROG_RUN with an xdp_md (Linux 5.15), which this test's frames need to name their ingress port", kernelRelease())
	}
}

// xdpContextProbe asks the kernel once per test binary.
var xdpContextProbe = sync.OnceValues(func() (bool, error) {
	prog, err := LoadBaseline()
	if err != nil {
		return false, err
	}
	defer prog.Close()
	in := make([]byte, 64)
	_, err = prog.Run(&ebpf.RunOptions{Data: in, Context: xdpMD{DataEnd: uint32(len(in))}})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL):
		return false, nil
	}
	return false, fmt.Errorf("BPF_PROG_RUN with an xdp_md: %w", err)
})

// xdpMD is struct xdp_md as BPF_PROG_RUN takes it.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// addPort creates a veth pair name <-> name+"p" (this kernel has no dummy
// driver) and returns name's index.
func addPort(t testing.TB, name string, hw net.HardwareAddr) int {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: hw}, PeerName: name + "p"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(v) })
	for _, n := range []string{name, name + "p"} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatalf("up %s: %v", n, err)
		}
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

func newLab(t testing.TB) *lab {
	t.Helper()
	return newLabWith(t, Options{})
}

// newLabWithoutContext is a lab whose frames run without an xdp_md, as on
// kernels before 5.15: their ingress is the loopback device, so a frame
// for a backend on the lab's port is redirected there (XDP_REDIRECT), not
// sent back (XDP_TX).
func newLabWithoutContext(t testing.TB, opts Options) *lab {
	t.Helper()
	privtest.Require(t)
	l := buildLab(t, opts)
	l.noContext = true
	return l
}

// newLabWith is newLab with opts (its port, NoAttach and hash seed are the
// lab's).
func newLabWith(t testing.TB, opts Options) *lab {
	t.Helper()
	privtest.Require(t)
	if !xdpContextRuns(t) {
		t.Skipf("kernel %s lacks BPF_PROG_RUN with an xdp_md (Linux 5.15), which this test's frames need to name their ingress port; TestForwardWithoutContext tests the forwarder here", kernelRelease())
	}
	return buildLab(t, opts)
}

func buildLab(t testing.TB, opts Options) *lab {
	t.Helper()
	if opts.Program == ProgramAuto {
		opts.Program = testProgram(t)
	}
	suffix := rand.Uint32() & 0xffffff
	name := fmt.Sprintf("kbl%06x", suffix)
	port2 := fmt.Sprintf("kbq%06x", suffix)
	l := &lab{t: t, ifindex: addPort(t, name, lbMAC), port2: port2}
	addPort(t, port2, port2MAC)
	opts.Interface, opts.NoAttach, opts.HashSeed = name, true, 7
	dp, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("open dataplane: %v", err)
	}
	t.Cleanup(func() { _ = dp.Close() })
	l.dp = dp
	return l
}

// pinOneCPU keeps the test's thread on one CPU until the test ends.
// BPF_PROG_RUN runs on the calling CPU, and the flow cache is per CPU: a
// test counting what one CPU's cache flushed (TestFlowTableCounts) fails
// when the scheduler moves the thread between two runs. Call it before
// newLab: helpers that spread work over the CPUs (fillFlows) read the
// calling thread's affinity.
func pinOneCPU(t testing.TB) {
	t.Helper()
	runtime.LockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get affinity: %v", err)
	}
	cpu := 0
	for !old.IsSet(cpu) && cpu < 1024 {
		cpu++
	}
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("pin to cpu %d: %v", cpu, err)
	}
	t.Cleanup(func() {
		_ = unix.SchedSetaffinity(0, &old)
		runtime.UnlockOSThread()
	})
}

// run feeds one frame to the program as if it arrived on the lab's port.
func (l *lab) run(in []byte) (uint32, []byte) {
	l.t.Helper()
	out := make([]byte, len(in)+256)
	opts := ebpf.RunOptions{Data: in, DataOut: out}
	if !l.noContext {
		opts.Context = xdpMD{DataEnd: uint32(len(in)), IngressIfindex: uint32(l.ifindex)}
	}
	verdict, err := l.dp.objs.KeepbitXdp.Run(&opts)
	if err != nil {
		l.t.Fatalf("BPF_PROG_RUN: %v", err)
	}
	return verdict, opts.DataOut
}

func (l *lab) apply(key ServiceKey, spec ServiceSpec) {
	l.t.Helper()
	if _, err := l.dp.ApplyService(key, spec); err != nil {
		l.t.Fatalf("apply %s: %v", key, err)
	}
}

func (l *lab) reasons() map[string]Counter {
	l.t.Helper()
	s, err := l.dp.Stats()
	if err != nil {
		l.t.Fatal(err)
	}
	return s.Reasons
}

func svc(vip string, port uint16, proto Proto) ServiceKey {
	return ServiceKey{VIP: netip.MustParseAddr(vip), Port: port, Proto: proto}
}

func backend(addr, hw string) BackendSpec {
	return BackendSpec{Addr: netip.MustParseAddr(addr), MAC: mac(hw), Weight: 1, State: Up}
}

func (b BackendSpec) vlan(v uint16) BackendSpec   { b.VLAN = v; return b }
func (b BackendSpec) port(p string) BackendSpec   { b.Port = p; return b }
func (b BackendSpec) state(s State) BackendSpec   { b.State = s; return b }
func (b BackendSpec) group(g uint8) BackendSpec   { b.Group = g; return b }
func (b BackendSpec) weight(w uint32) BackendSpec { b.Weight = w; return b }

const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

func verdictName(v uint32) string {
	return [...]string{"ABORTED", "DROP", "PASS", "TX", "REDIRECT"}[min(v, 4)]
}
