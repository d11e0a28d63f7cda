package netnstests

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keepbit/keepbit/internal/connload"
	"github.com/keepbit/keepbit/loader"
)

// explainBroken logs, for every broken connection, what each node's
// pinned maps hold for it: its flow table entry (backend ID, incarnation,
// ages) and its shared_flows entry, with the backend IDs each node gives
// its backends. A reset names a packet that reached a backend without the
// connection; this says which node sent it there and from what.
func (l *bgpLab) explainBroken(t testing.TB, r connload.Report) {
	t.Helper()
	broken := r.BrokenConns()
	if len(broken) == 0 {
		return
	}
	for _, c := range broken {
		client, err := netip.ParseAddrPort(c.Local)
		if err != nil {
			t.Logf("forensics: %q: %v", c.Local, err)
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "forensics for %s (answered by %v, broken %s at %s):", c.Local, c.Backends, c.Broken, c.BrokenAt.Format("15:04:05.000"))
		for _, n := range l.nodes {
			fmt.Fprintf(&b, "\n  %s: %s", n.name, loader.PinnedFlows(loader.PinDir(filepath.Join(n.dir, "bpf"), "eth0"), client))
		}
		t.Log(b.String())
	}
	for i, n := range l.nodes {
		if n.d == nil {
			continue
		}
		out, err := l.ctl(i, "-o", "json", "flowshare")
		if err != nil {
			out = err.Error() + ": " + out
		}
		t.Logf("forensics: %s flowshare: %s", n.name, strings.TrimSpace(out))
		// The flight recorder says what the node decided and when: a
		// backend that was down or not yet checked when ECMP brought it
		// flows shows up here.
		ev, err := l.ctl(i, "events")
		if err != nil {
			ev = err.Error() + ": " + ev
		}
		t.Logf("forensics: %s events:\n%s", n.name, strings.TrimSpace(ev))
	}
}
