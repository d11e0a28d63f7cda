package dist

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDebInstallUpgradeRemove builds the .deb with `make package` and
// installs, upgrades, removes and purges it in a scratch root (dpkg
// --root; the maintainer scripts run with DPKG_ROOT set and leave this
// host's systemd alone): files land where the unit expects them, the
// installed keepbitd runs and accepts the shipped config, an upgrade
// keeps the operator's config, a removal keeps it, a purge deletes it.
func TestDebInstallUpgradeRemove(t *testing.T) {
	dpkg, err := exec.LookPath("dpkg")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("dpkg is missing: CI must test the package")
		}
		t.Skip("dpkg is not installed")
	}
	out := t.TempDir()
	build := func(version string) string {
		t.Helper()
		dir := filepath.Join(out, version)
		cmd := exec.Command("make", "-C", "..", "--no-print-directory", "package", "PACKAGE_DIR="+dir, "DEB_VERSION="+version)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make package: %v\n%s", err, b)
		}
		debs, _ := filepath.Glob(filepath.Join(dir, "keepbit_*.deb"))
		if len(debs) != 1 {
			t.Fatalf("make package made %v, want one .deb", debs)
		}
		return debs[0]
	}
	v1, v2 := build("0.1.0+test1"), build("0.1.0+test2")

	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/log"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"var/lib/dpkg/status", "var/lib/dpkg/available"} {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) string {
		t.Helper()
		full := append([]string{"--root=" + root, "--force-script-chrootless", "--log=/dev/null"}, args...)
		b, err := exec.Command(dpkg, full...).CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	at := func(p string) string { return filepath.Join(root, p) }
	mode := func(p string) os.FileMode {
		t.Helper()
		st, err := os.Stat(at(p))
		if err != nil {
			t.Fatalf("after install: %v", err)
		}
		return st.Mode().Perm()
	}

	run("-i", v1)
	for _, c := range []struct {
		path string
		mode os.FileMode
	}{
		{"usr/sbin/keepbitd", 0o755},
		{"usr/bin/keepbitctl", 0o755},
		{"lib/systemd/system/keepbitd.service", 0o644},
		{"etc/keepbit/keepbit.yaml", 0o600},
	} {
		if m := mode(c.path); m != c.mode {
			t.Errorf("%s: mode %v, want %v", c.path, m, c.mode)
		}
	}
	if b, err := exec.Command(at("usr/sbin/keepbitd"), "--check-config", at("etc/keepbit/keepbit.yaml")).CombinedOutput(); err != nil {
		t.Fatalf("installed keepbitd --check-config on the installed config: %v: %s", err, b)
	}
	if b, err := exec.Command(at("usr/sbin/keepbitd"), "--version").CombinedOutput(); err != nil || !strings.HasPrefix(string(b), "keepbit ") {
		t.Fatalf("installed keepbitd --version: %v: %q", err, b)
	}

	// The operator edits the config; an upgrade must keep the edit.
	edited := []byte("# edited by the operator\n")
	orig, err := os.ReadFile(at("etc/keepbit/keepbit.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(at("etc/keepbit/keepbit.yaml"), append(edited, orig...), 0o600); err != nil {
		t.Fatal(err)
	}
	run("--force-confold", "-i", v2)
	if s := run("-s", "keepbit"); !strings.Contains(s, "Version: 0.1.0+test2") || !strings.Contains(s, "install ok installed") {
		t.Fatalf("after the upgrade dpkg says:\n%s", s)
	}
	if b, _ := os.ReadFile(at("etc/keepbit/keepbit.yaml")); !strings.HasPrefix(string(b), string(edited)) {
		t.Fatal("the upgrade replaced the operator's config")
	}

	run("-r", "keepbit")
	for _, p := range []string{"usr/sbin/keepbitd", "usr/bin/keepbitctl", "lib/systemd/system/keepbitd.service"} {
		if _, err := os.Stat(at(p)); !os.IsNotExist(err) {
			t.Errorf("%s after removal: %v, want it gone", p, err)
		}
	}
	if _, err := os.Stat(at("etc/keepbit/keepbit.yaml")); err != nil {
		t.Errorf("removal (not purge) must keep the config: %v", err)
	}
	run("-P", "keepbit")
	if _, err := os.Stat(at("etc/keepbit")); !os.IsNotExist(err) {
		t.Errorf("/etc/keepbit after purge: %v, want it gone", err)
	}
}
