package lab_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// udpAsk sends msg to addr from ns and returns the answer ("" if none
// within wait).
func udpAsk(t *testing.T, ns netns.NsHandle, network, addr, msg string, wait time.Duration) string {
	t.Helper()
	c, err := lab.DialContext(ns, time.Second)(context.Background(), network, addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(msg)); err != nil {
		return ""
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 256)
	n, _ := c.Read(buf)
	return string(buf[:n])
}

// TestVethMovesTraffic: a pair between two new namespaces carries IPv4 and
// IPv6 (addresses without DAD usable at once) both ways, and the MACs and
// indexes NewVeth reports are the interfaces'.
func TestVethMovesTraffic(t *testing.T) {
	privtest.Require(t)
	a, b := privtest.NewNS(t), privtest.NewNS(t)
	v := privtest.Veth(t,
		lab.VethEnd{NS: a, Name: "left", Addrs: []string{"10.77.0.1/24", "2001:db8:77::1/64"}, NoDAD: true},
		lab.VethEnd{NS: b, Name: "eth0", Addrs: []string{"10.77.0.2/24", "2001:db8:77::2/64"}, NoDAD: true, MAC: net.HardwareAddr{0x02, 0, 0, 0, 0x77, 2}})
	for _, end := range []lab.Link{v.A, v.B} {
		h, err := lab.Handle(end.NS)
		if err != nil {
			t.Fatal(err)
		}
		l, err := h.LinkByName(end.Name)
		h.Delete()
		if err != nil {
			t.Fatalf("%s not in its namespace: %v", end.Name, err)
		}
		if l.Attrs().Index != end.Index || l.Attrs().HardwareAddr.String() != end.MAC.String() {
			t.Fatalf("%s: reported index %d MAC %s, is %d %s", end.Name, end.Index, end.MAC, l.Attrs().Index, l.Attrs().HardwareAddr)
		}
	}
	if v.B.MAC.String() != "02:00:00:00:77:02" {
		t.Fatalf("peer MAC %s, asked for 02:00:00:00:77:02", v.B.MAC)
	}
	privtest.ServeUDP(t, b, "udp", "[::]:7", lab.EchoPrefix("b:"))
	privtest.ServeUDP(t, a, "udp", "[::]:7", lab.EchoPrefix("a:"))
	cases := []struct {
		name     string
		from     netns.NsHandle
		network  string
		to, want string
	}{
		{"a to b over IPv4", a, "udp4", "10.77.0.2:7", "b:hi"},
		{"b to a over IPv4", b, "udp4", "10.77.0.1:7", "a:hi"},
		{"a to b over IPv6", a, "udp6", "[2001:db8:77::2]:7", "b:hi"},
		{"b to a over IPv6", b, "udp6", "[2001:db8:77::1]:7", "a:hi"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := udpAsk(t, c.from, c.network, c.to, "hi", 2*time.Second); got != c.want {
				t.Fatalf("answer %q, want %q", got, c.want)
			}
		})
	}
}

// TestVethClose: Close removes both ends; closing again, or a pair whose
// namespace is gone, is not an error.
func TestVethClose(t *testing.T) {
	privtest.Require(t)
	ns := privtest.NewNS(t)
	v, err := lab.NewVeth(lab.VethEnd{NS: netns.None(), Name: "kbt0"}, lab.VethEnd{NS: ns, Name: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName("kbt0"); err == nil {
		t.Fatal("kbt0 still here after Close")
	}
	h, _ := lab.Handle(ns)
	defer h.Delete()
	if _, err := h.LinkByName("eth0"); err == nil {
		t.Fatal("the peer still in its namespace after Close")
	}
	if err := v.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// A name the caller's namespace has already.
	if _, err := lab.NewVeth(lab.VethEnd{NS: netns.None(), Name: "lo"}, lab.VethEnd{NS: ns, Name: "eth0"}); err == nil {
		t.Fatal("a veth named lo was made")
	}
}

// TestNamespaceCleanup: what a test builds in a namespace of its own is
// gone when the test ends: the namespace, and with it the veth end left in
// the test's namespace; a sysctl changed here is put back.
func TestNamespaceCleanup(t *testing.T) {
	privtest.Require(t)
	before, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	t.Run("build", func(t *testing.T) {
		ns := privtest.NewNS(t)
		// Not Veth: this end must go with the namespace, not by Close.
		if _, err := lab.NewVeth(lab.VethEnd{NS: netns.None(), Name: "kbt1"}, lab.VethEnd{NS: ns, Name: "eth0"}); err != nil {
			t.Fatal(err)
		}
		flip := "1"
		if strings.TrimSpace(string(before)) == "1" {
			flip = "0"
		}
		privtest.Sysctl(t, netns.None(), map[string]string{"net/ipv4/ip_forward": flip})
	})
	// The kernel frees a namespace (and its interfaces) asynchronously
	// once the last reference is gone.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := netlink.LinkByName("kbt1")
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kbt1 outlived its peer's namespace (%v)", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if after, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(after) != string(before) {
		t.Fatalf("ip_forward is %q after the test, was %q", after, before)
	}
}

// TestListenerStaysInItsNamespace: a listener opened in a namespace is
// reachable from that namespace and not from another with the same
// loopback address; an HTTP server identifies itself; Close refuses new
// connections.
func TestListenerStaysInItsNamespace(t *testing.T) {
	privtest.Require(t)
	ns := privtest.NewNS(t)
	privtest.SetUp(t, ns, "lo")
	ac := privtest.ServeAcceptClose(t, ns, "tcp4", "127.0.0.1:0")
	srv := privtest.ServeHTTP(t, ns, "tcp4", "127.0.0.1:0", lab.Identify("backend-1"))
	dial := func(from netns.NsHandle, addr string) error {
		c, err := lab.DialContext(from, time.Second)(context.Background(), "tcp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, err = c.Read(make([]byte, 1))
		if err == io.EOF {
			return nil // accepted and closed
		}
		return err
	}
	cases := []struct {
		name   string
		from   netns.NsHandle
		wantOK bool
	}{
		{"from its namespace", ns, true},
		{"from the test's namespace", netns.None(), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := dial(c.from, ac.Addr().String()); (err == nil) != c.wantOK {
				t.Fatalf("dial %s: %v, want reachable: %v", ac.Addr(), err, c.wantOK)
			}
		})
	}
	tr := &http.Transport{DialContext: lab.DialContext(ns, time.Second)}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 2 * time.Second}).Get("http://" + srv.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "backend-1" {
		t.Fatalf("identify answered %q", body)
	}
	for name, c := range map[string]io.Closer{"accept-and-close": ac, "http": srv} {
		if err := c.Close(); err != nil {
			t.Fatalf("%s close: %v", name, err)
		}
		_ = c.Close() // idempotent
	}
	for _, addr := range []string{ac.Addr().String(), srv.Addr().String()} {
		if err := dial(ns, addr); !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("after Close, dial %s: %v, want connection refused", addr, err)
		}
	}
}

