package loader

import (
	"errors"
	"testing"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestLockPinDir: one holder per interface's pin directory; other
// interfaces and other pin roots are independent; a release (or the
// holder's exit, which closes the same descriptor) frees it.
func TestLockPinDir(t *testing.T) {
	privtest.Require(t)
	root, other := tempPinRoot(t), tempPinRoot(t)
	first, err := LockPinDir(root, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Release()
	for _, c := range []struct {
		name  string
		root  string
		iface string
		held  bool
	}{
		{"same directory", root, "eth0", true},
		{"another interface", root, "eth1", false},
		{"another pin root", other, "eth0", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := LockPinDir(c.root, c.iface)
			if c.held {
				if !errors.Is(err, ErrPinDirLocked) {
					t.Fatalf("second lock: err = %v, want ErrPinDirLocked", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Release(); err != nil {
				t.Fatal(err)
			}
		})
	}
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	again, err := LockPinDir(root, "eth0")
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	again.Release()
}
