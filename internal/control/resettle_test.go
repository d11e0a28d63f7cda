package control

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// fakeService is a controller with one service "web" of n backends
// (10.0.0.1..n), all in the dataplane and down, whose state writes land
// in a map instead of a kernel map.
func fakeService(t *testing.T, cfg config.Service, n int) (*Controller, *service, map[netip.Addr]loader.State) {
	t.Helper()
	cfg.Name = "web"
	s := &service{cfg: cfg, backends: map[netip.Addr]*backend{}}
	held := map[netip.Addr]loader.State{}
	c := &Controller{log: slog.New(slog.NewTextHandler(io.Discard, nil)), rec: recorder.New(256),
		svcs: map[string]*service{"web": s}, byCheck: map[string]*backend{}, overrides: map[string]map[netip.Addr]Admin{}}
	c.writeState = func(s *service, addr netip.Addr, st loader.State) (loader.Change, error) {
		held[addr] = st
		return loader.Change{Returned: time.Now()}, nil
	}
	for i := range n {
		addr := netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", i+1))
		b := &backend{svc: s, cfg: &config.Backend{Address: addr}, checkID: "web|" + addr.String(), inDP: true, state: loader.Down}
		s.backends[addr] = b
		s.order = append(s.order, addr)
		c.byCheck[b.checkID] = b
		held[addr] = loader.Down
	}
	return c, s, held
}

// TestResettleService: a change of one backend's state re-settles the
// service's others, so a backend that the panic threshold or keep-last
// kept up while failing goes down once the others recover (issue 7
// defect 4: settle ran only for the backend whose probe changed, and
// such a backend stayed up for good). Steps: "pN+" / "pN-" a probe
// verdict up / down for backend N, "dN" / "eN" the operator disables /
// enables it.
func TestResettleService(t *testing.T) {
	cases := []struct {
		name  string
		cfg   config.Service
		n     int
		steps string
		want  string // dataplane state of each backend after the steps
	}{
		{"panic keeps the second failure up", config.Service{PanicThreshold: 50}, 3, "p1+ p2+ p3+ p1- p2-", "down up up"},
		{"panic: the others recover, the failing one goes down", config.Service{PanicThreshold: 50}, 3, "p1+ p2+ p3+ p1- p2- p1+", "up down up"},
		{"panic: a fourth backend recovering releases one of the two kept", config.Service{PanicThreshold: 50}, 4, "p1+ p2+ p3+ p1- p2- p3- p4+", "down down up up"},
		{"keep-last: another recovers, the last kept goes down", config.Service{WhenAllDown: "keep-last"}, 2, "p1+ p2+ p1- p2- p1+", "up down"},
		{"keep-last keeps the last one", config.Service{WhenAllDown: "keep-last"}, 2, "p1+ p2+ p1- p2-", "down up"},
		{"panic: enabling a disabled backend releases a failing one", config.Service{PanicThreshold: 50}, 3, "p1+ p2+ p3+ d1 p2- e1", "up down up"},
		{"no policy: every failure goes down at once", config.Service{}, 3, "p1+ p2+ p3+ p1- p2- p1+", "up down up"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctl, s, held := fakeService(t, c.cfg, c.n)
			for _, st := range strings.Fields(c.steps) {
				addr := netip.MustParseAddr("10.0.0." + st[1:2])
				switch st[0] {
				case 'p':
					to := probe.Up
					if st[2] == '-' {
						to = probe.Down
					}
					ctl.onProbe(probe.Event{Check: "web|" + addr.String(), To: to, Decide: time.Now()})
				case 'd':
					if err := ctl.SetAdmin("web", addr, Disabled); err != nil {
						t.Fatal(err)
					}
				case 'e':
					if err := ctl.SetAdmin("web", addr, Enabled); err != nil {
						t.Fatal(err)
					}
				}
			}
			var got []string
			for _, addr := range s.order {
				if held[addr] != s.backends[addr].state {
					t.Errorf("%s: dataplane holds %s, controller thinks %s", addr, held[addr], s.backends[addr].state)
				}
				got = append(got, held[addr].String())
			}
			if strings.Join(got, " ") != c.want {
				t.Fatalf("after %q: %s, want %s", c.steps, strings.Join(got, " "), c.want)
			}
		})
	}
}

// TestReloadRefusesStartOnlyFields: hash_seed, pin_root and state_dir take
// effect at start; a reload that changes them is refused with an error
// naming the field (they used to be ignored silently), and nothing of the
// running config changes.
func TestReloadRefusesStartOnlyFields(t *testing.T) {
	base := config.Node{HashSeed: 7, PinRoot: "/sys/fs/bpf", StateDir: "/var/lib/keepbit"}
	cases := []struct {
		name string
		node func(*config.Node)
		is   error // what it takes
		want []string
	}{
		{"hash seed", func(n *config.Node) { n.HashSeed = 8 }, ErrRestartRequired, []string{"node.hash_seed: changed from 7 to 8: a restart is needed to apply it; the running config keeps serving"}},
		// A start with another pin root cannot attach (the link pinned
		// under the old one holds the interface): it takes a detach.
		{"pin root", func(n *config.Node) { n.PinRoot = "/mnt/bpf" }, ErrDetachRequired, []string{"node.pin_root: changed from /sys/fs/bpf to /mnt/bpf: the attached program stays as it is, across restarts too, until it is detached"}},
		{"state dir", func(n *config.Node) { n.StateDir = "/srv/keepbit" }, ErrRestartRequired, []string{"node.state_dir: changed from /var/lib/keepbit to /srv/keepbit: a restart is needed"}},
		{"flow cache size", func(n *config.Node) { n.FlowCacheSize = 1 << 16 }, ErrRestartRequired, []string{"node.flow_cache_size: changed from 0 to 65536: a restart is needed"}},
		{"two at once, both named", func(n *config.Node) { n.HashSeed, n.PinRoot = 9, "/x" }, ErrRestartRequired, []string{"node.hash_seed: changed from 7 to 9", "node.pin_root: changed from /sys/fs/bpf to /x"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			running := &config.Config{Node: base}
			ctl := &Controller{log: slog.New(slog.NewTextHandler(io.Discard, nil)), rec: recorder.New(16), cfg: running, gen: 1,
				dps: map[string]*loader.Dataplane{}, svcs: map[string]*service{}}
			next := &config.Config{Node: base, Interfaces: []config.Interface{{Name: "eth9"}}}
			c.node(&next.Node)
			err := ctl.Reload(context.Background(), next)
			if err == nil || !errors.Is(err, c.is) {
				t.Fatalf("reload accepted (%v); want it refused", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if ctl.cfg != running || ctl.Generation() != 1 || len(ctl.dps) != 0 {
				t.Fatalf("a refused reload changed the running state: gen %d, %d dataplanes", ctl.Generation(), len(ctl.dps))
			}
		})
	}
}
