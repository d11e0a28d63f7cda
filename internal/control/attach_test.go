package control

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
)

// TestReloadRefusesModeChange: a reload that changes the attach mode of an
// interface that stays was ignored silently (the open dataplane is
// skipped, and a restart adopts the pinned link in its old mode). It is
// refused, naming the interface, before anything changes; a new
// interface, or one that leaves, may have any mode.
func TestReloadRefusesModeChange(t *testing.T) {
	node := config.Node{HashSeed: 7, PinRoot: "/sys/fs/bpf", StateDir: "/var/lib/keepbit"}
	cases := []struct {
		name      string
		running   []config.Interface
		next      []config.Interface
		wantError string // "" : not refused for the mode
	}{
		{"generic to native", []config.Interface{{Name: "eth1", Mode: "generic"}}, []config.Interface{{Name: "eth1", Mode: "native"}},
			"interface eth1: mode: changed from generic to native: the attached program stays as it is, across restarts too, until it is detached"},
		{"auto to generic, another interface unchanged", []config.Interface{{Name: "eth0", Mode: "native"}, {Name: "eth1", Mode: "auto"}},
			[]config.Interface{{Name: "eth0", Mode: "native"}, {Name: "eth1", Mode: "generic"}}, "interface eth1: mode: changed from auto to generic"},
		{"a new interface in another mode", []config.Interface{{Name: "eth0", Mode: "native"}},
			[]config.Interface{{Name: "eth0", Mode: "native"}, {Name: "eth1", Mode: "generic"}}, ""},
		{"an interface leaves", []config.Interface{{Name: "eth0", Mode: "native"}, {Name: "eth1", Mode: "generic"}},
			[]config.Interface{{Name: "eth0", Mode: "native"}}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := attachFixed(c.running, c.next)
			if c.wantError == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrDetachRequired) || !strings.Contains(err.Error(), c.wantError) {
				t.Fatalf("got %v, want an error saying %q", err, c.wantError)
			}
			// Through Reload: refused before any dataplane is opened.
			running := &config.Config{Node: node, Interfaces: c.running}
			ctl := &Controller{log: slog.New(slog.NewTextHandler(io.Discard, nil)), rec: recorder.New(16), cfg: running, gen: 1,
				dps: map[string]*loader.Dataplane{}, svcs: map[string]*service{}}
			if err := ctl.Reload(context.Background(), &config.Config{Node: node, Interfaces: c.next}); !errors.Is(err, ErrDetachRequired) {
				t.Fatalf("reload: %v, want it refused", err)
			}
			if ctl.cfg != running || ctl.Generation() != 1 || len(ctl.dps) != 0 {
				t.Fatalf("a refused reload changed the running state: gen %d, %d dataplanes", ctl.Generation(), len(ctl.dps))
			}
		})
	}
}
