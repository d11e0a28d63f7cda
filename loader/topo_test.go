package loader

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	nslab "github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// topo is client <-> [lbc  LB  lbb] <-> backend. The test process's own
// (private) namespace is the LB; client and backend get namespaces of
// their own. The backend holds the VIP on lo, as a DSR backend does, and
// routes replies back through the LB.
type topo struct {
	client, backend netns.NsHandle
	lbc, lbb        string // LB-side interface names
	backendMAC      net.HardwareAddr
	vip             netip.Addr
}

const (
	topoVIP  = "10.99.9.9"
	echoPort = 7
)

func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func newTopo(t testing.TB) *topo {
	t.Helper()
	tp := &topo{client: privtest.NewNS(t), backend: privtest.NewNS(t), lbc: "kblbc", lbb: "kblbb", vip: netip.MustParseAddr(topoVIP)}
	here := netns.None()
	privtest.Veth(t, nslab.VethEnd{NS: here, Name: tp.lbc, Addrs: []string{"10.99.1.1/24"}},
		nslab.VethEnd{NS: tp.client, Name: "eth0", Addrs: []string{"10.99.1.2/24"}})
	vb := privtest.Veth(t, nslab.VethEnd{NS: here, Name: tp.lbb, Addrs: []string{"10.99.2.1/24"}},
		nslab.VethEnd{NS: tp.backend, Name: "eth0", Addrs: []string{"10.99.2.2/24"}})
	privtest.SetUp(t, tp.client, "lo")
	privtest.SetUp(t, tp.backend, "lo")
	privtest.Sysctl(t, here, map[string]string{"net/ipv4/ip_forward": "1"})

	// veth hands checksums to the peer as "to be done" (CHECKSUM_PARTIAL);
	// a frame that XDP redirects loses that note and arrives with half a
	// checksum. A real NIC fills it in; here the client must.
	must(t, privtest.InNS(tp.client, func() error { return privtest.TxChecksumOff("eth0") }), "client tx checksum off")
	privtest.AddRoute(t, tp.client, topoVIP, "10.99.1.1")

	privtest.AddAddrs(t, tp.backend, "lo", topoVIP+"/32")
	privtest.AddRoute(t, tp.backend, "default", "10.99.2.1")
	tp.backendMAC = vb.B.MAC
	privtest.AttachPass(t, tp.backend, vb.B.Index)

	// UDP echo on the VIP, in the backend namespace.
	privtest.ServeUDP(t, tp.backend, "udp4", net.JoinHostPort(topoVIP, fmt.Sprint(echoPort)), nslab.EchoPrefix("echo "))
	return tp
}

// echoer is a UDP socket in the client namespace.
type echoer struct {
	conn net.Conn
}

func (tp *topo) newEchoer(t testing.TB) *echoer {
	t.Helper()
	c, err := nslab.DialContext(tp.client, time.Second)(context.Background(), "udp4", net.JoinHostPort(topoVIP, fmt.Sprint(echoPort)))
	must(t, err, "client socket")
	t.Cleanup(func() { c.Close() })
	return &echoer{conn: c}
}

// ask sends msg to the VIP and reports whether the backend echoed it
// within wait.
func (e *echoer) ask(msg string, wait time.Duration) bool {
	if _, err := e.conn.Write([]byte(msg)); err != nil {
		return false
	}
	buf := make([]byte, 2048)
	deadline := time.Now().Add(wait)
	for {
		_ = e.conn.SetReadDeadline(deadline)
		n, err := e.conn.Read(buf)
		if err != nil {
			return false
		}
		if string(buf[:n]) == "echo "+msg {
			return true
		}
	}
}

// pinRoot is a fresh directory that the loader must mount bpffs on itself.
func pinRoot(t testing.TB) string {
	dir := t.TempDir()
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func (tp *topo) spec() (ServiceKey, ServiceSpec) {
	return ServiceKey{VIP: tp.vip, Port: echoPort, Proto: UDP}, ServiceSpec{Backends: []BackendSpec{{
		Addr: netip.MustParseAddr("10.99.2.2"), MAC: tp.backendMAC, Port: tp.lbb, Weight: 1, State: Up}}}
}

func xdpAttached(t testing.TB, name string) bool {
	t.Helper()
	l, err := netlink.LinkByName(name)
	must(t, err, "find "+name)
	x := l.Attrs().Xdp
	return x != nil && x.Attached
}

// helperEnv makes the test binary act as a short-lived keepbit process:
// attach, configure, report, then wait to be killed.
const helperEnv = "KEEPBIT_LOADER_HELPER"

func helperMain() int {
	root, mac := os.Getenv("KEEPBIT_PIN_ROOT"), os.Getenv("KEEPBIT_BACKEND_MAC")
	hw, err := net.ParseMAC(mac)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	tp := &topo{lbb: "kblbb", backendMAC: hw, vip: netip.MustParseAddr(topoVIP)}
	dp, err := Open(context.Background(), Options{Interface: "kblbc", PinRoot: root, HashSeed: 7})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: open:", err)
		return 1
	}
	key, spec := tp.spec()
	if _, err := dp.ApplyService(key, spec); err != nil {
		fmt.Fprintln(os.Stderr, "helper: apply:", err)
		return 1
	}
	// A port-0 service too, so adoption must read both service maps.
	if _, err := dp.ApplyService(ServiceKey{VIP: key.VIP, Proto: TCP}, spec); err != nil {
		fmt.Fprintln(os.Stderr, "helper: apply catch-all:", err)
		return 1
	}
	fmt.Println("ready", dp.Mode())
	select {} // killed by the test
}