// TestUDPServers needs no root: on loopback here (netns.None()), an echo
// server answers with its prefix and a mute one never answers.
func TestUDPServers(t *testing.T) {
	echo := privtest.ServeUDP(t, netns.None(), "udp4", "127.0.0.1:0", lab.EchoPrefix("pong:"))
	mute := privtest.ServeUDP(t, netns.None(), "udp4", "127.0.0.1:0", nil)
	cases := []struct {
		name string
		addr string
		want string
	}{
		{"echo", echo.AddrPort().String(), "pong:ping"},
		{"mute", mute.AddrPort().String(), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := udpAsk(t, netns.None(), "udp4", c.addr, "ping", 300*time.Millisecond); got != c.want {
				t.Fatalf("answer %q, want %q", got, c.want)
			}
		})
	}
}

// TestAddRouteInput needs no root: bad input is an error naming what is
// wrong, before anything is asked of the kernel.
func TestAddRouteInput(t *testing.T) {
	cases := []struct{ dst, gw, wantErr string }{
		{"10.0.0.0/33", "10.0.0.1", `destination "10.0.0.0/33"`},
		{"ten", "10.0.0.1", `destination "ten" is not an address or prefix`},
		{"default", "", `gateway "" is not an address`},
		{"10.0.0.9", "gw", `gateway "gw" is not an address`},
	}
	for _, c := range cases {
		t.Run(c.dst+" via "+c.gw, func(t *testing.T) {
			err := lab.AddRoute(netns.None(), c.dst, c.gw)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, c.wantErr)
			}
		})
	}
}

// TestWaitNonTentative: with DAD on, a new IPv6 address is tentative at
// first and WaitNonTentative returns once it is not; with NoDAD it never is.
func TestWaitNonTentative(t *testing.T) {
	privtest.Require(t)
	cases := []struct {
		name          string
		noDAD         bool
		wantTentative bool
	}{
		{"DAD on", false, true},
		{"DAD off", true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, b := privtest.NewNS(t), privtest.NewNS(t)
			privtest.Veth(t, lab.VethEnd{NS: a, Name: "eth0", Addrs: []string{"2001:db8:78::1/64"}, NoDAD: c.noDAD},
				lab.VethEnd{NS: b, Name: "eth0", NoDAD: true})
			if got := tentative(t, a, "eth0"); got != c.wantTentative {
				t.Fatalf("tentative right after NewVeth: %v, want %v", got, c.wantTentative)
			}
			start := time.Now()
			privtest.WaitNonTentative(t, a, "eth0")
			if tentative(t, a, "eth0") {
				t.Fatal("WaitNonTentative returned with a tentative address")
			}
			t.Logf("non-tentative after %v", time.Since(start).Round(time.Millisecond))
		})
	}
}

func tentative(t *testing.T, ns netns.NsHandle, iface string) bool {
	t.Helper()
	h, err := lab.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Delete()
	l, err := h.LinkByName(iface)
	if err != nil {
		t.Fatal(err)
	}
	as, _ := h.AddrList(l, netlink.FAMILY_V6)
	for _, a := range as {
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			return true
		}
	}
	return false
}
