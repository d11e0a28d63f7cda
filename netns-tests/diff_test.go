package netnstests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keepbit/keepbit/internal/config"
)

// TestConfigDiff: keepbitctl diff and keepbitd --check-config
// --against-running list what a reload of a file would change in the
// running daemon, and change nothing themselves.
func TestConfigDiff(t *testing.T) {
	l := newLab(t)
	cfg := l.writeConfig("")
	l.startDaemonUp(cfg)
	running, err := os.ReadFile(cfg)
	must(t, err, "read config")
	cand := filepath.Join(l.dir, "candidate.yaml")
	edit := strings.Replace(string(running), "      - {address: 10.71.2.2, port: kb2}\n", "      - {address: 10.71.2.2, port: kb2, weight: 3}\n", 1)
	edit = strings.Replace(edit, "hash_seed: 7", "hash_seed: 8", 1)
	must(t, os.WriteFile(cand, []byte(edit), 0o600), "write candidate")

	want := []string{
		"changed  node.hash_seed",
		"7 -> 8  (a reload refuses this: restart keepbitd)",
		"changed  services[web].backends[10.71.2.2].weight  1 -> 3",
	}
	for _, c := range []struct {
		name string
		run  func() (string, error)
	}{
		{"keepbitctl diff", func() (string, error) { return l.ctl("diff", cand) }},
		{"keepbitd --against-running", func() (string, error) {
			out, err := exec.Command(keepbitd(t), "--check-config", cand, "--against-running").CombinedOutput()
			return string(out), err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := c.run()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			for _, w := range want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if n := strings.Count(out, "\n"); n > 4 {
				t.Errorf("more changes than made:\n%s", out)
			}
		})
	}
	out, err := l.ctl("-o", "json", "diff", cand)
	must(t, err, "keepbitctl -o json diff: "+out)
	var changes []config.Change
	must(t, json.Unmarshal([]byte(out), &changes), "decode "+out)
	if len(changes) != 2 {
		t.Errorf("json: %d changes, want 2: %s", len(changes), out)
	}
	if out, err := l.ctl("diff", cfg); err != nil || strings.TrimSpace(out) != "no changes" {
		t.Errorf("diff of the running file: %v: %q, want \"no changes\"", err, out)
	}
	bad := filepath.Join(l.dir, "bad.yaml")
	must(t, os.WriteFile(bad, []byte("services:\n  - name: web\n    vip: nope\n"), 0o600), "write bad")
	if out, err := l.ctl("diff", bad); err == nil || !strings.Contains(out, "bad.yaml:3") {
		t.Errorf("diff of a broken file: %v: %q, want an error naming bad.yaml:3", err, out)
	}
	// Nothing was applied.
	out, err = l.ctl("-o", "json", "status")
	must(t, err, "status: "+out)
	var st struct{ Generation int }
	must(t, json.Unmarshal([]byte(out), &st), "decode status")
	if st.Generation != 1 {
		t.Errorf("generation %d after diffs, want 1: a diff applied something", st.Generation)
	}
}
