package lab_test

import (
	"context"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/privtest"
)

// reach dials addr from ns and reports whether the handshake completed.
func reach(ns netns.NsHandle, addr string) error {
	c, err := lab.DialContext(ns, 300*time.Millisecond)(context.Background(), "tcp", addr)
	if err == nil {
		c.Close()
	}
	return err
}

// TestDropPort: a dropped bridge port cuts the host off both ways while its
// link stays up; undo restores it.
func TestDropPort(t *testing.T) {
	privtest.Require(t)
	l, err := lab.New()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	x, err := l.Host("x", "eth0", "10.99.4.1/24")
	if err != nil {
		t.Fatal(err)
	}
	y, err := l.Host("y", "eth0", "10.99.4.2/24")
	if err != nil {
		t.Fatal(err)
	}
	privtest.ServeAcceptClose(t, y.NS, "tcp", "10.99.4.2:7002")
	privtest.ServeAcceptClose(t, x.NS, "tcp", "10.99.4.1:7002")
	if err := reach(x.NS, "10.99.4.2:7002"); err != nil {
		t.Fatalf("before the drop: %v", err)
	}
	undo, err := l.DropPort("y")
	if err != nil {
		t.Fatal(err)
	}
	if err := reach(x.NS, "10.99.4.2:7002"); err == nil {
		t.Error("x reached y through y's dropped port")
	}
	if err := reach(y.NS, "10.99.4.1:7002"); err == nil {
		t.Error("y reached x out of its dropped port")
	}
	h, _ := y.Handle()
	defer h.Delete()
	if e, err := h.LinkByName("eth0"); err != nil || e.Attrs().OperState != 6 /* up */ {
		t.Errorf("y's link is not up during the drop: %v %v", e.Attrs().OperState, err)
	}
	if err := undo(); err != nil {
		t.Fatal(err)
	}
	if err := reach(x.NS, "10.99.4.2:7002"); err != nil {
		t.Errorf("after undo: %v", err)
	}
	if _, err := l.DropPort("nobody"); err == nil {
		t.Error("DropPort of an unknown host: no error")
	}
}
