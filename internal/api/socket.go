package api

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// socketListener is the API socket. It removes its path on Close only while
// the path is still this socket: a daemon started after this one may have
// taken the name over.
type socketListener struct {
	*net.UnixListener
	path  string
	ours  os.FileInfo
	lock  *os.File // flock held while we serve path
	once  sync.Once
	close error
}

func (l *socketListener) Close() error {
	l.once.Do(func() {
		l.close = l.UnixListener.Close()
		if fi, err := os.Lstat(l.path); err == nil && os.SameFile(fi, l.ours) {
			if err := os.Remove(l.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				l.close = errors.Join(l.close, fmt.Errorf("remove api socket: %w", err))
			}
		}
		l.lock.Close() // releases the flock, after the socket is gone
	})
	return l.close
}

// listenSocket creates the API socket at path, reachable only by its
// owner from the moment the name exists: bind() creates a socket with the
// umask's permissions, so it binds a temporary name in the same directory
// (which secureDir has made 0700, so nobody else can reach that name
// either), chmods it to 0600 and renames it over path in one step. A stale
// socket of a killed daemon is replaced; a socket that still answers is
// another daemon's and is left alone. Two daemons starting at once both
// found no live socket and both renamed theirs into place (the first then
// served a name nobody could reach), so the socket's name is claimed first
// by an flock on path+".lock", held until Close. It returns whether the
// directory's mode had to be narrowed.
func listenSocket(path string) (*socketListener, bool, error) {
	dir := filepath.Dir(path)
	narrowed, err := secureDir(dir)
	if err != nil {
		return nil, false, err
	}
	// The lock file stays: unlinking it would let a third daemon lock a
	// new file of that name while a second holds the old one.
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, narrowed, fmt.Errorf("api socket lock: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, narrowed, fmt.Errorf("api socket %s: another daemon is serving it (it holds %s.lock)", path, path)
		}
		return nil, narrowed, fmt.Errorf("api socket lock: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			lock.Close()
			return nil, narrowed, fmt.Errorf("api socket %s: exists and is not a socket", path)
		}
		// A daemon that does not take the lock (an older version).
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			lock.Close()
			return nil, narrowed, fmt.Errorf("api socket %s: another daemon is serving it", path)
		}
	}
	// Short: a socket name is limited to 107 bytes, and the temporary one
	// must fit wherever the default name ("keepbit.sock") does.
	tmp := filepath.Join(dir, fmt.Sprintf(".kb-%08x", rand.Uint32()))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		lock.Close()
		return nil, narrowed, fmt.Errorf("api socket: %w", err)
	}
	// The bound name changes with the rename: Close must not unlink tmp
	// (gone) but path, and only while it is still ours.
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*socketListener, bool, error) {
		ln.Close()
		_ = os.Remove(tmp)
		lock.Close()
		return nil, narrowed, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(fmt.Errorf("api socket permissions: %w", err))
	}
	ours, err := os.Lstat(tmp)
	if err != nil {
		return fail(fmt.Errorf("api socket: %w", err))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("api socket: %w", err))
	}
	return &socketListener{UnixListener: ln, path: path, ours: ours, lock: lock}, narrowed, nil
}

// secureDir makes dir a directory that only we can enter: created 0700
// when missing; an existing one of ours with another mode is set to 0700,
// and narrowed reports whether that took rights from others. It refuses a directory that another user owns (they could replace
// the socket) and a shared one that must not be narrowed: sticky (like
// /tmp) or a mount point (like /run); the socket belongs in a directory of
// its own such as /run/keepbit.
func secureDir(dir string) (narrowed bool, err error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return false, fmt.Errorf("api socket directory: %w", err)
		}
		// MkdirAll applied the umask; the mode must be exactly 0700.
		if err := os.Chmod(dir, 0o700); err != nil {
			return false, fmt.Errorf("api socket directory: %w", err)
		}
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("api socket directory: %w", err)
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("api socket directory %s: not a directory", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false, fmt.Errorf("api socket directory %s: no owner information", dir)
	}
	if euid := os.Geteuid(); st.Uid != uint32(euid) {
		return false, fmt.Errorf("api socket directory %s: owned by uid %d, not by this daemon (uid %d), who could replace the socket", dir, st.Uid, euid)
	}
	if fi.Mode().Perm() == 0o700 && fi.Mode()&fs.ModeSticky == 0 {
		return false, nil
	}
	if fi.Mode()&fs.ModeSticky != 0 {
		return false, fmt.Errorf("api socket directory %s: shared (mode %v, sticky); use a directory of its own", dir, fi.Mode())
	}
	shared, err := mountPoint(dir, st)
	if err != nil {
		return false, fmt.Errorf("api socket directory %s: %w", dir, err)
	}
	if shared {
		return false, fmt.Errorf("api socket directory %s: mode %#o is wider than 0700, but it is a mount point shared with other programs: use a directory of its own", dir, fi.Mode().Perm())
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return false, fmt.Errorf("api socket directory %s: set mode %#o to 0700: %w", dir, fi.Mode().Perm(), err)
	}
	return fi.Mode().Perm()&^0o700 != 0, nil
}

// mountPoint reports whether dir is the root of a file system (or /):
// such a directory is shared with other programs.
func mountPoint(dir string, st *syscall.Stat_t) (bool, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false, err
	}
	if abs == "/" {
		return true, nil
	}
	parent, err := os.Stat(filepath.Dir(abs))
	if err != nil {
		return false, err
	}
	pst, ok := parent.Sys().(*syscall.Stat_t)
	if !ok {
		return false, fmt.Errorf("no device information for %s", filepath.Dir(abs))
	}
	return pst.Dev != st.Dev, nil
}
