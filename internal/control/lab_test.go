package control

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/keepbit/keepbit/internal/config"
	"github.com/keepbit/keepbit/internal/privtest"
	"github.com/keepbit/keepbit/internal/recorder"
	"github.com/keepbit/keepbit/loader"
	"github.com/keepbit/keepbit/probe"
)

// ctlLab runs real Controllers against a real dataplane, attached in
// generic mode to a veth of the test's private namespace, with its pin
// root and state dir in a temporary directory. Probes never run (Run is
// not called): tests feed verdicts through onProbe.
type ctlLab struct {
	t     *testing.T
	iface string
	dir   string
	logs  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newCtlLab(t *testing.T) *ctlLab {
	t.Helper()
	privtest.Require(t)
	l := &ctlLab{t: t, iface: fmt.Sprintf("kbt%06x", rand.Uint32()&0xffffff), dir: t.TempDir(), logs: &syncBuffer{}}
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: l.iface}, PeerName: l.iface + "p"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	for _, n := range []string{l.iface, l.iface + "p"} {
		link, err := netlink.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
	// Runs after every Controller's Close (registered later), before the
	// temporary directory is removed.
	t.Cleanup(func() {
		_ = loader.RemovePinned(l.pinRoot(), l.iface)
		_ = unix.Unmount(l.pinRoot(), unix.MNT_DETACH)
		_ = netlink.LinkDel(v)
	})
	return l
}

func (l *ctlLab) pinRoot() string  { return filepath.Join(l.dir, "bpf") }
func (l *ctlLab) stateDir() string { return filepath.Join(l.dir, "state") }

// config parses a keepbit.yaml for the lab with services (YAML list items).
func (l *ctlLab) config(services string) *config.Config {
	l.t.Helper()
	text := fmt.Sprintf(`node: {hash_seed: 7, pin_root: %s, state_dir: %s}
interfaces: [{name: %s, mode: generic}]
api: {socket: %s}
metrics: {listen: "off"}
defaults:
  check: {type: tcp, interval: 1s, timeout: 500ms, rise: 1, fall: 1}
services:
%s`, l.pinRoot(), l.stateDir(), l.iface, filepath.Join(l.dir, "sock"), services)
	cfg, err := config.Parse("lab.yaml", []byte(text))
	if err != nil {
		l.t.Fatalf("lab config: %v\n%s", err, text)
	}
	return cfg
}

// start opens a Controller on cfg; it is closed (not detached) when the
// test ends, or earlier by the test.
func (l *ctlLab) start(cfg *config.Config) *Controller {
	l.t.Helper()
	log := slog.New(slog.NewTextHandler(l.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c, err := New(context.Background(), cfg, log, recorder.New(4096))
	if err != nil {
		l.t.Fatalf("start controller: %v", err)
	}
	var once sync.Once
	l.t.Cleanup(func() { once.Do(c.Close) })
	return c
}

// verdict feeds one probe verdict for a backend of a service.
func verdict(c *Controller, service string, addr netip.Addr, up bool) {
	to := probe.Down
	if up {
		to = probe.Up
	}
	c.onProbe(probe.Event{Check: service + "|" + addr.String(), To: to, Decide: time.Now()})
}

// held is what the dataplane holds: service name -> backend -> state.
func held(t *testing.T, c *Controller) map[string]map[netip.Addr]loader.State {
	t.Helper()
	out := map[string]map[netip.Addr]loader.State{}
	c.mu.Lock()
	names := map[loader.ServiceKey]string{}
	for name, s := range c.svcs {
		names[s.key] = name
	}
	dps := maps.Clone(c.dps)
	c.mu.Unlock()
	for _, dp := range dps {
		for _, si := range dp.Services() {
			name, ok := names[si.Key]
			if !ok {
				name = "unknown " + si.Key.String()
			}
			out[name] = map[netip.Addr]loader.State{}
			for _, b := range si.Backends {
				out[name][b.Addr] = b.State
			}
		}
	}
	return out
}

func statesString(m map[netip.Addr]loader.State) string {
	var parts []string
	for a, s := range m {
		parts = append(parts, a.String()+"="+s.String())
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}
