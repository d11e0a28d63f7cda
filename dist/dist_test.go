// Package dist holds what an installation puts on a host besides the
// binaries: the systemd unit and the example config (`make install`,
// `make package`). Its tests check both as shipped.
package dist

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keepbit/keepbit/internal/config"
)

// TestExampleConfig: the config `make install` puts in /etc/keepbit is
// valid as shipped.
func TestExampleConfig(t *testing.T) {
	cfg, err := config.Load("keepbit.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node.PinRoot != "/sys/fs/bpf" || cfg.API.Socket != "/run/keepbit/keepbit.sock" || cfg.Node.StateDir != "/var/lib/keepbit" {
		t.Fatalf("paths %q %q %q do not match the unit's ReadWritePaths, RuntimeDirectory and StateDirectory",
			cfg.Node.PinRoot, cfg.API.Socket, cfg.Node.StateDir)
	}
}

// unitDirectives reads a unit file's Key=Value lines (a key that appears
// more than once keeps every value).
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not Key=Value", path, line)
		}
		out[k] = append(out[k], v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestUnitKeepsForwarding: what the unit must say so that systemd runs
// keepbitd as the daemon expects (notify, reload by SIGHUP) and so that
// no stop, restart or watchdog action detaches the dataplane.
func TestUnitKeepsForwarding(t *testing.T) {
	d := unitDirectives(t, "systemd/keepbitd.service")
	for _, c := range []struct{ key, want string }{
		{"Type", "notify"},
		{"NotifyAccess", "main"},
		{"ExecStart", "/usr/sbin/keepbitd --config /etc/keepbit/keepbit.yaml"},
		{"ExecReload", "/bin/kill -HUP $MAINPID"},
		{"KillMode", "mixed"},
		{"KillSignal", "SIGTERM"},
		{"WatchdogSec", "10s"},
		{"ReadWritePaths", "/sys/fs/bpf"},
		{"RuntimeDirectory", "keepbit"},
		{"RuntimeDirectoryPreserve", "yes"},
		{"StateDirectory", "keepbit"},
		{"LimitMEMLOCK", "infinity"},
	} {
		if got := d[c.key]; len(got) != 1 || got[0] != c.want {
			t.Errorf("%s = %q, want %q", c.key, got, c.want)
		}
	}
	for _, k := range []string{"ExecStop", "ExecStopPost"} {
		if len(d[k]) > 0 {
			t.Errorf("%s %q: stopping must not run anything (a --detach there would stop forwarding)", k, d[k])
		}
	}
	for _, cmd := range append(d["ExecStartPre"], d["ExecStart"]...) {
		if strings.Contains(cmd, "--detach") {
			t.Errorf("%q detaches the dataplane", cmd)
		}
	}
	caps := strings.Fields(strings.Join(d["AmbientCapabilities"], " "))
	for _, want := range []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_RAW"} {
		found := false
		for _, c := range caps {
			found = found || c == want
		}
		if !found {
			t.Errorf("AmbientCapabilities %v lacks %s", caps, want)
		}
	}
}

// TestUnitVerifies: systemd-analyze verify accepts the unit. Its binary
// paths are pointed at a freshly built keepbitd, since verify checks that
// every command exists and nothing is installed on this host.
func TestUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is missing: CI must verify the unit")
		}
		t.Skip("systemd-analyze is not installed")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "keepbitd")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/keepbitd").CombinedOutput(); err != nil {
		t.Fatalf("build keepbitd: %v: %s", err, out)
	}
	unit, err := os.ReadFile("systemd/keepbitd.service")
	if err != nil {
		t.Fatal(err)
	}
	local := strings.ReplaceAll(string(unit), "/usr/sbin/keepbitd", bin)
	path := filepath.Join(dir, "keepbitd.service")
	if err := os.WriteFile(path, []byte(local), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	// verify also reports problems of other units on this host; only
	// keepbitd's count.
	var ours []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "keepbitd.service") {
			ours = append(ours, line)
		}
	}
	if len(ours) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, strings.Join(ours, "\n"))
	}
	if err != nil {
		t.Logf("systemd-analyze verify exited with %v on other units only:\n%s", err, out)
	}
}
