package netnstests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	nslab "github.com/keepbit/keepbit/internal/lab"
)

// TestBGPLabBIRDNodes runs the BGP lab's dynamic half before keepbitd
// speaks BGP: a BIRD in each node's namespace announces the VIP (with BFD
// 100ms x 3; 10ms x 3 between two BIRDs flaps on this loaded 2-core
// machine) while keepbitd forwards. It proves the router side (passive
// sessions, BFD, merge paths into one ECMP route) and gives the reference
// figures a BGP speaker on the node must match: a node dropped at its
// bridge port leaves the router's route within the BFD detection time,
// and no connection breaks (identical Maglev tables on every node).
func TestBGPLabBIRDNodes(t *testing.T) {
	l := newBGPLab(t, bgpLabOpts{bfd: bfd100ms})
	l.startAll()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, n := range l.nodes {
		dir := filepath.Join(n.dir, "bird")
		must(t, os.MkdirAll(dir, 0o700), "node bird dir")
		b, err := nslab.StartBIRD(ctx, n.host.NS, dir, fmt.Sprintf(`router id %[1]s;
protocol device {}
protocol static vip { ipv4; route %[2]s/32 blackhole; }
protocol bfd { interface "eth0" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }
protocol bgp up {
	local %[1]s as %[3]d;
	neighbor %[4]s as %[5]d;
	hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 5;
	bfd on;
	ipv4 { import none; export where proto = "vip"; };
}
`, n.addr, bgpVIP, bgpNodeAS, bgpRouter, bgpRouterAS))
		must(t, err, "bird on "+n.name)
		t.Cleanup(func() { b.Close() })
	}
	l.waitEstablished("n1", "n2", "n3")
	l.waitNexthops(10*time.Second, "n1", "n2", "n3")

	ld := l.load(300, 50, bgpStall)
	time.Sleep(time.Second)
	if r := ld.Report(); r.BrokenTotal != 0 || r.NewFailed() != 0 {
		t.Fatalf("before the failure: %v", r)
	}
	ld.ResetGaps()
	l.drop("n2")
	took := l.waitNexthops(400*time.Millisecond, "n1", "n3")
	t.Logf("n2 dropped: router's route left it after %v (BFD 100ms x 3)", took.Round(time.Millisecond))
	time.Sleep(bgpStall + time.Second)
	r := ld.Report()
	noResets(t, "n2 dropped, withdrawn by BFD", r, true)
	t.Logf("client gap p50 %v p99 %v max %v", r.GapP50, r.GapP99, r.GapMax)

	ld.ResetGaps()
	l.undrop("n2")
	l.waitEstablished("n2")
	took = l.waitNexthops(10*time.Second, "n1", "n2", "n3")
	t.Logf("n2 back: route through it again after %v", took.Round(time.Millisecond))
	time.Sleep(time.Second)
	noResets(t, "n2 back", ld.Stop(), true)
}
