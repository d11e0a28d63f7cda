package netnstests

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestDemoBGP runs `make demo-bgp`'s program (keepbit-demo -bgp) and checks
// its story: three nodes behind BIRD, a node dropped at its bridge port is
// taken out of the router's ECMP route by BFD with no connection broken,
// it comes back, a drained node leaves without a connection noticing, a
// node lost after a backend was added keeps every connection (flow
// sharing), and everything is cleaned up. The demo itself exits non-zero when one of its
// expected properties fails; the test also reads its figures.
func TestDemoBGP(t *testing.T) {
	privtest.Require(t)
	if _, err := exec.LookPath("bird"); err != nil {
		t.Fatalf("bird: %v (make test-deps installs bird2)", err)
	}
	bin := t.TempDir()
	for _, c := range []string{"keepbitd", "keepbitctl", "keepbit-demo"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, c), "../cmd/"+c).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", c, err, out)
		}
	}
	out, err := exec.Command(filepath.Join(bin, "keepbit-demo"), "-bgp", "-keepbitd", filepath.Join(bin, "keepbitd")).CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, text)
	}
	for _, want := range []string{
		"n2 dropped at its bridge port", "BFD down at the router", "route withdrawn: the router's next hops for 10.90.9.9 go from 3 to 2 (n1 n3)",
		"router: 10.90.9.9 via n1 n2 n3 again", "keepbitctl drain-node on n3", "draining: 1 routes withdrawn",
		// Flow sharing runs in keepbitd: the backend-change step is on.
		"backend b4 added on every node", "Node lost (b4 added, n1 dropped)",
		"Summary (BFD 100ms x 3", "Every expected property held.", "lab removed",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	lost := regexp.MustCompile(`Node lost \(([^)]+)\): BFD down after (\S+), route withdrawn after (\S+) \(3 -> 2 next hops\), client gap max (\S+), broken (\d+) on healthy paths, (\d+) through the lost node`).FindAllStringSubmatch(text, -1)
	if len(lost) == 0 {
		t.Fatalf("no node-lost line:\n%s", text)
	}
	for _, m := range lost {
		withdrawn, err := time.ParseDuration(m[3])
		if err != nil {
			t.Errorf("%s: route withdrawn after %q: %v", m[1], m[3], err)
		}
		// BFD 100ms x 3: the pass condition is 400ms; the demo's
		// own limit is 1s, generous for a loaded machine.
		if withdrawn > time.Second {
			t.Errorf("%s: route withdrawn after %v, want within 1s", m[1], withdrawn)
		}
		if healthy, _ := strconv.Atoi(m[5]); healthy != 0 {
			t.Errorf("%s: %d connections broken on healthy paths", m[1], healthy)
		}
		if via, _ := strconv.Atoi(m[6]); via != 0 {
			t.Errorf("%s: %d connections broken through the lost node", m[1], via)
		}
		t.Logf("demo, %s: BFD down after %s, route withdrawn after %s, client gap max %s, broken %s healthy / %s via the lost node",
			m[1], m[2], m[3], m[4], m[5], m[6])
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", text)
	}
}
