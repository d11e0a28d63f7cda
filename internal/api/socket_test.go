package api

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

// TestSocketDirectory: the socket's directory ends 0700 whatever its mode
// was, or the daemon refuses it with the reason. Before the fix an
// existing directory kept its mode (0755, 0777).
func TestSocketDirectory(t *testing.T) {
	cases := []struct {
		name     string
		setup    func(t *testing.T, dir string) // dir does not exist yet
		wantErr  string                         // empty: success with dir 0700
		narrowed bool
	}{
		{"missing", func(t *testing.T, dir string) {}, "", false},
		{"missing parents", nil, "", false},
		{"exists 0700", func(t *testing.T, dir string) { mkdir(t, dir, 0o700) }, "", false},
		{"exists 0755", func(t *testing.T, dir string) { mkdir(t, dir, 0o755) }, "", true},
		{"exists 0777", func(t *testing.T, dir string) { mkdir(t, dir, 0o777) }, "", true},
		{"exists 0500", func(t *testing.T, dir string) { mkdir(t, dir, 0o500) }, "", false},
		{"sticky", func(t *testing.T, dir string) { mkdir(t, dir, 0o777|os.ModeSticky) }, "shared", false},
		{"a file", func(t *testing.T, dir string) {
			if err := os.WriteFile(dir, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a directory", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			old := syscall.Umask(0o022)
			defer syscall.Umask(old)
			dir := filepath.Join(t.TempDir(), "run")
			if c.setup == nil {
				dir = filepath.Join(dir, "keepbit")
			} else {
				c.setup(t, dir)
			}
			ln, narrowed, err := listenSocket(filepath.Join(dir, "keepbit.sock"))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if m := mode(t, dir).Perm(); m != 0o700 {
				t.Errorf("directory mode %#o, want 0700", m)
			}
			if narrowed != c.narrowed {
				t.Errorf("narrowed = %v, want %v", narrowed, c.narrowed)
			}
		})
	}
}

func mkdir(t *testing.T, dir string, m os.FileMode) {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, m); err != nil {
		t.Fatal(err)
	}
}

// TestSocketDirectoryOtherOwner: a directory another user owns is refused
// (they could replace the socket). Needs root to give it away.
func TestSocketDirectoryOtherOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown a directory to another user")
	}
	dir := filepath.Join(t.TempDir(), "run")
	mkdir(t, dir, 0o700)
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, _, err := listenSocket(filepath.Join(dir, "keepbit.sock"))
	if err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("err = %v, want a refusal naming the owner", err)
	}
}

// TestSocketNeverWiderThan0600: with umask 0, bind() creates a socket
// 0777. Before the fix the final name was bound and then chmodded, so it
// existed with mode 0777 for a moment. Now the final name only ever
// appears by rename of a socket already 0600: inotify must see it arrive
// by IN_MOVED_TO, never IN_CREATE or IN_ATTRIB.
func TestSocketNeverWiderThan0600(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "run")
	mkdir(t, dir, 0o700)
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_ATTRIB|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "keepbit.sock")
	ln, _, err := listenSocket(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if m := mode(t, sock); m.Perm() != 0o600 || m.Type() != os.ModeSocket {
		t.Errorf("socket mode %v, want socket 0600", m)
	}
	buf := make([]byte, 64<<10)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatalf("read inotify events: %v", err)
	}
	var arrived bool
	for off := 0; off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
		off += unix.SizeofInotifyEvent + int(ev.Len)
		if name != "keepbit.sock" {
			continue
		}
		switch {
		case ev.Mask&unix.IN_MOVED_TO != 0:
			arrived = true
		default:
			t.Errorf("%s: event %#x: the final name was created or changed in place", name, ev.Mask)
		}
	}
	if !arrived {
		t.Error("the socket never arrived by rename")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 || ents[0].Name() != "keepbit.sock" || ents[1].Name() != "keepbit.sock.lock" {
		t.Errorf("directory holds %v, want only the socket and its lock (no temporary name left)", ents)
	}
}

// TestSocketLifecycle: a stale socket of a killed daemon is replaced, a
// live one refused, a non-socket refused; Close removes the socket only
// while it is still ours.
func TestSocketLifecycle(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	sock := filepath.Join(dir, "keepbit.sock")

	// A killed daemon leaves its socket behind.
	if _, err := secureDir(dir); err != nil {
		t.Fatal(err)
	}
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()

	ln, _, err := listenSocket(sock)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	if _, _, err := listenSocket(sock); err == nil || !strings.Contains(err.Error(), "another daemon") {
		t.Errorf("second daemon: err = %v, want refusal", err)
	}
	// The socket answers HTTP.
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })}
	go srv.Serve(ln)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 5 * time.Second}
	resp, err := client.Get("http://keepbitd/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("status %d", resp.StatusCode)
	}
	srv.Close() // closes ln
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}

	// Something else took the name over (a daemon that takes no lock):
	// our Close leaves its socket.
	first, _, err := listenSocket(sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	second, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("closing the first listener removed the other's socket: %v", err)
	}
	second.Close()

	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := listenSocket(sock); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a regular file: err = %v, want refusal", err)
	}
}

// TestSocketConcurrentStart: of two daemons starting at once on one
// socket, exactly one serves it. Before the fix both saw no live socket,
// both renamed theirs into place, and the first served a socket nobody
// could reach any more while it believed it was the API.
func TestSocketConcurrentStart(t *testing.T) {
	for i := range 30 {
		sock := filepath.Join(t.TempDir(), "run", "keepbit.sock")
		if _, err := secureDir(filepath.Dir(sock)); err != nil {
			t.Fatal(err)
		}
		start := make(chan struct{})
		type result struct {
			ln  *socketListener
			err error
		}
		results := make(chan result, 2)
		for range 2 {
			go func() {
				<-start
				ln, _, err := listenSocket(sock)
				results <- result{ln, err}
			}()
		}
		close(start)
		var lns []*socketListener
		for range 2 {
			r := <-results
			if r.err == nil {
				lns = append(lns, r.ln)
			} else if !strings.Contains(r.err.Error(), "another daemon") {
				t.Errorf("round %d: err = %v, want success or refusal", i, r.err)
			}
		}
		for _, ln := range lns {
			ln.Close()
		}
		if len(lns) != 1 {
			t.Fatalf("round %d: %d daemons serve the socket, want 1", i, len(lns))
		}
	}
}
