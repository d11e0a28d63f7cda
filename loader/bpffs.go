package loader

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ensureBPFFS makes dir a usable bpffs location, mounting bpffs at mount
// when nothing of that type is there yet (a fresh machine has none).
func ensureBPFFS(mount, dir string) error {
	if err := os.MkdirAll(mount, 0o700); err != nil {
		return fmt.Errorf("create bpffs mount point %s: %w", mount, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mount, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", mount, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		if err := unix.Mount("bpf", mount, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at %s: %w", mount, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return !errors.Is(err, os.ErrNotExist)
}
