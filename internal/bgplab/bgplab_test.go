package bgplab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keepbit/keepbit/internal/config"
)

// TestConfigs: the node configs the lab writes load and say what the
// options asked for, and BIRD takes the router's config. Needs no root.
func TestConfigs(t *testing.T) {
	if _, err := exec.LookPath("bird"); err != nil {
		t.Fatalf("bird: %v (make test-deps installs bird2)", err)
	}
	for _, tc := range []struct {
		name string
		o    Options
		// want: BFD timers read back (nil: no bfd), flow sharing peers.
		bfd      *BFD
		backends int
	}{
		{"bgp, bfd 10ms x 3, flow sharing", Options{BGP: true, BFD: &BFD{10 * time.Millisecond, 3}, FlowSharing: true}, &BFD{10 * time.Millisecond, 3}, 3},
		{"bgp, bfd 100ms x 5", Options{BGP: true, BFD: &BFD{100 * time.Millisecond, 5}}, &BFD{100 * time.Millisecond, 5}, 3},
		{"bgp timers only, 2 backends", Options{BGP: true, Backends: 2}, nil, 2},
		{"static route lab", Options{}, nil, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var nodes []*Node
			var backends []*Backend
			for i := range 3 {
				n := &Node{Name: fmt.Sprintf("n%d", i+1), Addr: fmt.Sprintf("10.91.0.%d", 11+i), Dir: filepath.Join(dir, fmt.Sprintf("n%d", i+1))}
				if err := os.MkdirAll(n.Dir, 0o700); err != nil {
					t.Fatal(err)
				}
				nodes = append(nodes, n)
			}
			for i := range tc.backends {
				backends = append(backends, &Backend{Name: fmt.Sprintf("b%d", i+1), Addr: fmt.Sprintf("10.91.0.%d", 21+i)})
			}
			for _, n := range nodes {
				if err := WriteNodeConfig(tc.o, n, nodes, backends); err != nil {
					t.Fatal(err)
				}
				c, err := config.Load(n.Config)
				if err != nil {
					t.Fatalf("%s: %v", n.Name, err)
				}
				if got := len(c.Services[0].Backends); got != tc.backends {
					t.Errorf("%s: %d backends, want %d", n.Name, got, tc.backends)
				}
				b := c.BGP
				if (b != nil) != tc.o.BGP {
					t.Fatalf("%s: bgp section %+v, want one: %v", n.Name, b, tc.o.BGP)
				}
				if b != nil {
					p := b.Peers[0]
					if b.ASN != NodeAS || b.RouterID.String() != n.Addr || p.Address.String() != RouterAddr || p.ASN != RouterAS || p.HoldTime != 3*time.Second || !p.Passive {
						t.Errorf("%s: bgp section read as %+v, peer %+v", n.Name, b, p)
					}
					if f := p.BFD; (f == nil) != (tc.bfd == nil) || f != nil && (f.MinTx != tc.bfd.Interval || f.MinRx != tc.bfd.Interval || f.Multiplier != tc.bfd.Mult) {
						t.Errorf("%s: bfd read as %+v, want %+v", n.Name, f, tc.bfd)
					}
				}
				if (c.FlowSharing != nil) != tc.o.FlowSharing {
					t.Errorf("%s: flow_sharing %+v, want one: %v", n.Name, c.FlowSharing, tc.o.FlowSharing)
				}
			}
			conf := filepath.Join(dir, "bird.conf")
			if err := os.WriteFile(conf, []byte(BIRDConfig(tc.o, nodes)), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("bird", "-p", "-c", conf).CombinedOutput(); err != nil {
				t.Errorf("bird -p: %v: %s\n%s", err, out, BIRDConfig(tc.o, nodes))
			}
		})
	}
}

// TestParseBFDChanges: BFD state changes come out of BIRD's log with their
// millisecond times and node names, from since on.
func TestParseBFDChanges(t *testing.T) {
	at := func(s string) time.Time {
		tm, err := time.ParseInLocation("2006-01-02 15:04:05.000", s, time.Local)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	log := `2026-11-22 10:23:40.100 <INFO> Started
2026-11-22 10:23:40.120 <TRACE> bfd1: Session to 10.91.0.12 changed state from Init to Up
2026-11-22 10:23:41.026 <TRACE> bfd1: Session to 10.91.0.12 changed state from Up to Down
2026-11-22 10:23:41.030 <RMT> n2: Error: BFD session down
2026-11-22 10:23:41.250 <TRACE> bfd1: Session to 10.91.0.99 changed state from Down to Init
garbage Session to 10.91.0.13 changed state from Up to Down
`
	byAddr := map[string]string{"10.91.0.12": "n2"}
	for _, tc := range []struct {
		name  string
		since time.Time
		want  []BFDChange
	}{
		{"all", at("2026-11-22 10:23:40.000"), []BFDChange{
			{at("2026-11-22 10:23:40.120"), "n2", "Init", "Up"},
			{at("2026-11-22 10:23:41.026"), "n2", "Up", "Down"},
			{at("2026-11-22 10:23:41.250"), "10.91.0.99", "Down", "Init"},
		}},
		// since within the millisecond of a line keeps that line.
		{"from the failure", at("2026-11-22 10:23:41.026").Add(400 * time.Microsecond), []BFDChange{
			{at("2026-11-22 10:23:41.026"), "n2", "Up", "Down"},
			{at("2026-11-22 10:23:41.250"), "10.91.0.99", "Down", "Init"},
		}},
		{"none after", at("2026-11-22 10:23:42.000"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := parseBFDChanges(log, byAddr, tc.since)
			if !slices.EqualFunc(got, tc.want, func(a, b BFDChange) bool {
				return a.At.Equal(b.At) && a.Node == b.Node && a.From == b.From && a.To == b.To
			}) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
