package netnstests

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestDemo runs `make demo`'s program and checks its story: the killed
// backend is taken out by both nodes, the frozen master is replaced, the
// client keeps being served, and everything is cleaned up.
func TestDemo(t *testing.T) {
	privtest.Require(t)
	bin := t.TempDir()
	for _, c := range []string{"keepbitd", "keepbit-demo"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(bin, c), "../cmd/"+c).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", c, err, out)
		}
	}
	out, err := exec.Command(filepath.Join(bin, "keepbit-demo"), "-keepbitd", filepath.Join(bin, "keepbitd")).CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, text)
	}
	for _, want := range []string{
		"lb1: backend-down 10.77.1.11", "lb2: backend-down 10.77.1.11",
		"freezing the VRRP master", ": vrrp-master (no advertisement from the master",
		"Failover timeline", "lab removed",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	m := regexp.MustCompile(`Client gap: backend killed (\S+) \((\d+) failed\), master frozen (\S+) \((\d+) failed\)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no client gap line:\n%s", text)
	}
	if failed, _ := strconv.Atoi(m[4]); failed > 2 {
		t.Errorf("%d requests failed while the master was frozen; its XDP keeps forwarding, so about none should", failed)
	}
	if failed, _ := strconv.Atoi(m[2]); failed > 20 {
		t.Errorf("%d requests failed after the backend was killed", failed)
	}
	t.Logf("demo: backend killed -> gap %s (%s failed); master frozen -> gap %s (%s failed)", m[1], m[2], m[3], m[4])
}
