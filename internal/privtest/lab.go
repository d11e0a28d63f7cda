package privtest

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
)

// The wrappers below are internal/lab's builders for tests: a failure
// ends the test (t.Fatal) and whatever they make is undone by t.Cleanup,
// even when the test fails. netns.None() names the test's own namespace
// (the private one Main made).

// NewNS returns a new network namespace that is removed when t ends.
func NewNS(t testing.TB) netns.NsHandle {
	t.Helper()
	ns, err := lab.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// InNS runs fn on a thread inside ns.
func InNS(ns netns.NsHandle, fn func() error) error { return lab.InNS(ns, fn) }

// TxChecksumOff: see lab.TxChecksumOff.
func TxChecksumOff(name string) error { return lab.TxChecksumOff(name) }

// AttachPass attaches an XDP pass program for the rest of t.
func AttachPass(t testing.TB, ns netns.NsHandle, ifindex int) {
	t.Helper()
	detach, err := lab.AttachPass(ns, ifindex)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(detach)
}

// Veth makes a veth pair (lab.NewVeth) that is removed when t ends.
func Veth(t testing.TB, a, b lab.VethEnd) *lab.Veth {
	t.Helper()
	v, err := lab.NewVeth(a, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = v.Close() })
	return v
}

// Bridge makes a lab.Lab (a bridge in a namespace of its own, for hosts)
// that is removed when t ends.
func Bridge(t testing.TB) *lab.Lab {
	t.Helper()
	l, err := lab.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

// Sysctl writes /proc/sys settings in ns and puts the old values back when
// t ends (in a namespace of the test's own they would go with it; in the
// test's namespace the next test must find them as they were).
func Sysctl(t testing.TB, ns netns.NsHandle, kv map[string]string) {
	t.Helper()
	old, err := lab.Sysctl(ns, kv)
	t.Cleanup(func() { _, _ = lab.Sysctl(ns, old) })
	if err != nil {
		t.Fatal(err)
	}
}

// DADOff turns IPv6 duplicate address detection off in ns for interfaces
// created from now on, until t ends.
func DADOff(t testing.TB, ns netns.NsHandle) {
	t.Helper()
	old, err := lab.DADOff(ns)
	t.Cleanup(func() { _, _ = lab.Sysctl(ns, old) })
	if err != nil {
		t.Fatal(err)
	}
}

// AddAddrs puts cidrs on iface in ns (they go with the interface).
func AddAddrs(t testing.TB, ns netns.NsHandle, iface string, cidrs ...string) {
	t.Helper()
	if err := lab.AddAddrs(ns, iface, cidrs...); err != nil {
		t.Fatal(err)
	}
}

// SetUp brings links up in ns.
func SetUp(t testing.TB, ns netns.NsHandle, names ...string) {
	t.Helper()
	if err := lab.SetUp(ns, names...); err != nil {
		t.Fatal(err)
	}
}

// AddRoute adds a route in ns (see lab.AddRoute); it goes with the
// namespace or the interface it uses.
func AddRoute(t testing.TB, ns netns.NsHandle, dst, gw string) {
	t.Helper()
	if err := lab.AddRoute(ns, dst, gw); err != nil {
		t.Fatal(err)
	}
}

// WaitNonTentative waits (up to 10 s, DAD takes one or two) until iface's
// IPv6 addresses have passed duplicate address detection.
func WaitNonTentative(t testing.TB, ns netns.NsHandle, iface string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lab.WaitNonTentative(ctx, ns, iface); err != nil {
		t.Fatal(err)
	}
}

// Listen opens a listener in ns, closed when t ends.
func Listen(t testing.TB, ns netns.NsHandle, network, addr string) net.Listener {
	t.Helper()
	ln, err := lab.Listen(ns, network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// ServeAcceptClose runs an accept-and-close TCP listener in ns until t
// ends (or its Close).
func ServeAcceptClose(t testing.TB, ns netns.NsHandle, network, addr string) *lab.AcceptClose {
	t.Helper()
	a, err := lab.ServeAcceptClose(ns, network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// ServeUDP runs a UDP server in ns (see lab.ServeUDP) until t ends.
func ServeUDP(t testing.TB, ns netns.NsHandle, network, addr string, answer func([]byte) []byte) *lab.UDPServer {
	t.Helper()
	u, err := lab.ServeUDP(ns, network, addr, answer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

// ServeHTTP serves h in ns until t ends (or its Close).
func ServeHTTP(t testing.TB, ns netns.NsHandle, network, addr string, h http.Handler) *lab.HTTPServer {
	t.Helper()
	s, err := lab.ServeHTTP(ns, network, addr, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
