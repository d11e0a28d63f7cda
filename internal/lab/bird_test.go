package lab_test

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }

const birdStatic = `router id 10.99.0.1;
protocol device {}
protocol kernel k4 { ipv4 { export all; }; }
protocol static s1 { ipv4; route 10.99.7.0/24 blackhole; }
`

// TestBIRD: bird starts in a fresh namespace, its static route reaches the
// BIRD table and that namespace's kernel table (not ours), and Close ends
// the process.
func TestBIRD(t *testing.T) {
	privtest.Require(t)
	ns := privtest.NewNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := lab.StartBIRD(ctx, ns, t.TempDir(), birdStatic)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.WaitProtocol(ctx, "s1", "up"); err != nil {
		t.Fatal(err)
	}
	out, err := b.Cmd(ctx, "show", "route", "protocol", "s1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "10.99.7.0/24") {
		t.Fatalf("show route: no 10.99.7.0/24:\n%s", out)
	}
	if strings.Contains(out, "ready.") {
		t.Errorf("Cmd kept birdc's greeting:\n%s", out)
	}
	_, dst, _ := net.ParseCIDR("10.99.7.0/24")
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Delete()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: dst}, netlink.RT_FILTER_DST)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kernel protocol did not install 10.99.7.0/24 in bird's namespace; log:\n%s", b.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if rs, _ := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: dst}, netlink.RT_FILTER_DST); len(rs) != 0 {
		t.Errorf("bird's route leaked into the test's own namespace: %v", rs)
	}
	if !strings.Contains(b.Log(), "Started") {
		t.Errorf("Log has no start message: %q", b.Log())
	}

	// A wait for a state the protocol never reaches ends with ctx and says so.
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	err = b.WaitProtocol(short, "s1", "Established")
	cancelShort()
	if err == nil || !strings.Contains(err.Error(), "s1") {
		t.Errorf("WaitProtocol(s1, Established) = %v, want a timeout naming s1", err)
	}
	if _, err := b.Cmd(ctx, "show", "route", "for", "1.2.3"); err == nil {
		t.Error("Cmd with a syntax error: no error")
	}

	pid := b.Pid()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("bird (pid %d) still there after Close: kill 0 = %v", pid, err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestBIRDBadConfig: a config bird refuses is an error carrying bird's
// parse message, not a hang.
func TestBIRDBadConfig(t *testing.T) {
	privtest.Require(t)
	ns := privtest.NewNS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := lab.StartBIRD(ctx, ns, t.TempDir(), "protocol nonsense {}\n")
	if err == nil {
		b.Close()
		t.Fatal("StartBIRD accepted a bad config")
	}
	if !strings.Contains(err.Error(), "bird.conf") {
		t.Errorf("error does not show bird's parse message: %v", err)
	}
}
