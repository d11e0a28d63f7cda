package netnstests

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/api"
)

// TestBGPDaemon runs a real keepbitd with a bgp: section against BIRD 2 on
// the lab's router (bgp_lab_test.go) and walks the route through its life:
// announced when healthy; withdrawn, with the reason keepbitctl bgp shows,
// when every backend is down; announced again after announce_after;
// withdrawn by drain-node and back after undrain; and dropped by the router
// through BFD (100ms x 3) when the node's keepbitd is frozen.
func TestBGPDaemon(t *testing.T) {
	l := newBGPLab(t, bgpLabOpts{nodes: 1, backends: 2, bgp: true, bfd: bfd100ms})
	started := time.Now()
	l.start(0)
	l.waitEstablished("n1")
	took := l.waitNexthops(10*time.Second, "n1")
	t.Logf("route at the router %v after keepbitd started", time.Since(started).Round(time.Millisecond))
	t.Logf("route at the router %v after the session and BFD were up", took.Round(time.Millisecond))
	st := l.bgpStatus(0)
	if len(st.Sessions) != 1 || st.Sessions[0].State != "established" || st.Sessions[0].BFD == nil || st.Sessions[0].BFD.State != "up" {
		t.Fatalf("keepbitctl bgp: sessions %+v, want one established with BFD up", st.Sessions)
	}
	if len(st.Routes) != 1 || !st.Routes[0].Announced || st.Routes[0].Prefix != bgpVIP+"/32" {
		t.Fatalf("keepbitctl bgp: routes %+v, want %s/32 announced", st.Routes, bgpVIP)
	}

	// Every backend down: the health checks (100ms x fall 3) take them
	// down, and the VIP's route goes with the last one.
	var undrop []func() error
	for _, be := range l.backends {
		undo, err := l.sw.DropPort(be.name)
		must(t, err, "drop "+be.name)
		t.Cleanup(func() { _ = undo() })
		undrop = append(undrop, undo)
	}
	took = l.waitNexthops(5 * time.Second)
	t.Logf("all backends down: route gone at the router %v after the backends were cut off (checks: 100ms x fall 3)", took.Round(time.Millisecond))
	st = l.bgpStatus(0)
	if len(st.Routes) != 1 || st.Routes[0].Announced || st.Routes[0].Reason != "no usable backend" {
		t.Errorf("keepbitctl bgp after all backends went down: routes %+v, want withdrawn, \"no usable backend\"", st.Routes)
	}
	if out, err := l.ctl(0, "bgp"); err != nil || !strings.Contains(out, "no usable backend") {
		t.Errorf("keepbitctl bgp table does not say why the route is withdrawn (%v):\n%s", err, out)
	}
	l.assertEvent(0, "bgp-withdraw", "no usable backend")

	// Back: the first backend up starts announce_after (200ms).
	from := l.nodes[0].d.mark()
	for _, undo := range undrop {
		must(t, undo(), "undrop")
	}
	up := l.nodes[0].d.waitLog(t, from, 5*time.Second, map[string]string{"msg": "backend up"})
	took = l.waitNexthops(5*time.Second, "n1")
	upAt, _ := time.Parse(time.RFC3339Nano, up["time"].(string))
	if wait := time.Since(upAt); wait < 200*time.Millisecond {
		t.Errorf("route back %v after the first backend came up: announce_after is 200ms", wait)
	} else {
		t.Logf("route back at the router %v after the first backend came up (announce_after 200ms)", wait.Round(time.Millisecond))
	}
	l.assertEvent(0, "bgp-announce", "")

	// drain-node: withdrawn at once, sessions kept for the hold, then closed.
	hold := 2 * time.Second
	drained := time.Now()
	l.mustCtl(0, "drain-node", "-hold", hold.String())
	took = l.waitNexthops(2 * time.Second)
	t.Logf("drain-node: route gone at the router %v after the command", took.Round(time.Millisecond))
	st = l.bgpStatus(0)
	if !st.Draining || st.Routes[0].Announced || st.Routes[0].Reason != "draining" || st.Sessions[0].State != "established" {
		t.Errorf("keepbitctl bgp while draining: %+v, want draining, route withdrawn (draining), session kept", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		out, err := l.bird.Cmd(ctx, "show", "protocols", "n1")
		must(t, err, "bird show protocols")
		if !strings.Contains(out, "Established") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if since := time.Since(drained); since < hold {
		t.Errorf("session closed %v after drain-node, before the %v hold", since, hold)
	}
	if st = l.bgpStatus(0); !st.SessionsClosed {
		t.Errorf("keepbitctl bgp after the hold: %+v, want sessions closed", st)
	}
	l.mustCtl(0, "undrain")
	l.waitEstablished("n1")
	l.waitNexthops(5*time.Second, "n1")

	// BFD: keepbitd frozen (its XDP program still forwards): the router's
	// BFD times it out (3 x 100ms) and drops the route.
	l.freeze("n1")
	frozen := time.Now()
	took = l.waitNexthops(time.Second)
	t.Logf("keepbitd frozen: route gone at the router %v later (BFD 100ms x 3)", took.Round(time.Millisecond))
	if took > 400*time.Millisecond {
		t.Errorf("router dropped the frozen node after %v, want within 400ms", took)
	}
	_ = frozen
	l.thaw("n1")
	l.waitEstablished("n1")
	took = l.waitNexthops(10*time.Second, "n1")
	t.Log(l.mustCtl(0, "bgp"))
}

// bgpStatus is keepbitctl -o json bgp on node i.
func (l *bgpLab) bgpStatus(i int) api.BGP {
	l.t.Helper()
	out := l.mustCtl(i, "-o", "json", "bgp")
	var st api.BGP
	must(l.t, json.Unmarshal([]byte(out), &st), "bgp json: "+out)
	return st
}

func (l *bgpLab) mustCtl(i int, args ...string) string {
	l.t.Helper()
	out, err := l.ctl(i, args...)
	must(l.t, err, strings.Join(args, " ")+": "+out)
	return out
}

// assertEvent checks that node i's flight recorder has an event of kind
// whose reason contains reason, with its detect, decide and sent times.
func (l *bgpLab) assertEvent(i int, kind, reason string) {
	l.t.Helper()
	out := l.mustCtl(i, "-o", "json", "events")
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e struct {
			Kind, Reason          string
			Detect, Decide, Apply time.Time
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Kind != kind || !strings.Contains(e.Reason, reason) {
			continue
		}
		if e.Detect.IsZero() || e.Decide.Before(e.Detect) || e.Apply.Before(e.Decide) {
			l.t.Errorf("event %s: detect %v, decide %v, sent %v: want all three in order", line, e.Detect, e.Decide, e.Apply)
		}
		return
	}
	l.t.Errorf("no %s event (%q) in the flight recorder:\n%s", kind, reason, out)
}
