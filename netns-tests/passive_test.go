package netnstests

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/connload"
	nslab "github.com/keepbit/keepbit/internal/lab"
)

// blackhole makes a backend namespace drop every answer it would send
// (to the client and to the load balancer's checks) while it goes on
// receiving: from outside, a host that went silent. undo restores it.
func blackhole(t *testing.T, ns netns.NsHandle, dsts ...string) (undo func()) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	must(t, err, "netlink handle")
	var routes []netlink.Route
	for _, d := range dsts {
		_, dst, err := net.ParseCIDR(d)
		must(t, err, "parse "+d)
		r := netlink.Route{Dst: dst, Type: unix.RTN_BLACKHOLE}
		must(t, h.RouteAdd(&r), "blackhole route "+d)
		routes = append(routes, r)
	}
	return func() {
		for _, r := range routes {
			_ = h.RouteDel(&r)
		}
		h.Close()
	}
}

// TestPassiveBlackhole: a backend goes silent under real traffic (new
// connections every 5 ms). Its active check is slow on purpose (1 s
// interval, fall 3); passive detection, fed by the clients' retransmitted
// SYNs, must take it out first, and the connections sent to it meanwhile
// must complete on the other backend (their retransmitted SYN goes
// there). Once it answers again, it comes back through its check.
func TestPassiveBlackhole(t *testing.T) {
	l := newLab(t)
	for _, b := range l.backends {
		srv, err := connload.Listen(b.ns, ":9000", b.name)
		must(t, err, "connload server on "+b.name)
		t.Cleanup(func() { srv.Close() })
	}
	head := strings.Replace(l.configHead(), "interval: 50ms, timeout: 40ms, rise: 2, fall: 2", "interval: 1s, timeout: 800ms, rise: 2, fall: 3", 1)
	head = strings.Replace(head, "    port: 80\n", "    port: 9000\n    check: {type: tcp}\n", 1)
	cfg := l.putConfig(head + `      - {address: 10.71.1.2, port: kb1}
      - {address: 10.71.2.2, port: kb2}
    passive: {syn_retransmits: 5, window: 2s, hold: 1s}
`)
	d := l.startDaemonUp(cfg)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	load, err := connload.Start(ctx, connload.Config{Target: vip + ":9000", Dial: nslab.DialContext(l.client, 3*time.Second),
		Rate: 200, Timeout: 3 * time.Second})
	must(t, err, "client load")
	defer load.Stop()
	time.Sleep(500 * time.Millisecond)

	b1 := l.backends[0]
	mark := d.mark()
	silent := time.Now()
	undo := blackhole(t, b1.ns, "10.70.0.0/24", "10.71.1.1/32")
	restored := false
	defer func() {
		if !restored {
			undo()
		}
	}()

	// When the check says down: polled from the API.
	checkDown := make(chan time.Time, 1)
	go func() {
		for ctx.Err() == nil {
			if backendHealth(l, "10.71.1.2") == "down" {
				checkDown <- time.Now()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	d.waitLog(t, mark, 10*time.Second, map[string]string{"msg": "backend passive-ejected", "backend": "10.71.1.2"})
	ejected := time.Now()
	var active time.Time
	select {
	case active = <-checkDown:
	case <-time.After(15 * time.Second):
		t.Fatal("the active check never failed")
	}
	t.Logf("silent backend: passive detection ejected it after %v, the active check (1s, fall 3) failed after %v: %v sooner",
		ejected.Sub(silent).Round(time.Millisecond), active.Sub(silent).Round(time.Millisecond), active.Sub(ejected).Round(time.Millisecond))
	if !ejected.Before(active) {
		t.Errorf("passive detection (%v) was not faster than the active check (%v)", ejected.Sub(silent), active.Sub(silent))
	}
	if got := ejected.Sub(silent); got > 5*time.Second {
		t.Errorf("passive detection took %v", got)
	}
	time.Sleep(time.Second)
	r := load.Report()
	t.Logf("new connections: %d attempted, %d ok, failed %v, by backend %v", r.New.Attempts, r.New.OK, r.New.Failed, r.New.ByBackend)
	failed := r.New.Attempts - r.New.OK
	if failed*20 > r.New.Attempts {
		t.Errorf("%d of %d new connections failed: %v %v", failed, r.New.Attempts, r.New.Failed, r.New.Errors)
	}

	// Repaired: back through its check once hold (1 s) has passed.
	mark = d.mark()
	undo()
	restored = true
	d.waitLog(t, mark, 15*time.Second, map[string]string{"msg": "backend passive-recovered", "backend": "10.71.1.2"})
	deadline := time.Now().Add(10 * time.Second)
	for backendState(l, "10.71.1.2") != "up" {
		if time.Now().After(deadline) {
			t.Fatalf("b1 not back up after the repair: %s", d.dump())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// backendField reads one field of a backend of the lab's web service
// from keepbitctl -o json services.
func backendField(l *lab, addr string, field func(b apiBackend) string) string {
	out, err := l.ctl("-o", "json", "services")
	if err != nil {
		return ""
	}
	var svcs []struct {
		Name     string       `json:"name"`
		Backends []apiBackend `json:"backends"`
	}
	if json.Unmarshal([]byte(out), &svcs) != nil {
		return ""
	}
	for _, s := range svcs {
		for _, b := range s.Backends {
			if b.Address == addr {
				return field(b)
			}
		}
	}
	return ""
}

type apiBackend struct {
	Address string `json:"address"`
	Health  string `json:"health"`
	State   string `json:"state"`
}

func backendHealth(l *lab, addr string) string {
	return backendField(l, addr, func(b apiBackend) string { return b.Health })
}

func backendState(l *lab, addr string) string {
	return backendField(l, addr, func(b apiBackend) string { return b.State })
}
