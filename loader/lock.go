package loader

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// PinLock is an exclusive hold on one interface's pin directory: the
// daemon that holds it is the only writer of that dataplane. The kernel
// releases it when the process ends, however it ends, so a crashed
// daemon never blocks its successor.
type PinLock struct{ f *os.File }

// ErrPinDirLocked: another process holds the pin directory.
var ErrPinDirLocked = errors.New("pin directory is in use by another keepbitd")

// LockPinDir takes the pin directory of iface under pinRoot (mounting
// bpffs and creating the directory when missing) without waiting: a
// second daemon must refuse to start rather than adopt, and rewrite, the
// maps a live daemon is writing.
func LockPinDir(pinRoot, iface string) (*PinLock, error) {
	if pinRoot == "" {
		pinRoot = DefaultPinRoot
	}
	dir := PinDir(pinRoot, iface)
	if err := ensureBPFFS(pinRoot, dir); err != nil {
		return nil, err
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w (stop it first, or give this one another node.pin_root)", dir, ErrPinDirLocked)
		}
		return nil, fmt.Errorf("lock pin directory %s: %w", dir, err)
	}
	return &PinLock{f: f}, nil
}

// Release gives the directory up (a stopping daemon; the dataplane keeps
// forwarding).
func (l *PinLock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
