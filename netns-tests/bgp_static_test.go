package netnstests

import (
	"slices"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/connload"
)

// stall: a long-lived connection without an answer for this long counts
// as broken. TCP's first retransmission comes after 200ms or more, so a
// connection that survives a failover pauses for about that long.
const bgpStall = 2 * time.Second

// TestBGPLabStaticECMP proves the BGP lab's data path without BGP: BIRD
// runs on the router, a static ECMP route sends the VIP to the three
// nodes, and the load tool measures what a node failure does when nothing
// withdraws the route (the problem BGP and BFD solve), when the route is
// withdrawn at once (what they do: identical Maglev tables keep every
// connection), and when the backend set changed before the node was lost
// (what flow sharing must fix).
func TestBGPLabStaticECMP(t *testing.T) {
	root := t
	l := newBGPLab(t, bgpLabOpts{extra: 1})
	l.startAll()
	l.staticRoute("n1", "n2", "n3")
	l.waitNexthops(time.Second, "n1", "n2", "n3")
	step := func(name string, fn func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			l.t = t
			defer func() { l.t = root }()
			fn(t)
		})
	}
	// waitUp waits until node name has every backend up again (its checks
	// failed while it was cut off).
	waitUp := func(name string, from int) {
		n := l.node(name)
		for _, be := range l.backends[:l.inConfig] {
			n.d.waitLog(l.t, from, 10*time.Second, map[string]string{"msg": "backend up", "backend": be.addr})
		}
		// A backend joins its service's table at the rebuild after the
		// verdict is logged; static routes do not wait for it as BGP
		// does (Settled).
		time.Sleep(300 * time.Millisecond)
	}

	step("spread over nodes and backends", func(t *testing.T) {
		ld := l.load(150, 50, bgpStall)
		time.Sleep(time.Second)
		r := ld.Report()
		t.Log(r)
		if r.BrokenTotal != 0 || r.NewFailed() != 0 || r.New.OK == 0 {
			t.Fatalf("through three nodes: %v", r)
		}
		for _, be := range l.backends[:3] {
			if r.ByBackend[be.name] < 15 {
				t.Errorf("backend %s has %d of 150 connections: %v", be.name, r.ByBackend[be.name], r.ByBackend)
			}
		}
		where := l.flowNodes(r)
		perNode := spread(where)
		t.Logf("long-lived connections by node: %v", perNode)
		for _, n := range []string{"n1", "n2", "n3"} {
			if perNode[n] < 15 {
				t.Errorf("node %s carries %d of 150 connections: ECMP does not spread them: %v", n, perNode[n], perNode)
			}
		}
		for _, c := range r.Conns {
			if len(where[c.Local]) != 1 {
				t.Errorf("connection %s seen by nodes %v, want exactly one", c.Local, where[c.Local])
			}
		}
	})

	step("node dropped, route kept: its connections break", func(t *testing.T) {
		ld := l.load(150, 50, bgpStall)
		time.Sleep(500 * time.Millisecond)
		where := l.flowNodes(ld.Report())
		ld.ResetGaps()
		from := l.node("n2").d.mark()
		l.drop("n2")
		time.Sleep(bgpStall + time.Second)
		r := ld.Report()
		t.Logf("n2 dropped, static route through it kept: %v", r)
		onN2 := 0
		for _, c := range r.Conns {
			through := slices.Equal(where[c.Local], []string{"n2"})
			if through {
				onN2++
			}
			switch {
			case through && c.Broken != connload.Stalled:
				t.Errorf("%s went through the dropped node and is %q, want stalled", c.Local, c.Broken)
			case !through && c.Broken != "":
				t.Errorf("%s (on %v) broke: %s %s", c.Local, where[c.Local], c.Broken, c.Err)
			}
		}
		if onN2 == 0 || r.NewFailed() == 0 {
			t.Errorf("nothing went through n2 (%d connections) or no new connection failed: %v", onN2, r)
		}
		t.Logf("broken: %d of %d long-lived (all through n2); new connections failed: %d of %d",
			r.BrokenTotal, len(r.Conns), r.NewFailed(), r.New.Attempts)
		l.undrop("n2")
		waitUp("n2", from)
	})

	step("node dropped, route withdrawn at once: nothing breaks", func(t *testing.T) {
		ld := l.load(150, 50, bgpStall)
		time.Sleep(500 * time.Millisecond)
		ld.ResetGaps()
		from := l.node("n2").d.mark()
		l.drop("n2")
		l.staticRoute("n1", "n3")
		time.Sleep(1500 * time.Millisecond)
		r := ld.Report()
		t.Logf("n2 dropped and withdrawn together: %v", r)
		if r.BrokenTotal != 0 {
			t.Errorf("%d connections broke although every node has the same Maglev table: %v", r.BrokenTotal, r.BrokenConns())
		}
		l.undrop("n2")
		l.staticRoute("n1", "n2", "n3")
		waitUp("n2", from)
	})

	step("backend added, then node lost: resets without flow sharing", func(t *testing.T) {
		ld := l.load(300, 50, bgpStall)
		time.Sleep(500 * time.Millisecond)
		be := l.addBackend()
		time.Sleep(500 * time.Millisecond)
		if r := ld.Report(); r.BrokenTotal != 0 || r.ByBackend[be.name] != 0 {
			t.Fatalf("adding %s moved or broke established connections: %v", be.name, r)
		}
		where := l.flowNodes(ld.Report())
		ld.ResetGaps()
		l.drop("n2")
		l.staticRoute("n1", "n3")
		time.Sleep(bgpStall + time.Second)
		r := ld.Report()
		t.Logf("backend %s added, then n2 lost (no flow sharing): %v", be.name, r)
		if r.BrokenTotal == 0 {
			t.Errorf("no connection broke: the flows n2 carried found their old backend without flow sharing?")
		}
		for _, c := range r.BrokenConns() {
			// Reset: the new backend answered the moved flow with RST.
			// Stalled (seen rarely): the RST did not end it.
			if c.Broken != connload.Reset && c.Broken != connload.Stalled {
				t.Errorf("%s (on %v, backend %v): %s (%s), want reset by a backend without the connection", c.Local, where[c.Local], c.Backends, c.Broken, c.Err)
			}
		}
		t.Logf("broken: %d of %d long-lived connections (%.0f per 1000)", r.BrokenTotal, len(r.Conns), 1000*float64(r.BrokenTotal)/float64(len(r.Conns)))
	})
}
