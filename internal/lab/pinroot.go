package lab

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// RemovePinRoot undoes a temporary pin root: it unmounts the bpffs the
// loader mounted there (when it did) and removes the directory.
func RemovePinRoot(dir string) error {
	var errs []error
	if err := unix.Unmount(dir, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", dir, err))
	}
	return errors.Join(append(errs, os.RemoveAll(dir))...)
}
