package flowshare

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReplayWindow(t *testing.T) {
	type step struct {
		seq  uint64
		want bool
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"in order", []step{{1, true}, {2, true}, {3, true}}},
		{"zero is never sent", []step{{0, false}, {1, true}, {0, false}}},
		{"replayed", []step{{1, true}, {2, true}, {2, false}, {1, false}}},
		{"reordered within the window", []step{{5, true}, {3, true}, {4, true}, {3, false}, {1, true}, {5, false}}},
		{"gap then late arrivals", []step{{1, true}, {100, true}, {50, true}, {50, false}, {99, true}, {101, true}}},
		{"word boundaries", []step{{200, true}, {200 - 63, true}, {200 - 64, true}, {200 - 65, true}, {200 - 64, false}, {264, true}, {200, false}, {201, true}}},
		{"older than the window", []step{{2000, true}, {2000 - 1023, true}, {2000 - 1024, false}, {1, false}}},
		{"a jump past the window forgets all", []step{{10, true}, {5000, true}, {10, false}, {5000 - 1023, true}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var w replayWindow
			for i, s := range tc.steps {
				if got := w.accept(s.seq); got != s.want {
					t.Fatalf("step %d: seq %d accepted %v, want %v", i, s.seq, got, s.want)
				}
			}
		})
	}
}

// TestReplayWindowShift: after a shift every previously seen sequence
// within the window is still refused and none outside it appears seen.
func TestReplayWindowShift(t *testing.T) {
	for _, jump := range []uint64{1, 7, 63, 64, 65, 128, 500, 1023} {
		var w replayWindow
		for s := uint64(1); s <= 1000; s += 3 {
			w.accept(s)
		}
		w.accept(1000 + jump)
		for s := uint64(1); s < 1000+jump; s++ {
			seen := (s-1)%3 == 0 && s <= 1000
			inWindow := 1000+jump-s < windowSize
			want := inWindow && !seen
			var c replayWindow = w
			if got := c.accept(s); got != want {
				t.Fatalf("jump %d: seq %d accepted %v, want %v", jump, s, got, want)
			}
		}
	}
}

func TestTokenBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := newTokenBucket(1000, 100, t0) // 1000/s, burst 100
	type step struct {
		at   time.Duration
		n    int
		wait time.Duration
	}
	steps := []step{
		{0, 60, 0},                    // 100 -> 40
		{0, 60, 0},                    // 40 -> -20: a batch may go into debt
		{0, 1, 20 * time.Millisecond}, // in debt: wait it off
		{10 * time.Millisecond, 1, 10 * time.Millisecond},
		{20 * time.Millisecond, 50, 0}, // 0 -> -50
		{70 * time.Millisecond, 10, 0}, // 0 -> -10
		{10 * time.Second, 100, 0},     // refilled to the burst, not beyond
		{10 * time.Second, 1, 0},       // 0 -> -1
		{10*time.Second + time.Millisecond, 1, 0},
	}
	for i, s := range steps {
		if got := b.take(t0.Add(s.at), s.n); got != s.wait {
			t.Fatalf("step %d (t+%v take %d): wait %v, want %v", i, s.at, s.n, got, s.wait)
		}
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	good := strings.Repeat("k", 32)
	cases := []struct {
		name, content string
		mode          os.FileMode
		want          string // error, "" = ok
	}{
		{"ok", good + "\n", 0o600, ""},
		{"read-only owner", good, 0o400, ""},
		{"group readable", good, 0o640, "has mode 0640: it must not be readable or writable by group or others (chmod 600)"},
		{"world readable", good, 0o604, "has mode 0604"},
		{"short", strings.Repeat("k", 31) + "\n\n", 0o600, "holds a key of 31 bytes: at least 32 are required"},
		{"blank", "   \n", 0o600, "holds a key of 0 bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := write(strings.ReplaceAll(tc.name, " ", "_"), tc.content, tc.mode)
			key, err := LoadKey(p)
			switch {
			case tc.want == "" && (err != nil || string(key) != good):
				t.Errorf("key %q, err %v", key, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := LoadKey(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
	if _, err := LoadKey(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
}
