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

func newNS(t testing.TB) netns.NsHandle { return privtest.NewNS(t) }

func inNS(ns netns.NsHandle, fn func() error) error { return privtest.InNS(ns, fn) }

func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func addr(t testing.TB, h *netlink.Handle, name, cidr string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	must(t, err, "find "+name)
	a, err := netlink.ParseAddr(cidr)
	must(t, err, "parse "+cidr)
	must(t, h.AddrAdd(l, a), "address "+cidr+" on "+name)
	must(t, h.LinkSetUp(l), "up "+name)
	return l
}

func newTopo(t testing.TB) *topo {
	t.Helper()
	tp := &topo{client: newNS(t), backend: newNS(t), lbc: "kblbc", lbb: "kblbb", vip: netip.MustParseAddr(topoVIP)}
	for _, p := range []struct {
		lb, peer string
		ns       netns.NsHandle
	}{{tp.lbc, "eth0", tp.client}, {tp.lbb, "eth0", tp.backend}} {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.lb}, PeerName: p.lb + "peer"}
		must(t, netlink.LinkAdd(v), "add veth "+p.lb)
		t.Cleanup(func() { _ = netlink.LinkDel(v) })
		peer, err := netlink.LinkByName(p.lb + "peer")
		must(t, err, "find peer")
		must(t, netlink.LinkSetNsFd(peer, int(p.ns)), "move peer")
		h, err := netlink.NewHandleAt(p.ns)
		must(t, err, "netlink handle")
		defer h.Delete()
		peer, err = h.LinkByName(p.lb + "peer")
		must(t, err, "find moved peer")
		must(t, h.LinkSetName(peer, p.peer), "rename peer")
		lo, err := h.LinkByName("lo")
		must(t, err, "lo")
		must(t, h.LinkSetUp(lo), "lo up")
	}
	root := netlink.Handle{}
	addr(t, &root, tp.lbc, "10.99.1.1/24")
	addr(t, &root, tp.lbb, "10.99.2.1/24")
	must(t, os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0), "ip_forward")

	hc, err := netlink.NewHandleAt(tp.client)
	must(t, err, "client handle")
	defer hc.Delete()
	ceth := addr(t, hc, "eth0", "10.99.1.2/24")
	// veth hands checksums to the peer as "to be done" (CHECKSUM_PARTIAL);
	// a frame that XDP redirects loses that note and arrives with half a
	// checksum. A real NIC fills it in; here the client must.
	must(t, inNS(tp.client, func() error { return privtest.TxChecksumOff("eth0") }), "client tx checksum off")
	must(t, hc.RouteAdd(&netlink.Route{LinkIndex: ceth.Attrs().Index, Dst: netlink.NewIPNet(net.ParseIP(topoVIP)), Gw: net.ParseIP("10.99.1.1")}), "client route to VIP")

	hb, err := netlink.NewHandleAt(tp.backend)
	must(t, err, "backend handle")
	defer hb.Delete()
	beth := addr(t, hb, "eth0", "10.99.2.2/24")
	addr(t, hb, "lo", topoVIP+"/32")
	must(t, hb.RouteAdd(&netlink.Route{LinkIndex: beth.Attrs().Index, Gw: net.ParseIP("10.99.2.1")}), "backend default route")
	tp.backendMAC = beth.Attrs().HardwareAddr

	privtest.AttachPass(t, tp.backend, beth.Attrs().Index)

	// UDP echo on the VIP, in the backend namespace.
	var conn *net.UDPConn
	must(t, inNS(tp.backend, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(topoVIP), Port: echoPort})
		return err
	}), "backend echo listener")
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteToUDP(append([]byte("echo "), buf[:n]...), from)
		}
	}()
	return tp
}

// echoer is a UDP socket in the client namespace.
type echoer struct {
	conn *net.UDPConn
}

func (tp *topo) newEchoer(t testing.TB) *echoer {
	t.Helper()
	var c *net.UDPConn
	must(t, inNS(tp.client, func() error {
		var err error
		c, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(topoVIP), Port: echoPort})
		return err
	}), "client socket")
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
