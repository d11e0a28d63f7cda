// Package privtest runs privileged tests where they belong: as root, in a
// network namespace of their own that disappears with the test process.
// Outside root they skip with the reason; in CI (CI set) they fail instead,
// because a privileged test that CI skips proves nothing.
package privtest

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const childEnv = "KEEPBIT_TEST_NETNS"

// Main is TestMain for packages with privileged tests. As root it re-runs
// the test binary in a fresh network namespace (every thread of the child
// is in it), so interfaces the tests create vanish with the process even
// when a test dies. It returns the exit code for os.Exit.
func Main(m *testing.M) int {
	if os.Geteuid() != 0 || os.Getenv(childEnv) != "" {
		if os.Getenv(childEnv) != "" {
			// The mount namespace is ours; keep bpffs mounts from
			// propagating back to the host's.
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				fmt.Fprintln(os.Stderr, "privtest: make mounts private:", err)
				return 1
			}
			if lo, err := netlink.LinkByName("lo"); err == nil {
				_ = netlink.LinkSetUp(lo)
			}
		}
		return m.Run()
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "privtest: run tests in a private network namespace:", err)
		return 1
	}
	return 0
}

// Require skips t (or fails it in CI) unless the test runs as root inside
// the private namespace Main made.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 && os.Getenv(childEnv) != "" {
		return
	}
	reason := "needs root (CAP_BPF, CAP_NET_ADMIN) to load BPF and create interfaces"
	if os.Geteuid() == 0 {
		reason = "needs the private network namespace that privtest.Main sets up (add TestMain)"
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("privileged test cannot run: %s; CI must run it", reason)
	}
	t.Skip(reason)
}
